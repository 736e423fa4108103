"""How far an integer program is from its float model, and what its weights cost
(docs/program.md §20): the quantities a per-layer width allocation is measured by."""

from dataclasses import dataclass

import torch

from .integer_program import IntegerProgram
from .interpreter import quantize_inputs, run_integer
from .ops import Gemm

__all__ = ["LayerWidth", "logit_kl", "real_logits", "layer_widths", "average_weight_bits"]


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
