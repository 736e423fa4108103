"""Min-MSE linear quantization and multi-tensor weights (Choukroun et al., 2019).

The torch reading of docs/codebooks.md §1–§2; section numbers (§) below are that page's.
Scales are float64 and integers int64. A per-tensor scale is 0-dim. A per-channel scale has
one entry per index of dim 0 (the output channel of an ``nn.Linear``/``nn.Conv2d`` weight)
and the shape ``(C, 1, ..., 1)``, so it broadcasts against the tensor it scales.
"""

import math
from dataclasses import dataclass

import torch

from olmac.spec import WEIGHT_BITS, check_int
from .fake_quant import dequantize, fake_quantize, to_int_round_half_even
from .formats import check_in_format, int_range
from .integer import MAX_ACC_BITS

__all__ = [
    "GRID_POINTS", "REFINE_POINTS", "MAX_PLANES", "EXPONENT_BITS",
    "max_abs_scale", "quantization_mse", "mmse_scale", "MultiTensor", "multi_tensor_quantize",
    "reconstruct", "relative_mse", "choose_planes", "combine_plane_accumulators",
]

#: Points of the coarse grid ``α_max·k/G``, ``k = 1..G`` (§1).
GRID_POINTS = 64
#: Points each side of the coarse minimum in the refining grid, one coarse cell wide (§1).
REFINE_POINTS = 16
#: Most planes a multi-tensor weight may have (§2).
MAX_PLANES = 3
#: Width of the exponents of the plane-scale ratio ``α_{p+1} = α_p·2^(-e_p)`` (§2): each
#: ``e_p`` is a ``u4``, 0..15.
EXPONENT_BITS = 4


def _grouped(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``x`` as float64 rows ``(C, n)``: one row per output channel, or one row in all."""
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, not {x.dtype}")
    if x.numel() == 0:
        raise ValueError("x must have at least one element")
    if per_channel and x.dim() == 0:
        raise ValueError("A per-channel scale needs x with at least one dimension, not 0-D")
    return x.detach().to(torch.float64).reshape(x.shape[0] if per_channel else 1, -1)


def _shaped(rows: torch.Tensor, x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Per-row values ``(C,)`` or ``(C, 1)`` as a 0-dim or ``(C, 1, ..., 1)`` tensor."""
    if per_channel:
        return rows.reshape((x.shape[0],) + (1,) * (x.dim() - 1))
    return rows.reshape(())


def _group_mse(rows: torch.Tensor, scale: torch.Tensor, bits: int,
               signed: bool) -> torch.Tensor:
    """Mean of ``(x - fake_quantize(x))²`` along each row, for a ``(C, 1)`` scale."""
    return ((rows - fake_quantize(rows, scale, bits, signed)) ** 2).mean(dim=1)


def _max_abs(rows: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """``max|x| / hi`` per row as ``(C, 1)``; 1 for an all-zero row (any scale is exact)."""
    peak = rows.abs().amax(dim=1, keepdim=True)
    return torch.where(peak > 0, peak / int_range(bits, signed)[1], 1.0)


def _argmin_scale(rows: torch.Tensor, candidates, bits: int, signed: bool,
                  best: torch.Tensor) -> torch.Tensor:
    """Per row, the first scale of ``[best, *candidates]`` with the least MSE.

    A candidate replaces the row's best only when its MSE is strictly lower, so ties keep
    the earlier one, and every MSE is computed exactly as ``quantization_mse`` computes it.
    """
    best_mse = _group_mse(rows, best, bits, signed)
    for candidate in candidates:
        mse = _group_mse(rows, candidate, bits, signed)
        better = mse < best_mse
        best = torch.where(better[:, None], candidate, best)
        best_mse = torch.where(better, mse, best_mse)
    return best


def _mmse(rows: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """The two-stage grid search of §1 on ``(C, n)`` rows; returns ``(C, 1)``."""
    top = _max_abs(rows, bits, signed)
    coarse = (top * (k / GRID_POINTS) for k in range(GRID_POINTS - 1, 0, -1))
    centre = _argmin_scale(rows, coarse, bits, signed, top)
    step = top / (GRID_POINTS * REFINE_POINTS)
    fine = (centre + j * step for j in range(-REFINE_POINTS, REFINE_POINTS + 1) if j != 0)
    # A refining point outside (0, α_max] is replaced by the centre, which cannot win a tie.
    inside = (torch.where((f > 0) & (f <= top), f, centre) for f in fine)
    return _argmin_scale(rows, inside, bits, signed, centre)


def _check_bits(bits: int) -> int:
    return check_int("bits", bits, WEIGHT_BITS)


def max_abs_scale(x: torch.Tensor, bits: int, *, signed: bool = True,
                  per_channel: bool = False) -> torch.Tensor:
    """Max-abs scale ``α = max|x| / hi`` (§1), per tensor or per output channel.

    ``hi`` is the top of ``s<bits>`` (``2^(bits-1) - 1``) or ``u<bits>`` (``2^bits - 1``);
    a group that is all zero gets ``α = 1``.

    >>> max_abs_scale(torch.tensor([[0.5, -1.4], [0.3, 0.0]]), 3, per_channel=True)
    tensor([[0.4667],
            [0.1000]], dtype=torch.float64)

    Raises
    ------
    TypeError
        If ``bits`` is not an integer in 2..8 or ``x`` is not floating point.
    ValueError
        If ``x`` is empty, or 0-D with ``per_channel``.
    """
    _check_bits(bits)
    return _shaped(_max_abs(_grouped(x, per_channel), bits, signed), x, per_channel)


def quantization_mse(x: torch.Tensor, scale: torch.Tensor | float, bits: int, *,
                     signed: bool = True, per_channel: bool = False) -> torch.Tensor:
    """``mean (x - α·clamp(round_half_even(x/α), lo, hi))²`` per group (§1), in float64.

    ``scale`` is 0-dim (or a float) per tensor, or has one entry per output channel; the
    result has one entry per group: 0-dim, or ``(C,)``.

    >>> quantization_mse(torch.tensor([0.3, 1.0]), 0.5, 2)  # (0.3 - 0.5)² and (1.0 - 0.5)²
    tensor(0.1450, dtype=torch.float64)

    Raises
    ------
    TypeError, ValueError
        As ``max_abs_scale``.
    """
    _check_bits(bits)
    rows = _grouped(x, per_channel)
    scale = torch.as_tensor(scale, dtype=torch.float64).reshape(-1, 1)
    mse = _group_mse(rows, scale, bits, signed)
    return mse if per_channel else mse.reshape(())


def mmse_scale(x: torch.Tensor, bits: int, *, signed: bool = True,
               per_channel: bool = False) -> torch.Tensor:
    """The min-MSE scale ``α* = argmin_α quantization_mse(x, α)`` by a grid search (§1).

    Per group, with ``α_max = max_abs_scale(x)``: a coarse grid ``α_max·k/64`` for
    ``k = 64, 63, ..., 1``, then ``α_c ± j·α_max/1024`` for ``j = 1..16`` around the
    coarse minimum ``α_c``, kept inside ``(0, α_max]``. A candidate wins only with a
    strictly lower MSE, so ``α_max`` itself is the first candidate and the result never
    has a higher MSE than max-abs scaling. For weights use ``per_channel=True``; to
    calibrate an activation, pass a batch of its sample values with the activation's
    format (``signed=False`` after a ReLU) and ``per_channel=False``.

    >>> x = torch.tensor([0.1, -0.1, 0.2, -0.2, 0.5])
    >>> mmse_scale(x, 2), quantization_mse(x, mmse_scale(x, 2), 2)
    (tensor(0.2998, dtype=torch.float64), tensor(0.0160, dtype=torch.float64))
    >>> max_abs_scale(x, 2), quantization_mse(x, max_abs_scale(x, 2), 2)
    (tensor(0.5000, dtype=torch.float64), tensor(0.0200, dtype=torch.float64))

    Raises
    ------
    TypeError, ValueError
        As ``max_abs_scale``.
    """
    _check_bits(bits)
    return _shaped(_mmse(_grouped(x, per_channel), bits, signed), x, per_channel)


@dataclass(frozen=True, eq=False)
class MultiTensor:
    """``W ≈ Σ_p α_p·Q_p`` with ``α_{p+1} = α_p·2^(-e_p)`` (§2).

    ``planes`` (int64, ``P × *W.shape``) holds each ``Q_p`` in ``s<bits>``; ``scales``
    (float64, ``P × C``) holds ``α_p`` per channel (``C = 1`` per tensor); ``exponents``
    (int64, ``(P-1) × C``) holds ``e_p`` in ``u<EXPONENT_BITS>`` (0..15).
    """
    planes: torch.Tensor
    scales: torch.Tensor
    exponents: torch.Tensor
    bits: int

    def first(self, planes: int) -> "MultiTensor":
        """The leading ``planes`` planes: what a quantizer asked for fewer would return."""
        check_int("planes", planes, (1, self.planes.shape[0]))
        return MultiTensor(self.planes[:planes], self.scales[:planes],
                           self.exponents[:planes - 1], self.bits)


def multi_tensor_quantize(w: torch.Tensor, bits: int, planes: int, *,
                          per_channel: bool = True) -> MultiTensor:
    """Greedy residual planes ``W ≈ Σ_{p≤P} α_p·Q_p`` under the power-of-two rule (§2).

    ``α_1 = mmse_scale(W)``, ``Q_1 = to_int_round_half_even(W / α_1)``; then, with the
    residual ``R_p = W - Σ_{i≤p} α_i·Q_i``, ``α_{p+1} = α_p·2^(-e_p)`` where ``e_p`` in
    0..15 minimizes ``quantization_mse(R_p, α_{p+1})`` (ties to the smaller ``e_p``) and
    ``Q_{p+1} = to_int_round_half_even(R_p / α_{p+1})``. Every choice is per output
    channel with ``per_channel``.

    >>> mt = multi_tensor_quantize(torch.tensor([[0.75, -0.1, 0.3]]), 3, 2)
    >>> mt.planes.tolist(), mt.scales.tolist(), mt.exponents.tolist()
    ([[[3, 0, 1]], [[0, -3, 2]]], [[0.25], [0.03125]], [[3]])

    Raises
    ------
    TypeError
        If ``bits`` is not an integer in 2..8, ``planes`` not one in 1..3, or ``w`` is not
        floating point.
    ValueError
        If ``w`` is empty, or 0-D with ``per_channel``.
    """
    _check_bits(bits)
    check_int("planes", planes, (1, MAX_PLANES))
    residual = _grouped(w, per_channel)
    alpha = _mmse(residual, bits, signed=True)
    _, top_exponent = int_range(EXPONENT_BITS, signed=False)
    quantized, scales, exponents = [], [], []
    for p in range(planes):
        if p > 0:
            finer = (torch.ldexp(alpha, torch.tensor(-e)) for e in range(1, top_exponent + 1))
            chosen = _argmin_scale(residual, finer, bits, signed=True, best=alpha)
            # alpha / chosen is an exact power of two, so its log2 is an exact integer.
            exponents.append(torch.log2(alpha / chosen).round().to(torch.int64)[:, 0])
            alpha = chosen
        q = to_int_round_half_even(residual, alpha, bits, signed=True)
        residual = residual - dequantize(q, alpha)
        quantized.append(q.reshape(w.shape))
        scales.append(alpha[:, 0])
    no_exponents = torch.zeros(0, residual.shape[0], dtype=torch.int64)
    return MultiTensor(torch.stack(quantized), torch.stack(scales),
                       torch.stack(exponents) if exponents else no_exponents, bits)


def reconstruct(mt: MultiTensor) -> torch.Tensor:
    """``Σ_p α_p·Q_p`` in float64 (§2).

    >>> reconstruct(multi_tensor_quantize(torch.tensor([[0.75, -0.1, 0.3]]), 3, 2))
    tensor([[ 0.7500, -0.0938,  0.3125]], dtype=torch.float64)
    """
    planes, channels = mt.scales.shape
    scales = mt.scales.reshape((planes, channels) + (1,) * (mt.planes.dim() - 2))
    return dequantize(mt.planes, scales).sum(dim=0)


def relative_mse(w: torch.Tensor, approx: torch.Tensor) -> float:
    """``‖W - Ŵ‖² / ‖W‖²`` over the whole tensor (§2); 0 when both are zero.

    >>> relative_mse(torch.tensor([1.0, -2.0]), torch.tensor([1.0, -1.0]))
    0.2
    """
    w = w.detach().to(torch.float64)
    error = ((w - approx.to(torch.float64)) ** 2).sum().item()
    power = (w ** 2).sum().item()
    if power == 0:
        return 0.0 if error == 0 else math.inf
    return error / power


def choose_planes(w: torch.Tensor, bits: int, threshold: float, *,
                  per_channel: bool = True) -> MultiTensor:
    """The fewest planes ``P ≤ 3`` whose ``relative_mse`` is at most ``threshold`` (§2).

    A layer whose one-plane error is small enough keeps one plane; otherwise planes are
    added while the error exceeds ``threshold``, up to three.

    >>> w = torch.tensor([[0.75, -0.1, 0.3]])
    >>> choose_planes(w, 2, 0.05).planes.shape[0], choose_planes(w, 2, 0.5).planes.shape[0]
    (2, 1)

    Raises
    ------
    TypeError
        If ``threshold`` is not a real number, or as ``multi_tensor_quantize``.
    ValueError
        If ``threshold`` is negative or NaN, or as ``multi_tensor_quantize``.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a real number >= 0, not {threshold!r}")
    if not threshold >= 0:  # NaN fails this too
        raise ValueError(f"threshold must be >= 0, not {threshold!r}")
    full = multi_tensor_quantize(w, bits, MAX_PLANES, per_channel=per_channel)
    for planes in range(1, MAX_PLANES):
        if relative_mse(w, reconstruct(full.first(planes))) <= threshold:
            return full.first(planes)
    return full


def combine_plane_accumulators(accs: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """One accumulator from per-plane GEMMs, exactly, in Horner form (§2).

    ``acc = (((acc_1 << e_1) + acc_2) << e_2) + acc_3 = Σ_p acc_p·2^(S_p)`` with
    ``S_p = Σ_{i≥p} e_i``, so ``α_P·acc = Σ_p α_p·acc_p``. ``accs`` is ``P × M × N``
    (``acc_p = gemm(A, Q_p)``, §2 of docs/semantics.md); ``exponents`` is ``(P-1) × N``
    (one exponent per output column) or ``(P-1) × 1``. Every partial sum is a 44-bit
    accumulator, exactly as in one hardware accumulator that is shifted between planes.

    >>> combine_plane_accumulators(torch.tensor([[[3, 1]], [[-2, 5]]]), torch.tensor([[2, 0]]))
    tensor([[10,  6]])

    Raises
    ------
    TypeError
        If the tensors are not integer, or the plane count is not in 1..3.
    ValueError
        If a shape does not fit, an exponent is outside ``u4`` (0..15), or an accumulator or a
        partial sum lies outside ``s44``.
    """
    if accs.dim() != 3:
        raise ValueError(f"accs must be 3-D (planes × M × N), not {tuple(accs.shape)}")
    planes, _, columns = accs.shape
    check_int("planes", planes, (1, MAX_PLANES))
    if exponents.shape not in ((planes - 1, columns), (planes - 1, 1)):
        raise ValueError(f"exponents must have shape ({planes - 1}, {columns}) or "
                         f"({planes - 1}, 1), not {tuple(exponents.shape)}")
    check_in_format("accs", accs, MAX_ACC_BITS, signed=True)
    check_in_format("exponents", exponents, EXPONENT_BITS, signed=False)
    acc = accs[0].to(torch.int64)
    for p in range(1, planes):
        # |acc| ≤ 2^43 and e ≤ 15, so the shifted sum stays far inside int64.
        acc = (acc << exponents[p - 1].to(torch.int64)) + accs[p]
        check_in_format("combined accumulator", acc, MAX_ACC_BITS, signed=True)
    return acc
