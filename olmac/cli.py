"""``olmac``: the command line.

``olmac gemm`` computes ``Y = A·W`` (optionally requantized, docs/semantics.md §3) on the
golden model or on the generated RTL under Verilator; ``olmac gemm-demo`` runs a random
GEMM through the RTL and checks it against golden. ``olmac quantize`` lowers a PyTorch model
to an integer program artifact, ``olmac run`` runs one on the golden model or the network
core's RTL, and ``olmac demo`` does it all for a demo network on the digits test split
(docs/network.md).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from olmac.spec import SHIFT_RANGE

__all__ = ["main"]

BUILD_ROOT = Path("build") / "rtl"


class UsageError(Exception):
    """A bad argument or input file; reported as ``olmac: error: ...`` with exit status 2."""


def _load_matrix(path, name, dims=(2,)):
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"{name}: cannot read {path}: {error}") from None
    if array.ndim not in dims:
        raise UsageError(f"{name} ({path}) must be a {' or '.join(f'{d}-D' for d in dims)} "
                         f"array, not shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise UsageError(f"{name} ({path}) must hold integers, not {array.dtype}")
    return array.astype(np.int64)


def _load_channel_values(text, name, n, bounds):
    """An integer literal (same for every channel) or a .npy file with N entries, each
    within the inclusive ``bounds``."""
    try:
        values = np.full(n, int(text), dtype=np.int64)
    except ValueError:
        try:
            values = np.load(text, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise UsageError(f"{name}: {text!r} is neither an integer nor a readable .npy "
                             f"file ({error})") from None
        if not np.issubdtype(values.dtype, np.integer):
            raise UsageError(f"{name} ({text}) must hold integers, not {values.dtype}")
        values = values.astype(np.int64).reshape(-1)
    if values.shape != (n,):
        raise UsageError(f"{name} must have one entry per output channel ({n}), "
                         f"not {values.shape[0]}")
    low, high = bounds
    outside = np.flatnonzero((values < low) | (values > high))
    if outside.size:
        raise UsageError(f"{name}[{outside[0]}] = {values[outside[0]]} is outside {low}..{high}")
    return values


def _decoded_codes(args):
    """K×N integer weights: golden's decode of the SYQ codes (docs/codebooks.md §4)."""
    import torch
    from olmac.golden.syq import decode_to_int
    if args.codebook is None:
        raise UsageError("--codes needs --codebook (the magnitude tables)")
    codes = _load_matrix(args.codes, "--codes")
    try:
        tables = np.load(args.codebook, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"--codebook: cannot read {args.codebook}: {error}") from None
    if not np.issubdtype(tables.dtype, np.integer):
        raise UsageError(f"--codebook ({args.codebook}) must hold integers, not {tables.dtype}")
    if args.codebook_granularity == "layer" and tables.shape[:-1] != (1, 1):
        raise UsageError(f"a layer-wise --codebook must have shape (1, 1, {1 << args.idx_bits}),"
                         f" not {tables.shape}")
    try:
        return decode_to_int(torch.from_numpy(codes), torch.from_numpy(tables.astype(np.int64)),
                             idx_bits=args.idx_bits, entry_bits=args.entry_bits).numpy().T
    except (TypeError, ValueError) as error:
        raise UsageError(f"--codes/--codebook: {error}") from None


def _gemm_case(args):
    import torch
    from olmac import golden
    from olmac.sim.job import GemmCase

    acts = _load_matrix(args.acts, "--acts")
    if (args.weights is None) == (args.codes is None):
        raise UsageError("give the weights either as --weights or as --codes with --codebook")
    weights = _decoded_codes(args) if args.codes is not None else \
        _load_matrix(args.weights, "--weights", (2, 3) if args.plane_shifts else (2,))
    if acts.shape[1] != weights.shape[-2]:
        raise UsageError(f"--acts is {acts.shape} and --weights is {weights.shape}: the K "
                         f"dimensions {acts.shape[1]} and {weights.shape[-2]} differ")
    if acts.shape[1] == 0 or acts.shape[0] == 0 or weights.shape[-1] == 0:
        raise UsageError(f"--acts {acts.shape} and --weights {weights.shape} must not be empty")
    # Entries beyond the dense width are outliers (§6) when the engine has outlier lanes.
    act_bits = args.act_outlier_bits if args.act_outlier_lanes else args.act_bits
    weight_bits = args.weight_outlier_bits if args.weight_outlier_lanes else args.weight_bits
    try:
        golden.check_in_format("--acts", torch.from_numpy(acts), act_bits,
                               not args.unsigned_acts)
        golden.check_in_format("--weights", torch.from_numpy(weights), weight_bits, True)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    case = GemmCase(acts, weights)
    if args.codes is not None:
        case.codes = _load_matrix(args.codes, "--codes")
        case.tables = np.load(args.codebook, allow_pickle=False).astype(np.int64)
    if args.plane_shifts:
        planes = weights.shape[0] if weights.ndim == 3 else 1
        if not 1 <= planes <= 3:
            raise UsageError(f"--weights holds {planes} planes; 1..3 are supported")
        shifts = _load_matrix(args.plane_shifts, "--plane-shifts").reshape(-1, weights.shape[-1]) \
            if planes > 1 else np.zeros((0, weights.shape[-1]), np.int64)
        if shifts.shape != (planes - 1, weights.shape[-1]):
            raise UsageError(f"--plane-shifts must be {planes - 1}×{weights.shape[-1]} (one "
                             f"exponent per column between planes), not {shifts.shape}")
        if ((shifts < 0) | (shifts > 15)).any():
            raise UsageError(f"--plane-shifts entries must lie in 0..15, not "
                             f"{int(shifts[(shifts < 0) | (shifts > 15)][0])}")
        case.weights = weights if weights.ndim == 3 else weights[None]
        case.plane_shifts = shifts
    requant_flags = (args.multiplier, args.shift, args.out_bits)
    if any(flag is not None for flag in requant_flags):
        if any(flag is None for flag in requant_flags):
            raise UsageError("requantization needs --multiplier, --shift and --out-bits together")
        n = weights.shape[-1]
        int32 = (-(1 << 31), (1 << 31) - 1)
        case.multiplier = _load_channel_values(args.multiplier, "--multiplier", n, int32)
        case.shift = _load_channel_values(args.shift, "--shift", n, SHIFT_RANGE)
        case.bias = _load_channel_values(args.bias, "--bias", n, int32)
        case.relu = args.relu
        if (args.out_outlier_bits is None) != (args.out_outlier_threshold is None):
            raise UsageError("output outliers need --out-outlier-bits and "
                             "--out-outlier-threshold together")
        case.outlier_threshold = args.out_outlier_threshold
    elif (args.relu or args.bias != "0" or args.unsigned_out or
          args.out_outlier_bits is not None or args.out_outlier_threshold is not None):
        raise UsageError("--bias, --relu, --unsigned-out and output outliers need "
                         "--multiplier, --shift and --out-bits")
    return case


def _golden_result(case, args):
    import torch
    from olmac import golden
    from olmac.golden.mmse import combine_plane_accumulators
    planes = case.weights if case.weights.ndim == 3 else case.weights[None]
    accs = torch.stack([golden.gemm(
        torch.from_numpy(case.acts), torch.from_numpy(plane), act_bits=args.act_bits,
        act_signed=not args.unsigned_acts, weight_bits=args.weight_bits,
        act_outlier_bits=args.act_outlier_bits if args.act_outlier_lanes else None,
        weight_outlier_bits=args.weight_outlier_bits if args.weight_outlier_lanes else None)
        for plane in planes])
    acc = accs[0] if case.plane_shifts is None else \
        combine_plane_accumulators(accs, torch.from_numpy(case.plane_shifts))
    if case.multiplier is None:
        return acc.numpy()
    return golden.requantize_round_half_up(
        acc, torch.from_numpy(case.bias), torch.from_numpy(case.multiplier),
        torch.from_numpy(case.shift), out_bits=args.out_outlier_bits or args.out_bits,
        out_signed=not args.unsigned_out, relu=case.relu).numpy()


def _rtl_result(case, args):
    from olmac.sim.job import EngineConfig, Job
    from olmac.sim.runner import run_job
    config = EngineConfig(lanes=args.lanes, cols=args.cols, act_bits=args.act_bits,
                          weight_bits=args.weight_bits, act_signed=not args.unsigned_acts,
                          max_k=case.acts.shape[1] * (case.weights.shape[0]
                                                      if case.weights.ndim == 3 else 1),
                          out_bits=args.out_bits,
                          out_signed=not args.unsigned_out,
                          out_outlier_bits=args.out_outlier_bits,
                          act_outlier_lanes=args.act_outlier_lanes,
                          weight_outlier_lanes=args.weight_outlier_lanes,
                          act_outlier_bits=args.act_outlier_bits,
                          weight_outlier_bits=args.weight_outlier_bits,
                          act_outlier_slots=args.act_outlier_slots,
                          weight_outlier_slots=args.weight_outlier_slots or
                          args.lanes * args.cols,
                          codebook=None if case.codes is None else dict(
                              idx_bits=args.idx_bits, zero=args.zero,
                              entry_bits=args.entry_bits,
                              granularity=args.codebook_granularity,
                              subgroups=len(case.tables.reshape(-1, 1 << args.idx_bits))),
                          plane_shift_bits=4 if case.plane_shifts is not None else 0,
                          max_plane_shift=None if case.plane_shifts is None else
                          int(case.plane_shifts.sum(axis=0).max(initial=0)))
    job = run_job(Job(config, [case], check=False, label="gemm"), BUILD_ROOT)
    m, n = case.acts.shape[0], case.weights.shape[-1]
    ideal = m * config.max_k * n / (args.lanes * args.cols)  # max_k counts every plane
    stats = job.stats
    print(f"olmac: RTL {config.name}: {stats['cycles']} cycles for {stats['beats']} beats "
          f"(ideal {ideal:.0f}, MAC utilization {ideal / stats['cycles']:.1%}), "
          f"{stats['cycles_per_second']:,.0f} simulated cycles/s", file=sys.stderr)
    return job.results[0]


def _validate_widths(args):
    """Check the widths up front so a bad one fails before any file is read."""
    from olmac.spec import (ACT_BITS, OUT_BITS, OUTLIER_BITS, OUTLIER_LANES, WEIGHT_BITS,
                              check_int)
    if args.codes is not None:
        check_int("--entry-bits", args.entry_bits, (1, 7))
        check_int("--idx-bits", args.idx_bits, (0, 3))
        if args.weight_bits not in (None, args.entry_bits + 1):
            raise UsageError(f"with --codes the weight width is --entry-bits + 1 = "
                             f"{args.entry_bits + 1}, not --weight-bits {args.weight_bits}")
        args.weight_bits = args.entry_bits + 1
    elif args.weight_bits is None:
        raise UsageError("--weight-bits is required")
    check_int("--act-bits", args.act_bits, ACT_BITS)
    check_int("--weight-bits", args.weight_bits, WEIGHT_BITS)
    check_int("--act-outlier-lanes", args.act_outlier_lanes, OUTLIER_LANES)
    check_int("--weight-outlier-lanes", args.weight_outlier_lanes, OUTLIER_LANES)
    if args.act_outlier_lanes:
        check_int("--act-outlier-bits", args.act_outlier_bits, (args.act_bits + 1,
                                                                OUTLIER_BITS[1]))
    if args.weight_outlier_lanes:
        check_int("--weight-outlier-bits", args.weight_outlier_bits, (args.weight_bits + 1,
                                                                      OUTLIER_BITS[1]))
    if args.out_bits is not None:
        check_int("--out-bits", args.out_bits, OUT_BITS)
        if args.out_outlier_bits is not None:
            check_int("--out-outlier-bits", args.out_outlier_bits,
                      (args.out_bits + 1, OUTLIER_BITS[1]))
        if args.out_outlier_threshold is not None:
            high = (1 << (args.out_bits - (0 if args.unsigned_out else 1))) - 1
            check_int("--out-outlier-threshold", args.out_outlier_threshold, (0, high))
    if args.backend == "rtl":
        check_int("--lanes", args.lanes, (1, 64))
        check_int("--cols", args.cols, (1, 64))


def _command_gemm(args):
    try:
        _validate_widths(args)
    except TypeError as error:
        raise UsageError(str(error)) from None
    case = _gemm_case(args)
    try:
        result = _rtl_result(case, args) if args.backend == "rtl" else \
            _golden_result(case, args)
    except (TypeError, ValueError) as error:
        # e.g. a reduction too long for a 44-bit accumulator, or a parameter out of range
        raise UsageError(str(error)) from None
    np.save(args.out, result.astype(np.int64))
    print(f"olmac: wrote {args.out} ({result.shape[0]}x{result.shape[1]} int64, "
          f"{args.backend})", file=sys.stderr)


def _load_model(spec: str):
    """A demo model name, or ``module:callable`` returning a trained ``nn.Module``."""
    from olmac.network import DEMO_MODELS, demo_data
    if spec in DEMO_MODELS:
        return demo_data(spec).model
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise UsageError(f"--model must be one of {', '.join(DEMO_MODELS)} or "
                         f"'module:callable', not {spec!r}")
    import importlib
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"--model {spec}: {error}") from None
    return factory()


def _command_quantize(args):
    from olmac.golden import artifact
    from olmac.golden.program import ProgramError
    from olmac.network import DEMO_MODELS, demo_data, quantize
    model = _load_model(args.model)
    if args.calibration is not None:
        calibration = np.load(args.calibration)
        if not np.issubdtype(calibration.dtype, np.floating):
            raise UsageError(f"--calibration ({args.calibration}) must hold real images "
                             f"(pixel × pixel-scale), not {calibration.dtype}")
        calibration = _torch_from(calibration)
    elif args.model in DEMO_MODELS:
        calibration = demo_data(args.model).calibration
    else:
        raise UsageError("--calibration is required for a model of your own")
    try:
        program = quantize(model, calibration, act_bits=args.act_bits,
                           weight_bits=args.weight_bits, scheme=args.scheme,
                           highway=not args.no_highway, outlier_ratio=args.outlier_ratio,
                           pixel_max=args.pixel_max, pixel_scale=args.pixel_scale)
    except (ProgramError, TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    path = artifact.save(program, args.out)
    print(program.describe())
    print(f"olmac: wrote the integer program to {path}", file=sys.stderr)


def _torch_from(array):
    import torch
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)


def _command_run(args):
    import torch
    from olmac.golden import artifact
    from olmac.golden.program import run_integer
    from olmac.compiler import CompileError
    from olmac.network import check_pixels, run_rtl
    try:
        program = artifact.load(args.program)
    except artifact.ArtifactError as error:
        raise UsageError(str(error)) from None
    pixels = np.load(args.inputs)
    try:
        pixels = check_pixels(program, torch.from_numpy(pixels))
    except (TypeError, ValueError) as error:
        raise UsageError(f"--inputs ({args.inputs}): {error}") from None
    started = time.perf_counter()
    if args.backend == "golden":
        logits = run_integer(program, pixels)
    else:
        try:
            result = run_rtl(program, pixels, width=args.width,
                             stall_sixteenths=args.stall_sixteenths,
                             build_dir=Path("build/sim") / f"run_{Path(args.program).name}",
                             progress=True)
        except CompileError as error:
            raise UsageError(str(error)) from None
        logits = result.logits
        print(f"olmac: {result.cycles_per_image:.0f} cycles per image, MAC utilization "
              f"{100 * result.utilization:.1f} %", file=sys.stderr)
    np.save(args.out, logits.numpy())
    print(f"olmac: wrote {args.out} ({logits.shape[0]}x{logits.shape[1]} int64 logits, "
          f"{args.backend}, {time.perf_counter() - started:.1f} s)", file=sys.stderr)


def _command_demo(args):
    from olmac.network import run_demo
    report = run_demo(model=args.model, act_bits=args.act_bits, weight_bits=args.weight_bits,
                      scheme=args.scheme, highway=not args.no_highway, images=args.images,
                      outlier_ratio=args.outlier_ratio,
                      width=args.width, stall_sixteenths=args.stall_sixteenths)
    if report["mismatching_images"]:
        raise SystemExit(1)


def _command_gemm_demo(args):
    from olmac import golden
    workdir = Path("build") / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    act_lo, act_hi = golden.int_range(args.bits, True)
    acts = rng.integers(act_lo, act_hi + 1, size=(args.m, args.k))
    weights = rng.integers(act_lo, act_hi + 1, size=(args.k, args.n))
    np.save(workdir / "A.npy", acts)
    np.save(workdir / "W.npy", weights)
    print(f"olmac demo: Y = A·W with A {args.m}x{args.k} and W {args.k}x{args.n}, "
          f"s{args.bits} x s{args.bits}, on a {args.lanes}-lane x {args.cols}-column array")
    results = {}
    for backend in ("golden", "rtl"):
        gemm_args = _gemm_parser().parse_args([
            "--backend", backend, "--acts", str(workdir / "A.npy"),
            "--weights", str(workdir / "W.npy"), "--act-bits", str(args.bits),
            "--weight-bits", str(args.bits), "--lanes", str(args.lanes),
            "--cols", str(args.cols), "--out", str(workdir / f"Y_{backend}.npy")])
        started = time.perf_counter()
        _command_gemm(gemm_args)
        results[backend] = np.load(workdir / f"Y_{backend}.npy")
        print(f"  {backend:6s} backend: {time.perf_counter() - started:6.1f} s")
    exact = acts @ weights
    mismatches = int((results["rtl"] != results["golden"]).sum())
    print(f"  RTL vs golden:   {mismatches} mismatching elements of {exact.size}")
    print(f"  golden vs numpy: {int((results['golden'] != exact).sum())} mismatching elements")
    print(f"  Y[0, :8] = {results['rtl'][0, :8].tolist()}")
    if mismatches:
        raise SystemExit(1)


def _gemm_parser(parser=None):
    parser = parser or argparse.ArgumentParser(prog="olmac gemm")
    parser.add_argument("--backend", choices=("golden", "rtl"), default="golden")
    parser.add_argument("--acts", required=True, help="A: M×K integer .npy")
    parser.add_argument("--weights", help="W: K×N integer .npy (or give --codes)")
    parser.add_argument("--act-bits", type=int, required=True, help="2..8")
    parser.add_argument("--weight-bits", type=int,
                        help="2..8 (signed); with --codes, entry-bits + 1")
    parser.add_argument("--unsigned-acts", action="store_true",
                        help="activations are u<act-bits> instead of s<act-bits>")
    parser.add_argument("--lanes", type=int, default=16, help="RTL: multipliers along K")
    parser.add_argument("--cols", type=int, default=8, help="RTL: columns along N")
    parser.add_argument("--out", required=True, help="Y: M×N int64 .npy")
    codebook = parser.add_argument_group(
        "SYQ codebook weights (docs/codebooks.md): W is golden's decode of the codes; the RTL "
        "decodes them in hardware")
    codebook.add_argument("--codes", help="N×K codes (sign << idx_bits | index) .npy")
    codebook.add_argument("--codebook", help="magnitude tables .npy: (1, 1, 2^idx_bits) "
                          "layer-wise or (N, 1, 2^idx_bits) row-wise")
    codebook.add_argument("--idx-bits", type=int, default=1, help="0 (binary) .. 3")
    codebook.add_argument("--entry-bits", type=int, default=7, help="magnitude width 1..7")
    codebook.add_argument("--zero", action="store_true", help="index 0 is the zero code "
                          "(ternary)")
    codebook.add_argument("--codebook-granularity", choices=("layer", "row"), default="row")
    parser.add_argument("--plane-shifts", help="multi-tensor weights (docs/semantics.md §8): "
                        "--weights is P×K×N (P ≤ 3) and this .npy holds the (P-1)×N exponents")
    outliers = parser.add_argument_group(
        "outliers (docs/semantics.md §6): with outlier lanes, entries beyond the dense width "
        "but within the outlier width travel as sparse outliers")
    outliers.add_argument("--act-outlier-lanes", type=int, default=0, help="0..16")
    outliers.add_argument("--weight-outlier-lanes", type=int, default=0, help="0..16")
    outliers.add_argument("--act-outlier-bits", type=int, default=16,
                          help="activation outlier width, above --act-bits, up to 16")
    outliers.add_argument("--weight-outlier-bits", type=int, default=16,
                          help="weight outlier width (8 or 16), above --weight-bits")
    outliers.add_argument("--act-outlier-slots", type=int,
                          help="RTL: activation outliers per beat (default: lanes)")
    outliers.add_argument("--weight-outlier-slots", type=int,
                          help="RTL: weight outliers per beat (default: lanes x cols)")
    requant = parser.add_argument_group("requantization (docs/semantics.md §3)")
    requant.add_argument("--multiplier", help="int32 M: an integer or a .npy with N entries")
    requant.add_argument("--shift", help="shift s in 0..63: an integer or a .npy")
    requant.add_argument("--bias", default="0", help="int32 bias: an integer or a .npy")
    requant.add_argument("--out-bits", type=int, help="output width 2..16")
    requant.add_argument("--unsigned-out", action="store_true", help="u<out-bits> output")
    requant.add_argument("--relu", action="store_true", help="clamp the output at 0")
    requant.add_argument("--out-outlier-bits", type=int,
                         help="extract output outliers of this width (§7), up to 16")
    requant.add_argument("--out-outlier-threshold", type=int,
                         help="outputs with |y| above this leave as outliers (§7); Y holds "
                              "dense + outliers")
    return parser


def _quantization_arguments(parser, default_model=None, own_models=True):
    from olmac.network import DEMO_MODELS
    help_text = f"{' or '.join(DEMO_MODELS)}"
    if own_models:
        help_text += ", or module:callable returning a trained nn.Module"
    parser.add_argument("--model", default=default_model, required=default_model is None,
                        help=help_text, **({} if own_models else {"choices": DEMO_MODELS}))
    parser.add_argument("--act-bits", type=int, default=4, help="2..8")
    parser.add_argument("--weight-bits", type=int, default=4, help="2..8")
    parser.add_argument("--scheme", default="value_aware",
                        choices=("mmse", "value_aware", "multi_tensor", "syq"),
                        help="weight scheme of every layer (the RTL runs mmse and "
                             "value_aware)")
    parser.add_argument("--outlier-ratio", type=float, default=1 / 64,
                        help="value_aware: weight outliers per weight of a channel")
    parser.add_argument("--no-highway", action="store_true",
                        help="requantize residual paths to the low width (the ablation)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="olmac", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gemm = commands.add_parser("gemm", help="Y = A·W on the golden model or the RTL")
    _gemm_parser(gemm)
    gemm.set_defaults(run=_command_gemm)
    quantize = commands.add_parser("quantize", help="a PyTorch model to an integer program "
                                   "artifact (docs/program.md)")
    _quantization_arguments(quantize)
    quantize.add_argument("--calibration", help="real calibration images .npy (N × input "
                          "shape); default for the demo models: their training split")
    quantize.add_argument("--pixel-max", type=int, default=16,
                          help="inputs are integer pixels 0..pixel-max")
    quantize.add_argument("--pixel-scale", type=float, default=1 / 16,
                          help="the real value of one pixel step")
    quantize.add_argument("--out", required=True, help="artifact directory to write")
    quantize.set_defaults(run=_command_quantize)
    run = commands.add_parser("run", help="an integer program on integer pixels, golden "
                              "model or RTL (Verilator)")
    run.add_argument("--program", required=True, help="artifact directory (olmac quantize)")
    run.add_argument("--inputs", required=True, help="integer pixels .npy, N × input shape")
    run.add_argument("--backend", choices=("golden", "rtl"), default="golden")
    run.add_argument("--width", type=int, default=8, help="RTL: a width × width MAC array")
    run.add_argument("--stall-sixteenths", type=int, default=0,
                     help="RTL: random stalls on the input and output streams, 0..15")
    run.add_argument("--out", required=True, help="logits .npy (N × F int64)")
    run.set_defaults(run=_command_run)
    demo = commands.add_parser("demo", help="a demo network on the digits test split "
                               "through the RTL, checked image by image against golden")
    _quantization_arguments(demo, default_model="cnn", own_models=False)
    demo.add_argument("--images", type=int, help="only the first N test images")
    demo.add_argument("--width", type=int, default=8, help="a width × width MAC array")
    demo.add_argument("--stall-sixteenths", type=int, default=0,
                      help="random stalls on the input and output streams, 0..15")
    demo.set_defaults(run=_command_demo)
    gemm_demo = commands.add_parser("gemm-demo", help="a random GEMM through the RTL, "
                                    "checked against golden")
    demo = gemm_demo
    demo.add_argument("--m", type=int, default=8)
    demo.add_argument("--k", type=int, default=300)
    demo.add_argument("--n", type=int, default=20)
    demo.add_argument("--bits", type=int, default=4)
    demo.add_argument("--lanes", type=int, default=16)
    demo.add_argument("--cols", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_command_gemm_demo)
    build = commands.add_parser("build", add_help=False,
                                help="a BRAM-fed MAC array bitstream for a board "
                                     "(olmac build --help)")
    build.set_defaults(run=None)
    board = commands.add_parser("board", add_help=False,
                                help="run the network board over its UART, or build it "
                                     "(olmac board --help)")
    board.set_defaults(run=None)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["board"]:
        from olmac.board import main_board
        raise SystemExit(main_board(argv[1:], prog="olmac board"))
    if argv[:1] == ["build"]:
        from olmac.fpga.build import main as build_main
        raise SystemExit(build_main(argv[1:], prog="olmac build"))
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UsageError as error:
        parser.exit(2, f"olmac: error: {error}\n")


if __name__ == "__main__":
    main()
