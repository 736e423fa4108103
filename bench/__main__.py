"""``make bench``: figures, not assertions.

1. Simulated cycles of M×K×N GEMMs on the RTL (cocotb + Verilator, no stalls injected)
   against the ideal M·K·N/(lanes·cols), and simulation speed in cycles/s.
2. iCE40 LUT4/FF per MAC from yosys ``synth_ice40`` for 2/3/4/8-bit arrays.
"""

import argparse
import time
from pathlib import Path

import numpy as np

import golden
from fpga.synth import synthesize
from hw import MacArray
from sim.job import EngineConfig, GemmCase, Job
from sim.runner import run_job

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
        config = EngineConfig(lanes=lanes, cols=cols, act_bits=bits, weight_bits=bits,
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


def main():
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--skip-synthesis", action="store_true")
    args = parser.parse_args()
    gemm_cycles()
    if not args.skip_synthesis:
        synthesis(lanes=16, cols=4)


if __name__ == "__main__":
    main()
