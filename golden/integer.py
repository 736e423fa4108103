"""The integer GEMM and requantization of docs/semantics.md §2–§3, exact in int64."""

import torch

from olmac.spec import (ACT_BITS, WEIGHT_BITS, OUTLIER_BITS, OUT_BITS, MULTIPLIER_BITS,
                          BIAS_BITS, SHIFT_RANGE, check_int)
from .formats import int_range, check_in_format

__all__ = ["MAX_ACC_BITS", "accumulator_width", "gemm", "requantize_round_half_up",
           "split_output_outliers"]

#: Widest accumulator the semantics admits (§2).
MAX_ACC_BITS = 44


def accumulator_width(k: int, lanes: int, act_bits: int, act_signed: bool,
                      weight_bits: int, *, act_outlier_bits: int | None = None,
                      weight_outlier_bits: int | None = None) -> int:
    """Least signed width holding any sum of ``K'`` products (§2, §6).

    ``K'`` is ``k`` rounded up to a multiple of ``lanes``; the products range over the
    corners of the activation and weight ranges, or of the outlier ranges where given.

    >>> accumulator_width(1024, lanes=16, act_bits=4, act_signed=True, weight_bits=4)
    18

    Raises
    ------
    TypeError
        If an argument is not an integer in its allowed range.
    ValueError
        If the result would exceed ``MAX_ACC_BITS``.
    """
    check_int("Reduction length k", k, (1, 1 << 40))
    check_int("Lane count", lanes, (1, 1 << 16))
    check_int("Activation width", act_bits, ACT_BITS)
    check_int("Weight width", weight_bits, WEIGHT_BITS)
    padded_k = -(-k // lanes) * lanes
    act_lo, act_hi = int_range(_widest("Activation", act_bits, act_outlier_bits), act_signed)
    weight_lo, weight_hi = int_range(_widest("Weight", weight_bits, weight_outlier_bits),
                                     signed=True)
    corners = [a * w for a in (act_lo, act_hi) for w in (weight_lo, weight_hi)]
    acc_lo, acc_hi = padded_k * min(corners), padded_k * max(corners)
    width = 1
    while not (-(1 << (width - 1)) <= acc_lo and acc_hi <= (1 << (width - 1)) - 1):
        width += 1
    if width > MAX_ACC_BITS:
        raise ValueError(
            f"Reduction length k={k} needs a {width}-bit accumulator; at most "
            f"{MAX_ACC_BITS} bits are supported")
    return width


def _widest(kind: str, bits: int, outlier_bits: int | None) -> int:
    """The width values may use: the outlier width where there are outliers (§6)."""
    if outlier_bits is None:
        return bits
    check_int(f"{kind} outlier width", outlier_bits, OUTLIER_BITS)
    if outlier_bits <= bits:
        raise ValueError(f"{kind} outlier width {outlier_bits} must exceed the "
                         f"{kind.lower()} width {bits}")
    return outlier_bits


def gemm(acts: torch.Tensor, weights: torch.Tensor, *, act_bits: int, act_signed: bool,
         weight_bits: int, act_outlier_bits: int | None = None,
         weight_outlier_bits: int | None = None) -> torch.Tensor:
    """Exact integer product ``acc = acts @ weights`` (§2), as int64.

    ``acts`` is ``M×K`` in ``s<act_bits>`` or ``u<act_bits>``; ``weights`` is ``K×N`` in
    ``s<weight_bits>``. With an outlier width (§6) the tensors are the recombined
    dense + sparse tensors, and their entries may use the whole outlier format. Every
    product and sum is exact: the accumulator bound of §2 is far inside int64.

    >>> gemm(torch.tensor([[1, -2]]), torch.tensor([[3], [4]]), act_bits=4,
    ...      act_signed=True, weight_bits=4)
    tensor([[-5]])

    Raises
    ------
    TypeError
        If a width is out of range or a tensor is not integer.
    ValueError
        If the shapes do not chain or an element lies outside its format.
    """
    check_int("Activation width", act_bits, ACT_BITS)
    check_int("Weight width", weight_bits, WEIGHT_BITS)
    if acts.dim() != 2 or weights.dim() != 2:
        raise ValueError(f"acts and weights must be 2-D, not {tuple(acts.shape)} and "
                         f"{tuple(weights.shape)}")
    if acts.shape[1] != weights.shape[0]:
        raise ValueError(f"acts is {tuple(acts.shape)} and weights is {tuple(weights.shape)}: "
                         f"the K dimensions {acts.shape[1]} and {weights.shape[0]} differ")
    if acts.shape[1] == 0:
        raise ValueError("The reduction length K must be at least 1, not 0")
    check_in_format("acts", acts, _widest("Activation", act_bits, act_outlier_bits),
                    act_signed)
    check_in_format("weights", weights, _widest("Weight", weight_bits, weight_outlier_bits),
                    signed=True)
    return acts.to(torch.int64) @ weights.to(torch.int64)


def _per_channel(name: str, values, n: int, bounds: tuple[int, int]) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.int64)
    if tensor.dim() == 0:
        tensor = tensor.expand(n)
    if tensor.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one entry per output channel "
                         f"({n}), not shape {tuple(tensor.shape)}")
    low, high = bounds
    outside = (tensor < low) | (tensor > high)
    if outside.any():
        index = int(outside.nonzero()[0, 0])
        raise ValueError(f"{name}[{index}] = {int(tensor[index])} is outside {low}..{high}")
    return tensor


def requantize_round_half_up(acc: torch.Tensor, bias, multiplier, shift, *, out_bits: int,
                             out_signed: bool, relu: bool = False) -> torch.Tensor:
    """Requantize accumulators per output channel (§3), rounding half up.

    ``y = clamp(((acc + bias) * multiplier + 2^(shift-1)) >> shift, lo, hi)``, with ``>>``
    the arithmetic shift, ``[lo, hi]`` the range of ``s<out_bits>``/``u<out_bits>`` and
    ``lo`` raised to 0 by ``relu``. ``bias``, ``multiplier`` and ``shift`` are scalars or
    have one entry per column of ``acc``.

    The product ``(acc + bias) * multiplier`` can need 65 bits, so it is formed in two
    halves of the multiplier; each partial result stays inside int64 and the floor
    division by ``2^shift`` is exact (see the comments below).

    >>> requantize_round_half_up(torch.tensor([[5, -5, 6]]), 0, 1, 1, out_bits=8,
    ...                          out_signed=True)
    tensor([[ 3, -2,  3]])

    Raises
    ------
    TypeError
        If ``out_bits`` is out of range.
    ValueError
        If a parameter is outside its format or ``|acc + bias|`` exceeds ``2^45``.
    """
    check_int("Output width", out_bits, OUT_BITS)
    if acc.dim() != 2:
        raise ValueError(f"acc must be 2-D, not {tuple(acc.shape)}")
    n = acc.shape[1]
    bias = _per_channel("bias", bias, n, int_range(BIAS_BITS, signed=True))
    multiplier = _per_channel("multiplier", multiplier, n, int_range(MULTIPLIER_BITS, True))
    shift = _per_channel("shift", shift, n, SHIFT_RANGE)
    x = acc.to(torch.int64) + bias
    if (x.abs() >= (1 << 45)).any():
        raise ValueError(f"acc + bias must lie within ±2^45 (§2 caps accumulators at "
                         f"{MAX_ACC_BITS} bits)")
    # p = x·M split as M = M_hi·2^16 + M_lo with 0 ≤ M_lo < 2^16; p + r = U·2^16 + L where
    # U = x·M_hi + ((x·M_lo + r) >> 16) and L = (x·M_lo + r) mod 2^16. |x·M_lo + r| < 2^62.
    multiplier_hi, multiplier_lo = multiplier >> 16, multiplier & 0xFFFF
    rounding = torch.where(shift > 0, 1 << (shift - 1).clamp(min=0), 0)
    low_part = x * multiplier_lo + rounding
    upper = x * multiplier_hi + (low_part >> 16)
    lower = low_part & 0xFFFF
    # floor((U·2^16 + L) / 2^s) = U >> (s-16) for s ≥ 16, since 0 ≤ L < 2^16. For s < 16 it
    # is U·2^(16-s) + (L >> s); U is clamped first so the shift cannot overflow, which the
    # final clamp to at most 16 bits makes invisible.
    upper_clamped = upper.clamp(-(1 << 40), 1 << 40)
    q = torch.where(shift >= 16,
                    upper >> (shift - 16).clamp(min=0),
                    (upper_clamped << (16 - shift).clamp(min=0)) + (lower >> shift.clamp(max=15)))
    low, high = int_range(out_bits, out_signed)
    if relu:
        low = max(low, 0)
    return q.clamp(low, high)


def split_output_outliers(y: torch.Tensor, threshold: int, *, out_bits: int,
                          out_signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Split requantized values ``y`` into ``(dense, outliers)`` (§7).

    ``y`` is the output of :func:`requantize_round_half_up` at the outlier width. Entries
    with ``|y| > threshold`` go to ``outliers`` (zero elsewhere) and leave a zero in
    ``dense``, so ``dense + outliers == y`` and ``dense`` lies in ``-threshold..threshold``.

    >>> split_output_outliers(torch.tensor([[3, -200, 90]]), 100, out_bits=8,
    ...                       out_signed=True)
    (tensor([[ 3,  0, 90]]), tensor([[   0, -200,    0]]))

    Raises
    ------
    TypeError
        If ``threshold`` is not an integer in ``0..hi`` of the dense output format.
    """
    check_int("Output width", out_bits, OUT_BITS)
    check_int("Outlier threshold", threshold, (0, int_range(out_bits, out_signed)[1]))
    outlier = y.abs() > threshold
    return torch.where(outlier, 0, y), torch.where(outlier, y, 0)
