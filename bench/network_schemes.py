"""Weight schemes and per-layer widths on the network core: the demo CNN with SYQ,
multi-tensor and mixed layers, and with 8/8 first and last layers on a 4/4 array (passes,
docs/network.md §15); accuracy (float / golden / RTL), cycles per inference and on-chip
memory, every digits test image checked against golden."""

import torch

from olmac.golden.program import run_integer, to_pixels
from olmac.network import demo_data, quantize, run_rtl

#: (label, quantize options, array W/A); the array is 4/4 unless the row says otherwise.
CONFIGURATIONS = [
    ("syq 4/4", {"scheme": "syq"}, (4, 4)),
    ("multi_tensor 4/4", {"scheme": "multi_tensor"}, (4, 4)),
    ("value_aware, first/last 8/8", {"layer_bits": {"first": (8, 8), "last": (8, 8)}},
     (4, 4)),
    ("conv1 syq 8/8, conv2 multi_tensor, conv3 mmse, fc value_aware",
     {"layer_bits": {"first": (8, 8)},
      "layer_schemes": {"conv1": "syq", "conv2": "multi_tensor", "conv3": "mmse"}}, (4, 4)),
]


def report(width: int = 8) -> None:
    data = demo_data("cnn")
    pixels = to_pixels(data.images)
    with torch.no_grad():
        float_accuracy = float((data.model(data.images).argmax(1) == data.labels)
                               .double().mean())
    print(f"## Weight schemes and per-layer widths on the RTL (demo CNN, {width}×{width} "
          f"array, Verilator)")
    print()
    print("| configuration | array W/A | float | golden | RTL | mismatching | "
          "cycles/inference | MAC utilization | on-chip memory (kbit) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, options, array in CONFIGURATIONS:
        program = quantize(data.model, data.calibration, **options)
        golden = run_integer(program, pixels)
        result = run_rtl(program, pixels, width=width, array_bits=array)
        mismatching = int((result.logits != golden).any(1).sum())
        accuracy = [float((logits.argmax(1) == data.labels).double().mean())
                    for logits in (golden, result.logits)]
        print(f"| {label} | {array[0]}/{array[1]} | {float_accuracy:.2%} | {accuracy[0]:.2%} "
              f"| {accuracy[1]:.2%} | {mismatching} | {result.cycles_per_image:,.0f} "
              f"| {result.utilization:.1%} | {sum(result.memory.values()) / 1024:.1f} |",
              flush=True)
    print()
    print("4-bit W/A and value-aware weights unless the row says otherwise (the all "
          "value-aware 4/4 CNN is the network-rtl section's row); highway on. A layer wider "
          "than the array runs as (activation digits × weight planes) passes.")
    print()
