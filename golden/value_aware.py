"""Value-aware quantization (Park, Yoo and Vajda, ECCV 2018) of docs/value_aware.md.

Most values are quantized to a dense ``b``-bit format; the few largest in magnitude are
kept, on the *same* scale grid, as wider outliers (16-bit by default) stored sparsely.
The integer tensor a layer computes with is the recombined tensor ``dense + sparse``
(docs/semantics.md §6). Section numbers (§) below are those of docs/value_aware.md.
"""

import math
from dataclasses import dataclass

import torch

from olmac.spec import ACT_BITS, OUTLIER_BITS, check_int
from .formats import int_range, check_in_format
from .fake_quant import to_int_round_half_even

__all__ = [
    "BLOCK_SIZES", "LIMB_BITS", "ValueAwareInt", "ClampCounts", "outliers_per_group",
    "outlier_threshold",
    "value_aware_scale", "to_value_aware_round_half_even", "block_word_bits",
    "block_bits_per_value", "list_bits_per_value", "pack_blocks", "unpack_blocks",
    "fake_quantize_value_aware",
]

#: Allowed block sizes of the storage format (§4), inclusive.
BLOCK_SIZES = (2, 4096)
#: Bits per limb of a packed block word (§4); limbs are int64 tensors holding 0..2^32-1.
LIMB_BITS = 32


@dataclass(frozen=True, eq=False)
class ValueAwareInt:
    """An integer tensor split as dense ``b``-bit values plus sparse outliers (§2).

    ``dense`` (int64, the shape of the tensor) lies in ``s<bits>``/``u<bits>`` and is 0
    where an outlier sits. ``positions`` (int64, ascending) are flat row-major indices of
    the outliers and ``values`` (int64) their nonzero values in ``s<outlier_bits>`` or
    ``u<outlier_bits>``.
    """
    dense: torch.Tensor
    positions: torch.Tensor
    values: torch.Tensor
    bits: int
    signed: bool
    outlier_bits: int = 16

    @property
    def sparse(self) -> torch.Tensor:
        """The outliers scattered into a zero tensor of the dense shape (int64)."""
        sparse = torch.zeros(self.dense.numel(), dtype=torch.int64)
        sparse[self.positions] = self.values
        return sparse.view(self.dense.shape)

    @property
    def recombined(self) -> torch.Tensor:
        """``dense + sparse``: the integer tensor the layer computes with (§3)."""
        return self.dense + self.sparse


@dataclass(frozen=True)
class ClampCounts:
    """How many outliers a quantizer could not keep exactly (§2, §4).

    ``saturated``: outliers whose grid value lies outside the outlier format, clamped to
    it. ``over_quota``: outliers beyond their block's quota, clamped into the dense range.
    """
    saturated: int
    over_quota: int


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"Outlier ratio must be a number in [0, 1), not {ratio!r}")
    if not 0 <= ratio < 1:  # NaN fails this too
        raise ValueError(f"Outlier ratio must be in [0, 1), not {ratio!r}")
    return float(ratio)


def _check_real(name: str, x: torch.Tensor) -> torch.Tensor:
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, not {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must hold at least one value, not shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _check_channel_dim(x: torch.Tensor, channel_dim: int | None) -> None:
    if channel_dim is not None:
        check_int("channel_dim", channel_dim, (0, x.dim() - 1))


def _check_outlier_bits(outlier_bits: int, bits: int) -> None:
    check_int("Outlier width", outlier_bits, OUTLIER_BITS)
    if outlier_bits <= bits:
        raise ValueError(f"Outlier width {outlier_bits} must exceed the dense width {bits}")


def outliers_per_group(ratio: float, n: int) -> int:
    """``k = min(floor(ratio·n), n - 1)``: the most outliers a group of ``n`` values keeps
    at ``ratio`` (§1; the product in float64).

    >>> outliers_per_group(0.01, 64), outliers_per_group(1 / 64, 64)
    (0, 1)
    """
    return min(math.floor(_check_ratio(ratio) * n), n - 1)


def outlier_threshold(x: torch.Tensor, ratio: float, *,
                      channel_dim: int | None = None) -> torch.Tensor:
    """Outlier threshold ``T`` of each group (§1): its ``(k+1)``-th largest magnitude.

    A group is the whole tensor (``channel_dim=None``, a 0-d result) or each slice along
    ``channel_dim`` (one entry per channel): ``channel_dim=1`` for ``K×N`` weights as in
    ``golden.gemm``, ``channel_dim=0`` for torch ``Linear`` weights (``out×in``). With
    ``n`` values in the group, ``k = min(floor(ratio·n), n - 1)`` (the product in float64),
    so at most ``k`` values have ``|x| > T``: exactly ``k`` unless ties straddle ``T``.
    If ``T`` would be 0 it is the group's largest magnitude (no outliers needed), and
    1 for an all-zero group, so ``T > 0``. ``ratio = 0`` gives max-abs thresholds.
    Calibrating an activation threshold is this function on a calibration batch.

    >>> x = torch.tensor([0.1, -0.2, 0.3, -4.0, 0.5, 0.6, -0.7, 0.8, 0.9, 1.0])
    >>> outlier_threshold(x, 0.1)
    tensor(1.)
    >>> outlier_threshold(torch.tensor([[1.0, -8.0], [2.0, 0.5]]), 0.5, channel_dim=1)
    tensor([1.0000, 0.5000])

    Raises
    ------
    TypeError
        If ``x`` is not floating point, ``ratio`` is not a number or ``channel_dim`` is not
        a dimension of ``x``.
    ValueError
        If ``ratio`` is outside ``[0, 1)`` or ``x`` is empty or not finite.
    """
    ratio = _check_ratio(ratio)
    _check_real("x", x)
    _check_channel_dim(x, channel_dim)
    if channel_dim is None:
        groups = x.reshape(1, -1)
    else:
        groups = x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)
    k = outliers_per_group(ratio, groups.shape[1])
    magnitudes = groups.abs()
    kept = magnitudes.topk(k + 1, dim=1).values[:, k]
    largest = magnitudes.amax(dim=1)
    threshold = torch.where(kept > 0, kept, torch.where(largest > 0, largest, 1.0))
    return threshold[0] if channel_dim is None else threshold


def _threshold_view(threshold: torch.Tensor | float, x: torch.Tensor,
                    channel_dim: int | None) -> torch.Tensor:
    """``threshold`` checked against ``x`` and shaped to broadcast along ``channel_dim``."""
    _check_channel_dim(x, channel_dim)
    threshold = torch.as_tensor(threshold, dtype=x.dtype)
    expected = () if channel_dim is None else (x.shape[channel_dim],)
    if threshold.shape != expected:
        raise ValueError(f"threshold must have shape {expected} (one entry per "
                         f"{'tensor' if channel_dim is None else 'channel'}), not "
                         f"{tuple(threshold.shape)}")
    if not (torch.isfinite(threshold) & (threshold > 0)).all():
        raise ValueError(f"threshold must be positive and finite, not {threshold.tolist()}")
    if channel_dim is None:
        return threshold
    return threshold.view([-1 if d == channel_dim else 1 for d in range(x.dim())])


def value_aware_scale(threshold: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Scale ``σ = T / (2^(b-1) - 1)`` (signed) or ``T / (2^b - 1)`` (unsigned) (§2).

    ``T`` maps to the largest dense value, so ``|x| <= T`` fits ``b`` bits.

    >>> value_aware_scale(torch.tensor([7.0, 1.5]), 4, signed=True)
    tensor([1.0000, 0.2143])
    >>> value_aware_scale(torch.tensor(30.0), 4, signed=False)
    tensor(2.)

    Raises
    ------
    TypeError
        If ``bits`` is not an integer in 2..8.
    """
    check_int("Dense width", bits, ACT_BITS)
    return threshold / int_range(bits, signed)[1]


def to_value_aware_round_half_even(
        x: torch.Tensor, threshold: torch.Tensor | float, bits: int, *,
        signed: bool = True, channel_dim: int | None = None, outlier_bits: int = 16,
        quota: int | None = None, block: int = 64) -> tuple[ValueAwareInt, ClampCounts]:
    """Quantize ``x`` to dense ``b``-bit values plus outliers on the same grid (§2).

    With ``σ = value_aware_scale(T, bits, signed)`` (``T`` per tensor, or per slice along
    ``channel_dim``), a value is an outlier if ``|x| > T`` (signed) or ``x > T``
    (unsigned, for post-ReLU activations; negative values clamp to 0 as in
    docs/semantics.md §5).

    * dense, not an outlier: ``clamp(round_half_even(x / σ), lo, hi)`` of ``s<b>``/``u<b>``;
    * outlier: ``clamp(round_half_even(x / σ), lo16, hi16)`` of the outlier format
      (``s16``/``u16`` by default); a clamp here is counted as ``saturated``.

    With a ``quota`` (§4) the row-major flattening of ``x`` is cut into blocks of
    ``block`` values; a block keeps as outliers only its ``quota`` largest in grid units
    ``|x| / σ`` (ties to the lower position) and the others are quantized as dense
    values, clamped into ``[lo, hi]``, and counted as ``over_quota``. ``quota=None`` keeps
    every outlier (the list format) and ignores ``block``. The integer reference of a
    layer is the exact GEMM of the recombined tensors (§3, docs/semantics.md §6).

    >>> q, counts = to_value_aware_round_half_even(
    ...     torch.tensor([0.5, -1.5, 2.5, 20.0, -7.0, 70000.0]), torch.tensor(7.0), 4)
    >>> q.dense, q.positions, q.values
    (tensor([ 0, -2,  2,  0, -7,  0]), tensor([3, 5]), tensor([   20, 32767]))
    >>> q.recombined, counts
    (tensor([    0,    -2,     2,    20,    -7, 32767]), ClampCounts(saturated=1, over_quota=0))

    Raises
    ------
    TypeError
        If ``bits`` is not in 2..8, ``outlier_bits`` not in 3..16, ``block`` not in
        2..4096, ``quota`` not in 0..block, ``channel_dim`` not a dimension of ``x``, or
        ``x`` is not floating point.
    ValueError
        If ``outlier_bits <= bits``, ``x`` is empty or not finite, or ``threshold`` has
        the wrong shape, is not positive and finite, or is so small that ``σ`` underflows.
    """
    check_int("Dense width", bits, ACT_BITS)
    _check_outlier_bits(outlier_bits, bits)
    _check_real("x", x)
    threshold = _threshold_view(threshold, x, channel_dim)
    scale = value_aware_scale(threshold, bits, signed)
    if not (scale > 0).all():
        raise ValueError(f"threshold {threshold.flatten().tolist()} is too small: the scale "
                         f"underflows to 0 in {x.dtype}")
    outlier = (x.abs() if signed else x) > threshold
    over_quota = 0
    if quota is not None:
        check_int("Block size", block, BLOCK_SIZES)
        check_int("Outlier quota", quota, (0, block))
        kept = _largest_per_block(torch.where(outlier, (x / scale).abs(), -1.0), block, quota)
        over_quota = int((outlier & ~kept).sum())
        outlier &= kept
    grid = torch.round(x / scale)
    wide = to_int_round_half_even(x, scale, outlier_bits, signed)
    saturated = int((outlier & (wide != grid)).sum())
    dense = torch.where(outlier, 0, to_int_round_half_even(x, scale, bits, signed))
    positions = outlier.reshape(-1).nonzero().squeeze(1)
    values = wide.reshape(-1)[positions]
    return (ValueAwareInt(dense, positions, values, bits, signed, outlier_bits),
            ClampCounts(saturated, over_quota))


def _largest_per_block(key: torch.Tensor, block: int, quota: int) -> torch.Tensor:
    """Mask of the ``quota`` largest keys of each block of the flattening (ties: lower
    position first); padding keys are -1, below every outlier's key."""
    flat = key.reshape(-1)
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % block), value=-1.0)
    order = padded.view(-1, block).sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(block).expand_as(order))
    return (rank < quota).reshape(-1)[:flat.numel()].view(key.shape)


def block_word_bits(bits: int, *, block: int = 64, quota: int = 1,
                    outlier_bits: int = 16) -> int:
    """Bits of one block word (§4): ``B·b + Q·(P + o)`` with ``P = ceil(log2 B)``.

    >>> block_word_bits(4, block=64, quota=2)
    300

    Raises
    ------
    TypeError
        If an argument is not an integer in its allowed range.
    ValueError
        If ``outlier_bits <= bits``.
    """
    check_int("Dense width", bits, ACT_BITS)
    check_int("Block size", block, BLOCK_SIZES)
    check_int("Outlier quota", quota, (0, block))
    _check_outlier_bits(outlier_bits, bits)
    return block * bits + quota * ((block - 1).bit_length() + outlier_bits)


def block_bits_per_value(bits: int, *, block: int = 64, quota: int = 1,
                         outlier_bits: int = 16) -> float:
    """Effective bits per value of the block format (§5): ``(B·b + Q·(P + o)) / B``.

    >>> block_bits_per_value(4, quota=1), block_bits_per_value(4, quota=2)
    (4.34375, 4.6875)

    Raises
    ------
    TypeError, ValueError
        As ``block_word_bits``.
    """
    return block_word_bits(bits, block=block, quota=quota, outlier_bits=outlier_bits) / block


def list_bits_per_value(bits: int, outlier_fraction: float, *, position_bits: int = 16,
                        outlier_bits: int = 16) -> float:
    """Effective bits per value of a free (position, value) list (§5): ``b + p·(P + o)``.

    ``p`` is the fraction of values that are outliers and ``P`` the bits of a position.

    >>> list_bits_per_value(4, 0.01)
    4.32

    Raises
    ------
    TypeError
        If a width is out of range or ``outlier_fraction`` is not a number.
    ValueError
        If ``outlier_fraction`` is outside ``[0, 1]`` or ``outlier_bits <= bits``.
    """
    check_int("Dense width", bits, ACT_BITS)
    check_int("Position width", position_bits, (1, 64))
    _check_outlier_bits(outlier_bits, bits)
    if isinstance(outlier_fraction, bool) or not isinstance(outlier_fraction, (int, float)):
        raise TypeError(f"Outlier fraction must be a number in [0, 1], not "
                        f"{outlier_fraction!r}")
    if not 0 <= outlier_fraction <= 1:
        raise ValueError(f"Outlier fraction must be in [0, 1], not {outlier_fraction!r}")
    return bits + outlier_fraction * (position_bits + outlier_bits)


def _field_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Two's-complement ``width``-bit fields of ``values``, least significant bit first."""
    return ((values & ((1 << width) - 1)).unsqueeze(-1) >> torch.arange(width)) & 1


def _field_values(bits: torch.Tensor, signed: bool) -> torch.Tensor:
    """Inverse of ``_field_bits`` over the last dimension."""
    width = bits.shape[-1]
    unsigned = (bits << torch.arange(width)).sum(-1)
    return unsigned - ((unsigned >> (width - 1)) << width) if signed else unsigned


def pack_blocks(q: ValueAwareInt, *, block: int = 64, quota: int = 1) -> torch.Tensor:
    """Pack ``q`` into block words (§4), as ``LIMB_BITS``-bit limbs, little-endian.

    The row-major flattening of ``q.dense`` is cut into blocks of ``B = block`` values,
    the last padded with zeros. Block ``i`` becomes one word of ``block_word_bits`` bits:
    bits ``j·b .. j·b+b-1`` hold dense value ``j`` (two's complement if signed); then
    ``Q = quota`` slots of ``P + o`` bits each hold an offset in the block (``P`` bits)
    and the outlier value (``o`` bits), slot ``s`` holding the block's ``s``-th outlier in
    position order; unused slots are all zero (an outlier value is never 0). The result is
    int64, one row per block, ``word = Σ_l words[i, l]·2^(32·l)``.

    >>> q, _ = to_value_aware_round_half_even(
    ...     torch.tensor([1.0, -2.0, 9.0, 3.0]), torch.tensor(7.0), 4, quota=1, block=4)
    >>> pack_blocks(q, block=4, quota=1)
    tensor([[2502881,       0]])

    (``0x30E1`` for the dense nibbles ``1, -2, 0, 3``, plus offset 2 at bit 16 and
    value 9 at bit 18: ``12513 + 2·2^16 + 9·2^18``.)

    Raises
    ------
    TypeError
        If ``block`` or ``quota`` is out of range.
    ValueError
        If ``q`` breaks its invariants (a value outside its format, a zero outlier, a
        nonzero dense value under an outlier, positions not ascending) or a block holds
        more outliers than ``quota``.
    """
    word_bits = block_word_bits(q.bits, block=block, quota=quota,
                                outlier_bits=q.outlier_bits)
    dense = check_in_format("dense", q.dense, q.bits, q.signed).reshape(-1).to(torch.int64)
    values = check_in_format("outlier values", q.values, q.outlier_bits, q.signed)
    positions = q.positions.to(torch.int64)
    if positions.shape != values.shape or positions.dim() != 1:
        raise ValueError(f"positions and values must be 1-D of one length, not "
                         f"{tuple(positions.shape)} and {tuple(values.shape)}")
    if len(positions) and not (positions[0] >= 0 and positions[-1] < dense.numel()
                               and (positions.diff() > 0).all()):
        raise ValueError(f"positions must be ascending indices into {dense.numel()} values")
    if (values == 0).any():
        raise ValueError("An outlier value must not be 0 (0 marks an empty slot)")
    if (dense[positions] != 0).any():
        raise ValueError("The dense value under an outlier must be 0")
    blocks = -(-dense.numel() // block)
    block_of, offset = positions // block, positions % block
    counts = torch.bincount(block_of, minlength=blocks)
    if len(positions) and counts.max() > quota:
        worst = int(counts.argmax())
        raise ValueError(f"Block {worst} holds {int(counts[worst])} outliers, more than "
                         f"the quota {quota}")
    slot = torch.arange(len(positions)) - (counts.cumsum(0) - counts)[block_of]
    slot_offsets = torch.zeros(blocks, quota, dtype=torch.int64)
    slot_values = torch.zeros(blocks, quota, dtype=torch.int64)
    slot_offsets[block_of, slot] = offset
    slot_values[block_of, slot] = values.to(torch.int64)
    padded = torch.nn.functional.pad(dense, (0, blocks * block - dense.numel()))
    word = torch.cat([
        _field_bits(padded.view(blocks, block), q.bits).reshape(blocks, -1),
        torch.cat([_field_bits(slot_offsets, (block - 1).bit_length()),
                   _field_bits(slot_values, q.outlier_bits)], dim=2).reshape(blocks, -1),
    ], dim=1)
    limbs = -(-word_bits // LIMB_BITS)
    word = torch.nn.functional.pad(word, (0, limbs * LIMB_BITS - word_bits))
    return (word.view(blocks, limbs, LIMB_BITS) << torch.arange(LIMB_BITS)).sum(-1)


def unpack_blocks(words: torch.Tensor, shape: tuple[int, ...], bits: int, signed: bool, *,
                  block: int = 64, quota: int = 1, outlier_bits: int = 16) -> ValueAwareInt:
    """Inverse of ``pack_blocks`` (§4): the ``ValueAwareInt`` of shape ``shape``.

    A slot whose value field is 0 is empty; the padding of the last block is dropped.

    >>> q = unpack_blocks(torch.tensor([[2502881, 0]]), (4,), 4, True, block=4, quota=1)
    >>> q.recombined
    tensor([ 1, -2,  9,  3])

    Raises
    ------
    TypeError
        If a width, ``block`` or ``quota`` is out of range or ``words`` is not integer.
    ValueError
        If ``words`` does not have one row of ``LIMB_BITS``-bit limbs per block.
    """
    word_bits = block_word_bits(bits, block=block, quota=quota, outlier_bits=outlier_bits)
    numel = math.prod(shape)
    blocks, limbs = -(-numel // block), -(-word_bits // LIMB_BITS)
    if words.shape != (blocks, limbs):
        raise ValueError(f"words must have shape {(blocks, limbs)} for {numel} values, not "
                         f"{tuple(words.shape)}")
    check_in_format("words", words, LIMB_BITS, signed=False)
    word = _field_bits(words.to(torch.int64), LIMB_BITS).reshape(blocks, -1)[:, :word_bits]
    dense = _field_values(word[:, :block * bits].reshape(blocks, block, bits), signed)
    position_bits = (block - 1).bit_length()
    slots = word[:, block * bits:].reshape(blocks, quota, position_bits + outlier_bits)
    slot_offsets = _field_values(slots[..., :position_bits], signed=False)
    slot_values = _field_values(slots[..., position_bits:], signed)
    used = slot_values != 0
    block_index = torch.arange(blocks).unsqueeze(1).expand(blocks, quota)
    positions = (block_index * block + slot_offsets)[used]
    return ValueAwareInt(dense.reshape(-1)[:numel].reshape(shape), positions,
                         slot_values[used], bits, signed, outlier_bits)


def fake_quantize_value_aware(
        x: torch.Tensor, threshold: torch.Tensor | float, bits: int, *,
        signed: bool = True, channel_dim: int | None = None, outlier_bits: int = 16,
        quota: int | None = None, block: int = 64) -> torch.Tensor:
    """``σ · recombined``: the value the integer model sees for ``x`` (§6), in ``x``'s dtype.

    The quantizer is ``to_value_aware_round_half_even`` with the same arguments, and
    ``σ = value_aware_scale(T, bits, signed)``. (``golden.dequantize`` would compute in
    the default dtype; this keeps float64 inputs float64.)

    >>> fake_quantize_value_aware(torch.tensor([0.5, 2.5, -3.5, 20.0]), torch.tensor(7.0), 4)
    tensor([ 0.,  2., -4., 20.])

    Raises
    ------
    TypeError, ValueError
        As ``to_value_aware_round_half_even``.
    """
    q, _ = to_value_aware_round_half_even(x, threshold, bits, signed=signed,
                                          channel_dim=channel_dim, outlier_bits=outlier_bits,
                                          quota=quota, block=block)
    scale = value_aware_scale(_threshold_view(threshold, x, channel_dim), bits, signed)
    return q.recombined.to(x.dtype) * scale
