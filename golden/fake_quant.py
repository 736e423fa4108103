"""The float view of the integer semantics (docs/semantics.md §5), for accuracy work."""

import torch

from olmac.spec import ACT_BITS, HIGHWAY_BITS, MULTIPLIER_BITS, SHIFT_RANGE, check_int
from .formats import int_range

__all__ = ["to_int_round_half_even", "dequantize", "fake_quantize", "fake_quantize_ste",
           "requant_params"]


def to_int_round_half_even(x: torch.Tensor, scale: torch.Tensor | float, bits: int,
                           signed: bool) -> torch.Tensor:
    """``clamp(round_half_even(x / scale), lo, hi)`` as int64 (§5).

    >>> to_int_round_half_even(torch.tensor([0.25, 0.75, 100.0, -100.0]), 0.5, 4, True)
    tensor([ 0,  2,  7, -8])
    """
    low, high = int_range(bits, signed)
    return torch.round(x / scale).clamp(low, high).to(torch.int64)


def dequantize(q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``scale · q`` as float (§5).

    >>> dequantize(torch.tensor([-8, 3]), 0.5)
    tensor([-4.0000,  1.5000])
    """
    return q.to(torch.get_default_dtype()) * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor | float, bits: int,
                  signed: bool) -> torch.Tensor:
    """``dequantize(to_int_round_half_even(x))``: the value the integer model sees (§5).

    >>> fake_quantize(torch.tensor([0.3, 9.0]), 0.5, 4, True)
    tensor([0.5000, 3.5000])
    """
    return dequantize(to_int_round_half_even(x, scale, bits, signed), scale)


def fake_quantize_ste(x: torch.Tensor, scale: torch.Tensor | float, bits: int,
                      signed: bool) -> torch.Tensor:
    """``fake_quantize`` (``σ·clamp(round_half_even(x/σ), lo, hi)``) in the forward pass,
    with straight-through gradients for quantization-aware training: ``∂y/∂x = 1`` where
    ``lo·σ ≤ x ≤ hi·σ`` and 0 outside (the clipped estimator), and, for a ``scale`` that
    requires a gradient, LSQ's ``∂y/∂σ = round(x/σ) − x/σ`` inside and ``lo`` or ``hi``
    outside (the learned step size).

    >>> x = torch.tensor([0.3, 0.75, 9.0, -9.0], requires_grad=True)
    >>> y = fake_quantize_ste(x, 0.5, 3, True)
    >>> y.detach(), torch.autograd.grad(y.sum(), x)[0]
    (tensor([ 0.5000,  1.0000,  1.5000, -2.0000]), tensor([1., 1., 0., 0.]))
    >>> scale = torch.tensor(0.5, requires_grad=True)
    >>> torch.autograd.grad(fake_quantize_ste(torch.tensor([0.3, 9.0]), scale, 3, True).sum(),
    ...                     scale)[0]
    tensor(3.4000)

    Raises
    ------
    TypeError
        If ``bits`` is not an integer in 2..16.
    """
    check_int("bits", bits, (ACT_BITS[0], HIGHWAY_BITS))
    low, high = int_range(bits, signed)
    steps = torch.clamp(x / scale, low, high)
    # round(steps) + 0 exactly in the forward pass, the identity in the backward pass
    return (torch.round(steps) + (steps - steps.detach())) * scale


def requant_params(real_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer ``(M, s)`` with ``M · 2^(-s)`` nearest to each positive ``real_scale`` (§3).

    ``M`` lies in ``2^30 .. 2^31 - 1`` so it keeps 31 significant bits.

    >>> requant_params(torch.tensor([0.75, 2.0 ** -20]))
    (tensor([1610612736, 1073741824]), tensor([31, 50]))

    Raises
    ------
    ValueError
        If a scale is not positive and finite, or needs a shift outside 0..63.
    """
    real_scale = torch.as_tensor(real_scale, dtype=torch.float64)
    if not (torch.isfinite(real_scale) & (real_scale > 0)).all():
        raise ValueError(f"real_scale must be positive and finite, not {real_scale.tolist()}")
    mantissa, exponent = torch.frexp(real_scale)
    top = 1 << (MULTIPLIER_BITS - 1)
    multiplier = torch.round(mantissa * top).to(torch.int64)
    shift = (MULTIPLIER_BITS - 1) - exponent.to(torch.int64)
    carried = multiplier == top
    multiplier = torch.where(carried, top >> 1, multiplier)
    shift = torch.where(carried, shift - 1, shift)
    low, high = SHIFT_RANGE
    if ((shift < low) | (shift > high)).any():
        raise ValueError(f"real_scale {real_scale.tolist()} needs a shift outside {low}..{high}")
    return multiplier, shift
