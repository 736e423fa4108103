"""Weight schemes and per-layer widths on the network core: the demo CNN with SYQ,
multi-tensor and mixed layers, and with 8/8 first and last layers on a 4/4 array (passes,
docs/network.md §15); accuracy (float / golden / RTL), cycles per inference, weight memory
(with the SYQ codebook decoder and without, §17) and on-chip memory, every digits test
image checked against golden."""

import torch

from olmac.golden.program import run_integer, to_pixels
from olmac.network import demo_data, quantize, run_rtl

#: (label, quantize options, array W/A, the core has the SYQ decoder).
CONFIGURATIONS = [
    ("syq 4/4, codes + decoder", {"scheme": "syq"}, (4, 4), True),
    ("syq 4/4, dense weights", {"scheme": "syq"}, (4, 4), False),
    ("multi_tensor 4/4", {"scheme": "multi_tensor"}, (4, 4), True),
    ("value_aware, first/last 8/8", {"layer_bits": {"first": (8, 8), "last": (8, 8)}},
     (4, 4), True),
    ("conv1 syq 8/8, conv2 multi_tensor, conv3 mmse, fc value_aware",
     {"layer_bits": {"first": (8, 8)},
      "layer_schemes": {"conv1": "syq", "conv2": "multi_tensor", "conv3": "mmse"}}, (4, 4),
     True),
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
          "cycles/inference | MAC utilization | weight memory (kbit) | on-chip memory (kbit) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, options, array, codebook in CONFIGURATIONS:
        program = quantize(data.model, data.calibration, **options)
        golden = run_integer(program, pixels)
        result = run_rtl(program, pixels, width=width, array_bits=array,
                         codebook=codebook)
        mismatching = int((result.logits != golden).any(1).sum())
        accuracy = [float((logits.argmax(1) == data.labels).double().mean())
                    for logits in (golden, result.logits)]
        print(f"| {label} | {array[0]}/{array[1]} | {float_accuracy:.2%} | {accuracy[0]:.2%} "
              f"| {accuracy[1]:.2%} | {mismatching} | {result.cycles_per_image:,.0f} "
              f"| {result.utilization:.1%} "
              f"| {(result.memory['weights'] + result.memory.get('codebooks', 0)) / 1024:.1f} "
              f"| {sum(result.memory.values()) / 1024:.1f} |",
              flush=True)
    print()
    print("4-bit W/A and value-aware weights unless the row says otherwise (the all "
          "value-aware 4/4 CNN is the network-rtl section's row); highway on. A layer wider "
          "than the array runs as (activation digits × weight planes) passes. Weight memory: "
          "the weight memory and the SYQ decoder's codebooks; an SYQ layer in passes is "
          "decoded by the compiler.")
    print()
