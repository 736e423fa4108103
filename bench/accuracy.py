"""The accuracy table: post-training and trained integer programs over seeds,
``python -m bench.accuracy [--model cnn|mlp] [--seeds 5] [--rows NAME ...]``.

For every row and seed: the demo model of that seed (``olmac.models.demo``, cached under
``build/models``) is quantized by ``quantize_model`` (the default calibration, §13), then
fine-tuned through its float view for ``EPOCHS`` epochs (``olmac.flow.fine_tuner``, the
training of ``olmac quantize --epochs``, §13) and lowered again. Both programs are scored by ``run_integer`` on every
test image; the float model's own accuracy is the reference. Each (row, model, seed) is
computed once and kept, with the trained artifact, under ``build/models/accuracy``; the
table prints mean ± standard deviation (with Bessel's correction) over the seeds, and the
on-chip bits of the program's weights and of one image's activations.
"""

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from olmac.budget import choose, measure_sensitivity
from olmac.flow import TRAIN_BATCH, TRAIN_LR, fine_tuner
from olmac.golden import artifact
from olmac.golden.program import Gemm, quantize_model, run_integer, tensor_specs, to_pixels
from olmac.golden.program.sensitivity import weight_storage_bits
from olmac.models.demo import cnn, mlp
from olmac.models.digits import as_images, load_digits_split
from olmac.models.training import MODEL_DIR, one_thread

__all__ = ["EPOCHS", "SEEDS", "Row", "ROWS", "measure", "report"]

#: Training epochs of every trained row.
EPOCHS = 40
#: Seeds of the table (the float model's initialization and the batch order).
SEEDS = 5


@dataclass(frozen=True)
class Row:
    """One configuration: its ``name`` (the cache key), what the table says of it, and the
    options of ``quantize_model``."""
    name: str
    label: str
    options: dict = field(default_factory=dict)


def _widths(bits: int, highway: bool) -> Row:
    return Row(f"{bits}{bits}{'hw' if highway else ''}", f"{bits}/{bits} MMSE"
               + (", highway" if highway else ", no highway"),
               {"weight_bits": bits, "act_bits": bits, "scheme": "mmse", "highway": highway})


#: The rows of the table.
ROWS = [_widths(bits, highway) for bits in (4, 3, 2) for highway in (True, False)] + [
    Row("syq3", "SYQ ternary W, 4-bit A", {"weight_bits": 4, "act_bits": 4, "scheme": "syq"}),
    Row("syq2", "SYQ binary W, 4-bit A", {"weight_bits": 4, "act_bits": 4, "scheme": "syq",
                                          "syq_idx_bits": 0}),
    Row("mt22", "multi-tensor 2×2-bit W, 4-bit A",
        {"weight_bits": 2, "act_bits": 4, "scheme": "multi_tensor", "planes": 2}),
    # 1/64, not 1 %: thresholds are per output channel (docs/value_aware.md §1), and 1 % of
    # a 64-weight channel is no outlier at all, so a 1 % row would be MMSE-like 3/3
    Row("va3_64", "value-aware W (one outlier per 64 weights), 3/3",
        {"weight_bits": 3, "act_bits": 3, "scheme": "value_aware", "outlier_ratio": 1 / 64}),
] + [Row(f"ao{bits}_{ratio}", f"4/{bits} MMSE, {ratio} % activation outliers",
         {"weight_bits": 4, "act_bits": bits, "scheme": "mmse",
          "act_outlier_ratio": ratio / 100}) for bits in (3, 4) for ratio in (1, 2)
] + [Row(f"rot{bits}", f"{bits}/{bits} MMSE, Hadamard rotation",
         {"weight_bits": bits, "act_bits": bits, "scheme": "mmse", "rotate": True})
     for bits in (4, 3)] + [
    Row("budget25", "2.5 bits per weight by sensitivity (MMSE), 3-bit A",
        {"budget_bits": 2.5, "act_bits": 3, "scheme": "mmse"})]
_BY_NAME = {row.name: row for row in ROWS}


def memory_bits(program) -> tuple[int, int]:
    """``(weight bits, activation bits)``: every GEMM's weight tensors (weights, planes,
    codes, tables) at their formats' widths, value-aware weights in their block format
    (``weight_storage_bits``: the outliers' slots, not a dense 16-bit tensor), and every
    value of one image at its width."""
    weights = 0
    for op in program.ops:
        if isinstance(op, Gemm) and op.scheme == "value_aware":
            weights += weight_storage_bits(op)
        elif isinstance(op, Gemm):
            specs = tensor_specs(op)
            for name in ("weights", "plane_exponents", "codes", "tables"):
                if name in specs:
                    spec = specs[name]
                    bits = int(spec.format[1:])
                    weights += bits * torch.Size(spec.shape).numel()
    activations = sum(value.bits * torch.Size(value.shape).numel()
                      for value in program.values.values())
    return weights, activations


def _allocated(options: dict, model, images) -> dict:
    """``options`` with a ``budget_bits`` replaced by the per-layer widths ``olmac quantize
    --budget-bits`` chooses for ``model`` (docs/program.md §20)."""
    if "budget_bits" not in options:
        return options
    rest = {name: value for name, value in options.items() if name != "budget_bits"}
    allocation = choose(measure_sensitivity(model, images, **rest), options["budget_bits"])
    return {**rest, "weight_bits": allocation.weight_bits, "layer_bits": allocation.layer_bits,
            "layer_outlier_ratios": allocation.outlier_ratios}


def _accuracy(program, pixels, labels) -> float:
    return float((run_integer(program, pixels).argmax(1) == labels).double().mean())


def _path(model: str, row: Row, seed: int, directory: Path = MODEL_DIR) -> Path:
    return (Path(directory) / "accuracy"
            / f"{model}_{row.name}_e{EPOCHS}_lr{TRAIN_LR:g}_kd_s{seed}")


def measure(model: str, row: Row, seed: int, directory: Path = MODEL_DIR) -> dict:
    """The post-training and trained accuracy (and memory bits) of ``row`` on the demo
    ``model`` of ``seed``, from the cache if there."""
    path = _path(model, row, seed, directory)
    if (path / "result.json").exists():
        return json.loads((path / "result.json").read_text())
    digits = load_digits_split()
    float_model = (cnn if model == "cnn" else mlp)(digits, seed=seed)
    shaped = as_images if model == "cnn" else (lambda x: x)
    images, test = shaped(digits.x_train), shaped(digits.x_test)
    pixels = to_pixels(digits.x_test)
    seen = {}
    tuner = fine_tuner(float_model, images, digits.y_train, epochs=EPOCHS, seed=seed)

    def fine_tune(program, layers, options):
        seen["ptq"] = program
        return tuner(program, layers, options)

    started = time.perf_counter()
    with one_thread():
        trained = quantize_model(float_model, images, fine_tune=fine_tune,
                                 **_allocated(row.options, float_model, images))
        with torch.no_grad():
            float_accuracy = float((float_model(test).argmax(1) == digits.y_test)
                                   .double().mean())
        result = {"float": float_accuracy,
                  "ptq": _accuracy(seen["ptq"], pixels, digits.y_test),
                  "trained": _accuracy(trained, pixels, digits.y_test),
                  "memory_bits": memory_bits(trained),
                  "seconds": time.perf_counter() - started}
    artifact.save(trained, path)
    (path / "result.json").write_text(json.dumps(result))
    return result


def _mean_std(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def report(model: str = "cnn", seeds: int = SEEDS, rows=None) -> dict:
    """Print the markdown table of ``rows`` (names of ``ROWS``; all by default) on the demo
    ``model`` over ``seeds`` seeds; return ``{row name: [result per seed]}``."""
    chosen = [_BY_NAME[name] for name in rows] if rows else ROWS
    title = "residual CNN" if model == "cnn" else "MLP"
    print(f"## Accuracy on digits, {title}, {seeds} seeds (every test image, "
          f"`run_integer`; mean ± std in %)")
    print()
    print("| configuration | post-training | trained | weights kbit | activations kbit |")
    print("|---|---:|---:|---:|---:|")
    results = {}
    for row in chosen:
        results[row.name] = [measure(model, row, seed) for seed in range(seeds)]
        if row is chosen[0]:
            print(f"| float | {_mean_std([r['float'] for r in results[row.name]])} | | "
                  f"| |")
        # from the kept artifact, so that the count follows memory_bits as it is now
        weights, activations = memory_bits(artifact.load(_path(model, row, 0)))
        print(f"| {row.label} | {_mean_std([r['ptq'] for r in results[row.name]])} "
              f"| {_mean_std([r['trained'] for r in results[row.name]])} "
              f"| {weights / 1000:.1f} | {activations / 1000:.1f} |", flush=True)
    print()
    print(f"Trained: {EPOCHS} epochs through the float view (docs/program.md §13), "
          f"distilled from the float model, Adam from {TRAIN_LR:g} annealed to 0, batches "
          f"of {TRAIN_BATCH}. Weights kbit: every GEMM's weight "
          f"tensors at their widths; activations kbit: every value of one image at its "
          f"width (16-bit highway tensors and logits included).")
    print()
    return results


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__)
    parser.add_argument("--model", choices=("cnn", "mlp"), action="append")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--rows", nargs="+", choices=list(_BY_NAME))
    args = parser.parse_args()
    for model in args.model or ("cnn", "mlp"):
        report(model, args.seeds, args.rows)


if __name__ == "__main__":
    main()
