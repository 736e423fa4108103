"""Whole-network accuracy of the integer programs (docs/program.md): ``python -m bench.networks``.

Test accuracy on the digits test split (every image) of the two demo models of
``olmac.models.demo`` (seed 0, trained once and cached under ``build/models``), computed by
``run_integer`` on the integer program of ``quantize_model`` (default calibration), for:
float; plain ``b``-bit weights and activations (MMSE weights); value-aware weights with
1 % outliers; SYQ ternary weights with 4-bit activations. The residual CNN is measured with
the precision highway (§11, the default) and without it (the ablation); the MLP has no
residual add, so the highway does not apply to it.
"""

import time

import torch

from olmac.golden.program import quantize_model, run_integer, to_pixels
from olmac.models.demo import cnn, mlp
from olmac.models.digits import as_images, load_digits_split
from olmac.models.training import one_thread

__all__ = ["WIDTHS", "OUTLIER_RATIO", "measure", "bench_section"]

#: Weight and activation widths of the plain and value-aware rows.
WIDTHS = (2, 3, 4)
#: Share of value-aware weight outliers (1 %).
OUTLIER_RATIO = 0.01
#: The configurations after float: (label, weight label, options of quantize_model).
_CONFIGS = [("plain", f"{b}", {"weight_bits": b, "act_bits": b}) for b in WIDTHS] + [
    ("1 % outliers", f"{b}", {"weight_bits": b, "act_bits": b, "scheme": "value_aware",
                              "outlier_ratio": OUTLIER_RATIO}) for b in WIDTHS] + [
    ("SYQ ternary", "ternary", {"weight_bits": 4, "act_bits": 4, "scheme": "syq"})]


def _accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (predicted == labels).double().mean().item()


def measure(seed: int = 0) -> list[dict]:
    """One dict per measurement: ``model`` (``"MLP"``, ``"residual CNN"``), ``config``
    (``"float"``, ``"plain"``, ``"1 % outliers"``, ``"SYQ ternary"``), ``weights`` (bits, or
    ``"ternary"``; ``None`` for float), ``act_bits`` (``None`` for float), ``highway``
    (``True``/``False`` for the CNN, ``None`` where it does not apply) and ``accuracy``
    (test accuracy in [0, 1] of ``run_integer``; of the float model for ``"float"``)."""
    with one_thread():
        return _measure(seed)


def _measure(seed: int) -> list[dict]:
    digits = load_digits_split()
    pixels = to_pixels(digits.x_test)
    rows = []
    for name, model, train, test, highways in (
            ("MLP", mlp(digits, seed=seed), digits.x_train, digits.x_test, (None,)),
            ("residual CNN", cnn(digits, seed=seed), as_images(digits.x_train),
             as_images(digits.x_test), (True, False))):
        with torch.no_grad():
            accuracy = _accuracy(model(test).argmax(1), digits.y_test)
        rows.append({"model": name, "config": "float", "weights": None, "act_bits": None,
                     "highway": None, "accuracy": accuracy})
        for config, weights, options in _CONFIGS:
            for highway in highways:
                program = quantize_model(model, train, highway=highway is not False,
                                         **options)
                predicted = run_integer(program, pixels).argmax(1)
                rows.append({"model": name, "config": config,
                             "weights": int(weights) if weights.isdigit() else weights,
                             "act_bits": options["act_bits"], "highway": highway,
                             "accuracy": _accuracy(predicted, digits.y_test)})
    return rows


def _cell(rows: list[dict], model: str, config: str, weights, highway) -> str:
    for row in rows:
        if (row["model"], row["config"], row["weights"], row["highway"]) == \
                (model, config, weights, highway):
            return f"{row['accuracy']:.2%}"
    return "n/a"


def bench_section(seed: int = 0) -> list[dict]:
    """Print the markdown accuracy table of both demo models and return its rows (see
    ``measure``)."""
    started = time.perf_counter()
    rows = measure(seed)
    elapsed = time.perf_counter() - started
    print(f"## Integer-program accuracy on digits (every test image, seed {seed})")
    print()
    print("| config | W/A | MLP | residual CNN, highway | residual CNN, no highway |")
    print("|---|---|---:|---:|---:|")
    for config, weights, activations in [("float", None, None)] + [
            (config, int(w) if w.isdigit() else w, options["act_bits"])
            for config, w, options in _CONFIGS]:
        width = "float" if weights is None else f"{weights}/{activations}"
        mlp_cell = _cell(rows, "MLP", config, weights, None)
        on = _cell(rows, "residual CNN", config, weights, True if weights else None)
        off = _cell(rows, "residual CNN", config, weights, False) if weights else on
        print(f"| {config} | {width} | {mlp_cell} | {on} | {off} |")
    print()
    print(f"Accuracy of `run_integer` on every test image (the float row: the float model). "
          f"W/A: weight/activation bits (the input pixels take the activation width); "
          f"plain: MMSE weights per channel; 1 % outliers: value-aware weights, outliers at "
          f"twice the weight width; SYQ ternary: ternary weight codebooks per row. "
          f"Activations by `quantize_model`'s default calibration (docs/program.md §13), "
          f"biases corrected. The MLP has no residual add, so the highway does not apply "
          f"(one column). ({elapsed:.0f} s)")
    print()
    return rows


if __name__ == "__main__":
    bench_section()
