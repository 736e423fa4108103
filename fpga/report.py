"""Reports of one place-and-routed build: resources from Yosys ``stat`` and nextpnr, fmax and
the critical path from nextpnr's JSON report (``nextpnr-* --report report.json``).

nextpnr's report has three keys: ``utilization`` (``{bel type: {"used", "available"}}``),
``fmax`` (``{clock net: {"achieved", "constraint"}}`` in MHz) and ``critical_paths`` (one
per pair of clock edges, each a list of ``clk-to-q``/``logic``/``routing``/``setup`` steps
with their delay in ns, the cells and ports they join and, for routing steps, the HDL
source lines of the net).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .synth import _FAMILIES, SynthResult

__all__ = ["Use", "ClockReport", "CriticalPath", "BuildReport", "read_yosys_stat",
           "read_nextpnr_report", "read_build_report", "markdown_table"]

#: The nextpnr bel types each count reads, per family. An iCE40 logic cell is one LUT4
#: with its flip-flop and carry; an ECP5 TRELLIS_COMB is one LUT4 of a slice.
_BELS = {
    "ice40": {"logic": "ICESTORM_LC", "dsps": "ICESTORM_DSP", "brams": "ICESTORM_RAM"},
    "ecp5": {"logic": "TRELLIS_COMB", "dsps": "MULT18X18D", "brams": "DP16KD"},
}

#: Prefix nextpnr-ecp5 gives a clock net it promoted to a global buffer.
_GLOBAL_PREFIX = "$glbnet$"
#: nextpnr-ice40 lists the constant-zero net it routes on a global buffer (the clock input
#: of unused DSP and RAM ports) among the clocks: nothing toggles on it, so it is no clock.
_CONSTANT_NET = "$PACKER_GND_NET"


@dataclass(frozen=True)
class Use:
    """``used`` of ``available`` sites of one kind."""
    used: int
    available: int

    @property
    def fraction(self):
        return self.used / self.available if self.available else 0.0

    def __str__(self):
        return f"{self.used}/{self.available} ({self.fraction:.0%})"


@dataclass(frozen=True)
class ClockReport:
    """The frequency one clock reached, against the frequency it was constrained to."""
    name: str
    achieved_mhz: float
    constraint_mhz: float

    @property
    def met(self):
        return self.achieved_mhz >= self.constraint_mhz


@dataclass(frozen=True)
class CriticalPath:
    """The slowest register-to-register path of a clock, split into cell and wire delay.

    ``logic_steps`` counts the cells the path passes through (a LUT, one step of a carry
    chain, a DSP or block-RAM output);
    ``sources`` are the HDL lines (``file:line``) of the nets along it, outside the
    toolchain's own cell libraries, in path order.
    """
    clock: str
    delay_ns: float
    logic_ns: float
    routing_ns: float
    logic_steps: int
    start: str
    end: str
    sources: tuple[str, ...]

    def describe(self):
        """One line: where the path runs, its delay and how much of it is wire."""
        where = ", ".join(self.sources[:3]) or "no HDL source recorded"
        return (f"{self.start} → {self.end}: {self.delay_ns:.2f} ns = {self.logic_ns:.2f} logic "
                f"({self.logic_steps} steps) + {self.routing_ns:.2f} routing; {where}")


@dataclass(frozen=True)
class BuildReport:
    """Resources and timing of one build.

    ``luts``, ``flip_flops`` and ``carries`` are Yosys's mapped cell counts (before packing).
    ``logic``, ``dsps`` and ``brams`` are nextpnr's placed sites against the device's: iCE40
    logic cells (a LUT4, its flip-flop and carry) or ECP5 LUT4 sites. ``utilization`` holds
    every site type nextpnr reports that the design uses.
    """
    family: str
    device: str
    luts: int
    flip_flops: int
    carries: int
    logic: Use
    dsps: Use
    brams: Use
    clocks: tuple[ClockReport, ...]
    critical_path: CriticalPath | None = None
    cells: dict[str, int] = field(default_factory=dict)
    utilization: dict[str, Use] = field(default_factory=dict)

    @property
    def fmax_mhz(self):
        """The lowest frequency any clock reached (the design's fmax), in MHz."""
        return min(clock.achieved_mhz for clock in self.clocks)

    @property
    def timing_met(self):
        """Every clock reached the frequency it was constrained to."""
        return all(clock.met for clock in self.clocks)

    def to_dict(self):
        """Plain data for JSON, with ``fmax_mhz`` added."""
        return {**asdict(self), "fmax_mhz": self.fmax_mhz}

    @classmethod
    def from_dict(cls, values):
        """The inverse of :meth:`to_dict`."""
        values = dict(values)
        values.pop("fmax_mhz", None)
        path = values.get("critical_path")
        return cls(
            **{**values,
               "logic": Use(**values["logic"]), "dsps": Use(**values["dsps"]),
               "brams": Use(**values["brams"]),
               "clocks": tuple(ClockReport(**clock) for clock in values["clocks"]),
               "critical_path": None if path is None else CriticalPath(
                   **{**path, "sources": tuple(path["sources"])}),
               "utilization": {name: Use(**use)
                               for name, use in values.get("utilization", {}).items()}})

    def markdown(self):
        """A two-column markdown table of this report."""
        rows = [("device", self.device), ("LUT4 (yosys)", self.luts),
                ("flip-flops (yosys)", self.flip_flops), ("carry cells (yosys)", self.carries),
                ("logic sites (nextpnr)", self.logic), ("DSP", self.dsps),
                ("block RAM", self.brams)]
        rows += [(f"fmax {clock.name}",
                  f"{clock.achieved_mhz:.1f} MHz (constraint {clock.constraint_mhz:.1f} MHz, "
                  f"{'met' if clock.met else 'missed'})") for clock in self.clocks]
        if self.critical_path is not None:
            rows.append(("critical path", self.critical_path.describe()))
        return "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |"
                                                  for name, value in rows)]) + "\n"

    def write(self, directory, stem="report"):
        """Write ``<stem>.json`` and ``<stem>.md`` into ``directory``; return both paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path = directory / f"{stem}.json", directory / f"{stem}.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        markdown_path.write_text(self.markdown())
        return json_path, markdown_path


def _family(family):
    if family not in _BELS:
        raise ValueError(f"Family must be one of {', '.join(map(repr, _BELS))}, "
                         f"not {family!r}")
    return family


def read_yosys_stat(stat, *, family):
    """Cell counts from Yosys's ``stat -json`` output (a path, or the parsed JSON).

    Raises
    ------
    ValueError
        If ``family`` is not ``"ice40"`` or ``"ecp5"``, or ``stat`` has no ``design`` key.
    """
    spec = _FAMILIES[_family(family)]
    if not isinstance(stat, dict):
        stat = json.loads(Path(stat).read_text())
    if "design" not in stat:
        raise ValueError("Yosys stat JSON has no 'design' key")
    # As in fpga.synth: "design" sums the whole hierarchy, and lists submodule instances
    # and flatten's $scopeinfo cells, which are no hardware.
    modules = {module.removeprefix("\\") for module in stat.get("modules", {})}
    cells = {cell: count for cell, count in stat["design"]["num_cells_by_type"].items()
             if cell != "$scopeinfo" and cell not in modules}
    return SynthResult(
        family=family, cells=cells, luts=cells.get(spec.lut, 0),
        flip_flops=sum(count for cell, count in cells.items()
                       if cell.startswith(spec.flip_flop_prefix)),
        carries=cells.get(spec.carry, 0), dsps=cells.get(spec.dsp, 0),
        brams=cells.get(spec.bram, 0))


def _clock_name(name):
    return name.removeprefix(_GLOBAL_PREFIX)


def _edge_clock(edge):
    # "posedge $glbnet$cd_sync.clk" -> "cd_sync.clk"; "<async>" -> None
    parts = edge.split(" ", 1)
    return _clock_name(parts[1]) if len(parts) == 2 else None


def _is_toolchain_source(source):
    # Yosys's cell libraries live under its share directory ("/share/ice40/cells_map.v").
    return source.startswith("/share/") or "/share/yosys/" in source


def _relative(source):
    try:
        return str(Path(source).resolve().relative_to(Path.cwd()))
    except ValueError:
        return source


def _critical_path(paths, clock):
    """The register-to-register path of ``clock`` among nextpnr's ``critical_paths``."""
    for path in paths:
        if _edge_clock(path.get("from", "")) == clock == _edge_clock(path.get("to", "")):
            break
    else:
        return None
    steps = path["path"]
    logic = sum(step["delay"] for step in steps if step["type"] != "routing")
    routing = sum(step["delay"] for step in steps if step["type"] == "routing")
    sources = []
    for step in steps:
        for source in step.get("sources", ()):
            source = _relative(source)
            if not _is_toolchain_source(source) and source not in sources:
                sources.append(source)
    return CriticalPath(
        clock=clock, delay_ns=logic + routing, logic_ns=logic, routing_ns=routing,
        logic_steps=sum(1 for step in steps if step["type"] == "logic"),
        start=steps[0]["from"]["cell"], end=steps[-1]["to"]["cell"], sources=tuple(sources))


def read_nextpnr_report(report):
    """Utilization, clocks and the critical path of the slowest clock from nextpnr's JSON
    report (a path, or the parsed JSON).

    Returns
    -------
    (dict of str to Use, tuple of ClockReport, CriticalPath or None)

    Raises
    ------
    ValueError
        If the report has no ``utilization`` or no ``fmax`` key, or no clock (a design
        without registers has no fmax).
    """
    if not isinstance(report, dict):
        report = json.loads(Path(report).read_text())
    for key in ("utilization", "fmax"):
        if key not in report:
            raise ValueError(f"nextpnr report has no {key!r} key")
    utilization = {bel: Use(used=use["used"], available=use["available"])
                   for bel, use in sorted(report["utilization"].items())}
    clocks = tuple(ClockReport(name=_clock_name(name), achieved_mhz=timing["achieved"],
                               constraint_mhz=timing["constraint"])
                   for name, timing in sorted(report["fmax"].items())
                   if not name.startswith(_CONSTANT_NET))
    if not clocks:
        raise ValueError("nextpnr report has no clock in 'fmax'")
    slowest = min(clocks, key=lambda clock: clock.achieved_mhz)
    return utilization, clocks, _critical_path(report.get("critical_paths", ()), slowest.name)


def read_build_report(nextpnr_report, yosys_stat, *, family, device):
    """A :class:`BuildReport` from nextpnr's JSON report and Yosys's ``stat -json`` output.

    Raises
    ------
    ValueError
        If ``family`` is not ``"ice40"`` or ``"ecp5"``, or either file lacks what it must
        hold (see :func:`read_nextpnr_report` and :func:`read_yosys_stat`).
    """
    synth = read_yosys_stat(yosys_stat, family=family)
    utilization, clocks, path = read_nextpnr_report(nextpnr_report)
    missing = Use(0, 0)
    bels = _BELS[family]
    return BuildReport(
        family=family, device=device, luts=synth.luts, flip_flops=synth.flip_flops,
        carries=synth.carries, logic=utilization.get(bels["logic"], missing),
        dsps=utilization.get(bels["dsps"], missing),
        brams=utilization.get(bels["brams"], missing), clocks=clocks, critical_path=path,
        cells=dict(synth.cells),
        utilization={bel: use for bel, use in utilization.items() if use.used})


def markdown_table(header, rows):
    """A markdown table: ``header`` is a sequence of column titles (a title ending in
    ``":"`` right-aligns its column, the colon dropped), ``rows`` a sequence of cell
    sequences."""
    titles = [title.removesuffix(":") for title in header]
    rule = ["---:" if title.endswith(":") else "---" for title in header]
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
