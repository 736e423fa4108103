"""``olmac quantize``: a PyTorch model to an integer program artifact through
:func:`olmac.flow.quantize`."""

import importlib
import importlib.util
import math
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from olmac.flow import DEMO_MODELS, TRAIN_LR
from .common import (UsageError, array_options, in_range, layer_schemes, layer_widths,
                     load_array, widths)

#: The pixels' defaults: digits are 0..16, standing for 0..1.
PIXEL_MAX, PIXEL_SCALE = 16, 1 / 16


def quantization_arguments(parser, default_model=None, own_models=True, budget=False):
    """The options ``olmac quantize`` and ``olmac demo`` share; with ``budget``,
    ``--budget-bits`` and ``--budget-kbit`` too, which exclude ``--weight-bits`` and each
    other."""
    # from olmac.spec, not golden/ or the compiler: `--help` must not wait for torch
    from olmac.spec import ACT_BITS, ACT_OUTLIER_RATIO, WEIGHT_BITS, WEIGHT_SCHEMES
    help_text = ", ".join(DEMO_MODELS)
    if own_models:
        help_text += (", module:callable or file.py:callable returning a trained nn.Module, "
                      "or a float ONNX model file.onnx (opset ≥ 13)")
    parser.add_argument("--model", default=default_model, required=default_model is None,
                        help=help_text, **({} if own_models else {"choices": DEMO_MODELS}))
    parser.add_argument("--act-bits", type=int, default=4,
                        help=f"{ACT_BITS[0]}..{ACT_BITS[1]}")
    widths = parser.add_mutually_exclusive_group() if budget else parser
    widths.add_argument("--weight-bits", type=int, default=4,
                        help=f"{WEIGHT_BITS[0]}..{WEIGHT_BITS[1]}")
    if budget:
        widths.add_argument("--budget-bits", type=float, metavar="B",
                            help=f"instead: each layer's weight width (and a value-aware "
                                 f"layer's weight-outlier ratio, 0, 1/64 or 1/32) chosen by "
                                 f"its measured sensitivity so that the average bits per "
                                 f"weight, outlier slots included, is at most B, a number in "
                                 f"{WEIGHT_BITS[0]}.."
                                 f"{WEIGHT_BITS[1]}; --layer-bits entries stay fixed "
                                 f"(docs/program.md §20)")
        widths.add_argument("--budget-kbit", type=float, metavar="K",
                            help="instead: the widths and weight-outlier ratios chosen so "
                                 "that the program compiled for the core of --width and "
                                 "--array-bits takes at most K kbit (1024 bits) of on-chip "
                                 "memory in all (weights, activations, parameters, program, "
                                 "tables), a positive number (docs/program.md §20)")
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


def check_budget(args):
    """``--budget-bits``, where given, a number within ``WEIGHT_BITS``, and
    ``--budget-kbit`` a positive number, or a one-line usage error (before any work; the
    least a model allows is checked once it is lowered)."""
    from olmac.spec import WEIGHT_BITS
    low, high = WEIGHT_BITS
    if args.budget_bits is not None and not (math.isfinite(args.budget_bits)
                                             and low <= args.budget_bits <= high):
        raise UsageError(f"--budget-bits must be a number in {low}..{high} (average bits per "
                         f"weight), not {args.budget_bits:g}")
    if args.budget_kbit is not None and not (math.isfinite(args.budget_kbit)
                                             and args.budget_kbit > 0):
        raise UsageError(f"--budget-kbit must be a positive number (kbit of on-chip memory), "
                         f"not {args.budget_kbit:g}")


def arguments(parser):
    quantization_arguments(parser, budget=True)
    parser.add_argument("--calibration", help="real calibration images .npy (N × input "
                        "shape); default for the demo models: their training split")
    parser.add_argument("--real-inputs", action="store_true",
                        help="the inputs are real values (standardized features, negative "
                             "too), quantized by `olmac run` with a scale calibrated here "
                             "(docs/program.md §13); default: integer pixels")
    parser.add_argument("--pixel-max", type=int,
                        help=f"inputs are integer pixels 0..pixel-max, 1..65535 (default: "
                             f"{PIXEL_MAX})")
    parser.add_argument("--pixel-scale", type=float,
                        help=f"the real value of one pixel step, positive (default: "
                             f"1/{1 / PIXEL_SCALE:g})")
    parser.add_argument("--out", required=True, help="artifact directory to write")
    parser.add_argument("--no-tables", action="store_true",
                        help="check against a network core without the lookup-table part "
                             "(Sigmoid, Tanh, Hardswish, SiLU, GELU are then refused)")
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
    """A demo model name, ``module:callable`` / ``path/to/file.py:callable`` returning a
    trained ``nn.Module`` (modules and files resolve from the current directory), or a
    float ONNX model ``path/to/model.onnx`` (:func:`olmac.models.onnx_import.load_onnx`)."""
    from torch import nn
    from olmac.flow import demo_data
    if spec in DEMO_MODELS:
        return demo_data(spec).model
    if spec.endswith(".onnx"):
        from olmac.models.onnx_import import OnnxError, load_onnx
        if not Path(spec).is_file():
            raise UsageError(f"--model: no file {spec}")
        try:
            return load_onnx(spec)
        except OnnxError as error:
            raise UsageError(f"--model {error}") from None
    source, _, attribute = spec.rpartition(":")
    if not source or not attribute:
        raise UsageError(f"--model must be one of {', '.join(DEMO_MODELS)}, 'module:callable', "
                         f"'file.py:callable' or 'model.onnx', not {spec!r}")
    if source.endswith(".py") and not Path(source).is_file():
        raise UsageError(f"--model {spec}: no file {source}")
    try:
        if source.endswith(".py"):
            path = Path(source)
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            # as `python -m` would: a module in the current directory needs no PYTHONPATH
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(source)
        factory = getattr(module, attribute)
        model = factory()
    except Exception as error:  # the user's own code: one line saying where it failed
        raise UsageError(f"--model {spec}: {type(error).__name__}: "
                         f"{' '.join(str(error).split())}{_where(error)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec}: {attribute}() must return an nn.Module, not "
                         f"{type(model).__name__}")
    return model


def _where(error: Exception) -> str:
    """`` (at file:line)`` of the innermost frame of ``error`` outside olmac, if any."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if "importlib" not in frame.filename]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if len(frames) > 1 else ""


def _calibration(args):
    import torch
    from olmac.flow import demo_data
    if args.calibration is None:
        if args.model not in DEMO_MODELS:
            raise UsageError("--calibration is required for a model of your own")
        return demo_data(args.model).calibration
    calibration = load_array("--calibration", args.calibration, real=True)
    if calibration.dtype != np.float64:
        raise UsageError(f"--calibration ({args.calibration}) must hold real "
                         f"{'values' if args.real_inputs else 'images (pixel × pixel-scale)'}"
                         f", not {calibration.dtype}")
    if calibration.ndim < 2:
        raise UsageError(f"--calibration ({args.calibration}) must be N samples of the "
                         f"model's input shape, not shape {calibration.shape}")
    return torch.from_numpy(calibration).to(torch.float32)


def _check_fits(model, calibration, path):
    """Run the float model on two calibration samples, so that samples of the wrong shape
    are named here rather than deep in tracing."""
    import torch
    try:
        with torch.no_grad():
            model.eval()(calibration[:2])
    except Exception as error:  # whatever the user's forward raises on them
        raise UsageError(f"--calibration ({path}): the model cannot run on samples of shape "
                         f"{tuple(calibration.shape[1:])}: {' '.join(str(error).split())}"
                         ) from None


def _pixels(args) -> tuple[int, float]:
    """``--pixel-max`` and ``--pixel-scale``, checked (defaults for pixel inputs)."""
    if args.real_inputs:
        if args.pixel_max is not None or args.pixel_scale is not None:
            raise UsageError("--pixel-max and --pixel-scale describe pixel inputs; with "
                             "--real-inputs the scale is calibrated")
        return PIXEL_MAX, PIXEL_SCALE
    pixel_max = PIXEL_MAX if args.pixel_max is None else args.pixel_max
    pixel_scale = PIXEL_SCALE if args.pixel_scale is None else args.pixel_scale
    in_range("--pixel-max", pixel_max, (1, (1 << 16) - 1))
    if not (math.isfinite(pixel_scale) and pixel_scale > 0):
        raise UsageError(f"--pixel-scale must be a positive real number, not {pixel_scale}")
    return pixel_max, pixel_scale


def _training_data(args, calibration):
    """The training images and labels of ``--epochs``, checked; ``(None, None)`` without."""
    import torch
    from olmac.flow import demo_data
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
    images = load_array("--train-images", args.train_images, real=True)
    labels = load_array("--train-labels", args.train_labels)
    if not np.issubdtype(images.dtype, np.floating):
        raise UsageError(f"--train-images ({args.train_images}) must hold real images "
                         f"(pixel × pixel-scale), not {images.dtype}")
    if images.shape[1:] != tuple(calibration.shape[1:]):
        raise UsageError(f"--train-images has images of shape {images.shape[1:]}, "
                         f"--calibration {tuple(calibration.shape[1:])}: they must agree")
    if labels.shape != images.shape[:1] or (labels < 0).any():
        raise UsageError(f"--train-labels must be {len(images)} non-negative integer class "
                         f"indices (one per image), not {labels.dtype} of shape "
                         f"{labels.shape}")
    images = torch.from_numpy(images).to(torch.float32)
    _check_inputs("--train-images", images, args)
    return images, torch.from_numpy(labels.astype(np.int64))


def _check_inputs(label, images, args):
    """``olmac.flow.check_inputs`` of the images given as ``label``: its warnings printed,
    its refusal a :class:`UsageError`."""
    from olmac.flow import check_inputs
    pixel_max, pixel_scale = _pixels(args)
    try:
        for warning in check_inputs(label, images, pixel_max=pixel_max,
                                    pixel_scale=pixel_scale, real_inputs=args.real_inputs):
            print(f"olmac: warning: {warning}", file=sys.stderr)
    except ValueError as error:
        raise UsageError(str(error)) from None


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
    from olmac.flow import quantize
    from olmac.golden import artifact
    from olmac.golden.program import ProgramError
    check_act_outlier_ratio(args)
    check_budget(args)
    pixel_max, pixel_scale = _pixels(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out ({args.out}) is a file, not an artifact directory")
    model = _model(args.model)
    calibration = _calibration(args)
    if args.calibration is not None:
        _check_fits(model, calibration, args.calibration)
    _check_inputs("--calibration", calibration, args)
    per_layer = dict(layer_bits=layer_widths(args.layer_bits),
                     layer_schemes=layer_schemes(args.layer_scheme))
    array_bits = widths("--array-bits", args.array_bits) if args.array_bits else None
    images, labels = _training_data(args, calibration)
    weight_bits, budget = args.weight_bits, None
    on_chip = _on_chip_bits(args.width, array_bits, not args.no_tables)
    if args.budget_bits is not None or args.budget_kbit is not None:
        budget = _allocate(args, model, calibration, per_layer, pixel_max, pixel_scale,
                           on_chip)
        per_layer["layer_bits"], weight_bits = budget[0].layer_bits, budget[0].weight_bits
        per_layer["layer_outlier_ratios"] = budget[0].outlier_ratios
    report, close = _progress(args.epochs) if args.epochs else (None, lambda: None)
    try:
        program = quantize(model, calibration, act_bits=args.act_bits,
                           weight_bits=weight_bits, scheme=args.scheme,
                           highway=not args.no_highway, outlier_ratio=args.outlier_ratio,
                           act_outlier_ratio=args.act_outlier_ratio,
                           pixel_max=pixel_max, pixel_scale=pixel_scale,
                           real_inputs=args.real_inputs, train_images=images,
                           train_labels=labels, epochs=args.epochs, lr=args.lr, seed=args.seed,
                           report=report, **per_layer)
    except (ProgramError, TypeError, ValueError) as error:
        raise UsageError(_option_names(str(error))) from None
    finally:
        close()
    check_core(program, args.width, array_bits, tables=not args.no_tables)
    for name, inputs in _outlier_free_layers(program, args.outlier_ratio,
                                             per_layer.get("layer_outlier_ratios") or {}):
        print(f"olmac: warning: --outlier-ratio {args.outlier_ratio:g} keeps no weight "
              f"outlier in layer {name}: each output channel keeps ⌊ratio·{inputs}⌋ = 0 "
              f"(at least 1/{inputs} keeps one)", file=sys.stderr)
    memory = on_chip(program) if budget is not None else None
    if args.budget_kbit is not None and memory > args.budget_kbit * 1024:
        # trained weights keep ⌊r·K⌋ outliers a channel, but a beat may now hold more
        raise UsageError(f"--budget-kbit {args.budget_kbit:g}: the final program takes "
                         f"{memory / 1024:.3f} kbit on chip, more than the "
                         f"{budget[0].memory_bits / 1024:.3f} of the chosen allocation "
                         f"(training moved weight outliers into one beat); nothing written")
    try:
        path = artifact.save(program, out)
        if budget is not None:
            _record(out, *budget, program, memory)
    except OSError as error:
        raise UsageError(f"--out ({args.out}): cannot write the artifact: "
                         f"{error.strerror or error}") from None
    from olmac.golden.program.lowering import lowering_notes
    print(program.describe())
    for note in lowering_notes(model, calibration):  # what was folded or dropped (§17)
        print(f"# {note}")
    if budget is not None:
        for line in _budget_table(*budget, program, args.act_outlier_ratio, memory):
            print(f"# {line}")
    print(f"olmac: wrote the integer program to {path}", file=sys.stderr)


def _on_chip_bits(width: int, array_bits, tables: bool):
    """What a program takes on chip compiled for the core of ``width``, ``array_bits`` and
    ``tables``: the bits of all its memories (``olmac.network.memory_bits``), infinite if
    that core cannot run it."""
    from olmac.compiler import CompileError, compile_program
    from olmac.network import memory_bits

    def bits(program) -> float:
        try:
            compiled = compile_program(program, width=width, array_bits=array_bits,
                                       tables=tables)
        except (CompileError, TypeError):  # check_core names why, for the final program
            return math.inf
        return sum(memory_bits(compiled).values())
    return bits


def _allocate(args, model, calibration, per_layer, pixel_max, pixel_scale, on_chip):
    """``--budget-bits`` or ``--budget-kbit``: the sensitivities of ``model``'s layers,
    measured with the options of ``args``, and the allocation chosen under the budget (each
    with a progress bar on stderr); ``(allocation, sensitivity)``."""
    from tqdm import tqdm
    from olmac.budget import choose, choose_kbit, measure_sensitivity
    from olmac.golden.program import ProgramError
    bars = []  # each opened at its first report, once the number of lowerings is known

    def progress(name):
        def report(done, total):
            if not bars or bars[-1].desc != name:
                bars.append(tqdm(total=total, desc=name, unit="lowering", file=sys.stderr))
            bars[-1].update(done - bars[-1].n)
        return report
    try:
        sensitivity = measure_sensitivity(
            model, calibration, act_bits=args.act_bits, scheme=args.scheme,
            highway=not args.no_highway, outlier_ratio=args.outlier_ratio,
            act_outlier_ratio=args.act_outlier_ratio, pixel_max=pixel_max,
            pixel_scale=pixel_scale, real_inputs=args.real_inputs,
            budget_bits=args.budget_bits, budget_kbit=args.budget_kbit, memory_bits=on_chip,
            report=progress("sensitivity"), **per_layer)
        if args.budget_kbit is not None:
            return choose_kbit(sensitivity, args.budget_kbit, on_chip,
                               report=progress("allocations")), sensitivity
        return choose(sensitivity, args.budget_bits,
                      report=progress("allocations")), sensitivity
    except (ProgramError, TypeError, ValueError) as error:
        raise UsageError(_option_names(str(error))) from None
    finally:
        for bar in bars:
            bar.close()


def _budget_table(allocation, sensitivity, program, act_outlier_ratio, memory) -> list[str]:
    """What ``--budget-bits``/``--budget-kbit`` chose, one line per layer (its
    weight-outlier ratio where it is value-aware, the bits per weight its weights take, the
    ``--act-outlier-ratio`` of the value it reads where that has activation outliers), then
    the averages, the on-chip memory (``memory`` bits) and the KL divergence of the written
    program's logits from the float model's."""
    from fractions import Fraction
    from olmac.budget import measured_kl
    from olmac.golden.program import Gemm
    from olmac.golden.program.sensitivity import weight_storage_bits
    budget = f"{allocation.budget_bits:g} bits per weight" if allocation.budget_kbit is None \
        else f"{allocation.budget_kbit:g} kbit of on-chip memory"
    lines = [f"budget {budget}: widths and weight-outlier ratios by sensitivity (ΔKL: the "
             f"logits' KL increase, in nats, with the layer alone at its choice), the "
             f"allocation of least joint KL among those measured (docs/program.md §20)",
             f"{'layer':16s} {'weights':>8s} {'W/A':>5s} {'w outliers':>10s} "
             f"{'bits/w':>7s} {'act outliers':>12s} {'ΔKL':>10s}"]
    for op in program.ops:
        if isinstance(op, Gemm):
            value = program.values[op.input]
            count = op.in_features * op.out_features
            outliers = str(Fraction(allocation.outlier_ratios[op.name])) \
                if op.name in allocation.outlier_ratios else "-"
            ratio = f"{100 * act_outlier_ratio:g} %" if value.outliers else "none"
            change = f"{allocation.sensitivity[op.name]:+10.5f}" \
                if op.name in allocation.sensitivity else f"{'fixed':>10s}"
            lines.append(f"{op.name:16s} {count:8d} {op.weight_bits:>2d}/{value.bits:<2d} "
                         f"{outliers:>10s} {weight_storage_bits(op) / count:7.3f} "
                         f"{ratio:>12s} {change}")
    lines.append(f"average {allocation.average_bits:.3f} bits per weight; on-chip memory "
                 f"{memory / 1024:.3f} kbit; Σ ΔKL {allocation.total_sensitivity:.5f}; KL "
                 f"from the float model {allocation.kl:.5f} (max-abs scales; all free layers "
                 f"at 8 bits: {sensitivity.reference_kl:.5f}), of this program "
                 f"{measured_kl(sensitivity, program):.5f}")
    return lines


def _record(directory: Path, allocation, sensitivity, program, memory) -> None:
    """``budget.json`` beside the artifact: the budget, what each GEMM layer got, and what
    the allocation reaches (docs/program.md §20)."""
    import json
    from olmac.golden.program import Gemm
    record = {
        "budget": {"bits_per_weight": allocation.budget_bits,
                   "kbit": allocation.budget_kbit},
        "layers": {op.name: {"weight_bits": op.weight_bits,
                             "act_bits": program.values[op.input].bits,
                             "weight_outlier_ratio": allocation.outlier_ratios.get(op.name),
                             "fixed": op.name in sensitivity.fixed}
                   for op in program.ops if isinstance(op, Gemm)},
        "average_bits_per_weight": allocation.average_bits,
        "on_chip_bits": memory,
        "kl": allocation.kl}
    (directory / "budget.json").write_text(json.dumps(record, indent=1) + "\n")


def _outlier_free_layers(program, ratio: float, chosen: dict) -> list[tuple[str, int]]:
    """``(name, K)`` of every value-aware layer where ``ratio`` (not a budget's choice in
    ``chosen``) keeps no weight outlier: thresholds are per output channel
    (docs/value_aware.md §1), so a channel of ``K`` weights keeps ``⌊ratio·K⌋``, which a
    ratio of 1 % makes 0 for ``K < 100``."""
    from olmac.golden.program import Gemm
    from olmac.golden.value_aware import outliers_per_group
    return [(op.name, op.in_features) for op in program.ops
            if isinstance(op, Gemm) and op.scheme == "value_aware" and op.name not in chosen
            and 0 < ratio and outliers_per_group(ratio, op.in_features) == 0]


def _option_names(message: str) -> str:
    """A lowering message about ``layer_bits``/``layer_schemes`` with the options' names."""
    for keyword, option in (("layer_bits", "--layer-bits"), ("layer_schemes", "--layer-scheme"),
                            ("budget_bits", "--budget-bits"), ("budget_kbit", "--budget-kbit")):
        message = message.replace(keyword, option)
    return message


def check_core(program, width: int, array_bits, *, tables: bool = True) -> None:
    """Refuse, before anything is written, a program the network core of ``width`` and
    ``array_bits`` (with a lookup-table part if ``tables``) cannot run: one line per layer,
    each naming it and what makes it run."""
    from olmac.compiler import CompileError, compile_program
    try:
        compile_program(program, width=width, array_bits=array_bits, tables=tables)
    except CompileError as error:
        lines = str(error).splitlines()
        raise UsageError("\nolmac: error: ".join(
            [f"the network core ({width}x{width}"
             f"{', ' + '/'.join(map(str, array_bits)) + ' array' if array_bits else ''}"
             f"{'' if tables else ', no tables'}) "
             f"cannot run {len(lines)} op(s); nothing written"] + lines)) from None
    except TypeError as error:
        raise UsageError(f"--width: {error}") from None
