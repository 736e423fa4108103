"""One GEMM ``Y = A·W`` (optionally requantized, docs/semantics.md §3) on the golden model or
on the generated RTL under Verilator (``olmac gemm``), and a random one through both
(``olmac gemm-demo``).

The checks here name each parameter as the command line spells it (``--act-bits``), since
``olmac gemm`` hands its options through unchanged and reports these messages as they are.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from olmac.spec import (ACT_BITS, ARRAY_DIM, BIAS_BITS, CODEBOOK_ENTRY_BITS,
                        CODEBOOK_IDX_BITS, MULTIPLIER_BITS, OUT_BITS, OUTLIER_BITS, OUTLIER_LANES,
                        PLANE_SHIFT_BITS, SHIFT_RANGE, WEIGHT_BITS, check_int)

__all__ = ["GemmRun", "run", "demo"]

#: Allowed lanes and columns of the RTL's MAC array, inclusive (MacArray's bounds).


@dataclass(frozen=True)
class GemmRun:
    """The product ``values`` (M×N int64) and, from the RTL, what it cost."""
    values: np.ndarray
    backend: str
    #: The RTL engine's configuration name.
    engine: str | None = None
    cycles: int | None = None
    beats: int | None = None
    #: Cycles of a MAC array kept busy on every cycle.
    ideal_cycles: float | None = None
    cycles_per_second: float | None = None

    @property
    def utilization(self) -> float | None:
        """The share of the run's cycles the MAC array would need if kept busy."""
        return None if self.cycles is None else self.ideal_cycles / self.cycles


def _channel_values(values, name, n, bounds):
    """``values`` (an integer for every channel, or one entry per channel) as N int64, each
    within the inclusive ``bounds``."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, not {values.dtype}")
    values = np.broadcast_to(values, n).astype(np.int64) if values.ndim == 0 else \
        values.astype(np.int64).reshape(-1)
    if values.shape != (n,):
        raise ValueError(f"{name} must have one entry per output channel ({n}), "
                         f"not {values.shape[0]}")
    low, high = bounds
    outside = np.flatnonzero((values < low) | (values > high))
    if outside.size:
        raise ValueError(f"{name}[{outside[0]}] = {values[outside[0]]} is outside {low}..{high}")
    return values


def _decoded_codes(codes, codebook, *, idx_bits, entry_bits, granularity):
    """K×N integer weights: golden's decode of the SYQ codes (docs/codebooks.md §4)."""
    import torch
    from olmac.golden.syq import decode_to_int
    if codebook is None:
        raise ValueError("--codes needs --codebook (the magnitude tables)")
    if not np.issubdtype(codebook.dtype, np.integer):
        raise ValueError(f"--codebook must hold integers, not {codebook.dtype}")
    if granularity == "layer" and codebook.shape[:-1] != (1, 1):
        raise ValueError(f"a layer-wise --codebook must have shape (1, 1, {1 << idx_bits}), "
                         f"not {codebook.shape}")
    try:
        return decode_to_int(torch.from_numpy(codes), torch.from_numpy(codebook.astype(np.int64)),
                             idx_bits=idx_bits, entry_bits=entry_bits).numpy().T
    except (TypeError, ValueError) as error:
        raise ValueError(f"--codes/--codebook: {error}") from None


def _check_widths(o):
    """The widths of the options ``o``, before any operand is looked at; returns the weight
    width (with codes, that of the decoded weights)."""
    from olmac import golden
    weight_bits = o["weight_bits"]
    if o["codes"] is not None:
        check_int("--entry-bits", o["entry_bits"], CODEBOOK_ENTRY_BITS)
        check_int("--idx-bits", o["idx_bits"], CODEBOOK_IDX_BITS)
        if weight_bits not in (None, o["entry_bits"] + 1):
            raise ValueError(f"with --codes the weight width is --entry-bits + 1 = "
                             f"{o['entry_bits'] + 1}, not --weight-bits {weight_bits}")
        weight_bits = o["entry_bits"] + 1
    elif weight_bits is None:
        raise ValueError("--weight-bits is required")
    check_int("--act-bits", o["act_bits"], ACT_BITS)
    check_int("--weight-bits", weight_bits, WEIGHT_BITS)
    check_int("--act-outlier-lanes", o["act_outlier_lanes"], OUTLIER_LANES)
    check_int("--weight-outlier-lanes", o["weight_outlier_lanes"], OUTLIER_LANES)
    if o["act_outlier_lanes"]:
        check_int("--act-outlier-bits", o["act_outlier_bits"],
                  (o["act_bits"] + 1, OUTLIER_BITS[1]))
    if o["weight_outlier_lanes"]:
        check_int("--weight-outlier-bits", o["weight_outlier_bits"],
                  (weight_bits + 1, OUTLIER_BITS[1]))
    out_bits = o["out_bits"]
    if out_bits is not None:
        check_int("--out-bits", out_bits, OUT_BITS)
        if o["out_outlier_bits"] is not None:
            check_int("--out-outlier-bits", o["out_outlier_bits"],
                      (out_bits + 1, OUTLIER_BITS[1]))
        if o["out_outlier_threshold"] is not None:
            high = golden.int_range(out_bits, o["out_signed"])[1]
            check_int("--out-outlier-threshold", o["out_outlier_threshold"], (0, high))
    # golden reads its widths from the engine's configuration too
    check_int("--lanes", o["lanes"], ARRAY_DIM)
    check_int("--cols", o["cols"], ARRAY_DIM)
    return weight_bits


def _case(acts, weights, o):
    """The :class:`sim.job.GemmCase` of the operands and options ``o``, every value checked
    against its width."""
    import torch
    from olmac import golden
    from olmac.golden.mmse import MAX_PLANES
    from olmac.sim.job import GemmCase

    acts = np.asarray(acts, dtype=np.int64)
    if (weights is None) == (o["codes"] is None):
        raise ValueError("give the weights either as --weights or as --codes with --codebook")
    codes = None if o["codes"] is None else np.asarray(o["codes"], dtype=np.int64)
    weights = np.asarray(weights, dtype=np.int64) if codes is None else _decoded_codes(
        codes, o["codebook"], idx_bits=o["idx_bits"], entry_bits=o["entry_bits"],
        granularity=o["codebook_granularity"])
    if acts.ndim != 2 or weights.ndim not in ((2,) if o["plane_shifts"] is None else (2, 3)):
        raise ValueError(f"--acts {acts.shape} must be M×K and --weights {weights.shape} K×N "
                         f"(or P×K×N planes with --plane-shifts)")
    if acts.shape[1] != weights.shape[-2]:
        raise ValueError(f"--acts is {acts.shape} and --weights is {weights.shape}: the K "
                         f"dimensions {acts.shape[1]} and {weights.shape[-2]} differ")
    if acts.shape[1] == 0 or acts.shape[0] == 0 or weights.shape[-1] == 0:
        raise ValueError(f"--acts {acts.shape} and --weights {weights.shape} must not be empty")
    # Entries beyond the dense width are outliers (§6) when the engine has outlier lanes.
    act_bits = o["act_outlier_bits"] if o["act_outlier_lanes"] else o["act_bits"]
    weight_bits = o["weight_outlier_bits"] if o["weight_outlier_lanes"] else o["weight_bits"]
    golden.check_in_format("--acts", torch.from_numpy(acts), act_bits, o["act_signed"])
    golden.check_in_format("--weights", torch.from_numpy(weights), weight_bits, True)
    case = GemmCase(acts, weights)
    if codes is not None:
        case.codes = codes
        case.tables = o["codebook"].astype(np.int64)
    if o["plane_shifts"] is not None:
        planes = weights.shape[0] if weights.ndim == 3 else 1
        if not 1 <= planes <= MAX_PLANES:
            raise ValueError(f"--weights holds {planes} planes; 1..{MAX_PLANES} are supported")
        shifts = np.asarray(o["plane_shifts"], dtype=np.int64).reshape(-1, weights.shape[-1]) \
            if planes > 1 else np.zeros((0, weights.shape[-1]), np.int64)
        if shifts.shape != (planes - 1, weights.shape[-1]):
            raise ValueError(f"--plane-shifts must be {planes - 1}×{weights.shape[-1]} (one "
                             f"exponent per column between planes), not {shifts.shape}")
        high = (1 << PLANE_SHIFT_BITS[1]) - 1
        outside = (shifts < 0) | (shifts > high)
        if outside.any():
            raise ValueError(f"--plane-shifts entries must lie in 0..{high}, not "
                             f"{int(shifts[outside][0])}")
        case.weights = weights if weights.ndim == 3 else weights[None]
        case.plane_shifts = shifts
    requant = (o["multiplier"], o["shift"], o["out_bits"])
    if any(value is not None for value in requant):
        if any(value is None for value in requant):
            raise ValueError("requantization needs --multiplier, --shift and --out-bits together")
        n = weights.shape[-1]
        case.multiplier = _channel_values(o["multiplier"], "--multiplier", n,
                                          golden.int_range(MULTIPLIER_BITS, True))
        case.shift = _channel_values(o["shift"], "--shift", n, SHIFT_RANGE)
        case.bias = _channel_values(o["bias"], "--bias", n,
                                    golden.int_range(BIAS_BITS, True))
        case.relu = o["relu"]
        if (o["out_outlier_bits"] is None) != (o["out_outlier_threshold"] is None):
            raise ValueError("output outliers need --out-outlier-bits and "
                             "--out-outlier-threshold together")
        case.outlier_threshold = o["out_outlier_threshold"]
    elif (o["relu"] or np.any(np.asarray(o["bias"]) != 0) or not o["out_signed"] or
          o["out_outlier_bits"] is not None or o["out_outlier_threshold"] is not None):
        raise ValueError("--bias, --relu, --unsigned-out and output outliers need "
                         "--multiplier, --shift and --out-bits")
    return case


def _config(case, o):
    """The :class:`GemmEngine.Config` of the engine that computes ``case`` with options
    ``o``; golden reads the widths from it too."""
    from olmac.hw import GemmEngine
    lanes, cols = o["lanes"], o["cols"]
    planes = case.weights.shape[0] if case.weights.ndim == 3 else 1
    return GemmEngine.Config(
        lanes=lanes, cols=cols, act_bits=o["act_bits"], weight_bits=o["weight_bits"],
        act_signed=o["act_signed"], max_k=case.acts.shape[1] * planes,
        out_bits=o["out_bits"], out_signed=o["out_signed"],
        out_outlier_bits=o["out_outlier_bits"], act_outlier_lanes=o["act_outlier_lanes"],
        weight_outlier_lanes=o["weight_outlier_lanes"], act_outlier_bits=o["act_outlier_bits"],
        weight_outlier_bits=o["weight_outlier_bits"], act_outlier_slots=o["act_outlier_slots"],
        weight_outlier_slots=o["weight_outlier_slots"] or
        (lanes * cols if o["weight_outlier_lanes"] else None),
        codebook=None if case.codes is None else dict(
            idx_bits=o["idx_bits"], zero=o["zero"], entry_bits=o["entry_bits"],
            granularity=o["codebook_granularity"],
            subgroups=len(case.tables.reshape(-1, 1 << o["idx_bits"]))),
        plane_shift_bits=PLANE_SHIFT_BITS[1] if case.plane_shifts is not None else 0,
        max_plane_shift=None if case.plane_shifts is None else
        int(case.plane_shifts.sum(axis=0).max(initial=0)))


def _golden_run(config, case):
    from olmac.sim.job import golden_result
    dense, outliers = golden_result(config, case)
    # Y holds dense + outliers, as the RTL's result does
    return GemmRun(dense if outliers is None else dense + outliers, "golden")


def _rtl_run(config, case, build_root):
    from olmac.sim.job import Job
    from olmac.sim.runner import run_job
    job = run_job(Job(config, [case], check=False, label="gemm"), Path(build_root))
    m, n = case.acts.shape[0], case.weights.shape[-1]
    stats = job.stats
    return GemmRun(job.results[0], "rtl", engine=config.name, cycles=stats["cycles"],
                   beats=stats["beats"],
                   # max_k counts every plane
                   ideal_cycles=m * config.max_k * n / (config.lanes * config.cols),
                   cycles_per_second=stats["cycles_per_second"])


def run(acts, weights=None, *, backend="golden", act_bits, weight_bits=None, act_signed=True,
        lanes=16, cols=8, codes=None, codebook=None, idx_bits=1, entry_bits=7, zero=False,
        codebook_granularity="row", plane_shifts=None, act_outlier_lanes=0,
        weight_outlier_lanes=0, act_outlier_bits=OUTLIER_BITS[1],
        weight_outlier_bits=OUTLIER_BITS[1],
        act_outlier_slots=None, weight_outlier_slots=None, multiplier=None, shift=None,
        bias=0, out_bits=None, out_signed=True, relu=False, out_outlier_bits=None,
        out_outlier_threshold=None, build_root="build/rtl") -> GemmRun:
    """``Y = A·W`` of the integer operands ``acts`` (M×K) and ``weights`` (K×N; P×K×N planes
    with ``plane_shifts`` (P-1)×N, §8) on ``backend`` ``"golden"`` or ``"rtl"`` (a
    ``lanes`` × ``cols`` GEMM engine on Verilator, built under ``build_root``).

    Instead of ``weights``, SYQ ``codes`` (N×K) and the ``codebook`` tables
    (docs/codebooks.md): the weights are golden's decode, and the RTL decodes the codes in
    hardware. Entries beyond the dense widths but within the outlier widths are outliers (§6)
    when the engine has outlier lanes. With ``multiplier``, ``shift`` and ``out_bits`` (each
    per-channel value an integer for every channel or N entries, like ``bias``), Y is
    requantized (§3); with ``out_outlier_bits`` and ``out_outlier_threshold``, the RTL
    extracts output outliers (§7) and Y holds dense + outliers.

    Raises
    ------
    TypeError
        If a width, lane count or array size is out of range.
    ValueError
        If the operands do not fit each other, the widths or the options, or the RTL refuses
        them (e.g. more outliers in a beat than it carries).
    """
    if backend not in ("golden", "rtl"):
        raise ValueError(f"--backend must be 'golden' or 'rtl', not {backend!r}")
    # the helpers below read every option from one dictionary
    options = dict(locals())
    options["weight_bits"] = _check_widths(options)
    case = _case(acts, weights, options)
    config = _config(case, options)
    if backend == "rtl":
        return _rtl_run(config, case, build_root)
    return _golden_run(config, case)


def demo(*, m=8, k=300, n=20, bits=4, lanes=16, cols=8, seed=0) -> int:
    """``olmac gemm-demo``: a random ``bits``-wide signed M×K by K×N GEMM through golden and
    the RTL on a ``lanes`` × ``cols`` array, each checked (and timed) on stdout; returns the
    number of elements where the RTL differs from golden."""
    from olmac import golden
    check_int("--bits", bits, (max(ACT_BITS[0], WEIGHT_BITS[0]),
                               min(ACT_BITS[1], WEIGHT_BITS[1])))
    rng = np.random.default_rng(seed)
    low, high = golden.int_range(bits, True)
    acts = rng.integers(low, high + 1, size=(m, k))
    weights = rng.integers(low, high + 1, size=(k, n))
    print(f"olmac demo: Y = A·W with A {m}x{k} and W {k}x{n}, s{bits} x s{bits}, on a "
          f"{lanes}-lane x {cols}-column array")
    results = {}
    for backend in ("golden", "rtl"):
        started = time.perf_counter()
        result = run(acts, weights, backend=backend, act_bits=bits, weight_bits=bits,
                     lanes=lanes, cols=cols)
        results[backend] = result.values
        cost = "" if result.cycles is None else \
            f" ({result.cycles} cycles, MAC utilization {result.utilization:.1%})"
        print(f"  {backend:6s} backend: {time.perf_counter() - started:6.1f} s{cost}")
    exact = acts @ weights
    mismatches = int((results["rtl"] != results["golden"]).sum())
    print(f"  RTL vs golden:   {mismatches} mismatching elements of {exact.size}")
    print(f"  golden vs numpy: {int((results['golden'] != exact).sum())} mismatching elements")
    print(f"  Y[0, :8] = {results['rtl'][0, :8].tolist()}")
    return mismatches
