"""``olmac gemm-demo``: a random GEMM through golden and the RTL (:func:`olmac.gemm.demo`)."""

from .common import UsageError


def arguments(parser):
    parser.add_argument("--m", type=int, default=8, help="rows of A and Y")
    parser.add_argument("--k", type=int, default=300, help="the reduction length")
    parser.add_argument("--n", type=int, default=20, help="columns of W and Y")
    parser.add_argument("--bits", type=int, default=4, help="width of A and W (signed)")
    parser.add_argument("--lanes", type=int, default=16, help="multipliers along K")
    parser.add_argument("--cols", type=int, default=8, help="columns along N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random operands")
    parser.set_defaults(run=run)


def run(args):
    from olmac.gemm import demo
    try:
        mismatches = demo(m=args.m, k=args.k, n=args.n, bits=args.bits, lanes=args.lanes,
                          cols=args.cols, seed=args.seed)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    return 1 if mismatches else None
