"""``olmac board build|run``: build the network board preloaded with a demo network
(:func:`olmac.fpga.board.build_demo_board`), or run it over its UART and compare with golden
(:func:`olmac.board.run_demo_board`)."""

import sys
from pathlib import Path

from olmac.flow import DEMO_MODELS
from olmac.spec import BOARD_BAUD, BOARD_NAMES, MEMORY_STYLES, REQUANTIZERS
from .common import UsageError


def arguments(parser):
    commands = parser.add_subparsers(dest="board_command", required=True)
    help = "build the board top (UART host link, command protocol, network core preloaded " \
           "with a demo network) and report its resources and fmax"
    build = commands.add_parser("build", help=help, description=help)
    build.add_argument("--board", required=True, choices=BOARD_NAMES, help="the board")
    build.add_argument("--model", choices=DEMO_MODELS, default="cnn", help="the demo network")
    build.add_argument("--width", type=int, default=4, help="MAC array width")
    build.add_argument("--baud", type=int, default=BOARD_BAUD, help="the UART's baud rate")
    build.add_argument("--requantizer", choices=REQUANTIZERS, default="serial",
                       help="the network core's requantizer")
    build.add_argument("--memories", choices=MEMORY_STYLES, default="narrow",
                       help="the network core's memory style")
    build.add_argument("--target-mhz", type=float,
                       help="constrain the clock to this frequency (default: the board's)")
    build.add_argument("--build-dir", type=Path,
                       help="default: build/fpga/<board>/board_<model>_w<width>_<requantizer>"
                            "_<memories>")
    build.set_defaults(run=_build)
    help = "send test images and compare every image's logits with golden"
    run = commands.add_parser("run", help=help, description=help)
    run.add_argument("--port", required=True, help="serial port or pyserial URL")
    run.add_argument("--baud", type=int, default=BOARD_BAUD, help="the UART's baud rate")
    run.add_argument("--model", choices=DEMO_MODELS, default="cnn", help="the demo network")
    run.add_argument("--width", type=int, default=4, help="the board's MAC array width")
    run.add_argument("--images", type=int, default=20, help="the first N test images")
    run.add_argument("--load", action="store_true",
                     help="load the network's memories first (default: use the preloaded)")
    run.add_argument("--timeout", type=float, default=5.0, help="seconds per reply")
    run.set_defaults(run=_run)


def _build(args):
    from olmac.fpga.board import build_demo_board
    try:
        result = build_demo_board(args.board, model=args.model, width=args.width,
                                  baud=args.baud, requantizer=args.requantizer,
                                  memories=args.memories, target_mhz=args.target_mhz,
                                  build_dir=args.build_dir)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    except (RuntimeError, OSError) as error:
        # BuildFailed and DoesNotFit, or a missing tool
        print(f"olmac board build: {error}", file=sys.stderr)
        return 1
    print(result.report.markdown())
    print(f"bitstream: {result.bitstream} ({result.seconds:.0f} s)")
    if not result.runs_at_board_clock:
        print(f"warning: fmax is below the board clock of {result.board_clock_mhz:g} MHz",
              file=sys.stderr)


def _run(args):
    from olmac.board import BoardError, run_demo_board
    from olmac.host_link import FrameError, LinkError
    try:
        mismatches = run_demo_board(args.port, baud=args.baud, model=args.model,
                                    width=args.width, images=args.images, load=args.load,
                                    timeout=args.timeout)
    except (BoardError, FrameError, LinkError, TimeoutError, OSError) as error:
        print(f"olmac board: {error}", file=sys.stderr)
        return 1
    return 1 if mismatches else None
