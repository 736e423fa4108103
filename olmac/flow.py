"""A user's or a demo model through quantization: a trained demo model with its digits data
(:func:`demo_data`) and the demo's quantization settings (:func:`quantize`).

Both use only the golden model and the float models, so the board flow (:mod:`olmac.fpga`)
and the RTL flow (:mod:`olmac.network`) build on them from below.
"""

from __future__ import annotations  # the annotations name torch types; torch loads on use

from dataclasses import dataclass

__all__ = ["DEMO_MODELS", "DemoData", "demo_data", "quantize"]

#: The demo networks of :mod:`olmac.models.demo`.
DEMO_MODELS = ("cnn", "mlp")


@dataclass
class DemoData:
    """A trained demo model with its calibration images (the training split) and the test
    split (real images and labels)."""
    name: str
    model: torch.nn.Module
    calibration: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor


def demo_data(name: str) -> DemoData:
    """The cached demo model ``name`` (``cnn`` or ``mlp``), trained on digits if needed.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`DEMO_MODELS`.
    """
    from olmac.models.demo import cnn, mlp
    from olmac.models.digits import as_images, load_digits_split
    if name not in DEMO_MODELS:
        raise ValueError(f"model must be one of {', '.join(DEMO_MODELS)}, not {name!r}")
    split = load_digits_split()
    if name == "cnn":
        return DemoData(name, cnn(split), as_images(split.x_train), as_images(split.x_test),
                        split.y_test)
    return DemoData(name, mlp(split), split.x_train, split.x_test, split.y_test)


def quantize(model, calibration, *, act_bits=4, weight_bits=4, scheme="value_aware",
             highway=True, outlier_ratio=1 / 64, pixel_max=16, pixel_scale=1 / 16):
    """``golden.program.quantize_model`` with the demo's defaults: 4-bit W/A, value-aware
    weights with one outlier per 64 weights of a channel (≈ 1.6 %), MMSE scales, highway."""
    from olmac.golden.program import quantize_model
    return quantize_model(model, calibration, act_bits=act_bits, weight_bits=weight_bits,
                          scheme=scheme, highway=highway, outlier_ratio=outlier_ratio,
                          pixel_max=pixel_max, pixel_scale=pixel_scale)
