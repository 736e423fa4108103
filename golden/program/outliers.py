"""Run-time activation outliers (docs/program.md §18): the storage order of a value, its
blocks, and the rule that decides which outliers of a block a value keeps."""

from dataclasses import dataclass

import torch

from ..formats import int_range
from .ops import Flatten, Requantize
from .types import ActOutliers

__all__ = ["OutlierCounts", "storage_shape", "storage_words", "keep_act_outliers", "stored"]

#: Above every ``|e|`` of §18 (corrections of 16-bit values): the rank key's middle digit.
_EXCESS_LIMIT = 1 << 17


@dataclass
class OutlierCounts:
    """What the block rule of §18 did to one value over a batch: ``values`` stored,
    ``outliers`` (values outside the dense format), ``saturated`` (outliers over their
    block's budget, stored saturated), ``blocks`` and ``blocks_over`` (blocks with more
    outliers than slots)."""
    values: int = 0
    outliers: int = 0
    saturated: int = 0
    blocks: int = 0
    blocks_over: int = 0

    def add(self, other: "OutlierCounts") -> None:
        for name in ("values", "outliers", "saturated", "blocks", "blocks_over"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def storage_shape(program, name: str) -> tuple[int, ...]:
    """The shape whose word order stores value ``name`` (§18): a ``flatten`` or
    ``requantize`` output is stored as its input is, slot for slot."""
    producers = {op.output: op for op in program.ops}
    while isinstance(producers.get(name), (Flatten, Requantize)):
        name = producers[name].input
    return program.values[name].shape


def storage_words(shape: tuple[int, ...], word_values: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Word and lane of every element (row-major) of a value stored in ``shape``'s order
    with ``word_values`` values a word (§18, docs/network.md §15): ``C×H×W`` takes
    ``⌈C/L⌉`` words a pixel, channel ``c`` of pixel ``p`` in lane ``c mod L`` of word
    ``p·⌈C/L⌉ + c // L``; ``F`` features, feature ``f`` in lane ``f mod L`` of word
    ``f // L``.

    >>> storage_words((3, 1, 2), 2)
    (tensor([0, 2, 0, 2, 1, 3]), tensor([0, 0, 1, 1, 0, 0]))
    """
    if len(shape) == 3:
        channels, height, width = shape
        per_pixel = -(-channels // word_values)
        c = torch.arange(channels).reshape(-1, 1)
        pixel = torch.arange(height * width).reshape(1, -1)
        word = (pixel * per_pixel + c // word_values).reshape(-1)
        lane = (c % word_values).expand(channels, height * width).reshape(-1)
        return word, lane
    features = torch.arange(shape[0])
    return features // word_values, features % word_values


def keep_act_outliers(y: torch.Tensor, bits: int, signed: bool, outliers: ActOutliers,
                      word: torch.Tensor, lane: torch.Tensor
                      ) -> tuple[torch.Tensor, OutlierCounts]:
    """The value a reader sees of ``y`` (``N×E`` int64, in the outlier format) stored as
    dense ``s<bits>``/``u<bits>`` plus at most ``slots`` outliers a block (§18).

    ``d = clamp(y, lo, hi)`` is the dense part and ``e = y − d`` its correction, nonzero
    exactly at the outliers. In each block (``block_words`` consecutive words, element
    ``(word, lane)`` at position ``(word mod block_words)·word_values + lane``) the
    outliers are ranked by ``|e|``, larger first, ties to the lower position; the first
    ``slots`` keep ``y``, the rest read as ``d`` (saturated to the dense format).

    >>> one = ActOutliers(bits=15, word_values=4, block_words=1, slots=1)
    >>> keep_act_outliers(torch.tensor([[20, 3, 9, 30]]), 3, False, one,
    ...                   torch.tensor([0, 0, 0, 0]), torch.arange(4))[0]
    tensor([[ 7,  3,  7, 30]])
    """
    low, high = int_range(bits, signed)
    dense = y.clamp(low, high)
    excess = (y - dense).abs()
    block = word // outliers.block_words
    position = (word % outliers.block_words) * outliers.word_values + lane
    span = outliers.block_values
    # One sort ranks every block at once: block, then |e| descending, then position.
    key = (block * _EXCESS_LIMIT + (_EXCESS_LIMIT - 1 - excess)) * span + position
    order = key.argsort(dim=1)
    sizes = torch.bincount(block)
    starts = sizes.cumsum(0) - sizes
    ranked = torch.arange(y.shape[1]).expand_as(y) - starts[block[order]]
    rank = torch.empty_like(ranked).scatter_(1, order, ranked)
    is_outlier = excess > 0
    kept = is_outlier & (rank < outliers.slots)
    per_block = torch.zeros(len(y), len(sizes), dtype=torch.int64).index_add_(
        1, block, is_outlier.to(torch.int64))
    counts = OutlierCounts(values=y.numel(), outliers=int(is_outlier.sum()),
                           saturated=int((is_outlier & ~kept).sum()),
                           blocks=per_block.numel(),
                           blocks_over=int((per_block > outliers.slots).sum()))
    return torch.where(kept, y, dense), counts


def stored(program, name: str, y: torch.Tensor) -> tuple[torch.Tensor, OutlierCounts | None]:
    """``y`` (``N×`` the shape of value ``name``, computed in its ``produced_bits``) as its
    readers see it (§18): unchanged for a value without outliers (``None`` counts)."""
    value = program.values[name]
    if value.outliers is None:
        return y, None
    word, lane = storage_words(storage_shape(program, name), value.outliers.word_values)
    kept, counts = keep_act_outliers(y.reshape(len(y), -1), value.bits, value.signed,
                                     value.outliers, word, lane)
    return kept.reshape(y.shape), counts
