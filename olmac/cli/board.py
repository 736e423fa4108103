"""``olmac board build|run``: build the network board preloaded with a demo network or an
integer program artifact (:func:`olmac.fpga.board.build_board`), or run it over its UART,
optionally against golden (:func:`olmac.board.run_board`)."""

import sys
from pathlib import Path

from olmac.flow import DEMO_MODELS
from olmac.spec import BOARD_BAUD, BOARD_DEFAULTS, BOARD_NAMES, MEMORY_STYLES, REQUANTIZERS
from .common import UsageError, load_pixels, load_program


def _network_arguments(parser, what):
    network = parser.add_mutually_exclusive_group()
    network.add_argument("--model", choices=DEMO_MODELS,
                         help=f"the demo network {what} (default: cnn)")
    network.add_argument("--program", type=Path,
                         help=f"an integer program artifact directory (olmac quantize) {what}")


def arguments(parser):
    commands = parser.add_subparsers(dest="board_command", required=True)
    help = "build the board top (UART host link, command protocol, network core preloaded " \
           "with a demo network or an integer program) and report its resources and fmax"
    build = commands.add_parser("build", help=help, description=help)
    build.add_argument("--board", required=True, choices=BOARD_NAMES, help="the board")
    _network_arguments(build, "to preload; its memories size the core")
    defaults = "; ".join(f"{board}: {', '.join(map(str, options.values()))}"
                         for board, options in BOARD_DEFAULTS.items())
    build.add_argument("--width", type=int,
                       help=f"MAC array width (default by board; width, requantizer, "
                            f"memories, walk stages, requantizer stages, fetch ahead, "
                            f"reducer stage: "
                            f"{defaults})")
    build.add_argument("--baud", type=int, default=BOARD_BAUD, help="the UART's baud rate")
    build.add_argument("--requantizer", choices=REQUANTIZERS,
                       help="the network core's requantizer (default by board)")
    build.add_argument("--memories", choices=MEMORY_STYLES,
                       help="the network core's memory style (default by board)")
    build.add_argument("--target-mhz", type=float,
                       help="constrain the clock to this frequency (default: the board's)")
    build.add_argument("--build-dir", type=Path,
                       help="default: build/fpga/<board>/board_<model or artifact name>_w"
                            "<width>_<requantizer>_<memories>")
    build.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                       help="stop the build after this many seconds (default: 3600; an "
                            "ECP5-85F build of a wide core on a loaded machine can take longer)")
    build.set_defaults(run=_build)
    help = "send images and print their logits, or compare them with golden"
    run = commands.add_parser("run", help=help, description=help)
    run.add_argument("--port", required=True, help="serial port or pyserial URL")
    run.add_argument("--baud", type=int, default=BOARD_BAUD, help="the UART's baud rate")
    _network_arguments(run, "the board runs")
    run.add_argument("--inputs", type=Path,
                     help="integer pixels .npy, N × input shape (with --program; the demo "
                          "takes its test images)")
    run.add_argument("--images", type=int, default=20,
                     help="the demo's first N test images (without --program)")
    run.add_argument("--width", type=int,
                     help="the board's MAC array width (default: as the board reports)")
    run.add_argument("--load", action="store_true",
                     help="load the network's memories first (default: use the preloaded)")
    run.add_argument("--check", action="store_true",
                     help="compare every image's logits with golden (always for the demo)")
    run.add_argument("--out", type=Path, help="write the logits .npy (N × F int64)")
    run.add_argument("--timeout", type=float, default=5.0, help="seconds per reply")
    run.set_defaults(run=_run)


def _build(args):
    from olmac.compiler import CompileError
    from olmac.fpga.board import board_defaults, build_board, what_would_fit
    from olmac.fpga.build import DoesNotFit
    if not args.timeout > 0 or args.timeout == float("inf"):
        raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    program = load_program(args.program) if args.program else None
    width = board_defaults(args.board)["width"] if args.width is None else args.width
    try:
        result = build_board(args.board, model=args.model or "cnn", program=program,
                             name=args.program.name if args.program else None,
                             width=width, baud=args.baud, requantizer=args.requantizer,
                             memories=args.memories, target_mhz=args.target_mhz,
                             build_dir=args.build_dir, timeout_s=args.timeout,
                             progress=lambda line: print(f"olmac board build: {line}",
                                                         file=sys.stderr, flush=True))
    except CompileError as error:
        raise UsageError(f"--program ({args.program}): {error}") from None
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    except DoesNotFit as error:
        network = f"--program {args.program}" if args.program else f"--model {args.model or 'cnn'}"
        raise UsageError(f"{network} at --width {width} does not fit the {args.board} "
                         f"({'; '.join(error.over) or 'nextpnr could not place it'}); try "
                         f"{what_would_fit(args.board, width)}") from None
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
    import numpy as np
    from olmac.board import BoardError, compare_with_golden, demo_inputs, run_board
    from olmac.compiler import CompileError
    from olmac.host_link import FrameError, LinkError
    if args.program:
        if args.inputs is None:
            raise UsageError("--inputs is required with --program")
        program = load_program(args.program)
        pixels, labels = load_pixels(program, args.inputs), None
    else:
        if args.inputs is not None:
            raise UsageError("--inputs needs --program (the demo takes its test images)")
        if args.images < 1:
            raise UsageError(f"--images must be at least 1, not {args.images}")
        program, pixels, labels = demo_inputs(args.model or "cnn", images=args.images)
    try:
        logits = run_board(args.port, program, pixels, width=args.width, baud=args.baud,
                           load=args.load, timeout=args.timeout)
    except (BoardError, FrameError, LinkError, TimeoutError, OSError) as error:
        print(f"olmac board: {error}", file=sys.stderr)
        return 1
    except CompileError as error:
        raise UsageError(f"--program ({args.program}): {error}") from None
    except TypeError as error:  # compile_program's width check
        raise UsageError(f"--width: {error}") from None
    if args.out:
        np.save(args.out, logits.numpy())
        print(f"wrote {args.out} ({logits.shape[0]}x{logits.shape[1]} int64 logits)")
    if args.check or not args.program:
        return 1 if compare_with_golden(program, pixels, logits, labels) else None
    for index, row in enumerate(logits.tolist()):
        print(f"image {index}: class {row.index(max(row))}, logits {row}")
