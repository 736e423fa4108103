"""``olmac build``: a MAC array fed from block RAM, built for a board
(:func:`olmac.fpga.build.build`)."""

import argparse
import sys
from pathlib import Path

from olmac.spec import ACT_BITS, BOARD_NAMES, MULTIPLIERS, WEIGHT_BITS
from .common import UsageError, outlier_options


def arguments(parser):
    from olmac.spec import ARRAY_DIM
    parser.add_argument("--board", required=True, choices=BOARD_NAMES, help="the board")
    parser.add_argument("--lanes", type=int, default=8,
                        help=f"multipliers per column (K), {ARRAY_DIM[0]}..{ARRAY_DIM[1]}")
    parser.add_argument("--cols", type=int, default=8,
                        help=f"columns (N), {ARRAY_DIM[0]}..{ARRAY_DIM[1]}")
    parser.add_argument("--bits", type=int, default=4,
                        help=f"activation and weight width, {ACT_BITS[0]}..{ACT_BITS[1]}")
    parser.add_argument("--act-bits", type=int, help="activation width (overrides --bits)")
    parser.add_argument("--weight-bits", type=int, help=f"weight width (overrides --bits), "
                                                        f"{WEIGHT_BITS[0]}..{WEIGHT_BITS[1]}")
    parser.add_argument("--unsigned-acts", action="store_true",
                        help="unsigned activations (default signed)")
    parser.add_argument("--max-k", type=int, default=256,
                        help="reduction length: `last` every ceil(max_k/lanes) beats")
    outlier_options(parser)
    parser.add_argument("--depth", type=int, default=256, help="words in each memory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the memory contents")
    parser.add_argument("--target-mhz", type=float,
                        help="constrain the clock to this frequency (default: the board's)")
    parser.add_argument("--skid", action=argparse.BooleanOptionalAction,
                        help="a skid buffer between the block-RAM feeder and the array "
                             "(default: on for ECP5, off for iCE40)")
    parser.add_argument("--multipliers", choices=MULTIPLIERS,
                        help="where multiplies go (default: hybrid on ECP5, booth on iCE40)")
    parser.add_argument("--build-dir", type=Path,
                        help="default: build/fpga/<board>/<configuration>")
    parser.add_argument("--program", action="store_true",
                        help="program the board after the build (never by default)")
    parser.set_defaults(run=run)


def run(args):
    import subprocess
    from olmac.fpga.build import build
    try:
        result = build(
            args.board, lanes=args.lanes, cols=args.cols, act_bits=args.act_bits or args.bits,
            weight_bits=args.weight_bits or args.bits, act_signed=not args.unsigned_acts,
            max_k=args.max_k, act_outlier_lanes=args.act_outlier_lanes,
            weight_outlier_lanes=args.weight_outlier_lanes,
            act_outlier_bits=args.act_outlier_bits,
            weight_outlier_bits=args.weight_outlier_bits, depth=args.depth, seed=args.seed,
            skid=args.skid, multipliers=args.multipliers, target_mhz=args.target_mhz,
            build_dir=args.build_dir, program=args.program)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        # BuildFailed and DoesNotFit, a missing tool, or a programmer that failed
        print(f"olmac build: {error}", file=sys.stderr)
        return 1
    macs = args.lanes * args.cols
    print(result.report.markdown())
    print(f"bitstream: {result.bitstream} ({result.seconds:.0f} s); {macs} MACs/cycle, "
          f"{macs * result.report.fmax_mhz / 1e3:.2f} GMAC/s peak at fmax; "
          f"{'programmed' if result.programmed else 'not programmed'}")
    if not result.runs_at_board_clock:
        print(f"warning: fmax is below the board clock of {result.board_clock_mhz:g} MHz",
              file=sys.stderr)
