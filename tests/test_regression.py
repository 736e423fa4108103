"""The GEMM engine at scale: 20 configurations, each with corner cases and random GEMMs,
bit-exact against golden (sim.job.golden_result, docs/semantics.md §2–§8).

``make test-full`` runs each configuration with ≥ 10⁶ random MACs on Verilator (cocotb,
:func:`olmac.sim.runner.run_job`: Python per beat, not per MAC); ``make test`` runs a
10⁴-MAC slice of each on the Amaranth simulator (no Verilator build per configuration).
Each test records the MACs it checked; tests/conftest.py prints them after the run.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from olmac import golden
from olmac.golden.syq import decode_to_int
from olmac.hw import GemmEngine
from olmac.sim.job import GemmCase, Job, golden_result
from olmac.sim.payloads import output_codec, output_leaves, stream_payloads
from olmac.sim.pysim import StreamSink, StreamSource, run_streams
from olmac.sim.runner import run_job
from olmac.sim.tiling import output_vectors

BUILD_ROOT = Path(__file__).resolve().parent.parent / "build" / "test-regression"

_C = GemmEngine.Config
_OUTLIERS = dict(act_outlier_lanes=1, weight_outlier_lanes=1, weight_outlier_slots=8)


def _codebook(idx_bits, zero, granularity):
    return dict(idx_bits=idx_bits, zero=zero, entry_bits=4, granularity=granularity,
                subgroups=256)


#: Widths 2–8, both signednesses, narrow and wide arrays, accumulator and requantized
#: outputs, outlier lanes (with output outliers once), weight planes and codebooks.
CONFIGS = [
    _C(lanes=4, cols=1, act_bits=2, weight_bits=2, act_signed=True, max_k=256),
    _C(lanes=4, cols=2, act_bits=2, weight_bits=2, act_signed=False, max_k=256),
    _C(lanes=8, cols=4, act_bits=3, weight_bits=3, act_signed=False, max_k=256),
    _C(lanes=8, cols=4, act_bits=3, weight_bits=3, act_signed=True, max_k=256),
    _C(lanes=16, cols=16, act_bits=4, weight_bits=4, act_signed=True, max_k=256),
    _C(lanes=16, cols=8, act_bits=4, weight_bits=4, act_signed=False, max_k=256),
    _C(lanes=8, cols=16, act_bits=8, weight_bits=8, act_signed=True, max_k=256),
    _C(lanes=5, cols=3, act_bits=8, weight_bits=2, act_signed=False, max_k=256),
    _C(lanes=3, cols=5, act_bits=2, weight_bits=8, act_signed=True, max_k=256),
    _C(lanes=6, cols=4, act_bits=5, weight_bits=6, act_signed=True, max_k=256),
    _C(lanes=4, cols=4, act_bits=7, weight_bits=7, act_signed=False, max_k=256),
    _C(lanes=8, cols=8, act_bits=6, weight_bits=5, act_signed=True, max_k=256, out_bits=8,
       out_signed=False),
    _C(lanes=4, cols=6, act_bits=4, weight_bits=3, act_signed=True, max_k=256, out_bits=16),
    _C(lanes=16, cols=4, act_bits=4, weight_bits=4, act_signed=True, max_k=256, **_OUTLIERS),
    _C(lanes=8, cols=8, act_bits=4, weight_bits=3, act_signed=False, max_k=256,
       act_outlier_lanes=2, weight_outlier_lanes=2, weight_outlier_bits=8,
       weight_outlier_slots=8, out_bits=4, out_signed=False, out_outlier_bits=16),
    _C(lanes=8, cols=4, act_bits=2, weight_bits=2, act_signed=True, max_k=256,
       act_outlier_lanes=1, act_outlier_bits=8),
    _C(lanes=8, cols=4, act_bits=4, weight_bits=2, act_signed=False, max_k=3 * 256,
       plane_shift_bits=4, max_plane_shift=12, out_bits=8),
    _C(lanes=4, cols=4, act_bits=2, weight_bits=2, act_signed=True, max_k=2 * 256,
       plane_shift_bits=3, max_plane_shift=6, out_bits=8),
    _C(lanes=8, cols=4, act_bits=4, weight_bits=5, act_signed=False, max_k=256, out_bits=8,
       codebook=_codebook(1, True, "row")),
    _C(lanes=8, cols=4, act_bits=3, weight_bits=5, act_signed=True, max_k=256, out_bits=8,
       codebook=_codebook(3, False, "layer")),
]


def _planes(config):
    """Weight planes of the configuration's cases: 2 or 3 with plane shifts, else 1."""
    return config.max_k // 256


def _requant(rng, case, config, acc_bound):
    """Per-channel §3 parameters mapping ``±acc_bound`` onto about the output range, some
    channels at the extremes (shift 0, the largest multiplier, a negative one)."""
    n = case.weights.shape[-1]
    case.multiplier = rng.integers(1 << 29, 1 << 31, size=n)
    case.shift = np.full(n, 31 + max(0, int(np.log2(acc_bound)) - config.out_bits + 2))
    case.bias = rng.integers(-(acc_bound // 8), acc_bound // 8 + 1, size=n)
    for column, (s, m, b) in zip(range(n), [(0, 1, 0), (63, -(1 << 31), -(1 << 31))]):
        case.shift[column], case.multiplier[column], case.bias[column] = s, m, b
    case.relu = bool(rng.integers(0, 2))
    if config.out_outlier_bits is not None:
        case.outlier_threshold = int(rng.integers(0, 8))


def _with_outliers(rng, config, acts, weights):
    """About 2 % of the operands (in every outlier lane's width) set to outlier values."""
    if config.act_outlier_lanes:
        lo, hi = golden.int_range(config.act_outlier_bits, config.act_signed)
        where = rng.random(acts.shape) < 0.02
        acts[where] = rng.integers(lo, hi + 1, size=int(where.sum()))
    if config.weight_outlier_lanes:
        lo, hi = golden.int_range(config.weight_outlier_bits, True)
        where = rng.random(weights.shape) < 0.02
        weights[where] = rng.integers(lo, hi + 1, size=int(where.sum()))


def _case(rng, config, acts, weights):
    """A case of the configuration's kind from dense ``acts`` (M×K) and ``weights`` (K×N):
    codebook codes, planes and requantization parameters drawn to go with them."""
    m, k = acts.shape
    n = weights.shape[1]
    planes = _planes(config)
    if config.codebook is not None:
        book = config.codebook
        codes = rng.integers(0, 2 << book["idx_bits"], (n, k))
        shape = {"layer": (1, 1), "row": (n, 1)}[book["granularity"]]
        tables = rng.integers(0, 1 << book["entry_bits"], shape + (1 << book["idx_bits"],))
        if book["zero"]:
            tables[..., 0] = 0
        weights = decode_to_int(torch.tensor(codes), torch.tensor(tables),
                                idx_bits=book["idx_bits"],
                                entry_bits=book["entry_bits"]).numpy().T
        case = GemmCase(acts, weights, codes=codes, tables=tables)
    elif config.plane_shift_bits:
        stacked = np.stack([weights] + [rng.permutation(weights) for _ in range(planes - 1)])
        shifts = rng.integers(0, config.max_plane_shift // (planes - 1) + 1, (planes - 1, n))
        case = GemmCase(acts, stacked, plane_shifts=shifts)
    else:
        _with_outliers(rng, config, acts, weights)
        case = GemmCase(acts, weights)
    if config.out_bits is not None:
        _requant(rng, case, config, k * (1 << (config.act_bits + config.weight_bits + 6)))
    return case


def _macs(case):
    """Multiply-accumulates of a case: M·K·N per weight plane."""
    planes = case.weights.shape[0] if case.weights.ndim == 3 else 1
    return case.acts.shape[0] * case.acts.shape[1] * case.weights.shape[-1] * planes


def _cases(config, macs, seed):
    """Corner cases (zeros, every product at an extreme over the longest reduction, signs
    alternating, a one-element GEMM, K and N off the array's multiples; over the longest
    reduction, K = 256, from 10⁵ MACs on, else over two beats and one lane), then random
    GEMMs of K = 256 (or less, to fit ``macs``) until at least ``macs`` random MACs."""
    rng = np.random.default_rng(seed)
    a_lo, a_hi = golden.int_range(config.act_bits, config.act_signed)
    w_lo, w_hi = golden.int_range(config.weight_bits, True)
    k, n = 256, 2 * config.cols + 1
    k_corner = k if macs >= 100_000 else 2 * config.lanes + 1
    alternating = lambda shape, low, high: np.where(np.indices(shape).sum(0) % 2, low, high)
    corners = [(np.zeros((2, k_corner)), np.zeros((k_corner, n)))]
    if config.codebook is None:
        corners += [(np.full((1, k_corner), a), np.full((k_corner, n), w))
                    for a in (a_lo, a_hi) for w in (w_lo, w_hi)]
        corners.append((alternating((3, k_corner), a_lo, a_hi),
                        alternating((k_corner, n), w_hi, w_lo)))
    corners.append((rng.integers(a_lo, a_hi + 1, (1, 1)), rng.integers(w_lo, w_hi + 1, (1, 1))))
    cases = [_case(rng, config, acts.astype(np.int64), weights.astype(np.int64))
             for acts, weights in corners]
    random_macs = 0
    while random_macs < macs:
        k_case = min(k, macs)
        rows = max(1, min(64, -(-(macs - random_macs) // (k_case * n * _planes(config)))))
        case = _case(rng, config, rng.integers(a_lo, a_hi + 1, (rows, k_case)),
                     rng.integers(w_lo, w_hi + 1, (k_case, n)))
        random_macs += _macs(case)
        cases.append(case)
    return cases


def _check_on_pysim(config, cases):
    """Every output vector of ``cases`` through the engine on the Amaranth simulator,
    compared with golden; returns the mismatching vectors' indices."""
    engine = GemmEngine(**vars(config))
    streams, expected = {}, []
    for case in cases:
        for name, payloads in stream_payloads(config, case).items():
            streams.setdefault(name, []).extend(payloads)
        dense, outliers = golden_result(config, case)
        expected += list(output_leaves(config, output_vectors(dense, config.cols),
                                       None if outliers is None
                                       else output_vectors(outliers, config.cols)))
    sources = [StreamSource(getattr(engine, name), payloads, pause_probability=0.1,
                            seed=index) for index, (name, payloads) in enumerate(streams.items())]
    sink = StreamSink(engine.out, len(expected), pause_probability=0.1, seed=7)
    received = output_codec(config).unpack(run_streams(engine, sources, sink))
    return [index for index, (got, want) in enumerate(zip(received, expected))
            if not np.array_equal(got, want)]


def _ids(config):
    return config.name


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_slice_bit_exact(config, record_property):
    """A 10⁴-MAC slice (plus the corners) of each configuration on the Amaranth simulator
    with random stalls: every output vector equals golden."""
    cases = _cases(config, 10_000, seed=1)
    assert _check_on_pysim(config, cases) == []
    record_property("macs_checked", sum(map(_macs, cases)))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_million_macs_bit_exact(config, record_property):
    """≥ 10⁶ random MACs plus the corners of each configuration on Verilator with random
    stalls: the testbench's scoreboard finds every output vector equal to golden."""
    cases = _cases(config, 1_000_000, seed=2)
    job = run_job(Job(config, cases, pause_probability=0.05, seed=3, label="million"),
                  BUILD_ROOT)
    assert job.stats["mismatches"] == 0
    macs = sum(map(_macs, cases))
    assert macs >= 1_000_000
    record_property("macs_checked", macs)
