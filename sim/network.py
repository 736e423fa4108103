"""Whole networks on Verilator: a :class:`NetworkBench` top holds the network core with every
input image preloaded in a ROM and a RAM that captures the logits, so the simulation runs
with Python out of the per-cycle loop: cocotb waits on one trigger (``done``) and reads the
results at the end (docs/network.md §16).

Random backpressure comes from a hardware LFSR that drops ``valid`` on the input side and
``ready`` on the output side; it is seeded, so a run is reproducible.
"""

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from amaranth.back import verilog
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from cocotb_tools.runner import get_results

from olmac.hw.network import STORAGE_BITS, NetworkCore
from olmac.spec import STALL_SIXTEENTHS, check_int
from .runner import LeanVerilator, build_verilator

__all__ = ["NetworkBench", "NetworkRun", "build_network", "run_network"]

TOPLEVEL = "olmac_network"
RESULTS_ENV = "OLMAC_NETWORK_RESULTS"
#: The only signals the testbench touches, made visible to VPI by a Verilator control file.
_PUBLIC_PORTS = ("clk", "rst", "done", "captured", "cycles", "gemm_beats", "read_address",
                 "read_word")


class _Lfsr(wiring.Component):
    """A 16-bit Galois LFSR (x^16 + x^14 + x^13 + x^11 + 1), one step per cycle."""

    value: Out(16)

    def __init__(self, seed):
        self._seed = seed
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        state = Signal(16, init=self._seed)
        m.d.sync += state.eq(Mux(state[0], (state >> 1) ^ 0xB400, state >> 1))
        m.d.comb += self.value.eq(state)
        return m


class NetworkBench(wiring.Component):
    """A :class:`NetworkCore` between an input ROM and an output RAM (simulation top).

    Parameters
    ----------
    core : NetworkCore
        The core, its memories loaded.
    images : ndarray
        ``N × input_words × width`` 16-bit slots, streamed in order.
    output_words : int
        Words the core stores per image.
    stall_sixteenths : int
        Chance, in sixteenths (0..15), that the ROM withholds ``valid`` and the RAM
        withholds ``ready`` on a cycle.
    seed : int
        LFSR seed, 1..65535.

    Raises
    ------
    TypeError
        If ``core`` is not a :class:`NetworkCore`, or ``stall_sixteenths`` or ``seed`` is
        out of range.
    ValueError
        If ``images`` is not three-dimensional.

    Members
    -------
    done : Out(1)
        All ``N·output_words`` words have been captured.
    captured : Out(32)
        Words captured so far (for a progress bar).
    cycles : Out(32)
        Cycles from reset to ``done``.
    gemm_beats : Out(32)
        Beats the MAC array took.
    read_address : In(range(N·output_words))
    read_word : Out(width·16)
        The captured word at ``read_address``, one cycle later.
    """

    def __init__(self, core, images, output_words, *, stall_sixteenths=0, seed=1):
        images = np.asarray(images, dtype=np.int64)
        if images.ndim != 3:
            raise ValueError(f"images must be N × words × width, not {images.shape}")
        check_int("stall_sixteenths", stall_sixteenths, STALL_SIXTEENTHS)
        if not 1 <= seed <= 0xFFFF:
            raise TypeError(f"seed must be an integer in 1..65535, not {seed!r}")
        if not isinstance(core, NetworkCore):
            raise TypeError(f"core must be a NetworkCore, not {core!r}")
        self._core = core
        self._width = core.width
        masked = images & ((1 << STORAGE_BITS) - 1)
        self._input_words = [sum(int(v) << (STORAGE_BITS * lane) for lane, v in enumerate(word))
                             for image in masked for word in image]
        self._output_count = len(images) * output_words
        self._stall = stall_sixteenths
        self._seed = seed
        super().__init__({
            "done": Out(1),
            "captured": Out(32),
            "cycles": Out(32),
            "gemm_beats": Out(32),
            "read_address": In(range(max(self._output_count, 2))),
            "read_word": Out(self._width * STORAGE_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self._core
        m.submodules.lfsr = lfsr = _Lfsr(self._seed)
        width = self._width * STORAGE_BITS
        m.submodules.images = images = Memory(shape=width, depth=len(self._input_words),
                                              init=self._input_words)
        m.submodules.results = results = Memory(shape=width, depth=max(self._output_count, 2),
                                                init=[])
        image_read = images.read_port()
        result_write = results.write_port()
        result_read = results.read_port()

        # The ROM streams its words; the next one is read while the current one waits.
        sent = Signal(range(len(self._input_words) + 1))
        pending = Signal()
        offer = lfsr.value[:4] >= self._stall
        take = ~pending | (core.inputs.valid & core.inputs.ready)
        m.d.comb += [image_read.addr.eq(sent), image_read.en.eq(take)]
        with m.If(take):
            m.d.sync += pending.eq(sent != len(self._input_words))
            with m.If(sent != len(self._input_words)):
                m.d.sync += sent.eq(sent + 1)
        m.d.comb += [
            core.inputs.valid.eq(pending & offer),
            core.inputs.payload.eq(image_read.data),
        ]

        captured = Signal(range(self._output_count + 1))
        m.d.comb += core.outputs.ready.eq(lfsr.value[4:8] >= self._stall)
        accepted = core.outputs.valid & core.outputs.ready
        m.d.comb += [
            result_write.addr.eq(captured),
            result_write.data.eq(core.outputs.payload.word),
            result_write.en.eq(accepted),
        ]
        with m.If(accepted):
            m.d.sync += captured.eq(captured + 1)

        done = captured == self._output_count
        with m.If(~done):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        m.d.comb += [
            self.done.eq(done),
            self.captured.eq(captured),
            self.gemm_beats.eq(core.gemm_beats),
            result_read.addr.eq(self.read_address),
            self.read_word.eq(result_read.data),
        ]
        return m


@dataclass
class NetworkRun:
    """What one simulation returns: the captured output words (``N × output_words ×
    width`` slots), total cycles, array beats, and wall-clock seconds of the simulation
    and of the Verilator build."""
    slots: np.ndarray
    cycles: int
    gemm_beats: int
    seconds: float
    build_seconds: float


def build_network(bench: NetworkBench, build_dir: Path) -> tuple[Path, float]:
    """Write ``bench``'s Verilog and compile it with Verilator (only when the Verilog
    changed); returns the build folder and the seconds spent."""
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{TOPLEVEL}.v"
    text = verilog.convert(bench, name=TOPLEVEL)
    started = time.monotonic()
    changed = not source.exists() or source.read_text() != text
    if changed:
        source.write_text(text)
    build_verilator(source, TOPLEVEL, build_dir, always=changed, ports=_PUBLIC_PORTS)
    return build_dir, time.monotonic() - started


def _watch(path: Path, progress, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        try:
            progress(int(path.read_text() or 0))
        except (FileNotFoundError, ValueError):
            pass


def run_network(bench: NetworkBench, build_dir: Path, *, images: int, output_words: int,
                width: int, timeout_cycles: int, progress=None) -> NetworkRun:
    """Build ``bench`` and simulate it until ``done``; raises ``RuntimeError`` if the run
    fails or does not finish within ``timeout_cycles``.

    ``progress``, if given, is called now and then with the number of images finished (the
    testbench wakes every few thousand cycles to report it, not every cycle)."""
    build_dir, build_seconds = build_network(bench, build_dir)
    results_path = build_dir / "network_results.npz"
    results_path.unlink(missing_ok=True)
    results_xml = build_dir / "network.results.xml"
    results_xml.unlink(missing_ok=True)
    log_file = build_dir / "network.log"
    progress_path = build_dir / "network.progress"
    progress_path.unlink(missing_ok=True)
    job = {"results": str(results_path), "progress": str(progress_path),
           "output_words": output_words, "output_count": images * output_words,
           "width": width, "timeout_cycles": timeout_cycles}
    stop = threading.Event()
    if progress is not None:
        threading.Thread(target=_watch, args=(progress_path, progress, stop), daemon=True).start()
    started = time.monotonic()
    try:
        LeanVerilator().test(
            test_module="olmac.sim.network_tb", hdl_toplevel=TOPLEVEL, hdl_toplevel_lang="verilog",
            build_dir=build_dir, test_dir=build_dir, testcase="run_network",
            extra_env={RESULTS_ENV: json.dumps(job)},
            log_file=log_file, results_xml=str(results_xml))
    except SystemExit:
        pass  # under pytest the runner exits on a failed test; the results file tells
    finally:
        stop.set()
    seconds = time.monotonic() - started
    tests, failures = get_results(results_xml) if results_xml.exists() else (0, 0)
    if failures or tests != 1 or not results_path.exists():
        raise RuntimeError(f"the network simulation failed; see {log_file}")
    with np.load(results_path) as saved:
        slots = saved["slots"].reshape(images, output_words, width)
        cycles, beats = int(saved["cycles"]), int(saved["gemm_beats"])
    return NetworkRun(slots, cycles, beats, seconds, build_seconds)
