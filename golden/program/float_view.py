"""The float view of an integer program (docs/semantics.md §5): ``run_fake_quant``, the
real-valued computation the integer program approximates, used to calibrate it."""

from collections.abc import Callable

import torch

from ..fake_quant import to_int_round_half_even
from .integer_program import IntegerProgram
from .kernels import from_rows, im2col, nchw_rows, pool_windows, walsh_hadamard
from .ops import TABLE_FUNCTIONS, AvgPool, Concat, Flatten, Gemm, Lookup, MaxPool, QuantizeInput, \
    Requantize, Rotate
from .outliers import stored

__all__ = ["run_fake_quant", "float_view"]


def _fake(x: torch.Tensor, program: IntegerProgram, name: str) -> torch.Tensor:
    """``σ·clamp(round_half_even(x/σ), lo, hi)`` in float64 (semantics §5) for the value
    ``name`` (``x`` is ``N×`` its shape); with activation outliers, clamped to the outlier
    format and then stored as docs/program.md §18 stores it (the block rule saturates
    what a block cannot keep)."""
    value = program.values[name]
    q = to_int_round_half_even(x, value.scale, value.produced_bits, value.signed)
    return stored(program, name, q)[0].to(torch.float64) * value.scale


@torch.no_grad()
def run_fake_quant(program: IntegerProgram, images: torch.Tensor) -> torch.Tensor:
    """The float view of the program (semantics §5): real logits (float64, ``N×F``).

    Every value is ``σ·q`` with ``q = clamp(round_half_even(x/σ))`` of its real ``x``;
    a GEMM computes ``x = A·(σ_w·W) + σ_a·σ_w·β (+ residual)`` with the program's own
    integer weights and biases; pooling averages; a rotation is the orthonormal
    ``walsh_hadamard(x)/√n``. It differs from ``run_integer`` only by
    the rounding of ``M·2^(−s)`` and by ties (half even here, half up there).

    ``images`` are real (``p·pixel_scale``), ``N`` of ``input_shape`` or flattened.
    """
    return float_view(program, images.to(torch.float64),
                      lambda name, x: _fake(x, program, name),
                      lambda op: program_weights(program, op))


def program_weights(program: IntegerProgram, op: Gemm) -> tuple[torch.Tensor, torch.Tensor]:
    """A GEMM's real ``K×N`` weight ``σ_w·W`` and ``N`` bias ``σ_a·σ_w·β`` as the program
    holds them."""
    weight_scale = op.weight_scale.to(torch.float64)
    return (op.weight_scheme.matrix().to(torch.float64) * weight_scale,
            op.bias.to(torch.float64) * program.values[op.input].scale * weight_scale)


def float_view(program: IntegerProgram, images: torch.Tensor,
               fake: Callable[[str, torch.Tensor], torch.Tensor],
               weights: Callable[[Gemm], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The arithmetic of the float view (``run_fake_quant``) with its two choices given:
    ``fake(name, x)`` is the value ``name`` of real ``x`` (its fake quantization), and
    ``weights(op)`` a GEMM's real ``K×N`` weight and ``N`` bias (``x`` is always ``N×`` the
    value's shape). Quantization-aware
    training passes differentiable ones (straight-through, trained weights); the result
    has the dtype of ``images``."""
    x = program.arranged(images.reshape(len(images), *program.input_shape))
    n = len(x)
    env: dict[str, torch.Tensor] = {}
    for op in program.ops:
        out = program.values[op.output]
        if isinstance(op, QuantizeInput):
            env[op.output] = fake(op.output, x)
        elif isinstance(op, Requantize):
            env[op.output] = fake(op.output, env[op.input])
        elif isinstance(op, Rotate):
            rotated = walsh_hadamard(env[op.input], 1)
            env[op.output] = fake(op.output, rotated / rotated.shape[1] ** 0.5)
        elif isinstance(op, Flatten):
            env[op.output] = env[op.input].reshape(n, -1)
        elif isinstance(op, Concat):
            env[op.output] = torch.cat([env[part] for part in op.parts], 1)
        elif isinstance(op, MaxPool):
            env[op.output] = pool_windows(env[op.input], op.kernel, op.stride, op.padding,
                                          -torch.inf).amax(-1)
        elif isinstance(op, AvgPool):
            env[op.output] = fake(op.output, pool_windows(env[op.input], op.kernel, op.stride,
                                                          op.padding).mean(-1))
        elif isinstance(op, Lookup):
            # on the input's grid this is the table (both round half even)
            env[op.output] = fake(op.output, TABLE_FUNCTIONS[op.function](env[op.input]))
        else:
            acts = env[op.input]
            if op.layer == "conv2d":
                acts = im2col(acts, op.kernel, op.stride, op.padding)
            weight, bias = weights(op)
            y = acts @ weight.to(acts.dtype) + bias.to(acts.dtype)
            if op.residual is not None:
                y = y + nchw_rows(env[op.residual])
            if op.relu:
                y = y.clamp(min=0)
            env[op.output] = fake(op.output, from_rows(y, n, out.shape))
    return env[program.output]
