"""Slow tier: the generated Verilog on Verilator (cocotb) against the golden model.

Each configuration is built once and runs one job of several GEMMs back to back with
random valid/ready stalls on every stream; the testbench's in-order scoreboard compares
every output vector with golden (docs/semantics.md §2–§4) and fails on any mismatch.
"""

from pathlib import Path

import numpy as np
import pytest

from olmac import golden
from olmac.hw import GemmEngine
from olmac.sim.job import GemmCase, Job
from olmac.sim.runner import run_job

BUILD_ROOT = Path(__file__).resolve().parent.parent / "build" / "test-sim"

CONFIGS = [
    GemmEngine.Config(lanes=4, cols=1, act_bits=2, weight_bits=2, act_signed=True, max_k=1100),
    GemmEngine.Config(lanes=8, cols=4, act_bits=3, weight_bits=3, act_signed=False, max_k=1100),
    GemmEngine.Config(lanes=16, cols=16, act_bits=4, weight_bits=4, act_signed=True, max_k=1100),
    GemmEngine.Config(lanes=8, cols=16, act_bits=8, weight_bits=8, act_signed=True, max_k=1100),
    GemmEngine.Config(lanes=5, cols=3, act_bits=8, weight_bits=2, act_signed=False, max_k=1100),
    GemmEngine.Config(lanes=16, cols=8, act_bits=4, weight_bits=4, act_signed=False, max_k=1100,
                 out_bits=8, out_signed=False),
    GemmEngine.Config(lanes=4, cols=6, act_bits=4, weight_bits=3, act_signed=True, max_k=1100,
                 out_bits=16, out_signed=True),
    # the iCE40 timing configuration: split accumulators (an 18-bit one in halves of 9)
    GemmEngine.Config(lanes=8, cols=8, act_bits=4, weight_bits=4, act_signed=True, max_k=1100,
                 accumulator_stages=2),
]


def _requant_params(rng, config, n, acc_bound):
    """Per-channel parameters that map the accumulator range onto the output range, with
    some channels pushed to the extremes of §3 (shift 0 and 63, negative multipliers)."""
    multiplier = rng.integers(1 << 30, 1 << 31, size=n)
    shift = np.full(n, 31 + max(0, int(np.log2(acc_bound)) - config.out_bits + 2))
    bias_bound = min(acc_bound // 4, (1 << 31) - 1)
    bias = rng.integers(-bias_bound, bias_bound + 1, size=n)
    extremes = [(0, 1, 0), (63, -(1 << 31), -(1 << 31)), (40, -(1 << 30), 7)]
    for column, (s, m, b) in zip(range(n), extremes):
        shift[column], multiplier[column], bias[column] = s, m, b
    return bias, multiplier, shift


def _cases(config, rng):
    act_lo, act_hi = golden.int_range(config.act_bits, config.act_signed)
    w_lo, w_hi = golden.int_range(config.weight_bits, signed=True)
    lanes, cols = config.lanes, config.cols
    k_short, n_odd = 2 * lanes + 1, 2 * cols + 1
    full = lambda shape, value: np.full(shape, value, dtype=np.int64)
    alternating = lambda shape, low, high: np.where(np.indices(shape).sum(0) % 2, low, high)
    cases = [
        # corners: zeros, every product at its extreme over the longest reduction, signs
        (full((2, k_short), 0), full((k_short, n_odd), 0)),
        (full((1, config.max_k), act_lo), full((config.max_k, cols), w_lo)),
        (full((1, config.max_k), act_hi), full((config.max_k, cols), w_lo)),
        (full((1, config.max_k), act_hi), full((config.max_k, cols), w_hi)),
        (alternating((3, k_short), act_lo, act_hi), alternating((k_short, n_odd), w_hi, w_lo)),
        # K and N not multiples of the array; a reduction shorter than one beat
        (rng.integers(act_lo, act_hi + 1, (4, k_short)),
         rng.integers(w_lo, w_hi + 1, (k_short, n_odd))),
        (rng.integers(act_lo, act_hi + 1, (3, 1)), rng.integers(w_lo, w_hi + 1, (1, 1))),
        # a long random reduction
        (rng.integers(act_lo, act_hi + 1, (2, 1031)),
         rng.integers(w_lo, w_hi + 1, (1031, cols + 1))),
    ]
    result = []
    for acts, weights in cases:
        case = GemmCase(acts, weights)
        if config.out_bits is not None:
            acc_bound = acts.shape[1] * max(abs(act_lo), act_hi) * abs(w_lo)
            case.bias, case.multiplier, case.shift = _requant_params(
                rng, config, weights.shape[1], acc_bound)
            case.relu = bool(rng.integers(0, 2))
        result.append(case)
    return result


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: config.name)
def test_engine_bit_exact_under_backpressure(config):
    """Every output vector of every case equals golden under random stalls (the cocotb
    scoreboard asserts; run_job raises on any failure)."""
    rng = np.random.default_rng(abs(hash(config.name)) % (1 << 32))
    job = run_job(Job(config, _cases(config, rng), pause_probability=0.3, seed=7,
                      label="backpressure"), BUILD_ROOT, rebuild=True)
    assert job.stats["mismatches"] == 0
    assert len(job.results) == len(job.cases)


def test_scoreboard_catches_a_faulty_lane(tmp_path):
    """Fault injection: with one product inverted in the Verilog, the same job fails.
    (The check above is only worth something if it can fail.)"""
    config = GemmEngine.Config(lanes=4, cols=2, act_bits=4, weight_bits=4, act_signed=True,
                          max_k=16)
    rng = np.random.default_rng(5)
    case = GemmCase(rng.integers(-8, 8, (4, 16)), rng.integers(-8, 8, (16, 3)))

    def invert_one_product(verilog):
        assert "$signed(product_c0_l1)" in verilog
        return verilog.replace("$signed(product_c0_l1)", "$signed(~product_c0_l1)", 1)

    with pytest.raises(AssertionError, match=r"^faulty: \d+ mismatching vectors"):
        run_job(Job(config, [case], pause_probability=0.3, label="faulty"), tmp_path,
                transform=invert_one_product)


OUTLIER_CONFIGS = [
    GemmEngine.Config(lanes=16, cols=4, act_bits=4, weight_bits=4, act_signed=True, max_k=300,
                 act_outlier_lanes=1, weight_outlier_lanes=1, weight_outlier_slots=64),
    GemmEngine.Config(lanes=8, cols=8, act_bits=4, weight_bits=3, act_signed=False, max_k=300,
                 act_outlier_lanes=2, weight_outlier_lanes=2, weight_outlier_bits=8,
                 weight_outlier_slots=64, out_bits=4, out_signed=False, out_outlier_bits=16,
                 accumulator_stages=2),
    # the ECP5 timing configuration in small: outlier products in DSP stages, dense products
    # in two stages (a 3-bit weight: halves of 1 and 2 bits)
    GemmEngine.Config(lanes=8, cols=4, act_bits=4, weight_bits=3, act_signed=True, max_k=300,
                 act_outlier_lanes=2, weight_outlier_lanes=1, weight_outlier_slots=32,
                 multipliers="dsp", product_stages=2),
]


def _with_outliers(rng, config, acts, weights, ratio, placement):
    """Replace a ``ratio`` fraction of each operand by outliers: spread uniformly, packed
    into the first tiles (``clustered``), or all in lane 0 of every beat (``lane``)."""
    act_lo, act_hi = golden.int_range(config.act_outlier_bits, config.act_signed)
    w_lo, w_hi = golden.int_range(config.weight_outlier_bits, True)
    for tensor, low, high in ((acts, act_lo, act_hi), (weights, w_lo, w_hi)):
        count = int(round(ratio * tensor.size))
        if placement == "uniform":
            positions = rng.choice(tensor.size, count, replace=False)
        elif placement == "clustered":
            positions = np.arange(count)
        else:
            lane_zero = np.zeros(tensor.shape, bool)
            if tensor is acts:
                lane_zero[:, ::config.lanes] = True
            else:
                lane_zero[::config.lanes, :] = True
            positions = np.flatnonzero(lane_zero)[:count]
        tensor.flat[positions] = rng.integers(low, high + 1, size=len(positions))
    return acts, weights


@pytest.mark.parametrize("config", OUTLIER_CONFIGS, ids=lambda config: config.name)
def test_outlier_lanes_bit_exact_under_backpressure(config):
    """Activation and weight outliers together at ratios 0 to 100 %, uniform, clustered in
    the first tiles and all in one lane: every vector equals golden (the exact GEMM of the
    recombined tensors, §6; with output outliers, the dense and outlier parts of §7) under
    random stalls."""
    rng = np.random.default_rng(11)
    act_lo, act_hi = golden.int_range(config.act_bits, config.act_signed)
    w_lo, w_hi = golden.int_range(config.weight_bits, signed=True)
    cases = []
    for ratio, placement in ((0.0, "uniform"), (0.01, "uniform"), (0.03, "uniform"),
                             (0.1, "uniform"), (1.0, "uniform"), (0.1, "clustered"),
                             (0.3, "clustered"), (0.1, "lane")):
        acts = rng.integers(act_lo, act_hi + 1, (3, config.max_k))
        weights = rng.integers(w_lo, w_hi + 1, (config.max_k, config.cols + 3))
        case = GemmCase(*_with_outliers(rng, config, acts, weights, ratio, placement))
        if config.out_bits is not None:
            acc_bound = 1 << 30
            case.bias, case.multiplier, case.shift = _requant_params(
                rng, config, case.weights.shape[1], acc_bound)
            case.outlier_threshold = int(rng.integers(0, 16))
        cases.append(case)
    job = run_job(Job(config, cases, pause_probability=0.3, seed=3, label="outliers"),
                  BUILD_ROOT, rebuild=True)
    assert job.stats["mismatches"] == 0


def test_weight_planes_bit_exact_under_backpressure():
    """§8: 1-, 2- and 3-plane layers (2-bit planes, per-column shifts) through one engine,
    requantized; every vector equals golden's plane combination under random stalls."""
    config = GemmEngine.Config(lanes=8, cols=4, act_bits=4, weight_bits=2, act_signed=False,
                          max_k=3 * 200, plane_shift_bits=4, max_plane_shift=12, out_bits=8)
    rng = np.random.default_rng(17)
    cases = []
    for planes in (1, 2, 3, 3):
        acts = rng.integers(0, 16, (3, 200))
        weights = rng.integers(-2, 2, (planes, 200, 6))
        shifts = rng.integers(0, 7, (planes - 1, 6))
        case = GemmCase(acts, weights, plane_shifts=shifts)
        case.bias, case.multiplier, case.shift = _requant_params(rng, config, 6, 1 << 22)
        cases.append(case)
    job = run_job(Job(config, cases, pause_probability=0.3, seed=5, label="planes"),
                  BUILD_ROOT, rebuild=True)
    assert job.stats["mismatches"] == 0


@pytest.mark.parametrize("idx_bits,zero,granularity", [(1, True, "row"), (3, False, "layer"),
                                                       (2, True, "pixel")])
def test_codebook_engine_bit_exact_under_backpressure(idx_bits, zero, granularity):
    """SYQ codes → decoder → array → requantizer on Verilator equal golden's
    decode-then-multiply for several layers, each reloading the codebooks, under stalls, at
    each granularity (pixel-wise: one codebook per K row, as a conv layer's kernel taps)."""
    from olmac.golden.syq import decode_to_int
    import torch
    entry_bits, lanes, cols, n = 5, 8, 4, 9
    config = GemmEngine.Config(lanes=lanes, cols=cols, act_bits=4, weight_bits=entry_bits + 1,
                          act_signed=False, max_k=300, out_bits=8,
                          codebook=dict(idx_bits=idx_bits, zero=zero, entry_bits=entry_bits,
                                        granularity=granularity, subgroups=300))
    rng = np.random.default_rng(19)
    cases = []
    for k in (300, 37, 5):
        codes = rng.integers(0, 2 << idx_bits, (n, k))
        subgroup_shape = {"layer": (1, 1), "row": (n, 1), "pixel": (1, k)}[granularity]
        tables = rng.integers(0, 1 << entry_bits, subgroup_shape + (1 << idx_bits,))
        if zero:
            tables[..., 0] = 0
        weights = decode_to_int(torch.tensor(codes), torch.tensor(tables), idx_bits=idx_bits,
                                entry_bits=entry_bits).numpy().T
        case = GemmCase(rng.integers(0, 16, (3, k)), weights, codes=codes, tables=tables)
        case.bias, case.multiplier, case.shift = _requant_params(rng, config, n, k * 15 * 32)
        cases.append(case)
    job = run_job(Job(config, cases, pause_probability=0.3, seed=9, label="codebook"),
                  BUILD_ROOT, rebuild=True)
    assert job.stats["mismatches"] == 0
