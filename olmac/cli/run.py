"""``olmac run``: an integer program artifact on its inputs (integer pixels, or real values
the host quantizes), on the golden model or on the network core's RTL
(:func:`olmac.network.run_rtl`)."""

import sys
import time

from olmac.spec import ARRAY_DIM, STALL_SIXTEENTHS

from .common import (UsageError, array_options, in_range, load_pixels, load_program,
                     output_file, widths)


def arguments(parser):
    parser.add_argument("--program", required=True, help="artifact directory (olmac quantize)")
    parser.add_argument("--inputs", required=True,
                        help="N × input shape .npy: integer pixels, or real values for a "
                             "program quantized with --real-inputs (quantized here, "
                             "docs/program.md §13)")
    parser.add_argument("--backend", choices=("golden", "rtl"), default="golden",
                        help="the golden integer model or the RTL on Verilator")
    array_options(parser, "RTL; default: as wide as the program's widest layer")
    parser.add_argument("--stall-sixteenths", type=int, default=0,
                        help="RTL: random stalls on the input and output streams, in "
                             "sixteenths of the beats" + f", {STALL_SIXTEENTHS[0]}..{STALL_SIXTEENTHS[1]}")
    parser.add_argument("--out", required=True, help="logits .npy (N × F int64)")
    parser.set_defaults(run=run)


def run(args):
    import numpy as np
    from olmac.compiler import CompileError
    from olmac.golden.program import run_integer
    from olmac.network import run_rtl
    out = output_file("--out", args.out)
    if args.backend == "rtl":
        in_range("--width", args.width, ARRAY_DIM)
        in_range("--stall-sixteenths", args.stall_sixteenths, STALL_SIXTEENTHS)
    program = load_program(args.program)
    pixels = load_pixels(program, args.inputs)
    array_bits = widths("--array-bits", args.array_bits) if args.array_bits else None
    started = time.perf_counter()
    if args.backend == "golden":
        logits = run_integer(program, pixels)
    else:
        try:
            result = run_rtl(program, pixels, width=args.width, array_bits=array_bits,
                             stall_sixteenths=args.stall_sixteenths, progress=True)
        except (CompileError, TypeError, ValueError) as error:
            raise UsageError(str(error)) from None
        logits = result.logits
        print(f"olmac: {result.cycles_per_image:.0f} cycles per image, MAC utilization "
              f"{100 * result.utilization:.1f} %", file=sys.stderr)
    try:
        np.save(out, logits.numpy())
    except OSError as error:
        raise UsageError(f"--out ({args.out}): cannot write: {error.strerror or error}") from None
    print(f"olmac: wrote {args.out} ({logits.shape[0]}x{logits.shape[1]} int64 logits, "
          f"{args.backend}, {time.perf_counter() - started:.1f} s)", file=sys.stderr)
