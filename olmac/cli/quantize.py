"""``olmac quantize``: a PyTorch model to an integer program artifact through
:func:`olmac.flow.quantize`."""

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from olmac.flow import DEMO_MODELS, TRAIN_LR
from .common import UsageError, array_options, layer_schemes, layer_widths, widths


def quantization_arguments(parser, default_model=None, own_models=True):
    """The options ``olmac quantize`` and ``olmac demo`` share."""
    # from olmac.spec, not golden/ or the compiler: `--help` must not wait for torch
    from olmac.spec import ACT_BITS, ACT_OUTLIER_RATIO, WEIGHT_BITS, WEIGHT_SCHEMES
    help_text = " or ".join(DEMO_MODELS)
    if own_models:
        help_text += ", or module:callable returning a trained nn.Module"
    parser.add_argument("--model", default=default_model, required=default_model is None,
                        help=help_text, **({} if own_models else {"choices": DEMO_MODELS}))
    parser.add_argument("--act-bits", type=int, default=4,
                        help=f"{ACT_BITS[0]}..{ACT_BITS[1]}")
    parser.add_argument("--weight-bits", type=int, default=4,
                        help=f"{WEIGHT_BITS[0]}..{WEIGHT_BITS[1]}")
    parser.add_argument("--scheme", default="value_aware", choices=WEIGHT_SCHEMES,
                        help="weight scheme of every layer")
    parser.add_argument("--outlier-ratio", type=float, default=1 / 64,
                        help="value_aware: weight outliers per weight of a channel")
    parser.add_argument("--no-highway", action="store_true",
                        help="requantize residual paths to the low width (the ablation)")
    parser.add_argument("--act-outlier-ratio", type=float, default=0.0,
                        help="run-time activation outliers: the fraction of each eligible "
                             "tensor's calibration values kept beyond its dense range at 16 "
                             f"bits (docs/program.md §18), {ACT_OUTLIER_RATIO[0]:g}.."
                             f"{ACT_OUTLIER_RATIO[1]:g}; 0 = none")
    parser.add_argument("--layer-scheme", metavar="NAME=SCHEME[,...]",
                        help="the weight scheme of single layers, NAME as the program "
                             "listing prints it, or first/last")
    parser.add_argument("--layer-bits", metavar="NAME=W/A[,...]",
                        help="weight/activation widths of single layers (e.g. "
                             "first=8/8,last=8/8)")


def check_act_outlier_ratio(args):
    """``--act-outlier-ratio`` within ``ACT_OUTLIER_RATIO``, or a one-line usage error."""
    from olmac.spec import ACT_OUTLIER_RATIO
    low, high = ACT_OUTLIER_RATIO
    if not low <= args.act_outlier_ratio <= high:
        raise UsageError(f"--act-outlier-ratio must be a number in {low:g}..{high:g}, not "
                         f"{args.act_outlier_ratio:g}")


def arguments(parser):
    quantization_arguments(parser)
    parser.add_argument("--calibration", help="real calibration images .npy (N × input "
                        "shape); default for the demo models: their training split")
    parser.add_argument("--pixel-max", type=int, default=16,
                        help="inputs are integer pixels 0..pixel-max")
    parser.add_argument("--pixel-scale", type=float, default=1 / 16,
                        help="the real value of one pixel step")
    parser.add_argument("--out", required=True, help="artifact directory to write")
    array_options(parser, "the program is checked against this core before it is written "
                          "(default: an array as wide as its widest layer)")
    training = parser.add_argument_group(
        "quantization-aware training", "with --epochs, fine-tune through the integer "
        "program's float view before writing it (docs/program.md §13)")
    training.add_argument("--epochs", type=int, default=0,
                          help="training epochs, 0 for post-training quantization only")
    training.add_argument("--train-images", help="real training images .npy (N × input "
                          "shape, the units of --calibration); default for the demo models: "
                          "their training split")
    training.add_argument("--train-labels", help="class indices .npy (N integers)")
    training.add_argument("--lr", type=float, default=TRAIN_LR, help="Adam's learning rate")
    training.add_argument("--seed", type=int, default=0, help="seed of the batch order")
    parser.set_defaults(run=run)


def _model(spec):
    """A demo model name, or ``module:callable`` / ``path/to/file.py:callable`` returning a
    trained ``nn.Module``; modules and files resolve from the current directory."""
    from olmac.flow import demo_data
    if spec in DEMO_MODELS:
        return demo_data(spec).model
    source, _, attribute = spec.rpartition(":")
    if not source or not attribute:
        raise UsageError(f"--model must be one of {', '.join(DEMO_MODELS)}, 'module:callable' "
                         f"or 'file.py:callable', not {spec!r}")
    try:
        if source.endswith(".py"):
            path = Path(source)
            if not path.is_file():
                raise UsageError(f"--model {spec}: no file {source}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            # as `python -m` would: a module in the current directory needs no PYTHONPATH
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(source)
        factory = getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"--model {spec}: {error}") from None
    return factory()


def _calibration(args):
    import torch
    from olmac.flow import demo_data
    if args.calibration is None:
        if args.model not in DEMO_MODELS:
            raise UsageError("--calibration is required for a model of your own")
        return demo_data(args.model).calibration
    calibration = np.load(args.calibration)
    if not np.issubdtype(calibration.dtype, np.floating):
        raise UsageError(f"--calibration ({args.calibration}) must hold real images "
                         f"(pixel × pixel-scale), not {calibration.dtype}")
    return torch.from_numpy(np.ascontiguousarray(calibration)).to(torch.float32)


def _training_data(args, calibration):
    """The training images and labels of ``--epochs``, checked; ``(None, None)`` without."""
    import torch
    from olmac.flow import check_inputs, demo_data
    if args.epochs < 0:
        raise UsageError(f"--epochs must be a non-negative integer, not {args.epochs}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, not {args.lr}")
    if args.epochs == 0:
        if args.train_images or args.train_labels:
            raise UsageError("--train-images and --train-labels need --epochs ≥ 1")
        return None, None
    if args.train_images is None and args.train_labels is None \
            and args.model in DEMO_MODELS:
        data = demo_data(args.model)
        return data.calibration, data.train_labels
    if args.train_images is None or args.train_labels is None:
        raise UsageError("--epochs needs --train-images and --train-labels for a model of "
                         "your own (or both for a demo model)")
    images, labels = np.load(args.train_images), np.load(args.train_labels)
    if not np.issubdtype(images.dtype, np.floating):
        raise UsageError(f"--train-images ({args.train_images}) must hold real images "
                         f"(pixel × pixel-scale), not {images.dtype}")
    if images.shape[1:] != tuple(calibration.shape[1:]):
        raise UsageError(f"--train-images has images of shape {images.shape[1:]}, "
                         f"--calibration {tuple(calibration.shape[1:])}: they must agree")
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != images.shape[:1] \
            or (labels < 0).any():
        raise UsageError(f"--train-labels must be {len(images)} non-negative integer class "
                         f"indices (one per image), not {labels.dtype} of shape "
                         f"{labels.shape}")
    images = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    try:
        for warning in check_inputs("--train-images", images, pixel_max=args.pixel_max,
                                    pixel_scale=args.pixel_scale):
            print(f"olmac: warning: {warning}", file=sys.stderr)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return images, torch.from_numpy(labels.astype(np.int64))


def _progress(epochs):
    """A tqdm bar on stderr, one step per epoch, showing the epoch's loss and accuracy;
    ``(report, close)``."""
    from tqdm import tqdm
    bar = tqdm(total=epochs, desc="training", unit="epoch", file=sys.stderr)

    def report(epoch, loss, accuracy):
        bar.set_postfix(loss=f"{loss:.4f}", accuracy=f"{accuracy:.2%}", refresh=False)
        bar.update()
    return report, bar.close


def run(args):
    from olmac.flow import check_inputs, quantize
    from olmac.golden import artifact
    from olmac.golden.program import ProgramError
    check_act_outlier_ratio(args)
    model = _model(args.model)
    calibration = _calibration(args)
    try:
        for warning in check_inputs("--calibration", calibration, pixel_max=args.pixel_max,
                                    pixel_scale=args.pixel_scale):
            print(f"olmac: warning: {warning}", file=sys.stderr)
    except ValueError as error:
        raise UsageError(str(error)) from None
    per_layer = dict(layer_bits=layer_widths(args.layer_bits),
                     layer_schemes=layer_schemes(args.layer_scheme))
    array_bits = widths("--array-bits", args.array_bits) if args.array_bits else None
    images, labels = _training_data(args, calibration)
    report, close = _progress(args.epochs) if args.epochs else (None, lambda: None)
    try:
        program = quantize(model, calibration, act_bits=args.act_bits,
                           weight_bits=args.weight_bits, scheme=args.scheme,
                           highway=not args.no_highway, outlier_ratio=args.outlier_ratio,
                           act_outlier_ratio=args.act_outlier_ratio,
                           pixel_max=args.pixel_max, pixel_scale=args.pixel_scale,
                           train_images=images, train_labels=labels, epochs=args.epochs,
                           lr=args.lr, seed=args.seed, report=report, **per_layer)
    except (ProgramError, TypeError, ValueError) as error:
        raise UsageError(_option_names(str(error))) from None
    finally:
        close()
    check_core(program, args.width, array_bits)
    path = artifact.save(program, args.out)
    from olmac.golden.program.lowering import lowering_notes
    print(program.describe())
    for note in lowering_notes(model, calibration):  # what was folded or dropped (§17)
        print(f"# {note}")
    print(f"olmac: wrote the integer program to {path}", file=sys.stderr)


def _option_names(message: str) -> str:
    """A lowering message about ``layer_bits``/``layer_schemes`` with the options' names."""
    for keyword, option in (("layer_bits", "--layer-bits"), ("layer_schemes", "--layer-scheme")):
        message = message.replace(keyword, option)
    return message


def check_core(program, width: int, array_bits) -> None:
    """Refuse, before anything is written, a program the network core of ``width`` and
    ``array_bits`` cannot run: one line per layer, each naming it and what makes it run."""
    from olmac.compiler import CompileError, compile_program
    try:
        compile_program(program, width=width, array_bits=array_bits)
    except CompileError as error:
        lines = str(error).splitlines()
        raise UsageError("\nolmac: error: ".join(
            [f"the network core ({width}x{width}"
             f"{', ' + '/'.join(map(str, array_bits)) + ' array' if array_bits else ''}) "
             f"cannot run {len(lines)} op(s); nothing written"] + lines)) from None
    except TypeError as error:
        raise UsageError(f"--width: {error}") from None
