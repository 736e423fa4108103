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

__all__ = ["REFERENCE_BITS", "SENSITIVITY_IMAGES", "BUDGET_SCHEMES", "Sensitivity",
           "Allocation", "measure_sensitivity", "allocate", "measured_kl"]

#: The weight width every other layer keeps while one layer's sensitivity is measured,
#: and the widest a layer is given.
REFERENCE_BITS = WEIGHT_BITS[1]
#: Most calibration images a sensitivity is measured on (every ⌈N/256⌉-th).
SENSITIVITY_IMAGES = 256
#: The weight schemes whose weights are W-bit integers, so that W is what a weight costs;
#: SYQ codes and multi-tensor planes are not allocated by width.
BUDGET_SCHEMES = ("mmse", "value_aware")


@dataclass(frozen=True)
class Sensitivity:
    """What :func:`measure_sensitivity` measured: every GEMM layer's reference widths and
    weight count (``layers``, program order; the free layers at ``REFERENCE_BITS``), the
    layers whose widths were given (``fixed``), and per free layer and candidate width the
    increase of the logits' KL divergence from the float model's over the reference
    program's (``kl``, nats; 0 at ``REFERENCE_BITS``), on ``images`` whose float logits
    are ``reference``."""
    layers: dict
    fixed: frozenset
    kl: dict
    reference_kl: float
    images: torch.Tensor
    reference: torch.Tensor

    @property
    def least_bits(self) -> float:
        """The least average bits per weight any allocation reaches: the free layers at
        their narrowest candidate width, the fixed ones at theirs."""
        return _least_bits(self.layers, self.fixed, {name: min(kl)
                                                     for name, kl in self.kl.items()})


@dataclass(frozen=True)
class Allocation:
    """The widths :func:`allocate` chose: ``layer_bits`` (every layer's ``(W, A)``, as
    ``quantize_model`` takes them), each free layer's KL increase at its width
    (``sensitivity``), and the average bits per weight reached under ``budget_bits``."""
    layer_bits: dict
    sensitivity: dict
    average_bits: float
    budget_bits: float

    @property
    def total_sensitivity(self) -> float:
        """The summed KL increase of the chosen widths, layer by layer (nats)."""
        return sum(self.sensitivity.values())


def _least_bits(layers: dict, fixed, narrowest: dict) -> float:
    """``Σ W_l·n_l / Σ n_l`` with the free layers at their ``narrowest`` widths and the
    ``fixed`` ones at their own."""
    total = sum(width.weights for width in layers.values())
    return sum((width.weight_bits if name in fixed else narrowest[name]) * width.weights
               for name, width in layers.items()) / total


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
                        images: int = SENSITIVITY_IMAGES, budget_bits=None, report=None,
                        **options) -> Sensitivity:
    """Lower ``model`` (``quantize_model`` with ``act_bits``, ``options`` and max-abs
    activation scales, one lowering each) once with every layer not in ``layer_bits`` at
    ``REFERENCE_BITS`` and once per such layer and width of ``widths`` with that layer
    alone at the width; score each program by ``logit_kl`` of its exact logits
    (``real_logits``) from the float model's on at most ``images`` calibration images.
    The layers of ``layer_bits`` (name, ``first`` or ``last`` → ``(W, A)``) keep their
    widths throughout. ``report(done, total)`` is called after each lowering. A
    ``budget_bits`` that :func:`allocate` would refuse is refused after the first lowering,
    before the others.

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
    from olmac.golden.program.sensitivity import layer_widths, logit_kl, real_logits
    widths = sorted(set(widths) | {REFERENCE_BITS})
    if not all(isinstance(w, int) and WEIGHT_BITS[0] <= w <= WEIGHT_BITS[1] for w in widths):
        raise ValueError(f"widths must be integers in {WEIGHT_BITS[0]}..{WEIGHT_BITS[1]}, "
                         f"not {widths!r}")
    calibration = calibration.to(torch.float32)
    given = dict(layer_bits or {})

    def lower(bits: dict):
        return quantize_model(model, calibration, act_bits=act_bits,
                              weight_bits=REFERENCE_BITS, act_calibration="max",
                              layer_bits={**given, **bits}, **options)

    base = lower({})
    layers = layer_widths(base)
    names = list(layers)
    fixed = frozenset({"first": names[0], "last": names[-1]}.get(name, name)
                      for name in given)
    for op in base.ops:
        if op.name in layers and op.scheme not in BUDGET_SCHEMES:
            raise ValueError(f"layer {op.name!r} has scheme {op.scheme}, whose weights are "
                             f"not W-bit integers; a budget allocates "
                             f"{' and '.join(BUDGET_SCHEMES)} layers")
    if budget_bits is not None:
        _check_budget(budget_bits, _least_bits(layers, fixed, dict.fromkeys(names, widths[0])),
                      fixed)
    sample = calibration[::-(-len(calibration) // images)]
    with torch.no_grad():
        normalized = normalize(model, calibration[:2])
        reference = normalized.module(sample.reshape(len(sample), *normalized.input_shape))
    base_kl = float(logit_kl(reference, real_logits(base, sample)))
    free = [name for name in names if name not in fixed]
    total, done = len(free) * (len(widths) - 1), 0
    kl = {}
    for name in free:
        kl[name] = {REFERENCE_BITS: 0.0}
        for width in widths:
            if width == REFERENCE_BITS:
                continue
            program = lower({name: (width, layers[name].act_bits)})
            kl[name][width] = float(logit_kl(reference, real_logits(program, sample))) \
                - base_kl
            done += 1
            if report is not None:
                report(done, total)
    return Sensitivity(layers, fixed, kl, base_kl, sample, reference)


def allocate(sensitivity: Sensitivity, budget_bits: float) -> Allocation:
    """The widths of the free layers whose summed KL increase is least while the average
    bits per weight (``Σ W_l·n_l / Σ n_l`` over every layer, the fixed ones included)
    stays within ``budget_bits``: an exact multiple-choice knapsack, layer by layer over
    the Pareto front of (bits, summed increase), so that a larger budget never gives a
    larger sum. Of equal sums the one with more bits is taken; deterministic.

    Raises
    ------
    ValueError
        If ``budget_bits`` is not a number in ``WEIGHT_BITS``, or is below the least
        average the layers allow (``Sensitivity.least_bits``).
    """
    _check_budget(budget_bits, sensitivity.least_bits, sensitivity.fixed)
    layers, kl = sensitivity.layers, sensitivity.kl
    # in whole bits, so that the comparison is exact; the slack absorbs B·n's rounding
    capacity = math.floor(budget_bits * sum(w.weights for w in layers.values()) + 1e-6)
    fixed_bits = sum(w.weight_bits * w.weights for n, w in layers.items() if n not in kl)
    free = list(kl)
    rest = [sum(min(kl[name]) * layers[name].weights for name in free[i:])
            for i in range(len(free) + 1)]
    front = [(fixed_bits, 0.0, ())]
    for index, name in enumerate(free):
        count = layers[name].weights
        grown = sorted((bits + width * count, total + kl[name][width], choice + (width,))
                       for bits, total, choice in front for width in sorted(kl[name])
                       if bits + width * count + rest[index + 1] <= capacity)
        front, best = [], math.inf
        for state in grown:  # by bits: keep each state that lowers the least sum so far
            if state[1] < best:
                front.append(state)
                best = state[1]
    bits, _, choice = front[-1]
    chosen = dict(zip(free, choice))
    layer_bits = {name: (chosen.get(name, width.weight_bits), width.act_bits)
                  for name, width in layers.items()}
    return Allocation(layer_bits, {name: kl[name][chosen[name]] for name in free},
                      bits / sum(w.weights for w in layers.values()), budget_bits)


def measured_kl(sensitivity: Sensitivity, program) -> float:
    """``logit_kl`` of ``program``'s exact logits from the float model's on the images the
    sensitivities were measured on (nats)."""
    from olmac.golden.program.sensitivity import logit_kl, real_logits
    return float(logit_kl(sensitivity.reference, real_logits(program, sensitivity.images)))
