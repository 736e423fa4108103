"""Per-layer weight widths under a budget of bits per weight or of on-chip memory
(``olmac quantize --budget-bits`` / ``--budget-kbit``, docs/program.md §20): each layer's
sensitivity is measured on calibration images (:func:`measure_sensitivity`), the widths
whose summed sensitivity is least within a bits-per-weight budget are found exactly
(:func:`allocate`), and a few whole allocations, uniform ones among them, are lowered and
the one whose joint KL is least is taken (:func:`choose`, :func:`choose_kbit`).

Only the golden model is used, so the flow (:mod:`olmac.flow`) and everything above can
build on it; what a program takes on chip is a function handed in (the compiler and the
core's memories sit above the golden model).
"""

from __future__ import annotations  # the annotations name torch types; torch loads on use

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from olmac.spec import WEIGHT_BITS

__all__ = ["REFERENCE_BITS", "SENSITIVITY_IMAGES", "BUDGET_SCHEMES", "OUTLIER_RATIOS",
           "FRONT_CANDIDATES", "Sensitivity", "Allocation", "measure_sensitivity", "allocate",
           "choose", "choose_kbit", "uniform_allocations", "measured_kl"]

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
#: Allocations of the knapsack's Pareto front (the least summed ΔKL within the budget and
#: the next ones below it) that :func:`choose` lowers and measures jointly, beside the
#: uniform allocations within the budget.
FRONT_CANDIDATES = 8


@dataclass(frozen=True)
class Sensitivity:
    """What :func:`measure_sensitivity` measured: every GEMM layer's reference widths and
    weight count (``layers``, program order; the free layers at ``REFERENCE_BITS``), the
    layers whose widths were given (``fixed``) and the bits their weights take
    (``fixed_bits``), and per free layer and candidate ``(W, r)`` (``r`` the weight-outlier
    ratio of a value-aware layer, ``None`` for MMSE) the bits the layer's weights take
    (``cost``, ``weight_storage_bits``) and the increase of the logits' KL divergence from
    the float model's over the reference program's (``kl``, nats; 0 at the reference), on
    ``images`` whose float logits are ``reference``; each free layer's reduction length
    ``K`` (``reduction``), and ``lower(bits, ratios, weight_bits=REFERENCE_BITS)``, the
    lowering the candidates were measured with (``bits``: free layers' ``(W, A)``,
    ``ratios``: their weight-outlier ratios; ``weight_bits`` the other layers' width and,
    as ``quantize_model`` takes it, the weight outliers' ``min(2·weight_bits, 16)``), so
    that whole allocations can be measured the same way."""
    layers: dict
    fixed: frozenset
    fixed_bits: int
    kl: dict
    cost: dict
    reference_kl: float
    images: torch.Tensor
    reference: torch.Tensor
    reduction: dict
    lower: Callable = field(repr=False, compare=False)

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
    ``budget_bits`` (``None`` under a ``budget_kbit``); where the allocation was lowered
    whole, the KL of its logits from the float model's (``kl``, nats, as
    :func:`measured_kl`) and, under ``budget_kbit``, the on-chip bits it compiles to
    (``memory_bits``). It is lowered with ``weight_bits`` beside ``layer_bits``:
    ``REFERENCE_BITS``, or ``W`` for a uniform allocation, which is what ``--weight-bits W``
    lowers (weight outliers ``min(2W, 16)`` bits wide, narrower than the 16 bits the
    candidates were measured with)."""
    layer_bits: dict
    outlier_ratios: dict
    sensitivity: dict
    average_bits: float
    budget_bits: float | None
    weight_bits: int = REFERENCE_BITS
    kl: float | None = None
    memory_bits: int | None = None
    budget_kbit: float | None = None

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


def _check_kbit(budget_kbit, least_bits: int, fixed) -> None:
    """Raise ``ValueError`` unless ``budget_kbit`` is a positive number and at least
    ``least_bits`` / 1024."""
    if isinstance(budget_kbit, bool) or not isinstance(budget_kbit, (int, float)) \
            or not (math.isfinite(budget_kbit) and budget_kbit > 0):
        raise ValueError(f"budget_kbit must be a positive number (kbit of on-chip memory), "
                         f"not {budget_kbit!r}")
    if budget_kbit * 1024 < least_bits:
        names = ", ".join(sorted(fixed))
        raise ValueError(f"budget_kbit {budget_kbit:g} is below {_kbit_up(least_bits)}, the "
                         f"least on-chip memory this model compiles to (every layer at its "
                         f"narrowest width without weight outliers"
                         f"{'; ' + names + ' fixed by layer_bits' if names else ''})")


def _kbit_up(bits: int) -> str:
    """``bits`` in kbit, rounded up at the third decimal (a budget of that is enough)."""
    return f"{math.ceil(bits / 1.024) / 1000:.3f}"


def measure_sensitivity(model, calibration, *, act_bits: int = 4, layer_bits=None,
                        widths=tuple(range(WEIGHT_BITS[0], WEIGHT_BITS[1] + 1)),
                        ratios=OUTLIER_RATIOS, images: int = SENSITIVITY_IMAGES,
                        budget_bits=None, budget_kbit=None, memory_bits=None, report=None,
                        **options) -> Sensitivity:
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
    :func:`allocate` would refuse is refused after the first lowering, before the others;
    so is a ``budget_kbit`` below the on-chip bits (``memory_bits(program)``) of the free
    layers at the narrowest width without weight outliers, after a second lowering.

    Raises
    ------
    ProgramError
        As ``quantize_model`` (a name of ``layer_bits`` that is no GEMM layer, …).
    ValueError
        If a layer's scheme is not one of ``BUDGET_SCHEMES``, a width of ``widths`` is
        not in ``WEIGHT_BITS``, or ``budget_bits`` or ``budget_kbit`` is refused.
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

    def lower(bits: dict, ratios: dict, weight_bits: int = REFERENCE_BITS):
        return quantize_model(model, calibration, act_bits=act_bits,
                              weight_bits=weight_bits, act_calibration="max",
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
    if budget_kbit is not None:
        free = [name for name in names if name not in fixed]
        _check_kbit(budget_kbit, memory_bits(lower(
            {name: (widths[0], layers[name].act_bits) for name in free},
            {name: 0.0 for name in free if gemms[name].scheme == "value_aware"},
            widths[0])), fixed)
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
    return Sensitivity(layers, fixed, fixed_bits, kl, cost, base_kl, sample, reference,
                       {name: gemms[name].in_features for name in kl}, lower)


def _front(sensitivity: Sensitivity, capacity: int) -> list[tuple]:
    """The Pareto front of (bits, summed ΔKL) of the free layers' candidates within
    ``capacity`` bits, fixed layers included: ``(bits, sum, keys)`` by increasing bits and
    decreasing sum, each state the least sum of its bits and below; layer by layer, a
    multiple-choice knapsack, exact and deterministic."""
    kl, cost = sensitivity.kl, sensitivity.cost
    free = list(kl)
    rest = [sum(min(cost[name].values()) for name in free[i:]) for i in range(len(free) + 1)]
    front = [(sensitivity.fixed_bits, 0.0, ())]
    for index, name in enumerate(free):
        grown = sorted((bits + cost[name][key], total + kl[name][key], choice + (key,))
                       for bits, total, choice in front
                       for key in sorted(kl[name], key=_order)
                       if bits + cost[name][key] + rest[index + 1] <= capacity)
        front, best = [], math.inf
        for state in grown:  # by bits: keep each state that lowers the least sum so far
            if state[1] < best:
                front.append(state)
                best = state[1]
    return front


def _order(key: tuple) -> tuple:
    """A candidate ``(W, r)``'s place among a layer's, by width then ratio."""
    return key[0], key[1] or 0


def _allocation(sensitivity: Sensitivity, chosen: dict, **fields) -> Allocation:
    """The :class:`Allocation` of the free layers' candidates ``chosen`` (name → ``(W, r)``),
    with ``fields`` (``budget_bits``, ``kl``, …) as given."""
    layers = sensitivity.layers
    count = sum(w.weights for w in layers.values())
    bits = sensitivity.fixed_bits + sum(sensitivity.cost[name][key]
                                        for name, key in chosen.items())
    layer_bits = {name: (chosen[name][0] if name in chosen else width.weight_bits,
                         width.act_bits) for name, width in layers.items()}
    return Allocation(layer_bits, {name: key[1] for name, key in chosen.items()
                                   if key[1] is not None},
                      {name: sensitivity.kl[name][key] for name, key in chosen.items()},
                      bits / count, **{"budget_bits": None, **fields})


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
    choice = _front(sensitivity, _capacity(sensitivity, budget_bits))[-1][2]
    return _allocation(sensitivity, dict(zip(sensitivity.kl, choice)), budget_bits=budget_bits)


def _capacity(sensitivity: Sensitivity, budget_bits: float) -> int:
    """``budget_bits`` times the number of weights, in whole bits so that comparisons are
    exact (the slack absorbs the product's rounding)."""
    return math.floor(budget_bits * sum(w.weights for w in sensitivity.layers.values())
                      + 1e-6)


def _uniform(sensitivity: Sensitivity, width: int, ratio: float) -> dict:
    """Every free layer at ``width`` with the weight-outlier ratio ``ratio`` (MMSE layers
    without): each layer's candidate of that width with as many outliers per channel,
    ``⌊r·K⌋``, or ``None`` where the layer has none such."""
    chosen = {}
    for name, by_key in sensitivity.kl.items():
        count = math.floor(ratio * sensitivity.reduction[name])
        keys = [key for key in sorted(by_key, key=_order) if key[0] == width and (
            key[1] is None or math.floor(key[1] * sensitivity.reduction[name]) == count)]
        if not keys:
            return None
        chosen[name] = keys[0]
    return chosen


def _uniforms(sensitivity: Sensitivity) -> list[tuple[dict, int]]:
    """The distinct uniform allocations, every measured width with every ratio, each with
    the width it is lowered with (its own, as ``--weight-bits`` lowers it)."""
    widths = sorted({key[0] for by_key in sensitivity.kl.values() for key in by_key})
    ratios = sorted({key[1] or 0.0 for by_key in sensitivity.kl.values() for key in by_key})
    found = []
    for width in widths:
        for ratio in ratios:
            chosen = _uniform(sensitivity, width, ratio)
            if chosen is not None and (chosen, width) not in found:
                found.append((chosen, width))
    return found


def _lowered(sensitivity: Sensitivity, chosen: dict, weight_bits: int):
    """``chosen`` (free layer → ``(W, r)``) lowered whole with ``weight_bits``, as the
    candidates were."""
    return sensitivity.lower({name: (key[0], sensitivity.layers[name].act_bits)
                              for name, key in chosen.items()},
                             {name: key[1] for name, key in chosen.items()
                              if key[1] is not None}, weight_bits)


def _measured(sensitivity: Sensitivity, chosen: dict, weight_bits: int, within=None,
              **fields):
    """``chosen`` lowered (:func:`_lowered`) as an :class:`Allocation` with the bits its
    weights take (``weight_storage_bits`` of every GEMM) and its KL from the float model;
    ``None``, not measured, where ``within(program)`` is false (``memory_bits`` where it is
    a number)."""
    from olmac.golden.program import Gemm
    from olmac.golden.program.sensitivity import weight_storage_bits
    program = _lowered(sensitivity, chosen, weight_bits)
    kept = True if within is None else within(program)
    if kept is False:
        return None
    if kept is not True:
        fields["memory_bits"] = kept
    gemms = [op for op in program.ops if isinstance(op, Gemm)]
    bits = sum(map(weight_storage_bits, gemms)) / sum(op.in_features * op.out_features
                                                      for op in gemms)
    return replace(_allocation(sensitivity, chosen, weight_bits=weight_bits, **fields),
                   average_bits=bits, kl=measured_kl(sensitivity, program))


def uniform_allocations(sensitivity: Sensitivity, budget_bits: float = WEIGHT_BITS[1],
                        report=None) -> list[Allocation]:
    """The uniform allocations (all free layers at one measured width ``W`` and
    weight-outlier ratio, lowered as ``--weight-bits W``) within ``budget_bits``, each
    lowered and measured (:func:`_measured`); those whose dense weights alone exceed the
    budget are not lowered. ``report(done, total)`` after each lowering."""
    capacity = _capacity(sensitivity, budget_bits)
    dense = {name: width.weights for name, width in sensitivity.layers.items()
             if name not in sensitivity.fixed}
    candidates = [(chosen, width) for chosen, width in _uniforms(sensitivity)
                  if sensitivity.fixed_bits + width * sum(dense.values()) <= capacity]
    found = []
    for done, (chosen, width) in enumerate(candidates, 1):
        allocation = _measured(sensitivity, chosen, width, budget_bits=budget_bits)
        if allocation.average_bits * sum(w.weights for w in sensitivity.layers.values()) \
                <= capacity + 1e-6:
            found.append(allocation)
        if report is not None:
            report(done, len(candidates))
    return found


def _least_kl(allocations: list) -> Allocation:
    """The allocation of least ``kl`` (ties: the first)."""
    return min((a for a in allocations if a is not None), key=lambda a: a.kl)


def choose(sensitivity: Sensitivity, budget_bits: float, *, front: int = FRONT_CANDIDATES,
           report=None) -> Allocation:
    """The allocation within ``budget_bits`` (average bits per weight, as :func:`allocate`)
    whose logits, lowered whole, are closest to the float model's (least
    :func:`measured_kl`): of the last ``front`` states of the knapsack's Pareto front
    (:func:`allocate`'s choice and the next-best sums with fewer bits) and every uniform
    allocation within the budget (:func:`uniform_allocations`). Summed one-layer
    sensitivities mislead where layers interact (at 2 bits, say); the joint measurement
    decides, and no uniform allocation within the budget is measured better than the
    choice. ``report(done, total)`` after each lowering (the front's, then the uniform
    ones').

    Raises
    ------
    ValueError
        As :func:`allocate`.
    """
    _check_budget(budget_bits, sensitivity.least_bits, sensitivity.fixed)
    states = list(reversed(_front(sensitivity, _capacity(sensitivity, budget_bits))[-front:]))
    measured = []
    for done, (_, _, choice) in enumerate(states, 1):
        measured.append(_measured(sensitivity, dict(zip(sensitivity.kl, choice)),
                                  REFERENCE_BITS, budget_bits=budget_bits))
        if report is not None:
            report(done, len(states))
    return _least_kl(measured + uniform_allocations(sensitivity, budget_bits, report))


def choose_kbit(sensitivity: Sensitivity, budget_kbit: float, memory_bits, *,
                report=None) -> Allocation:
    """The allocation whose program takes at most ``budget_kbit`` kbit (1024 bits) on chip,
    ``memory_bits(program)`` as the compiled core's memories add up, with the logits
    closest to the float model's (least :func:`measured_kl`). The candidates, each lowered
    whole and compiled: for every width cap ``w`` and weight-outlier ratio cap ``r``, each
    free layer at its least sensitive candidate of at most ``w`` bits and ``⌊r·K⌋``
    outliers a channel (the core's weight word is as wide as its widest layer and holds
    the outlier slots of its fullest beat, so narrower layers under the cap save nothing),
    and every uniform allocation (lowered as ``--weight-bits W``). ``report(done, total)``
    after each lowering.

    Raises
    ------
    ValueError
        If ``budget_kbit`` is not a positive number, or is below what the free layers at
        their narrowest width without weight outliers compile to.
    """
    kl, reduction = sensitivity.kl, sensitivity.reduction
    keys = {key for by_key in kl.values() for key in by_key}

    def outliers(name, key) -> int:  # per channel, ⌊r·K⌋ (value_aware.md §1)
        return math.floor((key[1] or 0.0) * reduction[name])
    candidates = []
    for width in sorted({key[0] for key in keys}):
        for ratio in sorted({key[1] or 0.0 for key in keys}):
            chosen = {name: min((key for key in by_key if key[0] <= width and outliers(
                                 name, key) <= math.floor(ratio * reduction[name])),
                                key=lambda key: (by_key[key], _order(key)))
                      for name, by_key in kl.items()}
            if (chosen, REFERENCE_BITS) not in candidates:
                candidates.append((chosen, REFERENCE_BITS))
    # every layer at its narrowest width without outliers, lowered as --weight-bits W (the
    # narrowest outlier slots too: a value-aware core keeps one): the least memory
    narrowest = (candidates[0][0], min(key[0] for key in keys))
    candidates.insert(0, narrowest)
    least = memory_bits(_lowered(sensitivity, *narrowest))
    _check_kbit(budget_kbit, least, sensitivity.fixed)
    candidates += [pair for pair in _uniforms(sensitivity) if pair not in candidates]

    def within(program):
        bits = memory_bits(program)
        return bits if bits <= budget_kbit * 1024 else False
    measured = []
    for done, (chosen, width) in enumerate(candidates, 1):
        measured.append(_measured(sensitivity, chosen, width, within,
                                  budget_kbit=budget_kbit))
        if report is not None:
            report(done, len(candidates))
    return _least_kl(measured)


def measured_kl(sensitivity: Sensitivity, program) -> float:
    """``logit_kl`` of ``program``'s exact logits from the float model's on the images the
    sensitivities were measured on (nats)."""
    from olmac.golden.program.sensitivity import logit_kl, real_logits
    return float(logit_kl(sensitivity.reference, real_logits(program, sensitivity.images)))
