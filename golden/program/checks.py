"""The rules of an integer program (docs/program.md §9): ``check_program`` and the tensors
each op must carry (``tensor_specs``)."""

import math
from typing import Mapping

from olmac.spec import (ACT_BITS, BIAS_BITS, MULTIPLIER_BITS, OUT_BITS, RESIDUAL_SHIFT_RANGE,
                        SHIFT_RANGE, WEIGHT_BITS)
from ..formats import int_range
from .ops import (OPS, TABLE_FUNCTIONS, AvgPool, Concat, Flatten, Gemm, Lookup, MaxPool,
                  QuantizeInput, Requantize, Rotate)
from .schemes import SCHEMES
from .types import (ActOutliers, ProgramError, TensorSpec, Value, check_field, check_pair,
                    check_positive_finite)

__all__ = ["tensor_specs", "check_program"]

_S32 = int_range(MULTIPLIER_BITS, signed=True)


def tensor_specs(op) -> dict[str, TensorSpec]:
    """The tensors an op must carry, with their shapes, dtypes and ranges (§9).

    ``op``'s attributes must already be valid. Raises ``ProgramError`` (without the op's
    label) where the shape of one tensor decides another's and is itself wrong.
    """
    if isinstance(op, Lookup):
        # every output format of a table fits s16 storage; check_program checks the range
        return {"table": TensorSpec.integer((1 << op.in_bits,), OUT_BITS[1], True)}
    if not isinstance(op, Gemm):
        return {}
    n = op.out_features
    specs = {"bias": TensorSpec.integer((n,), BIAS_BITS, True),
             "multiplier": TensorSpec.integer((n,), MULTIPLIER_BITS, True),
             "shift": TensorSpec.integer((n,), SHIFT_RANGE[1].bit_length(), False),  # u6
             "weight_scale": TensorSpec((n,), "float64")}
    if op.residual is not None:
        specs["residual_multiplier"] = TensorSpec.integer((n,), MULTIPLIER_BITS, True)
        specs["residual_shift"] = TensorSpec.integer(
            (n,), RESIDUAL_SHIFT_RANGE[1].bit_length(), False)  # u5: 0..31
    specs.update(op.weight_scheme.tensor_specs())
    return specs


def _expected_output_shape(op, label: str, values: Mapping[str, Value],
                           input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape an op produces from its input's shape (§9), or raise."""
    if isinstance(op, QuantizeInput):
        return tuple(input_shape)
    if isinstance(op, Concat):
        shapes = [values[part].shape for part in op.parts]
        if any(shape[1:] != shapes[0][1:] for shape in shapes):
            raise ProgramError(f"{label}: parts of shapes {shapes} differ beyond the first "
                               f"axis")
        return (sum(shape[0] for shape in shapes), *shapes[0][1:])
    shape = values[op.input].shape
    if isinstance(op, (Requantize, Lookup)):
        return shape
    if isinstance(op, Rotate):
        if shape[0] < 1 or shape[0] & (shape[0] - 1):
            raise ProgramError(f"{label}: input '{op.input}' has shape {shape}; a rotation "
                               f"needs a power-of-two first axis")
        return shape
    if isinstance(op, Flatten):
        return (math.prod(shape),)
    if isinstance(op, Gemm):
        if op.layer == "linear":
            if shape != (op.in_features,):
                raise ProgramError(f"{label}: input '{op.input}' has shape {shape}, expected "
                                   f"({op.in_features},)")
            return (op.out_features,)
        (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
        if len(shape) != 3 or shape[0] * kh * kw != op.in_features:
            raise ProgramError(f"{label}: input '{op.input}' has shape {shape}, expected "
                               f"(C, H, W) with C·{kh}·{kw} = {op.in_features}")
        ho, wo = (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1
        if ho < 1 or wo < 1:
            raise ProgramError(f"{label}: the {kh}×{kw} kernel does not fit input shape {shape}")
        return (op.out_features, ho, wo)
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    if len(shape) != 3 or shape[1] + 2 * ph < kh or shape[2] + 2 * pw < kw:
        raise ProgramError(f"{label}: input '{op.input}' has shape {shape}, expected (C, H, W) "
                           f"with H + {2 * ph} >= {kh}, W + {2 * pw} >= {kw}")
    return (shape[0], (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)


def _check_op_attributes(op, label: str) -> None:
    for name in ("name", "output") + (() if isinstance(op, (QuantizeInput, Concat))
                                      else ("input",)):
        check_field(label, name, getattr(op, name), str)
    if isinstance(op, Concat) and not (isinstance(op.parts, tuple) and op.parts and all(
            isinstance(part, str) for part in op.parts)):
        raise ProgramError(f"{label}: field 'parts' must be a non-empty tuple of value names, "
                           f"not {op.parts!r}")
    if isinstance(op, (QuantizeInput, AvgPool, Requantize, Rotate)):
        check_field(label, "multiplier", op.multiplier, int, _S32)
        check_field(label, "shift", op.shift, int, SHIFT_RANGE)
    if isinstance(op, (AvgPool, MaxPool)):
        check_pair(label, "kernel", op.kernel, 1)
        check_pair(label, "stride", op.stride, 1)
        check_pair(label, "padding", op.padding, 0)
        if any(2 * p > k for p, k in zip(op.padding, op.kernel)):
            # then every window holds an element of the input (§12)
            raise ProgramError(f"{label}: field 'padding' must be at most half the kernel "
                               f"{op.kernel}, not {op.padding}")
    if isinstance(op, Gemm):
        _check_gemm_attributes(op, label)
    if isinstance(op, Lookup):
        check_field(label, "function", op.function, str)
        if op.function not in TABLE_FUNCTIONS:
            raise ProgramError(f"{label}: field 'function' must be one of "
                               f"{', '.join(TABLE_FUNCTIONS)}, not {op.function!r}")
        check_field(label, "in_bits", op.in_bits, int, ACT_BITS)


def _check_gemm_attributes(op: Gemm, label: str) -> None:
    check_field(label, "layer", op.layer, str)
    if op.layer not in ("linear", "conv2d"):
        raise ProgramError(f"{label}: field 'layer' must be 'linear' or 'conv2d', not "
                           f"{op.layer!r}")
    check_field(label, "in_features", op.in_features, int, (1, 1 << 28))
    check_field(label, "out_features", op.out_features, int, (1, 1 << 28))
    check_field(label, "scheme", op.scheme, str)
    if op.scheme not in SCHEMES:
        raise ProgramError(f"{label}: field 'scheme' must be one of {', '.join(SCHEMES)}, not "
                           f"{op.scheme!r}")
    check_field(label, "weight_bits", op.weight_bits, int, WEIGHT_BITS)
    check_field(label, "relu", op.relu, bool)
    if op.residual is not None:
        check_field(label, "residual", op.residual, str)
    geometry = (op.kernel, op.stride, op.padding)
    if op.layer == "conv2d":
        check_pair(label, "kernel", op.kernel, 1)
        check_pair(label, "stride", op.stride, 1)
        check_pair(label, "padding", op.padding, 0)
    elif geometry != (None, None, None):
        raise ProgramError(f"{label}: a linear layer has no kernel, stride or padding, not "
                           f"{geometry}")
    for scheme in SCHEMES.values():
        if scheme is not type(op.weight_scheme):
            for name in scheme.ATTRIBUTES:
                if getattr(op, name) is not None:
                    raise ProgramError(f"{label}: field '{name}' is only for the "
                                       f"{scheme.NAME} scheme")
    op.weight_scheme.check_attributes(label)


def _check_gemm_tensors(op: Gemm, label: str) -> None:
    try:
        specs = tensor_specs(op)
    except ProgramError as error:
        raise ProgramError(f"{label}: {error}") from None
    for name in op.tensors():
        if name not in specs:
            raise ProgramError(f"{label}: tensor '{name}' does not belong to a "
                               f"{op.scheme} {'residual ' if op.residual else ''}layer")
    for name, spec in specs.items():
        spec.check(label, name, getattr(op, name))
    op.weight_scheme.check_tensors(label)


def _check_lookup(op: Lookup, label: str, values: Mapping[str, Value]) -> None:
    source, out = values[op.input], values[op.output]
    if source.bits != op.in_bits:
        raise ProgramError(f"{label}: input '{op.input}' is {source.format}, but field "
                           f"'in_bits' is {op.in_bits}")
    if not ACT_BITS[0] <= out.bits <= ACT_BITS[1]:
        raise ProgramError(f"{label}: output '{op.output}' is {out.format}; a table writes "
                           f"{ACT_BITS[0]}..{ACT_BITS[1]} bits")
    TensorSpec.integer((1 << op.in_bits,), out.bits, out.signed).check(label, "table",
                                                                       op.table)


def _check_shape(label: str, field_name: str, shape) -> None:
    if not (isinstance(shape, tuple) and shape and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise ProgramError(f"{label}: field '{field_name}' must be a tuple of positive "
                           f"integers, not {shape!r}")


#: Most values of one storage word and most words of one outlier block (§18).
MAX_WORD_VALUES = 64
MAX_BLOCK_WORDS = 256


def _check_outliers(label: str, value: Value) -> None:
    """The activation-outlier storage of a value (§18)."""
    outliers = value.outliers
    if not isinstance(outliers, ActOutliers):
        raise ProgramError(f"{label}: field 'outliers' must be ActOutliers or None, not "
                           f"{outliers!r}")
    if not ACT_BITS[0] <= value.bits <= ACT_BITS[1]:
        raise ProgramError(f"{label}: only a value of {ACT_BITS[0]}..{ACT_BITS[1]} bits keeps "
                           f"activation outliers, not {value.format}")
    check_field(label, "outliers.bits", outliers.bits, int, (value.bits + 1, OUT_BITS[1]))
    check_field(label, "outliers.word_values", outliers.word_values, int,
                (1, MAX_WORD_VALUES))
    check_field(label, "outliers.block_words", outliers.block_words, int,
                (1, MAX_BLOCK_WORDS))
    if outliers.block_words & (outliers.block_words - 1):
        raise ProgramError(f"{label}: field 'outliers.block_words' must be a power of two, "
                           f"not {outliers.block_words}")
    check_field(label, "outliers.slots", outliers.slots, int, (1, outliers.block_values))


def _check_outlier_use(label: str, op, values: Mapping[str, Value]) -> None:
    """Who may write and read a value with activation outliers (§18)."""
    out = values[op.output]
    if isinstance(op, Flatten):
        if out.outliers != values[op.input].outliers:
            raise ProgramError(f"{label}: output '{op.output}' must keep the activation "
                               f"outliers of input '{op.input}' (the same words, §18)")
        return
    if isinstance(op, (MaxPool, Concat)) and out.outliers is not None:
        raise ProgramError(f"{label}: a {op.KIND} output cannot keep activation outliers "
                           f"(§18)")
    readers = [op.residual] if isinstance(op, Gemm) else op.inputs
    for name in readers:
        if name is not None and values[name].outliers is not None:
            raise ProgramError(f"{label}: reads '{name}', which keeps activation outliers; "
                               f"only a GEMM input or a flatten reads such a value (§18)")


def check_program(program) -> None:
    """Raise ``ProgramError`` unless ``program`` (an ``IntegerProgram``) keeps every rule
    of §9."""
    _check_shape("program", "input_shape", program.input_shape)
    # pixels travel in the core's 16-bit slots: u16, or s16 when some are negative
    check_field("program", "pixel_min", program.pixel_min, int, (-(1 << 15), 0))
    check_field("program", "pixel_max", program.pixel_max, int,
                (1, (1 << 16) - 1 if program.pixel_min == 0 else (1 << 15) - 1))
    check_field("program", "real_inputs", program.real_inputs, bool)
    order = program.input_order
    if not (isinstance(order, tuple)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in order)
            and sorted(order) in ([], list(range(len(program.input_shape))))):
        raise ProgramError(f"program: field 'input_order' must be () or a permutation of "
                           f"0..{len(program.input_shape) - 1}, not {order!r}")
    check_positive_finite("program", "pixel_scale", program.pixel_scale)
    for name, value in program.values.items():
        label = f"value '{name}'"
        if not isinstance(value, Value):
            raise ProgramError(f"{label} must be a Value, not {type(value).__name__}")
        _check_shape(label, "shape", value.shape)
        check_field(label, "bits", value.bits, int, OUT_BITS)
        check_field(label, "signed", value.signed, bool)
        check_positive_finite(label, "scale", value.scale)
        if value.outliers is not None:
            _check_outliers(label, value)
    if not isinstance(program.ops, tuple) or not program.ops:
        raise ProgramError("program: field 'ops' must be a non-empty tuple")
    produced = set()
    values = program.values
    for index, op in enumerate(program.ops):
        if type(op) not in OPS.values():
            raise ProgramError(f"op {index}: {type(op).__name__} is not an op "
                               f"({', '.join(OPS)})")
        label = op.label(index) if isinstance(getattr(op, "name", None), str) \
            else f"op {index} ({op.KIND})"
        _check_op_attributes(op, label)
        if (index == 0) != isinstance(op, QuantizeInput):
            raise ProgramError(f"{label}: the first op, and only the first, must be "
                               f"quantize_input")
        for name in op.inputs:
            if name not in values:
                raise ProgramError(f"{label}: reads value '{name}', which is not declared")
            if name not in produced:
                raise ProgramError(f"{label}: reads value '{name}' before any op writes it")
        if op.output not in values:
            raise ProgramError(f"{label}: writes value '{op.output}', which is not declared")
        if op.output in produced:
            raise ProgramError(f"{label}: writes value '{op.output}' a second time")
        produced.add(op.output)
        out = values[op.output]
        _check_outlier_use(label, op, values)
        shape = _expected_output_shape(op, label, values, tuple(
            program.input_shape[d] for d in order) if order else program.input_shape)
        if out.shape != shape:
            raise ProgramError(f"{label}: output '{op.output}' has shape {out.shape}, "
                               f"expected {shape}")
        if isinstance(op, (MaxPool, Flatten, AvgPool)):
            source = values[op.input]
            same = (out.bits, out.signed) == (source.bits, source.signed)
            if isinstance(op, (MaxPool, Flatten)):
                same = same and out.scale == source.scale
            if not same:
                raise ProgramError(f"{label}: output '{op.output}' must keep the format"
                                   f"{'' if isinstance(op, AvgPool) else ' and scale'} of "
                                   f"input '{op.input}'")
        if isinstance(op, Concat):
            for part in op.parts:
                source = values[part]
                if (source.bits, source.signed, source.scale) != (out.bits, out.signed,
                                                                  out.scale):
                    raise ProgramError(f"{label}: part '{part}' ({source.format}, scale "
                                       f"{source.scale:g}) must have the format and scale "
                                       f"of output '{op.output}' ({out.format}, scale "
                                       f"{out.scale:g})")
        if isinstance(op, Lookup):
            _check_lookup(op, label, values)
        if isinstance(op, Gemm):
            source = values[op.input]
            if not ACT_BITS[0] <= source.bits <= ACT_BITS[1]:
                raise ProgramError(f"{label}: input '{op.input}' is {source.format}; a GEMM "
                                   f"reads activations of {ACT_BITS[0]}..{ACT_BITS[1]} bits")
            if op.residual is not None and values[op.residual].shape != out.shape:
                raise ProgramError(f"{label}: residual '{op.residual}' has shape "
                                   f"{values[op.residual].shape}, expected {out.shape}")
            _check_gemm_tensors(op, label)
    if not isinstance(program.output, str) or program.output not in produced:
        raise ProgramError(f"program: field 'output' must name a value an op writes, not "
                           f"{program.output!r}")
    unused = set(values) - produced
    if unused:
        raise ProgramError(f"program: value '{sorted(unused)[0]}' is declared but no op "
                           f"writes it")
