"""The budget's choice against uniform widths, post-training,
``python -m bench.budget [--model cnn|mlp] [--seeds 3] [--budget 2.5] [--scheme ...]``.

For each seed's demo model (``olmac.models.demo``, cached under ``build/models``): the
sensitivities and the choice of ``olmac quantize --budget-bits`` (``olmac.budget.choose``,
docs/program.md §20) and, beside it, the summed-ΔKL knapsack alone (``allocate``, the
choice before the joint measurement) and every uniform allocation (all layers at one width
and weight-outlier ratio, lowered as ``--weight-bits W``) within the same budget. Each is lowered as the accuracy table
lowers (``quantize_model``, the default calibration, §13, no training) and scored by
``run_integer`` on every test image.
"""

import argparse
import time
from fractions import Fraction

from olmac.budget import allocate, choose, measure_sensitivity, uniform_allocations
from olmac.golden.program import quantize_model, run_integer, to_pixels
from olmac.models.demo import cnn, mlp
from olmac.models.digits import as_images, load_digits_split
from olmac.models.training import one_thread

__all__ = ["compare", "report"]


def _widths(allocation) -> str:
    """``W`` per layer, ``W (r)`` where the layer has a weight-outlier ratio."""
    return "/".join(f"{bits}" + (f" ({Fraction(allocation.outlier_ratios[name])})"
                                 if name in allocation.outlier_ratios else "")
                    for name, (bits, _) in allocation.layer_bits.items())


def compare(model: str, seed: int, budget: float, scheme: str, act_bits: int) -> dict:
    """``{label: (widths, average bits, accuracy)}`` for the choice (``choose``), the
    knapsack alone (``allocate``) and every uniform allocation within ``budget``, and the
    seconds the choice took (``"seconds"``: measurement and joint search)."""
    digits = load_digits_split()
    float_model = (cnn if model == "cnn" else mlp)(digits, seed=seed)
    shaped = as_images if model == "cnn" else (lambda x: x)
    images = shaped(digits.x_train)
    pixels = to_pixels(digits.x_test)
    options = dict(act_bits=act_bits, scheme=scheme)
    with one_thread():
        started = time.perf_counter()
        sensitivity = measure_sensitivity(float_model, images, **options)
        chosen = choose(sensitivity, budget)
        seconds = time.perf_counter() - started
        rows = {"choose": chosen, "knapsack": allocate(sensitivity, budget)}
        rows.update({f"uniform {_widths(a)}": a
                     for a in uniform_allocations(sensitivity, budget)})
        result = {"seconds": seconds}
        for label, allocation in rows.items():
            program = quantize_model(float_model, images, weight_bits=allocation.weight_bits,
                                     layer_bits=allocation.layer_bits,
                                     layer_outlier_ratios=allocation.outlier_ratios,
                                     **options)
            accuracy = float((run_integer(program, pixels).argmax(1) == digits.y_test)
                             .double().mean())
            result[label] = (_widths(allocation), allocation.average_bits, accuracy)
    return result


def report(model: str = "cnn", seeds: int = 3, budget: float = 2.5,
           scheme: str = "value_aware", act_bits: int = 3) -> dict:
    """Print, per seed, the choice, the knapsack alone and the best uniform allocation
    within ``budget`` with their accuracies; return ``{seed: compare(...)}``."""
    print(f"## Budget {budget:g} bits per weight against uniform widths ({model}, {scheme} "
          f"weights, {act_bits}-bit activations, post-training)")
    print()
    print("| seed | choice (W per layer) | bits | accuracy | knapsack alone | accuracy | "
          "best uniform within the budget | bits | accuracy | search s |")
    print("|---:|---|---:|---:|---|---:|---|---:|---:|---:|")
    results = {}
    for seed in range(seeds):
        result = results[seed] = compare(model, seed, budget, scheme, act_bits)
        uniform = max((row for label, row in result.items() if label.startswith("uniform")),
                      key=lambda row: row[2])
        (widths, bits, accuracy), knapsack = result["choose"], result["knapsack"]
        print(f"| {seed} | {widths} | {bits:.2f} | {100 * accuracy:.2f} % | {knapsack[0]} | "
              f"{100 * knapsack[2]:.2f} % | {uniform[0]} | {uniform[1]:.2f} | "
              f"{100 * uniform[2]:.2f} % | {result['seconds']:.0f} |")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=2.5)
    parser.add_argument("--scheme", choices=("mmse", "value_aware"), default="value_aware")
    parser.add_argument("--act-bits", type=int, default=3)
    args = parser.parse_args()
    report(args.model, args.seeds, args.budget, args.scheme, args.act_bits)


if __name__ == "__main__":
    main()
