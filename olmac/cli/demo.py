"""``olmac demo``: a demo network through the RTL, checked image by image against golden
(:func:`olmac.network.run_demo`)."""

from olmac.spec import STALL_SIXTEENTHS

from .quantize import check_act_outlier_ratio, quantization_arguments
from .common import UsageError, array_options, layer_schemes, layer_widths, widths


def arguments(parser):
    quantization_arguments(parser, default_model="cnn", own_models=False)
    parser.add_argument("--images", type=int, help="only the first N test images (default: all)")
    array_options(parser, "default: --weight-bits/--act-bits")
    parser.add_argument("--stall-sixteenths", type=int, default=0,
                        help="random stalls on the input and output streams, in sixteenths "
                             "of the beats" + f", {STALL_SIXTEENTHS[0]}..{STALL_SIXTEENTHS[1]}")
    parser.set_defaults(run=run)


def run(args):
    from olmac.compiler import CompileError
    from olmac.network import run_demo
    check_act_outlier_ratio(args)
    try:
        report = run_demo(model=args.model, act_bits=args.act_bits,
                          weight_bits=args.weight_bits, scheme=args.scheme,
                          highway=not args.no_highway, images=args.images,
                          outlier_ratio=args.outlier_ratio,
                          act_outlier_ratio=args.act_outlier_ratio, width=args.width,
                          stall_sixteenths=args.stall_sixteenths,
                          layer_bits=layer_widths(args.layer_bits),
                          layer_schemes=layer_schemes(args.layer_scheme),
                          array_bits=widths("--array-bits", args.array_bits)
                          if args.array_bits else None)
    except (CompileError, TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    return 1 if report["mismatching_images"] else None
