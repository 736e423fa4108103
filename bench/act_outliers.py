"""Run-time activation outliers and packed activation storage on the RTL (docs/program.md
§18, docs/network.md §15): the demo CNN at 4 and 3 bits, without and with activation
outliers, every digits test image through the network core and checked against golden."""

import torch

from olmac.golden.program import act_outlier_counts, run_integer, to_pixels
from olmac.network import demo_data, quantize, run_rtl

#: (activation/weight bits, activation outlier ratio); each ratio > 0 is compared with the
#: same widths at 0 for the cycle overhead.
CONFIGURATIONS = ((4, 0.0), (4, 0.01), (3, 0.0), (3, 0.02))


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean() * 100)


def report(width: int = 8) -> None:
    print(f"## Activation outliers and packed activations on the RTL (demo CNN, {width}×"
          f"{width} array, one activation-outlier lane, Verilator)")
    print()
    print("| W/A | outliers R | float | golden | RTL | mismatching | cycles/inference "
          "| outlier cycle overhead | activation memory (kbit) | 16-bit slots | 8-bit "
          "| bits per low value | outliers (% of values) | blocks over budget |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    data = demo_data("cnn")
    pixels = to_pixels(data.images)
    with torch.no_grad():
        float_accuracy = _accuracy(data.model(data.images.to(torch.float32)), data.labels)
    base_cycles = {}
    for bits, ratio in CONFIGURATIONS:
        program = quantize(data.model, data.calibration, act_bits=bits, weight_bits=bits,
                           act_outlier_ratio=ratio)
        golden = run_integer(program, pixels)
        result = run_rtl(program, pixels, width=width)
        mismatching = int((result.logits != golden).any(1).sum())
        cycles = result.cycles_per_image
        base_cycles.setdefault(bits, cycles)
        memory = result.activation_memory
        counts = list(act_outlier_counts(program, pixels).values())
        values = sum(c.values for c in counts)
        outliers = f"{100 * sum(c.outliers for c in counts) / values:.2f}" if values else "–"
        blocks = sum(c.blocks for c in counts)
        over = (f"{100 * sum(c.blocks_over for c in counts) / blocks:.1f} %" if blocks
                else "–")
        print(f"| {bits}/{bits} | {ratio:g} | {float_accuracy:.2f} % "
              f"| {_accuracy(golden, data.labels):.2f} % "
              f"| {_accuracy(result.logits, data.labels):.2f} % | {mismatching} "
              f"| {cycles:,.0f} | {100 * (cycles / base_cycles[bits] - 1):+.2f} % "
              f"| {memory['bits'] / 1024:.1f} | {memory['slots16'] / 1024:.1f} "
              f"| {memory['baseline8'] / 1024:.1f} | {memory['bits_per_low_value']:.2f} "
              f"| {outliers} | {over} |", flush=True)
    print()
    print("Value-aware weights (one outlier per 64 weights of a channel), highway on, all 540 "
          "test images. The cycle overhead compares with the same widths without activation "
          "outliers; the activation memory counts the 16-bit memory (pixels, highway "
          "tensors, logits), the packed memory and the outlier blocks (one slot per 8 words "
          "of 8 values), against every slot at 16 bits and against the packed values at 8 "
          "bits; bits per low value is the packed slot plus its share of the outlier blocks.")
    print()
