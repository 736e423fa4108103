"""The bit-exact reference of an integer program (docs/program.md §9–§13): ``run_integer``
executes it on integer pixels in int64, vectorized over the batch."""

import math

import torch

from ..formats import int_range
from ..integer import requantize_round_half_up
from .integer_program import IntegerProgram
from .kernels import from_rows, im2col, nchw_rows, pool_windows, \
    requantize_residual_round_half_up, walsh_hadamard
from .ops import AvgPool, Concat, Flatten, Gemm, Lookup, MaxPool, QuantizeInput, Requantize, Rotate
from .outliers import OutlierCounts, stored
from .types import Value

__all__ = ["to_pixels", "quantize_real_round_half_up", "quantize_inputs", "run_integer",
           "act_outlier_counts"]


def to_pixels(images: torch.Tensor, pixel_scale: float = 1 / 16) -> torch.Tensor:
    """Real images ``x`` (``p·pixel_scale``) back to integer pixels ``p = round(x/scale)``.

    >>> to_pixels(torch.tensor([0.0, 0.5, 1.0]))
    tensor([ 0,  8, 16])
    """
    return torch.round(images.to(torch.float64) / pixel_scale).to(torch.int64)


def quantize_real_round_half_up(x: torch.Tensor, scale: float, lo: int,
                                hi: int) -> torch.Tensor:
    """Real ``x`` to integers ``p = clamp(⌊x/scale + 1/2⌋, lo, hi)`` (round half up), with
    ``x/scale`` in float64: the host's input quantizer (docs/program.md §13).

    >>> quantize_real_round_half_up(torch.tensor([-1.25, -0.75, 0.25, 0.75, 9.0]), 0.5, -2, 3)
    tensor([-2, -1,  1,  2,  3])
    """
    return torch.floor(x.to(torch.float64) / scale + 0.5).clamp(lo, hi).to(torch.int64)


def quantize_inputs(program: IntegerProgram, inputs: torch.Tensor) -> torch.Tensor:
    """Real ``inputs`` (``N`` of ``input_shape``, or flat) to the program's integer pixels
    by the host rule of §13: ``p = clamp(⌊x/pixel_scale + 1/2⌋, pixel_min, pixel_max)``;
    values beyond the calibrated range clamp, as every quantizer of the program does.

    Raises
    ------
    TypeError
        If ``inputs`` is complex or boolean.
    ValueError
        If it has the wrong shape or holds a NaN or infinite value.
    """
    if inputs.dtype.is_complex or inputs.dtype == torch.bool:
        raise TypeError(f"inputs must be real numbers, not {inputs.dtype}")
    _check_shape(program, inputs)
    x = inputs.to(torch.float64)
    bad = ~torch.isfinite(x)
    if bad.any():
        position = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(f"inputs{position} = {float(x[tuple(position)])}: every input must "
                         f"be a finite real number")
    pixels = quantize_real_round_half_up(x, program.pixel_scale, program.pixel_min,
                                         program.pixel_max)
    return pixels.reshape(len(pixels), *program.input_shape)


def _requantize_tensor(x: torch.Tensor, multiplier: int, shift: int, out: Value) -> torch.Tensor:
    """§3 elementwise with ``β = 0`` and one ``(M, s)``, on a tensor of any shape."""
    flat = requantize_round_half_up(x.reshape(-1, 1), 0, multiplier, shift,
                                    out_bits=out.produced_bits, out_signed=out.signed)
    return flat.reshape(x.shape)


def _check_shape(program: IntegerProgram, tensor: torch.Tensor) -> None:
    if tensor.dim() < 1 or math.prod(tensor.shape[1:]) != math.prod(program.input_shape):
        raise ValueError(f"inputs must be N images of shape {program.input_shape} (or flat), "
                         f"not {tuple(tensor.shape)}")


def _check_pixels(program: IntegerProgram, pixels: torch.Tensor) -> torch.Tensor:
    _check_shape(program, pixels)
    if pixels.dtype.is_floating_point or pixels.dtype.is_complex or pixels.dtype == torch.bool:
        raise TypeError(f"pixels must be an integer tensor, not {pixels.dtype}")
    wide = pixels.to(torch.int64)
    if ((wide < program.pixel_min) | (wide > program.pixel_max)).any():
        raise ValueError(f"pixels must lie in {program.pixel_min}..{program.pixel_max}")
    return wide.reshape(len(wide), *program.input_shape)


def run_integer(program: IntegerProgram, pixels: torch.Tensor) -> torch.Tensor:
    """Execute the program on integer pixels exactly (§9–§13, §18): ``N×F`` int64 logits.

    ``pixels`` holds ``N`` images in ``pixel_min..pixel_max`` of ``input_shape`` (or
    flattened); a program with ``real_inputs`` takes ``quantize_inputs`` of its real inputs.
    The result is the output value, in its format (``s16``); its real value is
    ``program.values[program.output].scale`` times it.

    Raises
    ------
    TypeError
        If ``pixels`` is not an integer tensor.
    ValueError
        If ``pixels`` has the wrong shape or a pixel is outside ``pixel_min..pixel_max``.
    """
    return _execute(program, pixels, {})


def act_outlier_counts(program: IntegerProgram,
                       pixels: torch.Tensor) -> dict[str, OutlierCounts]:
    """What the block rule of §18 did on ``pixels`` (as for ``run_integer``), per value
    with activation outliers that an op computes (flatten outputs share their input's)."""
    counts: dict[str, OutlierCounts] = {}
    _execute(program, pixels, counts)
    return counts


def _execute(program: IntegerProgram, pixels: torch.Tensor,
             counts: dict[str, OutlierCounts]) -> torch.Tensor:
    x = program.arranged(_check_pixels(program, pixels))
    n = len(x)
    env: dict[str, torch.Tensor] = {}
    for op in program.ops:
        out = program.values[op.output]
        if isinstance(op, QuantizeInput):
            y = _requantize_tensor(x, op.multiplier, op.shift, out)
        elif isinstance(op, Requantize):
            y = _requantize_tensor(env[op.input], op.multiplier, op.shift, out)
        elif isinstance(op, Rotate):
            y = _requantize_tensor(walsh_hadamard(env[op.input]), op.multiplier, op.shift,
                                   out)
        elif isinstance(op, Flatten):
            env[op.output] = env[op.input].reshape(n, -1)  # the same words (§18)
            continue
        elif isinstance(op, Concat):  # a layout: the parts are in the output's format
            env[op.output] = torch.cat([env[part] for part in op.parts], 1)
            continue
        elif isinstance(op, MaxPool):
            source = program.values[op.input]
            lowest = int_range(source.bits, source.signed)[0]
            y = pool_windows(env[op.input], op.kernel, op.stride, op.padding,
                             lowest).amax(-1)
        elif isinstance(op, AvgPool):
            sums = pool_windows(env[op.input], op.kernel, op.stride, op.padding).sum(-1)
            y = _requantize_tensor(sums, op.multiplier, op.shift, out)
        elif isinstance(op, Lookup):
            source = program.values[op.input]
            y = op.table.to(torch.int64)[env[op.input] - int_range(source.bits,
                                                                   source.signed)[0]]
        else:
            y = _run_gemm(op, env, program.values[op.input], out, n)
        env[op.output], value_counts = stored(program, op.output, y)
        if value_counts is not None:
            counts.setdefault(op.output, OutlierCounts()).add(value_counts)
    return env[program.output]


def _run_gemm(op: Gemm, env: dict, source: Value, out: Value, n: int) -> torch.Tensor:
    acts = env[op.input]
    if op.layer == "conv2d":
        acts = im2col(acts, op.kernel, op.stride, op.padding)
    acc = op.weight_scheme.accumulate(acts, source.bits, source.signed,
                                      source.outliers and source.outliers.bits)
    if op.residual is None:
        y = requantize_round_half_up(acc, op.bias, op.multiplier, op.shift,
                                     out_bits=out.produced_bits, out_signed=out.signed,
                                     relu=op.relu)
    else:
        y = requantize_residual_round_half_up(
            acc, op.bias, op.multiplier, op.shift, nchw_rows(env[op.residual]),
            op.residual_multiplier, op.residual_shift, out_bits=out.produced_bits,
            out_signed=out.signed, relu=op.relu)
    return from_rows(y, n, out.shape)
