"""``olmac gemm``: ``Y = A·W`` of integer .npy operands through :func:`olmac.gemm.run`."""

import sys

import numpy as np

from olmac import gemm
from olmac.spec import (ACT_BITS, ARRAY_DIM, BIAS_BITS, CODEBOOK_ENTRY_BITS,
                        CODEBOOK_IDX_BITS, MULTIPLIER_BITS, OUT_BITS, OUTLIER_BITS, SHIFT_RANGE, WEIGHT_BITS)
from .common import UsageError, load_array, outlier_options, output_file


def _range(bounds):
    return f"{bounds[0]}..{bounds[1]}"


def arguments(parser):
    parser.add_argument("--backend", choices=("golden", "rtl"), default="golden",
                        help="the golden model or the RTL on Verilator")
    parser.add_argument("--acts", required=True, help="A: M×K integer .npy")
    parser.add_argument("--weights", help="W: K×N integer .npy (or give --codes)")
    parser.add_argument("--act-bits", type=int, required=True, help=_range(ACT_BITS))
    parser.add_argument("--weight-bits", type=int,
                        help=f"{_range(WEIGHT_BITS)} (signed); with --codes, entry-bits + 1")
    parser.add_argument("--unsigned-acts", action="store_true",
                        help="activations are u<act-bits> instead of s<act-bits>")
    parser.add_argument("--lanes", type=int, default=16,
                        help=f"RTL: multipliers along K, {_range(ARRAY_DIM)}")
    parser.add_argument("--cols", type=int, default=8,
                        help=f"RTL: columns along N, {_range(ARRAY_DIM)}")
    parser.add_argument("--out", required=True, help="Y: M×N int64 .npy")
    codebook = parser.add_argument_group(
        "SYQ codebook weights (docs/codebooks.md): W is golden's decode of the codes; the RTL "
        "decodes them in hardware")
    codebook.add_argument("--codes", help="N×K codes (sign << idx_bits | index) .npy")
    codebook.add_argument("--codebook", help="magnitude tables .npy: (1, 1, 2^idx_bits) "
                          "layer-wise or (N, 1, 2^idx_bits) row-wise")
    codebook.add_argument("--idx-bits", type=int, default=1,
                          help=f"index width, {_range(CODEBOOK_IDX_BITS)} (0: binary)")
    codebook.add_argument("--entry-bits", type=int, default=7,
                          help=f"magnitude width {_range(CODEBOOK_ENTRY_BITS)}")
    codebook.add_argument("--zero", action="store_true", help="index 0 is the zero code "
                          "(ternary)")
    codebook.add_argument("--codebook-granularity", choices=("layer", "row"), default="row",
                          help="one table for the layer or one per output channel")
    parser.add_argument("--plane-shifts", help="multi-tensor weights (docs/semantics.md §8): "
                        "--weights is P×K×N and this .npy holds the (P-1)×N exponents")
    outliers = parser.add_argument_group(
        "outliers (docs/semantics.md §6): with outlier lanes, entries beyond the dense width "
        "but within the outlier width travel as sparse outliers")
    outlier_options(outliers)
    outliers.add_argument("--act-outlier-slots", type=int,
                          help="RTL: activation outliers per beat (default: lanes)")
    outliers.add_argument("--weight-outlier-slots", type=int,
                          help="RTL: weight outliers per beat (default: lanes x cols)")
    requant = parser.add_argument_group("requantization (docs/semantics.md §3)")
    requant.add_argument("--multiplier", help=f"int{MULTIPLIER_BITS} M: an integer or a .npy "
                                              f"with N entries")
    requant.add_argument("--shift", help=f"shift s in {_range(SHIFT_RANGE)}: an integer or a "
                                         f".npy")
    requant.add_argument("--bias", default="0", help=f"int{BIAS_BITS} bias: an integer or a "
                                                     f".npy")
    requant.add_argument("--out-bits", type=int, help=f"output width {_range(OUT_BITS)}")
    requant.add_argument("--unsigned-out", action="store_true", help="u<out-bits> output")
    requant.add_argument("--relu", action="store_true", help="clamp the output at 0")
    requant.add_argument("--out-outlier-bits", type=int,
                         help=f"extract output outliers of this width (§7), up to "
                              f"{OUTLIER_BITS[1]}")
    requant.add_argument("--out-outlier-threshold", type=int,
                         help="outputs with |y| above this leave as outliers (§7); Y holds "
                              "dense + outliers")
    parser.set_defaults(run=run)


def _per_channel(text, name):
    """An integer literal (the same for every channel) or a .npy of one entry per channel."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    if not text.endswith(".npy"):
        raise UsageError(f"{name} must be an integer or a .npy file, not {text!r}")
    return load_array(name, text)


def _optional(path, name, dims=None):
    return None if path is None else load_array(name, path, dims=dims)


def run(args):
    output_file("--out", args.out)
    acts = load_array("--acts", args.acts, dims=(2,))
    weights = _optional(args.weights, "--weights", (2, 3) if args.plane_shifts else (2,))
    try:
        result = gemm.run(
            acts, weights, backend=args.backend, act_bits=args.act_bits,
            weight_bits=args.weight_bits, act_signed=not args.unsigned_acts, lanes=args.lanes,
            cols=args.cols, codes=_optional(args.codes, "--codes", (2,)),
            codebook=_optional(args.codebook, "--codebook"), idx_bits=args.idx_bits,
            entry_bits=args.entry_bits, zero=args.zero,
            codebook_granularity=args.codebook_granularity,
            plane_shifts=_optional(args.plane_shifts, "--plane-shifts", (2,)),
            act_outlier_lanes=args.act_outlier_lanes,
            weight_outlier_lanes=args.weight_outlier_lanes,
            act_outlier_bits=args.act_outlier_bits, weight_outlier_bits=args.weight_outlier_bits,
            act_outlier_slots=args.act_outlier_slots,
            weight_outlier_slots=args.weight_outlier_slots,
            multiplier=_per_channel(args.multiplier, "--multiplier"),
            shift=_per_channel(args.shift, "--shift"), bias=_per_channel(args.bias, "--bias"),
            out_bits=args.out_bits, out_signed=not args.unsigned_out, relu=args.relu,
            out_outlier_bits=args.out_outlier_bits,
            out_outlier_threshold=args.out_outlier_threshold)
    except (TypeError, ValueError) as error:
        # e.g. a reduction too long for a 44-bit accumulator, or a parameter out of range
        raise UsageError(str(error)) from None
    if result.backend == "rtl":
        print(f"olmac: RTL {result.engine}: {result.cycles} cycles for {result.beats} beats "
              f"(ideal {result.ideal_cycles:.0f}, MAC utilization {result.utilization:.1%}), "
              f"{result.cycles_per_second:,.0f} simulated cycles/s", file=sys.stderr)
    np.save(args.out, result.values.astype(np.int64))
    print(f"olmac: wrote {args.out} ({result.values.shape[0]}x{result.values.shape[1]} int64, "
          f"{args.backend})", file=sys.stderr)
