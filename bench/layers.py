"""The layers people write (docs/program.md §17): models of ``olmac.models.ordinary`` at
8/8, float and integer accuracy on the digits test split, and on the RTL (Verilator, no
stalls) cycles per inference and mismatches against golden."""

from olmac.golden.program import run_integer, to_pixels
from olmac.golden.program.lowering import quantize_model
from olmac.models import ordinary
from olmac.models.digits import accuracy, as_images, load_digits_split
from olmac.network import run_rtl

#: The models and how each reads a digits image.
MODELS = (("depthwise-separable", ordinary.DepthwiseSeparable, as_images),
          ("Conv1d", ordinary.SequenceCNN, ordinary.as_sequences),
          ("table activations", ordinary.SmoothActivations, as_images),
          ("Inception-style cat", ordinary.InceptionBranches, as_images),
          ("DenseNet-style cat", ordinary.DenseBlocks, as_images))


def report(rtl_images: int = 100) -> None:
    """Every model on an 8×8 array, then the depthwise-separable one on a 4×4 array, where
    its 8-channel depthwise layer's 2 words a pixel show the bands (docs/network.md §15)."""
    table(8, rtl_images, MODELS)
    table(4, rtl_images, MODELS[:1])


def table(width: int, rtl_images: int, models) -> None:
    print(f"## The layers people write: 8/8 on digits, {width}×{width} array")
    print()
    print("| model | float | integer | RTL images | mismatching | cycles/inference "
          "| MACs/inference | MAC utilization |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    split = load_digits_split()
    for name, factory, shape in models:
        x, x_test = shape(split.x_train), shape(split.x_test)
        model = ordinary.trained(factory, x, split.y_train)
        program = quantize_model(model, x, act_bits=8, weight_bits=8, act_calibration="max")
        pixels = to_pixels(x_test)
        logits = run_integer(program, pixels)
        integer = float((logits.argmax(1) == split.y_test).float().mean())
        result = run_rtl(program, pixels[:rtl_images], width=width)
        mismatching = int((result.logits != logits[:rtl_images]).any(1).sum())
        print(f"| {name} | {accuracy(model, x_test, split.y_test):.2%} | {integer:.2%} "
              f"| {rtl_images} | {mismatching} | {result.cycles_per_image:,.0f} "
              f"| {result.macs_per_image:,} | {result.utilization:.1%} |", flush=True)
    print()
    print("Max-abs activation calibration; weights MMSE per channel. A grouped convolution "
          "runs as the dense one with a block-diagonal weight, each output tile walking "
          "only its groups' input words; a concatenation is a layout (no MACs). MACs count "
          "the dense GEMMs, a grouped convolution's zero blocks included (so its "
          "utilization can pass 100 %).")
    print()
