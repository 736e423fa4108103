"""Whole networks end to end: a PyTorch model → integer program → network core on Verilator,
checked image by image against the golden integer model (``olmac run``, ``olmac demo``; the
model's quantization is :mod:`olmac.flow`).
"""

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from olmac.flow import demo_data, quantize

__all__ = ["UP5K_MEMORY_BITS", "check_pixels", "run_rtl", "memory_bits", "activation_memory",
           "NetworkResult",
           "run_demo"]

#: On-chip memory of an iCE40UP5K: four 256-kbit SPRAMs and thirty 4-kbit block RAMs.
UP5K_MEMORY_BITS = {"spram": 4 * 256 * 1024, "bram": 30 * 4096}


def memory_bits(compiled) -> dict[str, int]:
    """Bits of each memory of the compiled core (depth × word width): the four of
    ``config.layouts``, the packed activation memory (``packed``), the activation
    outliers' (``outliers``), the lookup tables' (``tables``: one copy per lane) and the
    SYQ decoder's codebooks (``codebooks``, docs/network.md §17) where the core has them."""
    from amaranth.hdl import Shape
    from olmac.hw.network import TABLE_ENTRY_BITS
    config = compiled.config
    bits = {name: config.depths[name] * Shape.cast(layout).width
            for name, layout in config.layouts.items()}
    if config.packed_depth:
        bits["packed"] = config.packed_depth * config.width * config.act_bits
    if config.act_outlier_lanes:
        bits["outliers"] = config.outlier_depth * Shape.cast(config.outlier_layout).width
    if config.table_depth:
        bits["tables"] = config.table_depth * config.width * TABLE_ENTRY_BITS
    if config.codebook:
        decoder = config.codebook
        bits["codebooks"] = decoder.subgroups * decoder.stored * decoder.entry_bits
    return bits


def activation_memory(compiled) -> dict[str, float]:
    """On-chip activation memory of a compiled core in bits (docs/network.md §15): as
    built (16-bit words, packed words and outlier blocks), against every slot at 16 bits
    (``slots16``, the core before packing) and against an 8-bit baseline (the packed
    values at 8 bits, no outliers; 16-bit values as built), and the bits per stored
    low-width value (packed slot and its share of the outlier blocks)."""
    bits = memory_bits(compiled)
    config = compiled.config
    low_values = config.packed_depth * config.width
    low_bits = bits.get("packed", 0) + bits.get("outliers", 0)
    return {"bits": bits["data"] + low_bits,
            "slots16": bits["data"] + low_values * 16,
            "baseline8": bits["data"] + low_values * 8,
            "low_values": low_values,
            "bits_per_low_value": low_bits / low_values if low_values else 0.0}


@dataclass
class NetworkResult:
    """Logits of the RTL and what the run cost: seconds of the model's run (wall clock and
    CPU), of the whole simulator process, and of the Verilator build (0 if cached).
    ``layers`` has one dict per op of the compiled program: ``label``, ``kind``,
    ``cycles`` and ``beats`` (those the array took) per image and ``ideal``, a GEMM's MACs
    over the array's (0 for other ops)."""
    logits: torch.Tensor
    cycles: int
    gemm_beats: int
    macs_per_image: int
    width: int
    seconds: float
    cpu_seconds: float
    process_seconds: float
    build_seconds: float
    memory: dict = field(default_factory=dict)
    activation_memory: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)

    @property
    def cycles_per_image(self) -> float:
        return self.cycles / len(self.logits)

    @property
    def cycles_per_second(self) -> float:
        """Simulated cycles per wall-clock second of the model's run (reset to done)."""
        return self.cycles / self.seconds

    @property
    def cycles_per_cpu_second(self) -> float:
        """Simulated cycles per second of the simulator's own CPU time (one core, however
        busy the machine)."""
        return self.cycles / self.cpu_seconds

    @property
    def utilization(self) -> float:
        """Multiply-accumulates of the program over the array's MAC slots in all cycles."""
        return self.macs_per_image * len(self.logits) / (self.cycles * self.width ** 2)


def check_pixels(program, pixels) -> torch.Tensor:
    """``pixels`` as ``N × input_shape`` int64 if they are integer pixels of the program.

    Raises
    ------
    TypeError
        If ``pixels`` is not an integer tensor.
    ValueError
        If it has the wrong shape or a pixel is outside ``pixel_min..pixel_max``.
    """
    pixels = torch.as_tensor(pixels)
    if pixels.dtype.is_floating_point or pixels.dtype.is_complex or pixels.dtype == torch.bool:
        raise TypeError(f"pixels must be integers, not {pixels.dtype}")
    per_image = int(np.prod(program.input_shape))
    if pixels.dim() < 1 or len(pixels) == 0 or pixels[0].numel() != per_image:
        raise ValueError(f"pixels must be N ≥ 1 images of shape {program.input_shape} (or "
                         f"{per_image} values each), not {tuple(pixels.shape)}")
    pixels = pixels.to(torch.int64)  # torch compares no unsigned type but uint8
    if ((pixels < program.pixel_min) | (pixels > program.pixel_max)).any():
        raise ValueError(f"pixels must lie in {program.pixel_min}..{program.pixel_max}")
    return pixels.reshape(len(pixels), *program.input_shape)


def _progress_bar(total: int, label: str):
    """A text progress bar on stderr, redrawn when the count changes; the clock starts at
    the first report (after the Verilator build)."""
    state = {"started": None, "shown": None}

    def show(done: int) -> None:
        if done == state["shown"]:
            return
        state["shown"] = done
        if state["started"] is None:
            state["started"] = time.monotonic()
        filled = int(30 * done / max(total, 1))
        elapsed = time.monotonic() - state["started"]
        print(f"\r  {label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} images "
              f"{elapsed:5.1f} s", end="", file=sys.stderr, flush=True)
    return show


def run_rtl(program, pixels: torch.Tensor, *, width: int = 8, stall_sixteenths: int = 0,
            seed: int = 1, progress: bool = False, core_options: dict | None = None,
            array_bits: tuple[int, int] | None = None, codebook: bool = True) -> NetworkResult:
    """Run ``program`` on integer ``pixels`` through the network core on Verilator.

    The model is built from the core's configuration alone and kept in the build cache
    (:mod:`olmac.sim.cache`); the program, weights, parameters and images are loaded at run
    time, so another artifact of the same configuration runs without a new build
    (docs/network.md §16). ``core_options`` replace fields of the core's
    ``NetworkCore.Config`` (``requantizer``, ``memories``, ``multipliers``), e.g. with
    those of the board top. ``array_bits`` fixes the array's operand widths
    (``compile_program``; wider layers run in passes); ``codebook = False`` builds the
    core without the SYQ decoder (the compiler decodes SYQ weights, docs/network.md §17).

    Raises
    ------
    olmac.compiler.CompileError
        If the program does not run on the core.
    RuntimeError
        If the simulation fails.
    """
    from olmac.compiler import compile_program
    from olmac.sim.network import run_network
    pixels = check_pixels(program, pixels)
    compiled = compile_program(program, width=width, array_bits=array_bits, codebook=codebook)
    config = dataclasses.replace(compiled.config, **(core_options or {}))
    # the serial requantizer takes about a hundred cycles a channel
    per_image = 1_000_000 if config.requantizer == "serial" else 100_000
    show = _progress_bar(len(pixels), "RTL") if progress else None
    if progress:
        print("  the Verilator model (built once per core configuration, then cached) ...",
              file=sys.stderr, flush=True)
    run = run_network(config, compiled.contents, compiled.pack_inputs(pixels),
                      output_words=compiled.output_words, stall_sixteenths=stall_sixteenths,
                      seed=seed, timeout_cycles=per_image * len(pixels) + 100_000,
                      progress=show)
    if progress:
        show(len(pixels))
        print(file=sys.stderr)
    return NetworkResult(compiled.unpack_outputs(run.slots), run.cycles, run.gemm_beats,
                         compiled.macs, compiled.width, run.seconds, run.cpu_seconds,
                         run.process_seconds, run.build_seconds, memory_bits(compiled),
                         activation_memory(compiled),
                         [{"label": op["label"], "kind": op["kind"].name,
                           "cycles": int(cycles) / len(pixels),
                           "beats": int(beats) / len(pixels),
                           "ideal": op.get("macs", 0) / compiled.width ** 2}
                          for op, cycles, beats in zip(compiled.ops, run.op_cycles,
                                                       run.op_beats)])


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean() * 100)


def _plot(path: Path, rows: dict, labels, predictions, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    figure, (bars, matrix) = plt.subplots(1, 2, figsize=(10, 4.2))
    names = list(rows)
    values = [rows[name] for name in names]
    bars.bar(names, values, color=["#888888", "#4477aa", "#228833"])
    for index, value in enumerate(values):
        bars.text(index, value + 0.3, f"{value:.2f} %", ha="center")
    bars.set_ylim(min(values) - 5, 100.5)
    bars.set_ylabel("test accuracy (%)")
    bars.set_title("accuracy on the digits test split")
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), predictions.numpy()), 1)
    matrix.imshow(confusion, cmap="Blues")
    matrix.set_xlabel("RTL prediction")
    matrix.set_ylabel("label")
    matrix.set_xticks(range(10))
    matrix.set_yticks(range(10))
    matrix.set_title("RTL confusion matrix")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _activation_row(figures: dict) -> str:
    """The demo's activation-memory row: as built, against 16-bit slots and 8 bits."""
    bits = figures["bits"]
    return (f"{bits / 1024:.1f} kbit, {figures['bits_per_low_value']:.2f} bits per low-width "
            f"value (16-bit slots: {figures['slots16'] / 1024:.1f} kbit, "
            f"{100 * (1 - bits / figures['slots16']):.0f} % less; 8-bit: "
            f"{figures['baseline8'] / 1024:.1f} kbit, "
            f"{100 * (1 - bits / figures['baseline8']):.0f} % less)")


def _outlier_row(counts) -> str:
    """The demo's activation-outlier row (docs/program.md §18), over every value."""
    total = {name: sum(c[name] for c in counts)
             for name in ("values", "outliers", "saturated", "blocks", "blocks_over")}
    return (f"{100 * total['outliers'] / total['values']:.2f} % of the values; "
            f"{total['blocks_over']} of {total['blocks']} blocks over budget "
            f"({100 * total['blocks_over'] / total['blocks']:.1f} %), "
            f"{total['saturated']} outliers saturated")


def run_demo(*, model: str = "cnn", act_bits: int = 4, weight_bits: int = 4,
             scheme: str = "value_aware", highway: bool = True, images: int | None = None,
             outlier_ratio: float = 1 / 64, act_outlier_ratio: float = 0.0,
             width: int = 8, stall_sixteenths: int = 0, out_dir: Path | str = "build/demo",
             layer_bits: dict | None = None, layer_schemes: dict | None = None,
             array_bits: tuple[int, int] | None = None) -> dict:
    """The ``make demo`` flow: train (or load) the demo model, quantize it, compile it for
    the core, run the test split through the RTL, check every image's logits against the
    golden integer model, print a table and write ``report.md``, ``report.json`` and
    ``report.png`` under ``out_dir``. Returns the report; ``mismatching_images`` is the
    number of images whose logits differ anywhere. ``layer_bits``/``layer_schemes`` set
    single layers' widths and schemes (``quantize_model``); the array's operand widths are
    ``array_bits``, by default ``(weight_bits, act_bits)``, so wider layers run in passes."""
    from olmac.golden import artifact
    from olmac.golden.program import act_outlier_counts, run_integer, to_pixels
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = demo_data(model)
    test_images, labels = data.images, data.labels
    if images is not None:
        test_images, labels = test_images[:images], labels[:images]
    print(f"olmac demo: {model} on digits, {act_bits}-bit activations, {weight_bits}-bit "
          f"{scheme} weights, highway {'on' if highway else 'off'}, {len(labels)} test images")
    program = quantize(data.model, data.calibration, act_bits=act_bits,
                       weight_bits=weight_bits, scheme=scheme, highway=highway,
                       outlier_ratio=outlier_ratio, act_outlier_ratio=act_outlier_ratio,
                       layer_bits=layer_bits, layer_schemes=layer_schemes)
    array_bits = (weight_bits, act_bits) if array_bits is None else array_bits
    artifact.save(program, out_dir / "program")
    print(program.describe())
    pixels = to_pixels(test_images)
    with torch.no_grad():
        float_logits = data.model(test_images.to(torch.float32))
    golden_logits = run_integer(program, pixels)
    result = run_rtl(program, pixels, width=width, stall_sixteenths=stall_sixteenths,
                     array_bits=array_bits, progress=True)
    mismatching = int((result.logits != golden_logits).any(1).sum())
    accuracy = {"float": _accuracy(float_logits, labels),
                "golden": _accuracy(golden_logits, labels),
                "RTL": _accuracy(result.logits, labels)}
    report = {
        "model": model, "act_bits": act_bits, "weight_bits": weight_bits, "scheme": scheme,
        "highway": highway, "images": len(labels), "array": f"{width}x{width}",
        "array_bits": "/".join(map(str, array_bits)),
        "layer_bits": {name: "/".join(map(str, w)) for name, w in (layer_bits or {}).items()},
        "layer_schemes": dict(layer_schemes or {}),
        "accuracy_percent": accuracy, "mismatching_images": mismatching,
        "mismatching_logits": int((result.logits != golden_logits).sum()),
        "cycles_total": result.cycles, "cycles_per_inference": result.cycles_per_image,
        "macs_per_inference": result.macs_per_image,
        "mac_utilization_percent": 100 * result.utilization,
        "stall_sixteenths": stall_sixteenths,
        "simulated_cycles_per_second": result.cycles_per_second,
        "simulated_cycles_per_cpu_second": result.cycles_per_cpu_second,
        "simulated_images_per_second": len(labels) / result.seconds,
        "simulation_seconds": result.seconds, "simulation_cpu_seconds": result.cpu_seconds,
        "simulator_process_seconds": result.process_seconds,
        "verilator_build_seconds": result.build_seconds,
        "memory_bits": result.memory,
        "memory_bits_total": sum(result.memory.values()),
        "up5k_memory_bits": UP5K_MEMORY_BITS,
        "activation_memory": result.activation_memory,
        "act_outlier_ratio": act_outlier_ratio,
        "act_outliers": {name: dataclasses.asdict(counts) for name, counts in
                         act_outlier_counts(program, pixels).items()},
    }
    rows = [("float accuracy", f"{accuracy['float']:.2f} %"),
            ("golden (integer) accuracy", f"{accuracy['golden']:.2f} %"),
            ("RTL accuracy", f"{accuracy['RTL']:.2f} %"),
            ("mismatching images (RTL vs golden)", f"{mismatching} of {len(labels)}"),
            ("cycles per inference", f"{result.cycles_per_image:.0f}"),
            ("MAC utilization", f"{100 * result.utilization:.1f} % of {width}x{width}"),
            ("simulation", f"{len(labels) / result.seconds:.0f} images/s, "
                           f"{result.cycles_per_second / 1e3:.0f} k cycles/s "
                           f"({result.cycles_per_cpu_second / 1e3:.0f} k per CPU second; "
                           f"{result.process_seconds:.1f} s with the simulator's start-up)"),
            ("Verilator build", f"{result.build_seconds:.0f} s" if result.build_seconds
                                else "cached"),
            ("on-chip memory", f"{sum(result.memory.values()) / 1024:.1f} kbit "
                               f"(UP5K: {UP5K_MEMORY_BITS['spram'] // 1024} kbit SPRAM + "
                               f"{UP5K_MEMORY_BITS['bram'] // 1024} kbit BRAM)"),
            ("on-chip activation memory", _activation_row(result.activation_memory))]
    if report["act_outliers"]:
        rows.append(("activation outliers", _outlier_row(report["act_outliers"].values())))
    table = "| | |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in rows)
    print()
    print(table)
    (out_dir / "report.md").write_text(
        f"# olmac demo: {model}\n\n{act_bits}-bit activations, {weight_bits}-bit {scheme} "
        f"weights, highway {'on' if highway else 'off'}, {len(labels)} digits test images, "
        f"{width}x{width} array.\n\n{table}\n```\n{program.describe()}\n```\n")
    _plot(out_dir / "report.png", accuracy, labels, result.logits.argmax(1),
          f"olmac demo: {model}, {act_bits}/{weight_bits}-bit, {mismatching} mismatching images")
    report["wall_seconds"] = time.monotonic() - started
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_dir}/report.md, report.json, report.png "
          f"({report['wall_seconds']:.0f} s in all)")
    return report
