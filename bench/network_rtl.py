"""Whole networks on the RTL: cycles per inference, MAC utilization and simulation speed of
both demo networks on the network core (docs/network.md), and of ``cnn28`` (28×28 digits,
the ECP5 board's model) at widths 16 and 8, every digits test image checked against
golden."""

from olmac.compiler import compile_program
from olmac.golden.program import run_integer, to_pixels
from olmac.network import demo_data, quantize, run_rtl


def report(width: int = 8) -> None:
    _section(("mlp", "cnn"), width)
    for large_width in (16, 8):
        _section(("cnn28",), large_width)


def _section(names, width: int) -> None:
    print(f"## Whole networks on the RTL ({width}×{width} array, Verilator, no stalls)")
    print()
    print("| model | images | mismatching | cycles/inference | MACs/inference "
          "| MAC utilization | simulated images/s | simulated cycles/s "
          "| cycles per CPU second | simulator process s | build s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results, lanes = {}, {}
    for name in names:
        data = demo_data(name)
        program = quantize(data.model, data.calibration)  # the demo's settings
        pixels = to_pixels(data.images)
        result = results[name] = run_rtl(program, pixels, width=width)
        lanes[name] = compile_program(program, width=width).config.weight_outlier_lanes
        mismatching = int((result.logits != run_integer(program, pixels)).any(1).sum())
        print(f"| {name} | {len(pixels)} | {mismatching} | {result.cycles_per_image:,.0f} "
              f"| {result.macs_per_image:,} | {result.utilization:.1%} "
              f"| {len(pixels) / result.seconds:,.0f} | {result.cycles_per_second:,.0f} "
              f"| {result.cycles_per_cpu_second:,.0f} | {result.process_seconds:.1f} "
              f"| {result.build_seconds:.0f} |", flush=True)
    print()
    for name, result in results.items():
        print(f"Cycles per layer of the {name} (per inference) against the ideal "
              f"(the layer's MACs over the {width * width} MACs of the array; 0 for ops "
              f"without MACs); array beats are the cycles the array took a beat, the rest "
              f"of a GEMM's cycles its beats held for weight outliers beyond the array's "
              f"{lanes[name]} outlier lane(s), the op's fetch and the "
              f"pipeline's drain before the next op may read its output:")
        print()
        print("| op | kind | cycles | array beats | other cycles | ideal | utilization |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for layer in result.layers:
            share = f"{layer['ideal'] / layer['cycles']:.1%}" if layer["ideal"] else "–"
            print(f"| {layer['label']} | {layer['kind']} | {layer['cycles']:,.0f} "
                  f"| {layer['beats']:,.0f} | {layer['cycles'] - layer['beats']:,.0f} "
                  f"| {layer['ideal']:,.0f} | {share} |")
        print()
    print("4-bit W/A, value-aware weights (one outlier per 64 weights of a channel), highway "
          "on. Simulated rates count the model's run from reset to the last output word (wall "
          "clock, and per second of the simulator's own CPU time); the process column adds "
          "the simulator's start-up and end (the program's start, its memory files); build s "
          "is 0 when the model came from the build cache (docs/network.md §16).")
    print()
