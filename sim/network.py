"""Whole networks on Verilator (docs/network.md §16): a :class:`NetworkBench` top holds a
network core built from its configuration alone, between memories that Verilog reads from
files at time zero (``$readmemh``) and writes to a file when the run is done
(``$writememh``). The program, weights and parameters reach the core through its ``load``
port, as on a board, and the images stream in after them; so a new artifact of the same
core configuration, new images, other stalls or another seed reuse the compiled model
(:mod:`sim.cache`).

The model is driven by a small C++ ``main`` compiled with it (no cocotb, no VPI, no
Python): it toggles the clock and evaluates the model until ``done``, and prints progress
now and then and a summary at the end. The run's counts come as plusargs. Random
backpressure comes from a hardware LFSR that drops ``valid`` on the input side and
``ready`` on the output side; its seed and the stall rate are run-time inputs.
"""

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amaranth.back import verilog
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from olmac.hw.network import STORAGE_BITS, NetworkCore
from olmac.spec import STALL_SIXTEENTHS, check_int
from .cache import cached_model
from .runner import build_executable

__all__ = ["NetworkBench", "NetworkRun", "load_words", "build_network", "run_network"]

BENCH = "olmac_network"
TOPLEVEL = "olmac_network_sim"
#: Words of the image and result memories, unless a run needs more (then a power of two).
CAPACITY = 1 << 16
#: Files the memories read and write, in the run's folder (the simulator's working folder).
FILES = {"loads": "loads.hex", "images": "images.hex", "results": "results.hex",
         "op_cycles": "op_cycles.hex", "op_beats": "op_beats.hex"}
#: Clock cycles between two progress lines of the simulator.
PROGRESS_CYCLES = 50_000
# X values resolved once, at build time.
BUILD_ARGS = ("--x-assign", "fast", "--x-initial", "fast")
# -O3 for this CPU instead of Verilator's default -Os for the model's per-cycle C++ (the
# requantizer's wide arithmetic is then inlined: the demo bench ran 25-30 % faster than at
# -O2 in alternating runs); its run-once code stays at -O0 and Verilator's library at -Os,
# which builds in about a third less CPU time than -O3 for all. The model then runs only on
# CPUs like the one that built it, so the cache key names the CPU.
MAKE_ARGS = ("OPT_FAST=-O3 -march=native",)

_MEMORIES = """\
// A memory whose contents come from the $readmemh file LOAD at time zero (if named) and
// that writes itself to the file DUMP ($writememh) on the first clock edge with `dump`
// high: the bench's images and results change without a new Verilator build.
module olmac_file_memory #(parameter WIDTH = 1, parameter ABITS = 1, parameter LOAD = "",
                           parameter DUMP = "") (
    input clk,
    input read_en, input [ABITS-1:0] read_addr, output reg [WIDTH-1:0] read_data,
    input write_en, input [ABITS-1:0] write_addr, input [WIDTH-1:0] write_data,
    input dump);
  reg [WIDTH-1:0] memory [0:(1 << ABITS) - 1];
  reg dumped = 1'b0;
  initial if (LOAD != "") $readmemh(LOAD, memory);
  always @(posedge clk) begin
    if (read_en) read_data <= memory[read_addr];
    if (write_en) memory[write_addr] <= write_data;
    if (dump && !dumped && DUMP != "") begin
      $writememh(DUMP, memory);
      dumped <= 1'b1;
    end
  end
endmodule

// Cycles spent in each op of the program (those with `count` high), written to the file
// DUMP ($writememh) on the first clock edge with `dump` high: the per-layer cycles and
// array beats of `make bench`.
module olmac_op_cycles #(parameter ABITS = 1, parameter DUMP = "") (
    input clk, input count, input [ABITS-1:0] op, input dump);
  reg [31:0] cycles [0:(1 << ABITS) - 1];
  reg dumped = 1'b0;
  integer index;
  initial for (index = 0; index < (1 << ABITS); index = index + 1) cycles[index] = 0;
  always @(posedge clk) begin
    if (count) cycles[op] <= cycles[op] + 1;
    if (dump && !dumped) begin
      $writememh(DUMP, cycles);
      dumped <= 1'b1;
    end
  end
endmodule
"""

_TOP = f"""\
// The simulation top: its only input is the clock, which the C++ main toggles; reset is
// made here, since every input that changes makes the model re-evaluate the logic that
// reads it (the whole core's synchronous reset) on both clock edges. The run's counts,
// stall rate and seed come as plusargs.
module {TOPLEVEL}(input clk, output done, output [31:0] captured, output [31:0] cycles,
                  output [31:0] gemm_beats, output fault);
  reg [1:0] resetting = 2'd2;
  wire rst = resetting != 2'd0;
  always @(posedge clk) if (rst) resetting <= resetting - 2'd1;
  reg [31:0] loads = 0, inputs = 0, outputs = 0, stall = 0, seed = 1;
  integer found;
  initial begin
    found = $value$plusargs("loads=%d", loads);
    found = $value$plusargs("inputs=%d", inputs);
    found = $value$plusargs("outputs=%d", outputs);
    found = $value$plusargs("stall=%d", stall);
    found = $value$plusargs("seed=%d", seed);
  end
  {BENCH} bench(.clk(clk), .rst(rst), .load_count(loads), .input_count(inputs),
    .output_count(outputs), .stall(stall[3:0]), .seed(seed[15:0]), .done(done),
    .captured(captured), .cycles(cycles), .gemm_beats(gemm_beats), .fault(fault));
endmodule
"""

_MAIN = """\
// Runs the network bench (docs/network.md §16): toggles the clock until `done` or
// +timeout=N cycles, printing `progress <words captured>` every +progress=N cycles and at
// the end one JSON line with the counts and the loop's wall-clock and CPU seconds.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include "Vtop.h"
#include "verilated.h"

static unsigned long long plusarg(VerilatedContext& context, const char* name) {
  const std::string match = context.commandArgsPlusMatch(name);  // "+name=value" or ""
  return match.empty() ? 0 : std::strtoull(match.c_str() + std::strlen(name) + 2, nullptr, 10);
}

static double now(clockid_t clock) {
  timespec time;
  clock_gettime(clock, &time);
  return time.tv_sec + 1e-9 * time.tv_nsec;
}

int main(int argc, char** argv) {
  const auto context = std::make_unique<VerilatedContext>();
  context->commandArgs(argc, argv);
  const auto top = std::make_unique<Vtop>(context.get());
  const unsigned long long timeout = plusarg(*context, "timeout");
  const unsigned long long every = plusarg(*context, "progress");
  const auto tick = [&top] {
    top->clk = 0;
    top->eval();
    top->clk = 1;
    top->eval();
  };
  tick();  // the memories read their files and the top holds reset for two cycles
  tick();
  const double wall = now(CLOCK_MONOTONIC), cpu = now(CLOCK_PROCESS_CPUTIME_ID);
  unsigned long long clocks = 0, report = every;
  while (!top->done && clocks < timeout) {
    tick();
    if (++clocks == report) {
      std::printf("progress %u\\n", top->captured);
      std::fflush(stdout);
      report += every;
    }
  }
  const double seconds = now(CLOCK_MONOTONIC) - wall;
  const double cpu_seconds = now(CLOCK_PROCESS_CPUTIME_ID) - cpu;
  tick();  // the result memory writes its file on the edge after `done`
  std::printf("{\\"done\\": %d, \\"fault\\": %d, \\"cycles\\": %u, \\"gemm_beats\\": %u, "
              "\\"seconds\\": %.6f, \\"cpu_seconds\\": %.6f}\\n", top->done, top->fault,
              top->cycles, top->gemm_beats, seconds, cpu_seconds);
  top->final();
  return 0;
}
"""


class _Lfsr(wiring.Component):
    """A 16-bit Galois LFSR (x^16 + x^14 + x^13 + x^11 + 1), one step per cycle, that
    starts from ``seed`` (its all-zero reset state would never move)."""

    seed: In(16)
    value: Out(16)

    def elaborate(self, platform):
        m = Module()
        state = Signal(16)
        step = Mux(state[0], (state >> 1) ^ 0xB400, state >> 1)
        m.d.sync += state.eq(Mux(state == 0, self.seed, step))
        m.d.comb += self.value.eq(state)
        return m


def _file_memory(width, depth, *, load="", dump=""):
    """An ``olmac_file_memory`` instance and its ports (as signals)."""
    abits = max(ceil_log2(depth), 1)
    ports = {"read_en": Signal(), "read_addr": Signal(abits), "read_data": Signal(width),
             "write_en": Signal(), "write_addr": Signal(abits), "write_data": Signal(width),
             "dump": Signal()}
    instance = Instance(
        "olmac_file_memory", p_WIDTH=width, p_ABITS=abits, p_LOAD=load, p_DUMP=dump,
        i_clk=ClockSignal(),
        **{f"{'o' if name == 'read_data' else 'i'}_{name}": port
           for name, port in ports.items()})
    return instance, ports


def _stream_out(m, memory, count, stream, offer):
    """Stream words ``0..count-1`` of ``memory`` (a file memory's ports) to ``stream``,
    valid only while ``offer``; the next word is read while the current one waits.
    Returns the flag that every word has been taken."""
    sent = Signal(32)
    pending = Signal()
    take = ~pending | (stream.valid & stream.ready)
    more = sent != count
    m.d.comb += [memory["read_addr"].eq(sent), memory["read_en"].eq(take),
                 stream.valid.eq(pending & offer), stream.payload.eq(memory["read_data"])]
    with m.If(take):
        m.d.sync += pending.eq(more)
        with m.If(more):
            m.d.sync += sent.eq(sent + 1)
    return ~more & ~pending


class NetworkBench(wiring.Component):
    """A :class:`NetworkCore` built from ``config`` alone between file memories
    (simulation top for Verilator): the load beats (program, weights, parameters, then a
    ``RESTART``) from ``loads.hex``, then the images from ``images.hex``; the output words
    go to a memory written to ``results.hex`` when ``done``, the cycles each op took
    (summed over the images) to ``op_cycles.hex`` and the beats the array took in each op
    to ``op_beats.hex``.

    Parameters
    ----------
    config : NetworkCore.Config
        The core's configuration.
    capacity : int
        Words of the image and result memories (a power of two, at least 2).

    Raises
    ------
    TypeError
        If ``config`` is not a ``NetworkCore.Config`` or ``capacity`` is not a power of
        two of at least 2.

    Members
    -------
    load_count, input_count, output_count : In(32)
        Load beats, input words and output words of the run.
    stall : In(4)
        Chance, in sixteenths, that the image memory withholds ``valid`` and the result
        memory withholds ``ready`` on a cycle.
    seed : In(16)
        The LFSR's seed (not 0).
    done : Out(1)
        ``output_count`` words have been captured.
    captured : Out(32)
        Words captured so far (for a progress bar).
    cycles : Out(32)
        Cycles from the end of the loads to ``done``.
    gemm_beats : Out(32)
        Beats the MAC array took.
    fault : Out(1)
        The core's ``fault`` (a beat broke docs/semantics.md §6's outlier rules).
    """

    load_count: In(32)
    input_count: In(32)
    output_count: In(32)
    stall: In(4)
    seed: In(16)
    done: Out(1)
    captured: Out(32)
    cycles: Out(32)
    gemm_beats: Out(32)
    fault: Out(1)

    def __init__(self, config, *, capacity=CAPACITY):
        if not isinstance(config, NetworkCore.Config):
            raise TypeError(f"config must be a NetworkCore.Config, not {config!r}")
        if (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2
                or capacity & (capacity - 1)):
            raise TypeError(f"capacity must be a power of two of at least 2, not {capacity!r}")
        self._config = config
        self._capacity = capacity
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        config = self._config
        m.submodules.core = core = NetworkCore(config)
        m.submodules.lfsr = lfsr = _Lfsr()
        m.d.comb += lfsr.seed.eq(self.seed)
        load_bits = Shape.cast(config.load_layout).width
        word_bits = config.width * STORAGE_BITS
        # a beat a word, or with narrow memories a beat a row (config.load_beats)
        load_depth = sum(config.depths[name] * len(config.load_beats(
            getattr(NetworkCore.Memory, name.upper()), 0, 0))
            for name in ("program", "weights", "params")) + config.table_depth + 1
        m.submodules.loads, loads = _file_memory(load_bits, load_depth, load=FILES["loads"])
        m.submodules.images, images = _file_memory(word_bits, self._capacity,
                                                   load=FILES["images"])
        m.submodules.results, results = _file_memory(word_bits, self._capacity,
                                                     dump=FILES["results"])

        loaded = _stream_out(m, loads, self.load_count, core.load, 1)
        # Inputs wait for the loads: the core takes `load` beats only while they offer none.
        _stream_out(m, images, self.input_count, core.inputs,
                    loaded & (lfsr.value[:4] >= self.stall))

        captured = Signal(32)
        m.d.comb += core.outputs.ready.eq(lfsr.value[4:8] >= self.stall)
        accepted = core.outputs.valid & core.outputs.ready
        m.d.comb += [
            results["write_addr"].eq(captured),
            results["write_data"].eq(core.outputs.payload.word),
            results["write_en"].eq(accepted),
        ]
        with m.If(accepted):
            m.d.sync += captured.eq(captured + 1)
        done = captured == self.output_count
        with m.If(loaded & ~done):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        op = Signal(max(ceil_log2(config.program_depth), 1))
        m.d.comb += op.eq(core.op_index)
        m.submodules.op_cycles = Instance(
            "olmac_op_cycles", p_ABITS=len(op), p_DUMP=FILES["op_cycles"],
            i_clk=ClockSignal(), i_count=loaded & ~done, i_op=op, i_dump=done)
        # The beat count moves the cycle after a beat; an op ends cycles after its last one.
        beats_before = Signal(32)
        m.d.sync += beats_before.eq(core.gemm_beats)
        m.submodules.op_beats = Instance(
            "olmac_op_cycles", p_ABITS=len(op), p_DUMP=FILES["op_beats"],
            i_clk=ClockSignal(), i_count=loaded & ~done & (core.gemm_beats != beats_before),
            i_op=op, i_dump=done)
        m.d.comb += [
            results["dump"].eq(done),
            self.done.eq(done),
            self.captured.eq(captured),
            self.gemm_beats.eq(core.gemm_beats),
            self.fault.eq(core.fault),
        ]
        return m


@dataclass
class NetworkRun:
    """What one simulation returns: the captured output words (``N × output_words ×
    width`` slots), cycles, the cycles of each op of the program (summed over the images)
    and array beats, wall-clock and CPU seconds of the model's run
    (reset to ``done``), seconds of the whole simulator process, and seconds spent
    building the model (0 when it came from the cache) and where it is."""
    slots: np.ndarray
    cycles: int
    op_cycles: np.ndarray
    op_beats: np.ndarray
    gemm_beats: int
    seconds: float
    cpu_seconds: float
    process_seconds: float
    build_seconds: float
    model: Path


def load_words(config, contents) -> list[int]:
    """The ``load`` beats that write ``contents`` (``program``, ``weights``, ``params`` and,
    with a table memory, ``tables``: lists of words) into a core of ``config``, then a
    ``RESTART``, as packed integers."""
    layout = config.load_layout
    beats = [layout.const(beat).as_value().value
             for name in ("program", "weights", "params", "tables")
             for address, word in enumerate(contents.get(name) or [])
             for beat in config.load_beats(getattr(NetworkCore.Memory, name.upper()),
                                           address, word)]
    return beats + [layout.const({"memory": NetworkCore.Memory.RESTART}).as_value().value]


def _hex_words(words) -> str:
    return "".join(f"{word:x}\n" for word in words)


def _hex_slots(slots: np.ndarray) -> str:
    """Rows of 16-bit slots as hex words, lane 0 least significant."""
    rows = (np.asarray(slots, dtype=np.int64).reshape(-1, slots.shape[-1])
            & ((1 << STORAGE_BITS) - 1))[:, ::-1].astype(">u2")
    digits = rows.tobytes().hex()
    step = 4 * rows.shape[1]
    return "".join(digits[start:start + step] + "\n" for start in range(0, len(digits), step))


def _read_slots(path: Path, count: int, width: int) -> np.ndarray:
    lines = [line for line in path.read_text().split() if not line.startswith("//")][:count]
    data = bytes.fromhex("".join(line.rjust(4 * width, "0") for line in lines))
    return np.frombuffer(data, dtype=">u2").reshape(count, width)[:, ::-1].astype(np.int64)


def build_network(config, *, capacity=CAPACITY) -> tuple[Path, float]:
    """The compiled bench of ``config`` from the cache, built first if absent; returns
    its folder (the program is ``folder / TOPLEVEL``) and the seconds spent building."""
    # Without source locations, so an edit of the Python elsewhere keeps the cache key.
    text = verilog.convert(NetworkBench(config, capacity=capacity), name=BENCH,
                           emit_src=False)
    sources = {f"{BENCH}.v": text, "olmac_memories.v": _MEMORIES, f"{TOPLEVEL}.v": _TOP,
               "main.cpp": _MAIN}

    def build(folder, paths):
        build_executable(paths, TOPLEVEL, folder, build_args=BUILD_ARGS, make_args=MAKE_ARGS)
    return cached_model(sources, TOPLEVEL, build, build_args=(*BUILD_ARGS, *MAKE_ARGS))


def _simulate(program: Path, folder: Path, plusargs, progress) -> dict:
    """Run the bench's ``program`` in ``folder``, calling ``progress`` (if not ``None``)
    with the words captured at each progress line; returns its summary, or raises
    ``RuntimeError`` with the output's tail if it ends without one."""
    log = folder / "network.log"
    lines = []
    with (open(log, "w") as errors,
          subprocess.Popen([program, *plusargs], cwd=folder, stdout=subprocess.PIPE,
                           stderr=errors, text=True) as process):
        for line in process.stdout:
            if not line.startswith("progress "):
                lines.append(line)
            elif progress is not None:
                progress(int(line.split()[1]))
    status = process.returncode
    if status == 0 and lines and lines[-1].startswith("{"):
        return json.loads(lines[-1])
    tail = ("".join(lines) + log.read_text())[-3000:]
    raise RuntimeError(f"the network simulation failed (exit status {status}):\n{tail}")


def run_network(config, contents, inputs: np.ndarray, *, output_words: int,
                stall_sixteenths: int = 0, seed: int = 1, timeout_cycles: int,
                progress=None) -> NetworkRun:
    """Simulate a core of ``config`` loaded with ``contents`` on ``inputs`` (``N ×
    input_words × width`` 16-bit slots) until it has stored ``N·output_words`` words.

    ``progress``, if given, is called now and then with the number of images finished (the
    simulator reports every :data:`PROGRESS_CYCLES` cycles, not every cycle).

    Raises
    ------
    TypeError
        If ``stall_sixteenths`` or ``seed`` is out of range.
    RuntimeError
        If the run fails, does not finish within ``timeout_cycles`` or the MAC array flags
        a fault.
    """
    check_int("stall_sixteenths", stall_sixteenths, STALL_SIXTEENTHS)
    check_int("seed", seed, (1, 0xFFFF))
    inputs = np.asarray(inputs)
    images, width = len(inputs), config.width
    input_count = inputs.shape[0] * inputs.shape[1]
    output_count = images * output_words
    needed = max(input_count, output_count)
    capacity = CAPACITY if needed <= CAPACITY else 1 << ceil_log2(needed)
    model, build_seconds = build_network(config, capacity=capacity)
    loads = load_words(config, contents)
    with tempfile.TemporaryDirectory(prefix="olmac-network-") as folder:
        folder = Path(folder)
        (folder / FILES["loads"]).write_text(_hex_words(loads))
        (folder / FILES["images"]).write_text(_hex_slots(inputs))
        started = time.monotonic()
        summary = _simulate(
            model / TOPLEVEL, folder,
            [f"+loads={len(loads)}", f"+inputs={input_count}", f"+outputs={output_count}",
             f"+stall={stall_sixteenths}", f"+seed={seed}", f"+timeout={timeout_cycles}",
             f"+progress={PROGRESS_CYCLES}"],
            None if progress is None else lambda words: progress(words // output_words))
        process_seconds = time.monotonic() - started
        if not summary["done"]:
            raise RuntimeError(f"the network simulation was not done after {timeout_cycles} "
                               f"cycles")
        # The compiler's beats keep §6's outlier rules; a fault means the core broke them.
        if summary["fault"]:
            raise RuntimeError("the MAC array flagged a beat that breaks the outlier rules")
        slots = _read_slots(folder / FILES["results"], output_count, width)
        op_cycles, op_beats = (
            np.array([int(line, 16) for line in (folder / FILES[name]).read_text().split()
                      if not line.startswith("//")][:config.program_depth])
            for name in ("op_cycles", "op_beats"))
    return NetworkRun(slots.reshape(images, output_words, width), summary["cycles"],
                      op_cycles, op_beats, summary["gemm_beats"], summary["seconds"],
                      summary["cpu_seconds"], process_seconds, build_seconds, model)
