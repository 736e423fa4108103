"""A user's or a demo model through quantization: a trained demo model with its digits data
(:func:`demo_data`) and the demo's quantization settings (:func:`quantize`).

Both use only the golden model and the float models, so the board flow (:mod:`olmac.fpga`)
and the RTL flow (:mod:`olmac.network`) build on them from below.
"""

from __future__ import annotations  # the annotations name torch types; torch loads on use

from dataclasses import dataclass

__all__ = ["DEMO_MODELS", "TRAIN_LR", "TRAIN_BATCH", "OUTSIDE_REFUSED", "RANGE_USED_WARNED", "DemoData", "demo_data",
           "check_inputs", "fine_tuner", "quantize"]

#: The demo networks of :mod:`olmac.models.demo`: the residual CNN and the MLP on 8×8
#: digits, and ``cnn28``, a larger CNN on the digits upsampled to 28×28 (for the ECP5).
DEMO_MODELS = ("cnn", "mlp", "cnn28")

#: Learning rate of quantization-aware training in the flow (Adam, from trained weights,
#: annealed to 0). Residual CNN at 2/2 with the highway, 40 epochs distilled, seeds 0–2:
#: the integer program 0.4–0.9 points below float from 10⁻², 1.9–2.6 from 3·10⁻³.
TRAIN_LR = 1e-2
#: Mini-batch of quantization-aware training in the flow.
TRAIN_BATCH = 64

#: Largest fraction of input values outside the input quantizer's range that is accepted
#: (with a warning above 0): more is the wrong units or sign, and clamped away.
OUTSIDE_REFUSED = 0.01
#: Inputs whose largest magnitude is under this fraction of the input range are warned
#: about: they use a few of the pixel steps, as data in the wrong units does.
RANGE_USED_WARNED = 0.25


@dataclass
class DemoData:
    """A trained demo model with its calibration images (the training split) and the test
    split (real images and labels); ``train_labels`` label the calibration images."""
    name: str
    model: torch.nn.Module
    calibration: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    train_labels: torch.Tensor


def demo_data(name: str) -> DemoData:
    """The cached demo model ``name`` (one of :data:`DEMO_MODELS`), trained on digits if
    needed.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`DEMO_MODELS`.
    """
    from olmac.models.demo import cnn, cnn28, large_cnn_images, mlp
    from olmac.models.digits import as_images, load_digits_split
    if name not in DEMO_MODELS:
        raise ValueError(f"model must be one of {', '.join(DEMO_MODELS)}, not {name!r}")
    split = load_digits_split()
    if name == "cnn":
        return DemoData(name, cnn(split), as_images(split.x_train), as_images(split.x_test),
                        split.y_test, split.y_train)
    if name == "cnn28":
        return DemoData(name, cnn28(split), large_cnn_images(split.x_train),
                        large_cnn_images(split.x_test), split.y_test, split.y_train)
    return DemoData(name, mlp(split), split.x_train, split.x_test, split.y_test,
                    split.y_train)


def quantize(model, calibration, *, act_bits=4, weight_bits=4, scheme="value_aware",
             highway=True, outlier_ratio=1 / 64, act_outlier_ratio=0.0, pixel_max=16,
             pixel_scale=1 / 16, real_inputs=False, train_images=None, train_labels=None,
             epochs=0, lr=TRAIN_LR, batch=TRAIN_BATCH, seed=0, report=None, layer_bits=None,
             layer_schemes=None, layer_outlier_ratios=None):
    """``golden.program.quantize_model`` with the demo's defaults: 4-bit W/A, value-aware
    weights with one outlier per 64 weights of a channel (≈ 1.6 %), MMSE scales, highway,
    no activation outliers unless ``act_outlier_ratio`` (docs/program.md §18);
    ``layer_bits``/``layer_schemes``/``layer_outlier_ratios`` set single layers' widths,
    schemes and weight-outlier ratios.

    With ``epochs > 0`` the program is fine-tuned on ``train_images`` (real, as
    ``calibration``) and ``train_labels`` (class indices) by :func:`fine_tuner`; then
    lowered again. Deterministic for given arguments.
    """
    from olmac.golden.program import quantize_model
    fine_tune = fine_tuner(model, train_images, train_labels, epochs=epochs, lr=lr,
                           batch=batch, seed=seed, report=report) if epochs else None
    return quantize_model(model, calibration, act_bits=act_bits, weight_bits=weight_bits,
                          scheme=scheme, highway=highway, outlier_ratio=outlier_ratio,
                          act_outlier_ratio=act_outlier_ratio, pixel_max=pixel_max,
                          pixel_scale=pixel_scale, real_inputs=real_inputs,
                          fine_tune=fine_tune, layer_bits=layer_bits,
                          layer_schemes=layer_schemes,
                          layer_outlier_ratios=layer_outlier_ratios)


def fine_tuner(model, train_images, train_labels, *, epochs, lr=TRAIN_LR, batch=TRAIN_BATCH,
               seed=0, report=None):
    """``quantize_model``'s ``fine_tune``: quantization-aware training of the program's float
    view (``golden.program.training.TrainableProgram``, docs/program.md §13) on
    ``train_images`` (real, as the calibration) by ``models.training.train``, distilled
    from the float ``model`` (its logits on ``train_images`` are the targets;
    ``train_labels``, class indices, are checked and score the progress): Adam from ``lr``
    annealed to 0 on a half cosine, ``epochs`` passes on shuffled mini-batches of
    ``batch``, ``seed`` for the order, ``report(epoch, loss, accuracy)`` after each epoch.
    """
    import copy

    import torch

    from olmac.golden.program.training import TrainableProgram
    from olmac.models.training import train

    def fine_tune(program, layers, options):
        classes = program.values[program.output].shape[0]
        if len(train_labels) != len(train_images) or int(train_labels.min()) < 0 \
                or int(train_labels.max()) >= classes:
            raise ValueError(f"training labels must be {len(train_images)} class indices "
                             f"in 0..{classes - 1} (the program has {classes} logits), "
                             f"not {len(train_labels)} in {int(train_labels.min())}.."
                             f"{int(train_labels.max())}")
        with torch.no_grad():  # a copy in eval mode: BatchNorm uses, not updates, its statistics
            teacher = copy.deepcopy(model).eval()(train_images.to(torch.float32))
        trainable = TrainableProgram(program, layers, options)
        train(trainable, train_images, train_labels, epochs=epochs, lr=lr, batch=batch,
              seed=seed, initialize=False, anneal=True, teacher=teacher, report=report)
        return trainable.finish()
    return fine_tune


def check_inputs(label: str, images: torch.Tensor, *, pixel_max: int = 16,
                 pixel_scale: float = 1 / 16, real_inputs: bool = False) -> list[str]:
    """Whether real inputs ``images`` (``N × input shape``) fit the range the program's input
    quantizer holds, ``0 .. pixel_max·pixel_scale`` (docs/program.md §13): the warnings, one
    line each, naming ``label`` (the argument) and the statistic. With ``real_inputs`` the
    range is the calibration's own, so only the checks that do not need one are made.

    Half a pixel step of slack is allowed at either end (that much rounds into range).

    >>> import torch
    >>> check_inputs("x", torch.tensor([[0.0, 0.05]]), pixel_max=16, pixel_scale=1 / 16)
    ['x: the largest value is 0.05, 5 % of the input range 0..1 (pixel-max 16 × pixel-scale \
0.0625): are the inputs in the wrong units?']

    Raises
    ------
    ValueError
        If ``pixel_max`` or ``pixel_scale`` is not positive; naming ``label``, for no images, a value that is NaN or infinite, constant inputs,
        or more than ``OUTSIDE_REFUSED`` of the values outside the range (with a hint when
        they look like pixels instead of pixel × pixel-scale).
    """
    import torch
    if not real_inputs and not (pixel_max > 0 and pixel_scale > 0):
        raise ValueError(f"pixel-max and pixel-scale must be positive, not {pixel_max!r} and "
                         f"{pixel_scale!r}")
    high = pixel_max * pixel_scale
    expected = f"the input range 0..{high:g} (pixel-max {pixel_max} × pixel-scale " \
               f"{pixel_scale:g})"
    within, spread = ("real inputs",) * 2 if real_inputs else \
        (f"real inputs in {expected}", f"real inputs spread over {expected}")
    values = images.detach().to(torch.float64).reshape(-1)
    if len(images) == 0 or values.numel() == 0:
        raise ValueError(f"{label}: no images (shape {tuple(images.shape)})")
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise ValueError(f"{label}: {bad} of {values.numel()} values are NaN or infinite; "
                         f"expected {within}")
    low_value, high_value = float(values.min()), float(values.max())
    if low_value == high_value:
        raise ValueError(f"{label}: every value is {low_value:g} (constant inputs "
                         f"calibrate nothing); expected {spread}")
    if real_inputs:
        return []
    slack = pixel_scale / 2
    outside = float(((values < -slack) | (values > high + slack)).double().mean())
    statistic = f"{100 * outside:.3g} % of the values lie outside {expected} " \
                f"(min {low_value:g}, max {high_value:g})"
    if outside > OUTSIDE_REFUSED:
        hint = ""
        if low_value >= 0 and high_value <= pixel_max + slack:
            hint = f"; they look like pixels 0..{pixel_max}: give pixel × pixel-scale " \
                       f"(divide by {1 / pixel_scale:g})"
        elif high_value <= slack:
            hint = "; they look negated"
        raise ValueError(f"{label}: {statistic}, more than {100 * OUTSIDE_REFUSED:g} %{hint}")
    warnings = [f"{label}: {statistic}; they are clamped"] if outside > 0 else []
    peak = float(values.abs().max())
    if peak < RANGE_USED_WARNED * high:
        warnings.append(f"{label}: the largest value is {peak:g}, {100 * peak / high:.3g} % of "
                        f"{expected}: are the inputs in the wrong units?")
    return warnings
