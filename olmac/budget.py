"""Per-layer weight widths under a budget of bits per weight (``olmac quantize
--budget-bits``, docs/program.md §20): each layer's sensitivity is measured on calibration
images (:func:`measure_sensitivity`), then the widths whose summed sensitivity is least
within the budget are chosen exactly (:func:`allocate`).

Only the golden model is used, so the flow (:mod:`olmac.flow`) and everything above can
build on it.
"""

from __future__ import annotations  # the annotations name torch types; torch loads on use

import math
from dataclasses import dataclass

from olmac.spec import WEIGHT_BITS

__all__ = ["REFERENCE_BITS", "SENSITIVITY_IMAGES", "BUDGET_SCHEMES", "OUTLIER_RATIOS",
           "Sensitivity", "Allocation", "measure_sensitivity", "allocate", "measured_kl"]

#: The weight width every other layer keeps while one layer's sensitivity is measured,
#: and the widest a layer is given.
REFERENCE_BITS = WEIGHT_BITS[1]
#: Most calibration images a sensitivity is measured on (every ⌈N/256⌉-th).
SENSITIVITY_IMAGES = 256
#: The weight schemes whose weights are W-bit integers, so that W is what a weight costs;
#: SYQ codes and multi-tensor planes are not allocated by width.
BUDGET_SCHEMES = ("mmse", "value_aware")
#: The weight-outlier ratios a value-aware layer is measured at beside each width: none,
#: one per 64-weight block (the default) and two (docs/program.md §20).
OUTLIER_RATIOS = (0.0, 1 / 64, 1 / 32)


@dataclass(frozen=True)
class Sensitivity:
    """What :func:`measure_sensitivity` measured: every GEMM layer's reference widths and
    weight count (``layers``, program order; the free layers at ``REFERENCE_BITS``), the
    layers whose widths were given (``fixed``) and the bits their weights take
    (``fixed_bits``), and per free layer and candidate ``(W, r)`` (``r`` the weight-outlier
    ratio of a value-aware layer, ``None`` for MMSE) the bits the layer's weights take
    (``cost``, ``weight_storage_bits``) and the increase of the logits' KL divergence from
    the float model's over the reference program's (``kl``, nats; 0 at the reference), on
    ``images`` whose float logits are ``reference``."""
    layers: dict
    fixed: frozenset
    fixed_bits: int
    kl: dict
    cost: dict
    reference_kl: float
    images: torch.Tensor
    reference: torch.Tensor

    @property
    def least_bits(self) -> float:
        """The least average bits per weight any allocation reaches: the free layers at
        their cheapest candidate, the fixed ones as given."""
        return (self.fixed_bits + sum(min(cost.values()) for cost in self.cost.values())) \
            / sum(width.weights for width in self.layers.values())


@dataclass(frozen=True)
class Allocation:
    """What :func:`allocate` chose: ``layer_bits`` (every layer's ``(W, A)``, as
    ``quantize_model`` takes them), ``outlier_ratios`` (each free value-aware layer's
    weight-outlier ratio, as its ``layer_outlier_ratios``), each free layer's KL increase
    at its choice (``sensitivity``), and the average bits per weight reached under
    ``budget_bits``."""
    layer_bits: dict
    outlier_ratios: dict
    sensitivity: dict
    average_bits: float
    budget_bits: float

    @property
    def total_sensitivity(self) -> float:
        """The summed KL increase of the chosen candidates, layer by layer (nats)."""
        return sum(self.sensitivity.values())


def _check_budget(budget_bits, least: float, fixed) -> None:
    """Raise ``ValueError`` unless ``budget_bits`` is a number in ``WEIGHT_BITS`` and at
    least ``least``."""
    low, high = WEIGHT_BITS
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float)) \
            or not low <= budget_bits <= high:
        raise ValueError(f"budget_bits must be a number in {low}..{high} (average weight "
                         f"bits per weight), not {budget_bits!r}")
    if budget_bits < least:
        names = ", ".join(sorted(fixed))
        raise ValueError(f"budget_bits {budget_bits:g} is below {least:.4g}, the least this "
                         f"model allows (every layer at its narrowest width"
                         f"{'; ' + names + ' fixed by layer_bits' if names else ''})")


def measure_sensitivity(model, calibration, *, act_bits: int = 4, layer_bits=None,
                        widths=tuple(range(WEIGHT_BITS[0], WEIGHT_BITS[1] + 1)),
                        ratios=OUTLIER_RATIOS, images: int = SENSITIVITY_IMAGES,
                        budget_bits=None, report=None, **options) -> Sensitivity:
    """Lower ``model`` (``quantize_model`` with ``act_bits``, ``options`` and max-abs
    activation scales, one lowering each) once with every layer not in ``layer_bits`` at
    ``REFERENCE_BITS`` (and the run's ``outlier_ratio``) and once per such layer and
    candidate with that layer alone changed: each width of ``widths``, for a value-aware
    layer each width with each weight-outlier ratio of ``ratios`` (of ratios that give a
    channel of ``K`` weights the same ``⌊r·K⌋`` outliers, only the least). Each program is scored
    by ``logit_kl`` of its exact logits (``real_logits``) from the float model's on at
    most ``images`` calibration images, each candidate costed by the bits its layer's
    weights take in it (``weight_storage_bits``). The layers of ``layer_bits`` (name,
    ``first`` or ``last`` → ``(W, A)``) keep their widths throughout.
    ``report(done, total)`` is called after each lowering. A ``budget_bits`` that
    :func:`allocate` would refuse is refused after the first lowering, before the others.

    Raises
    ------
    ProgramError
        As ``quantize_model`` (a name of ``layer_bits`` that is no GEMM layer, …).
    ValueError
        If a layer's scheme is not one of ``BUDGET_SCHEMES``, a width of ``widths`` is
        not in ``WEIGHT_BITS``, or ``budget_bits`` is refused.
    """
    import torch
    from olmac.golden.program import quantize_model
    from olmac.golden.program.normalize import normalize
    from olmac.golden.program.sensitivity import (layer_widths, logit_kl, real_logits,
                                                  weight_storage_bits)
    widths = sorted(set(widths) | {REFERENCE_BITS})
    if not all(isinstance(w, int) and WEIGHT_BITS[0] <= w <= WEIGHT_BITS[1] for w in widths):
        raise ValueError(f"widths must be integers in {WEIGHT_BITS[0]}..{WEIGHT_BITS[1]}, "
                         f"not {widths!r}")
    calibration = calibration.to(torch.float32)
    given = dict(layer_bits or {})

    def lower(bits: dict, ratios: dict):
        return quantize_model(model, calibration, act_bits=act_bits,
                              weight_bits=REFERENCE_BITS, act_calibration="max",
                              layer_bits={**given, **bits}, layer_outlier_ratios=ratios,
                              **options)

    base = lower({}, {})
    layers = layer_widths(base)
    gemms = {op.name: op for op in base.ops if op.name in layers}
    names = list(layers)
    fixed = frozenset({"first": names[0], "last": names[-1]}.get(name, name)
                      for name in given)
    for op in gemms.values():
        if op.scheme not in BUDGET_SCHEMES:
            raise ValueError(f"layer {op.name!r} has scheme {op.scheme}, whose weights are "
                             f"not W-bit integers; a budget allocates "
                             f"{' and '.join(BUDGET_SCHEMES)} layers")
    fixed_bits = sum(weight_storage_bits(gemms[name]) for name in fixed)
    if budget_bits is not None:  # the narrowest width without outliers is the cheapest
        _check_budget(budget_bits, (fixed_bits + sum(widths[0] * layers[name].weights
                                                     for name in names if name not in fixed))
                      / sum(width.weights for width in layers.values()), fixed)
    sample = calibration[::-(-len(calibration) // images)]
    with torch.no_grad():
        normalized = normalize(model, calibration[:2])
        reference = normalized.module(sample.reshape(len(sample), *normalized.input_shape))
    base_kl = float(logit_kl(reference, real_logits(base, sample)))
    ratio = options.get("outlier_ratio", 1 / 64)
    aware = {name for name in names if gemms[name].scheme == "value_aware"}
    references = {name: (REFERENCE_BITS, ratio if name in aware else None)
                  for name in names if name not in fixed}

    def distinct(name: str) -> dict:
        """The ratios of ``ratios`` by the outliers per channel they give, ``⌊r·K⌋``
        (value_aware.md §1), the least of equals: the others lower the same weights."""
        by_count = {}
        for r in sorted(ratios):
            by_count.setdefault(math.floor(r * gemms[name].in_features), r)
        return by_count

    candidates = {name: sorted({(width, r) for width in widths
                                for count, r in (distinct(name).items() if name in aware
                                                 else [(None, None)])
                                if width != REFERENCE_BITS or count is None
                                or count != math.floor(ratio * gemms[name].in_features)}
                               | {reference}, key=lambda key: (key[0], key[1] or 0))
                  for name, reference in references.items()}
    total, done = sum(map(len, candidates.values())) - len(candidates), 0
    kl, cost = {}, {}
    for name, choices in candidates.items():
        kl[name], cost[name] = {}, {}
        for width, r in choices:
            if (width, r) == references[name]:
                program, kl[name][width, r] = base, 0.0
            else:
                program = lower({name: (width, layers[name].act_bits)},
                                {} if r is None else {name: r})
                kl[name][width, r] = float(logit_kl(reference, real_logits(program, sample))) \
                    - base_kl
                done += 1
                if report is not None:
                    report(done, total)
            cost[name][width, r] = weight_storage_bits(
                next(op for op in program.ops if op.name == name))
    return Sensitivity(layers, fixed, fixed_bits, kl, cost, base_kl, sample, reference)


def allocate(sensitivity: Sensitivity, budget_bits: float) -> Allocation:
    """The candidates of the free layers whose summed KL increase is least while the
    average bits per weight (the bits every layer's weights take, the fixed ones included,
    over the number of weights) stays within ``budget_bits``: an exact multiple-choice
    knapsack, layer by layer over the Pareto front of (bits, summed increase), so that a
    larger budget never gives a larger sum. Of equal sums the one with more bits is taken;
    deterministic.

    Raises
    ------
    ValueError
        If ``budget_bits`` is not a number in ``WEIGHT_BITS``, or is below the least
        average the layers allow (``Sensitivity.least_bits``).
    """
    _check_budget(budget_bits, sensitivity.least_bits, sensitivity.fixed)
    layers, kl, cost = sensitivity.layers, sensitivity.kl, sensitivity.cost
    count = sum(w.weights for w in layers.values())
    # in whole bits, so that the comparison is exact; the slack absorbs B·n's rounding
    capacity = math.floor(budget_bits * count + 1e-6)
    free = list(kl)
    rest = [sum(min(cost[name].values()) for name in free[i:]) for i in range(len(free) + 1)]
    front = [(sensitivity.fixed_bits, 0.0, ())]
    for index, name in enumerate(free):
        grown = sorted((bits + cost[name][key], total + kl[name][key], choice + (key,))
                       for bits, total, choice in front
                       for key in sorted(kl[name], key=lambda key: (key[0], key[1] or 0))
                       if bits + cost[name][key] + rest[index + 1] <= capacity)
        front, best = [], math.inf
        for state in grown:  # by bits: keep each state that lowers the least sum so far
            if state[1] < best:
                front.append(state)
                best = state[1]
    bits, _, choice = front[-1]
    chosen = dict(zip(free, choice))
    layer_bits = {name: (chosen[name][0] if name in chosen else width.weight_bits,
                         width.act_bits) for name, width in layers.items()}
    return Allocation(layer_bits, {name: key[1] for name, key in chosen.items()
                                   if key[1] is not None},
                      {name: kl[name][chosen[name]] for name in free}, bits / count,
                      budget_bits)


def measured_kl(sensitivity: Sensitivity, program) -> float:
    """``logit_kl`` of ``program``'s exact logits from the float model's on the images the
    sensitivities were measured on (nats)."""
    from olmac.golden.program.sensitivity import logit_kl, real_logits
    return float(logit_kl(sensitivity.reference, real_logits(program, sensitivity.images)))
