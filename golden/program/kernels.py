"""The integer kernels of a program's ops (docs/program.md §10–§12): the patch matrix of a
convolution, the windows of a pooling, the highway add, and the row layout a GEMM reads
and writes."""

import torch
from torch.nn import functional as F

from olmac.spec import HIGHWAY_BITS, MULTIPLIER_BITS, RESIDUAL_SHIFT_RANGE, SHIFT_RANGE
from ..formats import check_in_format, int_range
from ..integer import MAX_ACC_BITS, _per_channel

__all__ = ["im2col", "pool_windows", "walsh_hadamard", "requantize_residual_round_half_up",
           "nchw_rows", "from_rows"]

_S32 = int_range(MULTIPLIER_BITS, signed=True)


def im2col(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int]) -> torch.Tensor:
    """The ``(N·Ho·Wo) × (C·kh·kw)`` patch matrix of an ``N×C×H×W`` tensor (§10).

    Row ``m = (n·Ho + oy)·Wo + ox``, column ``k = (c·kh + ky)·kw + kx``, entry
    ``X[n, c, oy·sh + ky − ph, ox·sw + kx − pw]``, and 0 (the activation zero point) where
    that index falls in the padding. ``Ho = (H + 2·ph − kh) // sh + 1``, likewise ``Wo``.
    Works on integer and float tensors alike.

    >>> im2col(torch.arange(4).reshape(1, 1, 2, 2), (2, 2), (1, 1), (1, 1))[:2]
    tensor([[0, 0, 0, 0],
            [0, 0, 0, 1]])
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c = x.shape[:2]
    patches = F.pad(x, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)
    _, _, ho, wo, _, _ = patches.shape  # N × C × Ho × Wo × kh × kw
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


def pool_windows(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int] = (0, 0), fill=0) -> torch.Tensor:
    """The ``N×C×Ho×Wo×(kh·kw)`` windows of a pooling (§12).

    Window ``(oy, ox)`` holds ``X[n, c, oy·sh + ky − ph, ox·sw + kx − pw]`` in ``(ky, kx)``
    row-major order, and ``fill`` where that index falls in the padding;
    ``Ho = (H + 2·ph − kh) // sh + 1``, likewise ``Wo``.

    >>> pool_windows(torch.arange(16).reshape(1, 1, 4, 4), (2, 2), (2, 2))[0, 0, 0]
    tensor([[0, 1, 4, 5],
            [2, 3, 6, 7]])
    >>> pool_windows(torch.arange(4).reshape(1, 1, 2, 2), (2, 2), (2, 2), (1, 1), -9)[0, 0, 0]
    tensor([[-9, -9, -9,  0],
            [-9, -9,  1, -9]])
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    windows = F.pad(x, (pw, pw, ph, ph), value=fill).unfold(2, kh, sh).unfold(3, kw, sw)
    return windows.reshape(*windows.shape[:4], kh * kw)


def walsh_hadamard(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The unnormalized fast Walsh–Hadamard transform of ``x`` along ``dim`` (§19):
    ``y = x ×_dim H_n`` with ``H_1 = [1]``, ``H_2n = [[H_n, H_n], [H_n, −H_n]]`` (Sylvester
    order), in ``log2(n)`` butterfly stages of one add and one subtract per pair; exact on
    integers (each stage widens by one bit) and differentiable on floats.
    ``H_n·H_n = n·I``, so ``walsh_hadamard(x)/√n`` is a rotation and its own inverse.

    >>> walsh_hadamard(torch.tensor([[1, 0, 0, 0], [1, 2, 3, 4]]))
    tensor([[ 1,  1,  1,  1],
            [10, -2, -4,  0]])

    Raises
    ------
    ValueError
        If the size along ``dim`` is not a power of two.
    """
    n = x.shape[dim]
    if n < 1 or n & (n - 1):
        raise ValueError(f"the Walsh–Hadamard transform needs a power-of-two size, not {n}")
    moved = x.movedim(dim, -1)
    shape = moved.shape
    half = 1
    while half < n:
        pairs = moved.reshape(*shape[:-1], n // (2 * half), 2, half)
        first, second = pairs[..., 0, :], pairs[..., 1, :]
        moved = torch.stack((first + second, first - second), dim=-2).reshape(shape)
        half *= 2
    return moved.movedim(-1, dim)


def nchw_rows(x: torch.Tensor) -> torch.Tensor:
    """``N×C×H×W`` as the ``(N·H·W) × C`` rows of a GEMM output (§10), or ``N×F`` as is.

    >>> nchw_rows(torch.arange(8).reshape(1, 2, 2, 2))
    tensor([[0, 4],
            [1, 5],
            [2, 6],
            [3, 7]])
    """
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if x.dim() == 4 else x


def from_rows(rows: torch.Tensor, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``nchw_rows`` for ``n`` samples of per-sample ``shape``.

    >>> x = torch.arange(8).reshape(1, 2, 2, 2)
    >>> bool((from_rows(nchw_rows(x), 1, (2, 2, 2)) == x).all())
    True
    """
    if len(shape) == 1:
        return rows.reshape(n, *shape)
    c, h, w = shape
    return rows.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def requantize_residual_round_half_up(acc: torch.Tensor, bias, multiplier, shift,
                                      residual: torch.Tensor, residual_multiplier,
                                      residual_shift=0, *, out_bits: int, out_signed: bool,
                                      relu: bool = False) -> torch.Tensor:
    """The highway add (§11): one requantization of a GEMM plus a skip tensor.

    ``y = clamp(((acc + β)·M + r·M_r·2^t + 2^(s−1)) >> s, lo', hi)`` per output column,
    with ``>>`` the arithmetic shift (round half up, ties toward +∞, one rounding in all),
    ``2^(s−1)`` read as 0 for ``s = 0``, ``[lo, hi]`` the range of
    ``s<out_bits>``/``u<out_bits>`` and ``lo' = max(lo, 0)`` with ``relu``. ``acc`` and
    ``residual`` are ``M×N``; ``bias``, ``multiplier``, ``shift``, ``residual_multiplier``
    and ``residual_shift`` (``t``) are scalars or have one entry per column. Exact:
    ``(acc + β)·M`` needs up to 77 bits, so it is formed in two halves of ``M`` as in
    ``golden.requantize_round_half_up``; ``r·M_r`` is below ``2^47`` and ``t ≤ 31``.

    >>> requantize_residual_round_half_up(torch.tensor([[5, -5]]), 0, 2, 2,
    ...     torch.tensor([[1, 1]]), 1, out_bits=8, out_signed=True)
    tensor([[ 3, -2]])

    Raises
    ------
    TypeError
        If ``out_bits`` is out of range or a tensor is not integer.
    ValueError
        If a parameter is outside its format (``β``, ``M``, ``M_r``: ``s32``; ``s``:
        0..63; ``t``: 0..31), ``residual`` is not ``M×N`` or outside ``-2^16..2^16 - 1``,
        or ``|acc + β|`` reaches ``2^45``.
    """
    if acc.dim() != 2 or residual.shape != acc.shape:
        raise ValueError(f"acc and residual must be 2-D of one shape, not "
                         f"{tuple(acc.shape)} and {tuple(residual.shape)}")
    n = acc.shape[1]
    bias = _per_channel("bias", bias, n, _S32)
    multiplier = _per_channel("multiplier", multiplier, n, _S32)
    shift = _per_channel("shift", shift, n, SHIFT_RANGE)
    residual_multiplier = _per_channel("residual_multiplier", residual_multiplier, n, _S32)
    residual_shift = _per_channel("residual_shift", residual_shift, n, RESIDUAL_SHIFT_RANGE)
    # s17 holds both u16 and s16 skip tensors.
    check_in_format("residual", residual, HIGHWAY_BITS + 1, signed=True)
    x = acc.to(torch.int64) + bias
    if (x.abs() >= (1 << 45)).any():
        raise ValueError(f"acc + bias must lie within ±2^45 (§2 caps accumulators at "
                         f"{MAX_ACC_BITS} bits)")
    # p + 2^(s-1) = U·2^16 + L with 0 ≤ L < 2^16. With M = M_hi·2^16 + M_lo
    # (0 ≤ M_lo < 2^16) and R = r·M_r·2^t = R_hi·2^16 + R_lo (0 ≤ R_lo < 2^16):
    # low = x·M_lo + R_lo + 2^(s-1), U = x·M_hi + R_hi + (low >> 16), L = low mod 2^16.
    # |x·M_lo| < 2^61 and 2^(s-1) ≤ 2^62, so |low| < 2^63; |x·M_hi| < 2^60 and
    # |R_hi| < 2^62 (|r·M_r| < 2^47, t ≤ 31), so |U| < 2^63.
    product = residual.to(torch.int64) * residual_multiplier
    small = residual_shift < 16
    shifted = product << residual_shift.clamp(max=15)  # < 2^62 where t < 16
    residual_lo = torch.where(small, shifted & 0xFFFF, 0)
    residual_hi = torch.where(small, shifted >> 16, product << (residual_shift - 16).clamp(min=0))
    rounding = torch.where(shift > 0, 1 << (shift - 1).clamp(min=0), 0)
    low = x * (multiplier & 0xFFFF) + residual_lo + rounding
    upper = x * (multiplier >> 16) + residual_hi + (low >> 16)
    lower = low & 0xFFFF
    # floor((U·2^16 + L) / 2^s): U >> (s-16) for s ≥ 16 (0 ≤ L < 2^16); else
    # U·2^(16-s) + (L >> s), with U clamped first so the shift cannot overflow int64 (the
    # clamp to at most 16 output bits below makes that invisible).
    upper_clamped = upper.clamp(-(1 << 40), 1 << 40)
    q = torch.where(shift >= 16, upper >> (shift - 16).clamp(min=0),
                    (upper_clamped << (16 - shift).clamp(min=0))
                    + (lower >> shift.clamp(max=15)))
    low_out, high_out = int_range(out_bits, out_signed)
    return q.clamp(max(low_out, 0) if relu else low_out, high_out)
