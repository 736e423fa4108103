"""The float view of an integer program (docs/semantics.md §5): ``run_fake_quant``, the
real-valued computation the integer program approximates, used to calibrate it."""

import torch

from ..fake_quant import to_int_round_half_even
from .integer_program import IntegerProgram
from .kernels import from_rows, im2col, nchw_rows, pool_windows
from .ops import AvgPool, Flatten, MaxPool, QuantizeInput, Requantize
from .types import Value

__all__ = ["run_fake_quant"]


def _fake(x: torch.Tensor, value: Value) -> torch.Tensor:
    """``σ·clamp(round_half_even(x/σ), lo, hi)`` in float64 (semantics §5)."""
    return to_int_round_half_even(x, value.scale, value.bits, value.signed).to(
        torch.float64) * value.scale


@torch.no_grad()
def run_fake_quant(program: IntegerProgram, images: torch.Tensor) -> torch.Tensor:
    """The float view of the program (semantics §5): real logits (float64, ``N×F``).

    Every value is ``σ·q`` with ``q = clamp(round_half_even(x/σ))`` of its real ``x``;
    a GEMM computes ``x = A·(σ_w·W) + σ_a·σ_w·β (+ residual)`` with the program's own
    integer weights and biases; pooling averages. It differs from ``run_integer`` only by
    the rounding of ``M·2^(−s)`` and by ties (half even here, half up there).

    ``images`` are real (``p·pixel_scale``), ``N`` of ``input_shape`` or flattened.
    """
    x = images.to(torch.float64).reshape(len(images), *program.input_shape)
    n = len(x)
    env: dict[str, torch.Tensor] = {}
    for op in program.ops:
        out = program.values[op.output]
        if isinstance(op, QuantizeInput):
            env[op.output] = _fake(x, out)
        elif isinstance(op, Requantize):
            env[op.output] = _fake(env[op.input], out)
        elif isinstance(op, Flatten):
            env[op.output] = env[op.input].reshape(n, -1)
        elif isinstance(op, MaxPool):
            env[op.output] = pool_windows(env[op.input], op.kernel, op.stride).amax(-1)
        elif isinstance(op, AvgPool):
            env[op.output] = _fake(
                pool_windows(env[op.input], op.kernel, op.stride).mean(-1), out)
        else:
            source = program.values[op.input]
            acts = env[op.input]
            if op.layer == "conv2d":
                acts = im2col(acts, op.kernel, op.stride, op.padding)
            weight_scale = op.weight_scale.to(torch.float64)
            y = (acts @ (op.weight_scheme.matrix().to(torch.float64) * weight_scale)
                 + op.bias.to(torch.float64) * source.scale * weight_scale)
            if op.residual is not None:
                y = y + nchw_rows(env[op.residual])
            if op.relu:
                y = y.clamp(min=0)
            env[op.output] = from_rows(_fake(y, out), n, out.shape)
    return env[program.output]
