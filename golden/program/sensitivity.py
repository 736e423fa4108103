"""How far an integer program is from its float model, and what its weights cost
(docs/program.md §20): the quantities a per-layer width allocation is measured by."""

from dataclasses import dataclass

import torch

from .integer_program import IntegerProgram
from .interpreter import quantize_inputs, run_integer
from .ops import Gemm
from ..value_aware import block_word_bits

__all__ = ["LayerWidth", "OUTLIER_BLOCK", "logit_kl", "real_logits", "layer_widths",
           "average_weight_bits", "weight_storage_bits"]

#: Weights per block of the value-aware storage format (docs/value_aware.md §4), along a
#: channel's reduction dimension.
OUTLIER_BLOCK = 64


@dataclass(frozen=True)
class LayerWidth:
    """A GEMM layer's weight width ``weight_bits``, the width ``act_bits`` of the value it
    reads, and its number of weights ``weights`` (``K·N``)."""
    weight_bits: int
    act_bits: int
    weights: int


def logit_kl(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The mean over samples of ``KL(softmax(reference) ‖ softmax(logits))`` in nats
    (float64 scalar): how much the class distribution of ``logits`` (``N×F``) departs
    from that of ``reference``, the float model's.

    >>> float(logit_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]])))
    0.0
    >>> round(float(logit_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]))), 4)
    0.1201
    """
    target = reference.to(torch.float64).log_softmax(1)
    out = logits.to(torch.float64).log_softmax(1)
    return (target.exp() * (target - out)).sum(1).mean()


def real_logits(program: IntegerProgram, images: torch.Tensor) -> torch.Tensor:
    """The real logits (float64) of ``program`` on real ``images``: the host's input
    quantizer (``quantize_inputs``, §13), the exact ``run_integer``, then the output's
    scale σ (the integer logits stand for ``σ·q``)."""
    logits = run_integer(program, quantize_inputs(program, images))
    return logits.to(torch.float64) * program.values[program.output].scale


def layer_widths(program: IntegerProgram) -> dict[str, LayerWidth]:
    """Every GEMM layer of ``program`` by name, in program order, with its widths and
    number of weights."""
    return {op.name: LayerWidth(op.weight_bits, program.values[op.input].bits,
                                op.in_features * op.out_features)
            for op in program.ops if isinstance(op, Gemm)}


def average_weight_bits(widths: dict[str, LayerWidth]) -> float:
    """Bits per weight over all layers, each layer's weight width weighted by its number of
    weights: ``Σ W_l·n_l / Σ n_l``.

    >>> average_weight_bits({"a": LayerWidth(8, 4, 100), "b": LayerWidth(2, 4, 300)})
    3.5
    """
    total = sum(width.weights for width in widths.values())
    return sum(width.weight_bits * width.weights for width in widths.values()) / total


def weight_storage_bits(op: Gemm) -> int:
    """The bits ``op``'s weights take: ``W`` per weight, and for value-aware weights the
    outlier slots of the block format (docs/value_aware.md §4): each channel's ``K``
    weights cut into ``⌈K/64⌉`` blocks, every block with as many ``(P + o)``-bit slots as
    the fullest block of the layer holds outliers (``P = 6`` offset bits, ``o`` the outlier
    width); the padding of a short last block is not stored.

    >>> from types import SimpleNamespace as Op
    >>> outliers = torch.zeros(100, 2, dtype=torch.int64)
    >>> outliers[3, 0] = outliers[70, 0] = outliers[71, 1] = 9
    >>> weight_storage_bits(Op(scheme="value_aware", weight_bits=4, weight_outlier_bits=8,
    ...                        in_features=100, out_features=2, weight_outliers=outliers))
    856
    """
    count = op.in_features * op.out_features
    if op.scheme != "value_aware":
        return op.weight_bits * count
    blocks = -(-op.in_features // OUTLIER_BLOCK)
    padded = torch.zeros(blocks * OUTLIER_BLOCK, op.out_features, dtype=torch.int64)
    padded[:op.in_features] = op.weight_outliers.to(torch.int64)
    quota = int((padded.reshape(blocks, OUTLIER_BLOCK, -1) != 0).sum(1).max())
    slot = block_word_bits(op.weight_bits, block=OUTLIER_BLOCK, quota=1,
                           outlier_bits=op.weight_outlier_bits) \
        - block_word_bits(op.weight_bits, block=OUTLIER_BLOCK, quota=0,
                          outlier_bits=op.weight_outlier_bits)
    return op.weight_bits * count + blocks * op.out_features * quota * slot
