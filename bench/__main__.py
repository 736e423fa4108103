"""``make bench``: figures, not assertions.

1. Simulated cycles of M×K×N GEMMs on the RTL (cocotb + Verilator, no stalls injected)
   against the ideal M·K·N/(lanes·cols), and simulation speed in cycles/s.
2. Cycles against the outlier ratio and the number of outlier lanes (§6).
3. iCE40 LUT4/FF per MAC from yosys ``synth_ice40`` for 2/3/4/8-bit arrays, and the cost
   of outlier lanes.
4. Value-aware quantization: effective bits and digits accuracy (bench/value_aware.py).
5. Codebook decoder cost; MMSE / multi-tensor weight MSE and SYQ / MMSE digits accuracy
   (bench/codebooks.py).
6. Whole networks on the RTL: cycles per inference, MAC utilization, simulated images/s
   (bench/network_rtl.py).
6b. Run-time activation outliers and packed activations: the demo CNN at 4/4 and 3/3,
   with and without activation outliers, accuracy, cycles, outlier cycle overhead and
   activation memory bits (bench/act_outliers.py).
6c. Weight schemes and per-layer widths on the RTL: SYQ, multi-tensor, mixed layers, 8/8
   first and last layers on a 4/4 array (bench/network_schemes.py).
6a. The layers people write: models of olmac.models.ordinary at 8/8, accuracy and RTL
   cycles (bench/layers.py).
7. Whole-network accuracy on digits: float, plain 2/3/4-bit, + outliers, highway on/off,
   SYQ ternary (bench/networks.py).
7a. The accuracy table: post-training and trained integer programs, mean ± std over five
   seeds, for the residual CNN and the MLP (bench/accuracy.py; trains each row once, hours
   on two busy cores, then cached under build/models/accuracy).
7b. The budget's choice against uniform widths: --budget-bits 2.5 (value-aware, 3-bit
   activations, post-training) on the CNN and the MLP, seeds 0–2, beside the knapsack alone
   and the best uniform allocation within the budget (bench/budget.py; minutes a seed).
8. The character LSTM: validation perplexity with and without the cell-state highway, seeds 0–2
   (olmac/models/lstm.py; trains on first use, about 10 minutes idle, then cached).
9. FPGA resources and fmax of BRAM-fed arrays on iCE40 and ECP5, the issue's targets with
   nextpnr seeds 1–3 (fpga/bench.py; about 45 minutes: one nextpnr at a time).
10. The network board with the demo CNN on the ULX3S-85F (width 16 and 8) and the
   iCEBreaker (width 4 and 2), and with cnn28 (28×28 digits, 108 688 weights) on the
   ULX3S-85F: resources, fmax, cycles, images/s and GOPS at fmax (bench/boards.py; hours:
   the UP5K builds route slowly, the ECP5's place for long).
"""

import argparse
import importlib
import time
from pathlib import Path

import numpy as np

from olmac import golden
from olmac.fpga.synth import synthesize
from olmac.hw import GemmEngine, MacArray
from olmac.hw.codebook import CodebookDecoder
from olmac.sim.job import GemmCase, Job
from olmac.sim.runner import run_job

BUILD_ROOT = Path("build") / "bench"

GEMMS = [
    # (lanes, cols, bits, M, K, N)
    (16, 8, 4, 8, 256, 16),
    (16, 8, 4, 4, 1024, 32),
    (16, 8, 4, 16, 64, 16),
    (16, 8, 4, 8, 300, 20),
    (8, 8, 8, 8, 256, 16),
    (4, 4, 2, 8, 512, 8),
]


def gemm_cycles():
    print("## GEMM cycles on the RTL (Verilator, no stalls), checked bit-exact against golden")
    print()
    print("| array | format | M×K×N | beats | cycles | ideal M·K·N/(L·C) | utilization "
          "| sim cycles/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for lanes, cols, bits, m, k, n in GEMMS:
        low, high = golden.int_range(bits, True)
        case = GemmCase(rng.integers(low, high + 1, (m, k)), rng.integers(low, high + 1, (k, n)))
        config = GemmEngine.Config(lanes=lanes, cols=cols, act_bits=bits, weight_bits=bits,
                                   act_signed=True, max_k=k)
        stats = run_job(Job(config, [case], label="bench"), BUILD_ROOT).stats
        ideal = m * k * n / (lanes * cols)
        print(f"| {lanes}×{cols} | s{bits}×s{bits} | {m}×{k}×{n} | {stats['beats']} "
              f"| {stats['cycles']} | {ideal:.0f} | {ideal / stats['cycles']:.1%} "
              f"| {stats['cycles_per_second']:,.0f} |", flush=True)
    print()
    print("Cycles run from the first input beat to the last output vector, so they include "
          "the pipeline fill; a K or N that is not a multiple of the array pads tiles.")
    print()


def synthesis(lanes, cols):
    print(f"## iCE40 resources per MAC (yosys synth_ice40, {lanes} lanes × {cols} columns, "
          f"max_k 1024, signed activations)")
    print()
    print("| width | LUT4 | LUT4/MAC | LUT4/MAC with booth | FF | FF/MAC | SB_CARRY | RAM40 "
          "| yosys s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    macs = lanes * cols
    for bits in (2, 3, 4, 8):
        make = lambda: MacArray(lanes=lanes, cols=cols, act_bits=bits, weight_bits=bits,
                                act_signed=True, max_k=1024)
        started = time.perf_counter()
        plain = synthesize(make(), family="ice40", name="mac_array")
        booth = synthesize(make(), family="ice40", name="mac_array", booth=True)
        elapsed = time.perf_counter() - started
        print(f"| {bits}-bit | {plain.luts} | {plain.luts / macs:.1f} | "
              f"{booth.luts / macs:.1f} | {plain.flip_flops} | {plain.flip_flops / macs:.1f} "
              f"| {plain.carries} | {plain.brams} | {elapsed:.0f} |", flush=True)
    print()
    print("Per-MAC figures include each lane's share of the registered adder tree, the "
          "accumulators, the output queue and the stream control.")
    print()


def _outlier_case(rng, m, k, n, ratio, placement):
    acts = rng.integers(-8, 8, (m, k))
    weights = rng.integers(-8, 8, (k, n))
    count = int(round(ratio * acts.size))
    positions = (rng.choice(acts.size, count, replace=False) if placement == "uniform"
                 else np.arange(count))
    acts.flat[positions] = rng.choice([-1, 1], count) * rng.integers(8, 1 << 15, count)
    return GemmCase(acts, weights)


def outlier_cycles(lanes=16, cols=8, m=8, k=512, n=16):
    print(f"## Cycles against activation-outlier ratio ({m}×{k}×{n} s4 GEMM on "
          f"{lanes}×{cols}, 16-bit activation outliers, no stalls injected)")
    print()
    ratios = (0.0, 0.01, 0.03, 0.1)
    placements = ("uniform", "clustered")
    print("| outlier lanes | 0 % | " + " | ".join(
        f"{ratio:.0%} {placement}" for placement in placements for ratio in ratios[1:]) + " |")
    print("|---:|" + "---:|" * (2 * len(ratios) - 1))
    for outlier_lanes in (1, 2, 3, 4):
        config = GemmEngine.Config(lanes=lanes, cols=cols, act_bits=4, weight_bits=4,
                                   act_signed=True, max_k=k, act_outlier_lanes=outlier_lanes)
        cycles = lambda ratio, placement: run_job(
            Job(config, [_outlier_case(np.random.default_rng(1), m, k, n, ratio, placement)],
                label="bench_outliers"), BUILD_ROOT).stats["cycles"]
        baseline = cycles(0.0, "uniform")
        cells = [f"{cycles(ratio, placement)}" for placement in placements
                 for ratio in ratios[1:]]
        cells = [f"{cell} (+{int(cell) / baseline - 1:.1%})" for cell in cells]
        print(f"| {outlier_lanes} | {baseline} | " + " | ".join(cells) + " |", flush=True)
    print()
    print("Cells: cycles, and the extra cycles over the same engine with no outliers (whose "
          "count includes the pipeline fill). Uniform outliers are spread at random; "
          "clustered ones fill the first rows of A, so every beat there is all outliers. "
          "Every run is checked bit-exact against golden.")
    print()


def outlier_lane_cost(lanes=16, cols=4):
    print(f"## iCE40 cost of outlier lanes (4-bit {lanes}×{cols} array, 16-bit outliers)")
    print()
    print("| act-outlier lanes | weight-outlier lanes | LUT4 | FF | extra LUT4 over dense |")
    print("|---:|---:|---:|---:|---:|")
    dense = None
    for act_lanes, weight_lanes in ((0, 0), (1, 0), (0, 1), (1, 1), (2, 2)):
        result = synthesize(MacArray(lanes=lanes, cols=cols, act_bits=4, weight_bits=4,
                                     max_k=1024, act_outlier_lanes=act_lanes,
                                     weight_outlier_lanes=weight_lanes),
                            family="ice40", name="mac_array", booth=True)
        dense = dense if dense is not None else result.luts
        print(f"| {act_lanes} | {weight_lanes} | {result.luts} | {result.flip_flops} "
              f"| {result.luts - dense} |", flush=True)
    print()


def decoder_cost(lanes=8, cols=8, entry_bits=7):
    print(f"## iCE40 cost of the codebook decoder ({lanes}×{cols} tile, u{entry_bits} entries)")
    print()
    print("| codebook | granularity | subgroups | LUT4 | FF | RAM40 |")
    print("|---|---|---:|---:|---:|---:|")
    for name, idx_bits, zero, granularity, subgroups in (
            ("binary", 0, False, "layer", 4), ("ternary", 1, True, "layer", 4),
            ("ternary", 1, True, "row", 256), ("2-bit + zero", 2, True, "layer", 4),
            ("3-bit + zero", 3, True, "layer", 4)):
        result = synthesize(CodebookDecoder(lanes=lanes, cols=cols, idx_bits=idx_bits,
                                            zero=zero, entry_bits=entry_bits,
                                            subgroups=subgroups, granularity=granularity),
                            family="ice40", name="decoder")
        print(f"| {name} | {granularity} | {subgroups} | {result.luts} | {result.flip_flops} "
              f"| {result.brams} |", flush=True)
    print()


def _section(module: str, function: str):
    """The section that is ``<module>.<function>()`` (imported only when it runs)."""
    return lambda: getattr(importlib.import_module(module), function)()


def _report(module: str):
    """The section that is ``bench.<module>.report()``."""
    return _section(f"bench.{module}", "report")


def _accuracy():
    from bench import accuracy
    for model in ("cnn", "mlp"):
        accuracy.report(model)


def _budget():
    from bench import budget
    for model in ("cnn", "mlp"):
        budget.report(model)


#: Every section, in the order ``make bench`` prints them, and what runs it.
RUNNERS = {
    "gemm": gemm_cycles,
    "outliers": outlier_cycles,
    "synthesis": lambda: (synthesis(lanes=16, cols=4), outlier_lane_cost()),
    "value-aware": _report("value_aware"),
    "codebooks": lambda: (decoder_cost(), _report("codebooks")()),
    "network-rtl": _report("network_rtl"),
    "act-outliers": _report("act_outliers"),
    "network-schemes": _report("network_schemes"),
    "layers": _report("layers"),
    "networks": _section("bench.networks", "bench_section"),
    "accuracy": _accuracy,
    "budget": _budget,
    "lstm": _section("olmac.models.lstm", "bench_section"),
    "fpga": _section("olmac.fpga.bench", "section"),
    "boards": _report("boards"),
}
SECTIONS = tuple(RUNNERS)


def main():
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only these sections (repeatable)")
    args = parser.parse_args()
    sections = args.only or SECTIONS
    for section, run in RUNNERS.items():
        if section in sections:
            run()

if __name__ == "__main__":
    main()
