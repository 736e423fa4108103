"""Whole networks as integer programs (docs/program.md).

``quantize_model`` traces an ``nn.Module`` with ``torch.fx``, calibrates its activations on
sample images and lowers it to an ``IntegerProgram``: an ordered tuple of typed integer ops
over named integer tensors (*values*), the exact program the hardware sequencer executes.
``run_integer`` is its bit-exact reference (int64, vectorized over the batch);
``run_fake_quant`` is its float view (docs/semantics.md §5). Section numbers ``§n`` are
those of docs/program.md, which continues docs/semantics.md (§1–§8) with §9–§13.

Supported layers: ``nn.Linear``; ``nn.Conv2d`` (lowered onto the GEMM by ``im2col``, §10);
ReLU (fused into the requantization of the layer or add before it); the residual add
(fused into the requantization of one of its operands, §11, with the *precision highway*:
the skip tensor at 16 bits); ``nn.AvgPool2d`` (§12) and ``nn.MaxPool2d``; flatten.
"""

import math
import operator
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar, Mapping

import torch
from torch import fx, nn
from torch.nn import functional as F

from olmac.spec import (ACT_BITS, BIAS_BITS, MULTIPLIER_BITS, OUT_BITS, OUTLIER_BITS,
                          SHIFT_RANGE, WEIGHT_BITS)
from .fake_quant import requant_params, to_int_round_half_even
from .formats import check_in_format, format_name, int_range
from .integer import MAX_ACC_BITS, _per_channel, gemm, requantize_round_half_up
from .mmse import (EXPONENT_BITS, MAX_PLANES, combine_plane_accumulators, max_abs_scale,
                   mmse_scale, multi_tensor_quantize)
from .syq import ENTRY_BITS, IDX_BITS, decode_to_int, encode, init_codebook
from .value_aware import outlier_threshold, to_value_aware_round_half_even, value_aware_scale

__all__ = [
    "HIGHWAY_BITS", "SCHEMES", "MMSE_SAMPLES", "MIN_ALIGNED_MULTIPLIER",
    "RESIDUAL_SHIFT_RANGE", "ACT_CALIBRATIONS", "CLIP_FACTORS", "SEARCH_IMAGES",
    "ProgramError", "Value",
    "TensorSpec", "QuantizeInput", "Gemm", "AvgPool", "MaxPool", "Requantize", "Flatten",
    "OPS", "IntegerProgram", "tensor_specs", "check_program", "im2col", "pool_windows",
    "requantize_residual_round_half_up", "quantize_model", "run_integer", "run_fake_quant",
    "to_pixels",
]

#: Width of the precision highway (§11): skip tensors and the program's output are s16/u16.
HIGHWAY_BITS = 16
#: Weight schemes of a GEMM layer (§10).
SCHEMES = ("mmse", "value_aware", "multi_tensor", "syq")
#: Most values of one activation tensor the MMSE calibration searches over (§13).
MMSE_SAMPLES = 1 << 14
#: Ways ``quantize_model`` sets the scale of a low-width activation (§13).
ACT_CALIBRATIONS = ("output", "max", "mmse")
#: Fractions of the max-abs scale the ``"output"`` calibration tries per tensor (§13).
CLIP_FACTORS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
#: Most calibration images the ``"output"`` calibration scores a candidate on (§13).
SEARCH_IMAGES = 512
#: Least residual multiplier the shift alignment of a highway add may leave (§11).
MIN_ALIGNED_MULTIPLIER = 1 << 8
#: Allowed left shifts ``t`` of the residual product of a highway add (§11), inclusive.
RESIDUAL_SHIFT_RANGE = (0, 31)

_S32 = int_range(MULTIPLIER_BITS, signed=True)


class ProgramError(ValueError):
    """An integer program (or a model being lowered to one) breaks a rule of docs/program.md;
    the message names the op or layer and the field."""


# -- integer kernels --------------------------------------------------------------------------

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


def pool_windows(x: torch.Tensor, kernel: tuple[int, int],
                 stride: tuple[int, int]) -> torch.Tensor:
    """The ``N×C×Ho×Wo×(kh·kw)`` windows of a pooling without padding (§12).

    Window ``(oy, ox)`` holds ``X[n, c, oy·sh + ky, ox·sw + kx]`` in ``(ky, kx)`` row-major
    order; ``Ho = (H − kh) // sh + 1``.

    >>> pool_windows(torch.arange(16).reshape(1, 1, 4, 4), (2, 2), (2, 2))[0, 0, 0]
    tensor([[0, 1, 4, 5],
            [2, 3, 6, 7]])
    """
    (kh, kw), (sh, sw) = kernel, stride
    windows = x.unfold(2, kh, sh).unfold(3, kw, sw)
    return windows.reshape(*windows.shape[:4], kh * kw)


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


# -- program data -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Value:
    """A tensor of the program (§9): per-sample ``shape`` (``(C, H, W)`` or ``(F,)``), the
    integer format ``s<bits>``/``u<bits>`` and the real ``scale`` σ it stands for
    (value ``σ·q``; metadata for the float view, unused by the integer semantics)."""
    shape: tuple[int, ...]
    bits: int
    signed: bool
    scale: float

    @property
    def format(self) -> str:
        return format_name(self.bits, self.signed)


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor of an op must be: ``shape``, storage ``dtype`` (a numpy dtype name)
    and, for integers, the inclusive range ``lo..hi`` named ``format``; floats must be
    positive and finite."""
    shape: tuple[int, ...]
    dtype: str
    lo: int | None = None
    hi: int | None = None
    format: str = ""


def _int_spec(shape, bits: int, signed: bool, dtype: str | None = None) -> TensorSpec:
    lo, hi = int_range(bits, signed)
    if dtype is None:
        width = 8 if bits <= 8 else 16 if bits <= 16 else 32 if bits <= 32 else 64
        dtype = f"{'' if signed else 'u'}int{width}"
    return TensorSpec(tuple(shape), dtype, lo, hi, format_name(bits, signed))


class _Op:
    """Shared plumbing of the op dataclasses: ``KIND``, ``inputs``, tensor fields."""
    KIND: ClassVar[str] = ""

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(getattr(self, name) for name in ("input", "residual")
                     if getattr(self, name, None) is not None)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The op's tensor fields that are present, by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def attributes(self) -> dict:
        """The op's non-tensor fields (JSON-able), by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata.get("tensor") is None}

    def label(self, index: int) -> str:
        return f"op {index} ({self.KIND} '{self.name}')"


def _tensor(optional: bool = False):
    return field(default=None, metadata={"tensor": True}) if optional else \
        field(metadata={"tensor": True})


@dataclass(frozen=True, eq=False)
class QuantizeInput(_Op):
    """Pixels ``p`` (``0..pixel_max``) to the first activation format (§13):
    ``y = clamp((p·M + 2^(s−1)) >> s, lo, hi)`` (§3 with ``acc = p``, ``β = 0``)."""
    name: str
    output: str
    multiplier: int
    shift: int
    KIND: ClassVar[str] = "quantize_input"


@dataclass(frozen=True, eq=False)
class Gemm(_Op):
    """A ``Linear`` or (im2col-lowered) ``Conv2d`` layer with its requantization (§9–§11).

    ``layer`` is ``"linear"`` or ``"conv2d"`` (then ``kernel``, ``stride``, ``padding`` are
    ``(h, w)`` pairs). ``K = in_features`` (``C·kh·kw`` for a convolution) and
    ``N = out_features``. The weights by ``scheme`` (§9):

    * ``mmse``: ``weights`` ``K×N`` in ``s<weight_bits>``;
    * ``value_aware``: ``weights`` (dense, ``s<weight_bits>``) plus ``weight_outliers``
      (``s<weight_outlier_bits>``, 0 where there is none, the dense entry 0 where there is
      one), both ``K×N``;
    * ``multi_tensor``: ``weights`` ``P×K×N`` planes in ``s<weight_bits>`` and
      ``plane_exponents`` ``(P−1)×N`` in ``u4`` (semantics §8);
    * ``syq``: ``codes`` in the torch weight layout (``N×K`` or ``N×C×kh×kw``) in
      ``u<idx_bits+1>`` and ``tables`` ``(*subgroup, 2^idx_bits)`` in ``u<weight_bits−1>``
      (docs/codebooks.md §4); the GEMM weight is ``decode(codes).reshape(N, K)ᵀ``.

    ``bias``, ``multiplier``, ``shift`` (and ``residual_multiplier``, ``residual_shift``
    with a ``residual``)
    have one entry per output channel; ``weight_scale`` (float64, ``N``) is the real value
    of one unit of the integer weight, metadata for the float view.
    """
    name: str
    input: str
    output: str
    layer: str
    in_features: int
    out_features: int
    scheme: str
    weight_bits: int
    relu: bool
    bias: torch.Tensor = _tensor()
    multiplier: torch.Tensor = _tensor()
    shift: torch.Tensor = _tensor()
    weight_scale: torch.Tensor = _tensor()
    kernel: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    residual: str | None = None
    weight_outlier_bits: int | None = None
    idx_bits: int | None = None
    weights: torch.Tensor | None = _tensor(optional=True)
    weight_outliers: torch.Tensor | None = _tensor(optional=True)
    plane_exponents: torch.Tensor | None = _tensor(optional=True)
    codes: torch.Tensor | None = _tensor(optional=True)
    tables: torch.Tensor | None = _tensor(optional=True)
    residual_multiplier: torch.Tensor | None = _tensor(optional=True)
    residual_shift: torch.Tensor | None = _tensor(optional=True)
    KIND: ClassVar[str] = "gemm"

    def weight_matrix(self) -> torch.Tensor:
        """The one ``K×N`` integer weight the accumulator equals a GEMM with (int64):
        ``weights + weight_outliers``, ``Σ_p Q_p·2^(S_p)`` for planes (semantics §8), or the
        decoded codes."""
        if self.scheme == "mmse":
            return self.weights.to(torch.int64)
        if self.scheme == "value_aware":
            return self.weights.to(torch.int64) + self.weight_outliers.to(torch.int64)
        if self.scheme == "multi_tensor":
            planes = self.weights.to(torch.int64)
            total = planes[0]
            for p in range(1, planes.shape[0]):
                total = (total << self.plane_exponents[p - 1].to(torch.int64)) + planes[p]
            return total
        decoded = decode_to_int(self.codes.to(torch.int64), self.tables.to(torch.int64),
                                idx_bits=self.idx_bits, entry_bits=self.weight_bits - 1)
        return decoded.reshape(self.out_features, self.in_features).T

    def accumulate(self, acts: torch.Tensor, act_bits: int, act_signed: bool) -> torch.Tensor:
        """``acc`` (``M×N``, int64) of the ``M×K`` activations, by the weight scheme (§9)."""
        if self.scheme == "multi_tensor":
            accs = torch.stack([gemm(acts, plane, act_bits=act_bits, act_signed=act_signed,
                                     weight_bits=self.weight_bits) for plane in self.weights])
            return combine_plane_accumulators(accs, self.plane_exponents)
        if self.scheme == "value_aware":
            return gemm(acts, self.weight_matrix(), act_bits=act_bits, act_signed=act_signed,
                        weight_bits=self.weight_bits,
                        weight_outlier_bits=self.weight_outlier_bits)
        return gemm(acts, self.weight_matrix(), act_bits=act_bits, act_signed=act_signed,
                    weight_bits=self.weight_bits)


@dataclass(frozen=True, eq=False)
class AvgPool(_Op):
    """Average pooling without padding (§12): the window sum, requantized by §3 with
    ``β = 0`` and the scalar ``(M, s)``: ``y = clamp((Σ·M + 2^(s−1)) >> s, lo, hi)``."""
    name: str
    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    multiplier: int
    shift: int
    KIND: ClassVar[str] = "avgpool"


@dataclass(frozen=True, eq=False)
class MaxPool(_Op):
    """Max pooling without padding: the window maximum, exact, same format and scale."""
    name: str
    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    KIND: ClassVar[str] = "maxpool"


@dataclass(frozen=True, eq=False)
class Requantize(_Op):
    """A tensor to another format and scale, elementwise (§3 with ``β = 0``):
    ``y = clamp((x·M + 2^(s−1)) >> s, lo, hi)``; the low-width copy of a 16-bit tensor."""
    name: str
    input: str
    output: str
    multiplier: int
    shift: int
    KIND: ClassVar[str] = "requantize"


@dataclass(frozen=True, eq=False)
class Flatten(_Op):
    """``C×H×W`` to ``C·H·W`` features in row-major ``(c, y, x)`` order; no arithmetic."""
    name: str
    input: str
    output: str
    KIND: ClassVar[str] = "flatten"


#: The op classes by ``KIND``.
OPS = {cls.KIND: cls for cls in (QuantizeInput, Gemm, AvgPool, MaxPool, Requantize, Flatten)}


@dataclass(frozen=True, eq=False)
class IntegerProgram:
    """An integer program (§9): ``ops`` in execution order over the named ``values``.

    The input is ``N`` images of ``input_shape`` pixels in ``0..pixel_max`` (pixel ``p``
    stands for ``p·pixel_scale``); the first op is the ``QuantizeInput`` producing
    ``"input"``; ``output`` names the value returned (the logits, ``s16``). Construction
    checks every rule of §9 and raises ``ProgramError`` naming the op and field.
    """
    input_shape: tuple[int, ...]
    pixel_max: int
    pixel_scale: float
    values: Mapping[str, Value]
    ops: tuple
    output: str

    def __post_init__(self):
        check_program(self)

    def describe(self) -> str:
        """One line per op: kind, name, input/output formats and widths."""
        lines = []
        for index, op in enumerate(self.ops):
            out = self.values[op.output]
            ins = ", ".join(f"{name}:{self.values[name].format}" for name in op.inputs)
            extra = ""
            if isinstance(op, Gemm):
                extra = (f" {op.layer} {op.in_features}→{op.out_features} {op.scheme} "
                         f"w{op.weight_bits}{' relu' if op.relu else ''}")
            lines.append(f"{index:2d} {op.KIND:14s} {op.name:12s} ({ins}) → "
                         f"{op.output}:{out.format}{list(out.shape)}{extra}")
        return "\n".join(lines)


# -- validation -------------------------------------------------------------------------------

def _check_type(label: str, field_name: str, value, kind, bounds=None):
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if ok and bounds is not None:
        ok = bounds[0] <= value <= bounds[1]
    if not ok:
        expected = kind.__name__ if bounds is None else f"{kind.__name__} in " \
                                                         f"{bounds[0]}..{bounds[1]}"
        raise ProgramError(f"{label}: field '{field_name}' must be {expected}, not {value!r}")
    return value


def _check_pair(label: str, field_name: str, value, low: int) -> tuple[int, int]:
    if not (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= low
                    for v in value)):
        raise ProgramError(f"{label}: field '{field_name}' must be a pair of integers "
                           f">= {low}, not {value!r}")
    return value


def _check_tensor(label: str, name: str, tensor, spec: TensorSpec) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ProgramError(f"{label}: tensor '{name}' is missing")
    if tuple(tensor.shape) != spec.shape:
        raise ProgramError(f"{label}: tensor '{name}' has shape {tuple(tensor.shape)}, "
                           f"expected {spec.shape}")
    if spec.lo is None:
        if tensor.dtype != torch.float64:
            raise ProgramError(f"{label}: tensor '{name}' must be float64, not {tensor.dtype}")
        if not (torch.isfinite(tensor) & (tensor > 0)).all():
            raise ProgramError(f"{label}: tensor '{name}' must be positive and finite")
        return
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ProgramError(f"{label}: tensor '{name}' must be an integer tensor, not "
                           f"{tensor.dtype}")
    wide = tensor.to(torch.int64)
    outside = (wide < spec.lo) | (wide > spec.hi)
    if outside.any():
        position = [int(i) for i in outside.nonzero()[0]]
        raise ProgramError(f"{label}: tensor '{name}'{position} = {int(wide[tuple(position)])} "
                           f"is outside {spec.format} ({spec.lo}..{spec.hi})")


def tensor_specs(op) -> dict[str, TensorSpec]:
    """The tensors an op must carry, with their shapes, dtypes and ranges (§9).

    ``op``'s attributes must already be valid. Raises ``ProgramError`` (without the op's
    label) where the shape of one tensor decides another's and is itself wrong.
    """
    if not isinstance(op, Gemm):
        return {}
    k, n = op.in_features, op.out_features
    specs = {"bias": _int_spec((n,), BIAS_BITS, True),
             "multiplier": _int_spec((n,), MULTIPLIER_BITS, True),
             "shift": _int_spec((n,), SHIFT_RANGE[1].bit_length(), False),  # u6: 0..63
             "weight_scale": TensorSpec((n,), "float64")}
    if op.residual is not None:
        specs["residual_multiplier"] = _int_spec((n,), MULTIPLIER_BITS, True)
        specs["residual_shift"] = _int_spec((n,), RESIDUAL_SHIFT_RANGE[1].bit_length(),
                                            False)  # u5: 0..31
    if op.scheme in ("mmse", "value_aware"):
        specs["weights"] = _int_spec((k, n), op.weight_bits, True)
    if op.scheme == "value_aware":
        specs["weight_outliers"] = _int_spec((k, n), op.weight_outlier_bits, True)
    if op.scheme == "multi_tensor":
        planes = _leading_shape("weights", op.weights, (k, n), MAX_PLANES)
        specs["weights"] = _int_spec((planes, k, n), op.weight_bits, True)
        specs["plane_exponents"] = _int_spec((planes - 1, n), EXPONENT_BITS, False)
    if op.scheme == "syq":
        codes_shape = (n, k) if op.layer == "linear" else \
            (n, k // (op.kernel[0] * op.kernel[1])) + op.kernel
        specs["codes"] = _int_spec(codes_shape, op.idx_bits + 1, False)
        entries = 1 << op.idx_bits
        tables = op.tables
        if not isinstance(tables, torch.Tensor):
            raise ProgramError("tensor 'tables' is missing")
        if not (tables.dim() == len(codes_shape) + 1 and tables.shape[-1] == entries
                and all(t in (1, c) for t, c in zip(tables.shape[:-1], codes_shape))):
            raise ProgramError(f"tensor 'tables' has shape {tuple(tables.shape)}, expected "
                               f"(*subgroup, {entries}) with each subgroup size 1 or that of "
                               f"the codes {codes_shape}")
        specs["tables"] = _int_spec(tuple(tables.shape), op.weight_bits - 1, False)
    return specs


def _leading_shape(name: str, tensor, rest: tuple[int, ...], most: int) -> int:
    """The plane count ``P`` of a ``P×rest`` tensor, ``1 ≤ P ≤ most``, or raise."""
    if not isinstance(tensor, torch.Tensor):
        raise ProgramError(f"tensor '{name}' is missing")
    if tensor.dim() != len(rest) + 1 or tuple(tensor.shape[1:]) != rest \
            or not 1 <= tensor.shape[0] <= most:
        raise ProgramError(f"tensor '{name}' has shape {tuple(tensor.shape)}, expected "
                           f"(P, {', '.join(map(str, rest))}) with P in 1..{most}")
    return tensor.shape[0]


def _expected_output_shape(op, label: str, values: Mapping[str, Value],
                           program: IntegerProgram) -> tuple[int, ...]:
    """The output shape an op produces from its input's shape (§9), or raise."""
    if isinstance(op, QuantizeInput):
        return tuple(program.input_shape)
    shape = values[op.input].shape
    if isinstance(op, (Requantize,)):
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
    (kh, kw), (sh, sw) = op.kernel, op.stride
    if len(shape) != 3 or shape[1] < kh or shape[2] < kw:
        raise ProgramError(f"{label}: input '{op.input}' has shape {shape}, expected (C, H, W) "
                           f"with H >= {kh}, W >= {kw}")
    return (shape[0], (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1)


def _check_op_attributes(op, label: str) -> None:
    for name in ("name", "output") + (() if isinstance(op, QuantizeInput) else ("input",)):
        _check_type(label, name, getattr(op, name), str)
    if isinstance(op, (QuantizeInput, AvgPool, Requantize)):
        _check_type(label, "multiplier", op.multiplier, int, _S32)
        _check_type(label, "shift", op.shift, int, SHIFT_RANGE)
    if isinstance(op, (AvgPool, MaxPool)):
        _check_pair(label, "kernel", op.kernel, 1)
        _check_pair(label, "stride", op.stride, 1)
    if not isinstance(op, Gemm):
        return
    _check_type(label, "layer", op.layer, str)
    if op.layer not in ("linear", "conv2d"):
        raise ProgramError(f"{label}: field 'layer' must be 'linear' or 'conv2d', not "
                           f"{op.layer!r}")
    _check_type(label, "in_features", op.in_features, int, (1, 1 << 28))
    _check_type(label, "out_features", op.out_features, int, (1, 1 << 28))
    _check_type(label, "scheme", op.scheme, str)
    if op.scheme not in SCHEMES:
        raise ProgramError(f"{label}: field 'scheme' must be one of {', '.join(SCHEMES)}, not "
                           f"{op.scheme!r}")
    _check_type(label, "weight_bits", op.weight_bits, int, WEIGHT_BITS)
    _check_type(label, "relu", op.relu, bool)
    if op.residual is not None:
        _check_type(label, "residual", op.residual, str)
    geometry = (op.kernel, op.stride, op.padding)
    if op.layer == "conv2d":
        _check_pair(label, "kernel", op.kernel, 1)
        _check_pair(label, "stride", op.stride, 1)
        _check_pair(label, "padding", op.padding, 0)
    elif geometry != (None, None, None):
        raise ProgramError(f"{label}: a linear layer has no kernel, stride or padding, not "
                           f"{geometry}")
    if op.scheme == "value_aware":
        _check_type(label, "weight_outlier_bits", op.weight_outlier_bits, int, OUTLIER_BITS)
        if op.weight_outlier_bits <= op.weight_bits:
            raise ProgramError(f"{label}: field 'weight_outlier_bits' ({op.weight_outlier_bits})"
                               f" must exceed 'weight_bits' ({op.weight_bits})")
    elif op.weight_outlier_bits is not None:
        raise ProgramError(f"{label}: field 'weight_outlier_bits' is only for the value_aware "
                           f"scheme")
    if op.scheme == "syq":
        _check_type(label, "idx_bits", op.idx_bits, int, IDX_BITS)
        _check_type(label, "weight_bits", op.weight_bits, int,
                    (ENTRY_BITS[0] + 1, ENTRY_BITS[1] + 1))
    elif op.idx_bits is not None:
        raise ProgramError(f"{label}: field 'idx_bits' is only for the syq scheme")


def _check_gemm_tensors(op: Gemm, label: str, values: Mapping[str, Value]) -> None:
    try:
        specs = tensor_specs(op)
    except ProgramError as error:
        raise ProgramError(f"{label}: {error}") from None
    for name, tensor in op.tensors().items():
        if name not in specs:
            raise ProgramError(f"{label}: tensor '{name}' does not belong to a "
                               f"{op.scheme} {'residual ' if op.residual else ''}layer")
    for name, spec in specs.items():
        _check_tensor(label, name, getattr(op, name), spec)
    if op.scheme == "value_aware":
        both = (op.weights != 0) & (op.weight_outliers != 0)
        if both.any():
            position = [int(i) for i in both.nonzero()[0]]
            raise ProgramError(f"{label}: tensor 'weights'{position} is nonzero under an "
                               f"outlier (semantics §6: the dense slot of an outlier is 0)")


def check_program(program: IntegerProgram) -> None:
    """Raise ``ProgramError`` unless ``program`` keeps every rule of §9."""
    if not (isinstance(program.input_shape, tuple) and program.input_shape
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                    for d in program.input_shape)):
        raise ProgramError(f"program: field 'input_shape' must be a tuple of positive "
                           f"integers, not {program.input_shape!r}")
    _check_type("program", "pixel_max", program.pixel_max, int, (1, (1 << 16) - 1))
    _check_type("program", "pixel_scale", program.pixel_scale, float)
    if not (math.isfinite(program.pixel_scale) and program.pixel_scale > 0):
        raise ProgramError(f"program: field 'pixel_scale' must be positive and finite, not "
                           f"{program.pixel_scale!r}")
    for name, value in program.values.items():
        label = f"value '{name}'"
        if not isinstance(value, Value):
            raise ProgramError(f"{label} must be a Value, not {type(value).__name__}")
        if not (isinstance(value.shape, tuple) and value.shape and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value.shape)):
            raise ProgramError(f"{label}: field 'shape' must be a tuple of positive integers, "
                               f"not {value.shape!r}")
        _check_type(label, "bits", value.bits, int, OUT_BITS)
        _check_type(label, "signed", value.signed, bool)
        _check_type(label, "scale", value.scale, float)
        if not (math.isfinite(value.scale) and value.scale > 0):
            raise ProgramError(f"{label}: field 'scale' must be positive and finite, not "
                               f"{value.scale!r}")
    if not isinstance(program.ops, tuple) or not program.ops:
        raise ProgramError("program: field 'ops' must be a non-empty tuple")
    produced = set()
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
            if name not in program.values:
                raise ProgramError(f"{label}: reads value '{name}', which is not declared")
            if name not in produced:
                raise ProgramError(f"{label}: reads value '{name}' before any op writes it")
        if op.output not in program.values:
            raise ProgramError(f"{label}: writes value '{op.output}', which is not declared")
        if op.output in produced:
            raise ProgramError(f"{label}: writes value '{op.output}' a second time")
        produced.add(op.output)
        values = program.values
        out = values[op.output]
        shape = _expected_output_shape(op, label, values, program)
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
        if isinstance(op, Gemm):
            source = values[op.input]
            if not ACT_BITS[0] <= source.bits <= ACT_BITS[1]:
                raise ProgramError(f"{label}: input '{op.input}' is {source.format}; a GEMM "
                                   f"reads activations of {ACT_BITS[0]}..{ACT_BITS[1]} bits")
            if op.residual is not None and values[op.residual].shape != out.shape:
                raise ProgramError(f"{label}: residual '{op.residual}' has shape "
                                   f"{values[op.residual].shape}, expected {out.shape}")
            _check_gemm_tensors(op, label, values)
    if not isinstance(program.output, str) or program.output not in produced:
        raise ProgramError(f"program: field 'output' must name a value an op writes, not "
                           f"{program.output!r}")
    unused = set(program.values) - produced
    if unused:
        raise ProgramError(f"program: value '{sorted(unused)[0]}' is declared but no op "
                           f"writes it")


# -- integer execution ------------------------------------------------------------------------

def to_pixels(images: torch.Tensor, pixel_scale: float = 1 / 16) -> torch.Tensor:
    """Real images ``x`` (``p·pixel_scale``) back to integer pixels ``p = round(x/scale)``.

    >>> to_pixels(torch.tensor([0.0, 0.5, 1.0]))
    tensor([ 0,  8, 16])
    """
    return torch.round(images.to(torch.float64) / pixel_scale).to(torch.int64)


def _nchw_rows(x: torch.Tensor) -> torch.Tensor:
    """``N×C×H×W`` as the ``(N·H·W) × C`` rows of a GEMM output (§10), or ``N×F`` as is."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if x.dim() == 4 else x


def _from_rows(rows: torch.Tensor, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``_nchw_rows`` for a per-sample ``shape``."""
    if len(shape) == 1:
        return rows.reshape(n, *shape)
    c, h, w = shape
    return rows.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def _requantize_tensor(x: torch.Tensor, multiplier: int, shift: int, out: Value) -> torch.Tensor:
    """§3 elementwise with ``β = 0`` and one ``(M, s)``, on a tensor of any shape."""
    flat = requantize_round_half_up(x.reshape(-1, 1), 0, multiplier, shift,
                                    out_bits=out.bits, out_signed=out.signed)
    return flat.reshape(x.shape)


def _check_pixels(program: IntegerProgram, pixels: torch.Tensor) -> torch.Tensor:
    if pixels.dim() < 1 or math.prod(pixels.shape[1:]) != math.prod(program.input_shape):
        raise ValueError(f"pixels must be N images of shape {program.input_shape} (or flat), "
                         f"not {tuple(pixels.shape)}")
    if pixels.dtype.is_floating_point or pixels.dtype.is_complex or pixels.dtype == torch.bool:
        raise TypeError(f"pixels must be an integer tensor, not {pixels.dtype}")
    wide = pixels.to(torch.int64)
    if ((wide < 0) | (wide > program.pixel_max)).any():
        raise ValueError(f"pixels must lie in 0..{program.pixel_max}")
    return wide.reshape(len(wide), *program.input_shape)


def run_integer(program: IntegerProgram, pixels: torch.Tensor) -> torch.Tensor:
    """Execute the program on integer pixels exactly (§9–§13): ``N×F`` int64 logits.

    ``pixels`` holds ``N`` images in ``0..pixel_max`` of ``input_shape`` (or flattened).
    The result is the output value, in its format (``s16``); its real value is
    ``program.values[program.output].scale`` times it.

    Raises
    ------
    TypeError
        If ``pixels`` is not an integer tensor.
    ValueError
        If ``pixels`` has the wrong shape or a pixel is outside ``0..pixel_max``.
    """
    x = _check_pixels(program, pixels)
    n = len(x)
    env: dict[str, torch.Tensor] = {}
    for op in program.ops:
        out = program.values[op.output]
        if isinstance(op, QuantizeInput):
            env[op.output] = _requantize_tensor(x, op.multiplier, op.shift, out)
        elif isinstance(op, Requantize):
            env[op.output] = _requantize_tensor(env[op.input], op.multiplier, op.shift, out)
        elif isinstance(op, Flatten):
            env[op.output] = env[op.input].reshape(n, -1)
        elif isinstance(op, MaxPool):
            env[op.output] = pool_windows(env[op.input], op.kernel, op.stride).amax(-1)
        elif isinstance(op, AvgPool):
            sums = pool_windows(env[op.input], op.kernel, op.stride).sum(-1)
            env[op.output] = _requantize_tensor(sums, op.multiplier, op.shift, out)
        else:
            env[op.output] = _run_gemm(op, env, program.values, n)
    return env[program.output]


def _run_gemm(op: Gemm, env: dict, values: Mapping[str, Value], n: int) -> torch.Tensor:
    source, out = values[op.input], values[op.output]
    acts = env[op.input]
    if op.layer == "conv2d":
        acts = im2col(acts, op.kernel, op.stride, op.padding)
    acc = op.accumulate(acts, source.bits, source.signed)
    if op.residual is None:
        y = requantize_round_half_up(acc, op.bias, op.multiplier, op.shift,
                                     out_bits=out.bits, out_signed=out.signed, relu=op.relu)
    else:
        y = requantize_residual_round_half_up(
            acc, op.bias, op.multiplier, op.shift, _nchw_rows(env[op.residual]),
            op.residual_multiplier, op.residual_shift, out_bits=out.bits,
            out_signed=out.signed, relu=op.relu)
    return _from_rows(y, n, out.shape)


# -- float view -------------------------------------------------------------------------------

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
            y = (acts @ (op.weight_matrix().to(torch.float64) * weight_scale)
                 + op.bias.to(torch.float64) * source.scale * weight_scale)
            if op.residual is not None:
                y = y + _nchw_rows(env[op.residual])
            if op.relu:
                y = y.clamp(min=0)
            env[op.output] = _from_rows(_fake(y, out), n, out.shape)
    return env[program.output]


# -- lowering a model -------------------------------------------------------------------------

def _type_name(target) -> str:
    cls = target if isinstance(target, type) else type(target)
    module = cls.__module__
    if module.startswith("torch.nn"):
        return f"nn.{cls.__qualname__}"
    return f"{module}.{cls.__qualname__}"


def _function_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = (getattr(target, "__module__", None) or "operator").lstrip("_")  # _operator
    if module.startswith("torch"):
        module = "torch" if not module.startswith("torch.nn.functional") else "F"
    return f"{module}.{getattr(target, '__name__', str(target))}"


def _unsupported(name: str, kind: str, why: str = "") -> ProgramError:
    return ProgramError(f"unsupported layer '{name}' ({kind}{' ' + why if why else ''})")


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(int(v) for v in value)


_ADD = {operator.add, operator.iadd, torch.add}
_RELU = {torch.relu, F.relu}
_FLATTEN = {torch.flatten}


def _classify(node: fx.Node, modules: dict) -> str:
    """``input``/``output``/``linear``/``conv2d``/``relu``/``add``/``avgpool``/``maxpool``/
    ``flatten`` for a node the lowering supports; raise naming anything else."""
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        module = modules[node.target]
        name, kind = node.target, _type_name(module)
        if isinstance(module, nn.Linear):
            return "linear"
        if isinstance(module, nn.Conv2d):
            if isinstance(module.padding, str) and module.padding != "valid":
                raise _unsupported(name, kind, f"with padding={module.padding!r}")
            if module.groups != 1 or _pair(module.dilation) != (1, 1) \
                    or module.padding_mode != "zeros":
                raise _unsupported(name, kind, f"with groups={module.groups}, dilation="
                                   f"{module.dilation}, padding_mode={module.padding_mode!r}; "
                                   f"only groups=1, dilation=1, zeros padding")
            return "conv2d"
        if isinstance(module, nn.ReLU):
            return "relu"
        if isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
            extra = (module.dilation != 1 and _pair(module.dilation) != (1, 1)) \
                if isinstance(module, nn.MaxPool2d) else module.divisor_override is not None
            if _pair(module.padding) != (0, 0) or module.ceil_mode or extra:
                raise _unsupported(name, kind, "with padding, ceil_mode, dilation or a divisor "
                                   "override; only padding=0 and ceil_mode=False")
            return "avgpool" if isinstance(module, nn.AvgPool2d) else "maxpool"
        if isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                raise _unsupported(name, kind, "with start_dim != 1 or end_dim != -1")
            return "flatten"
        raise _unsupported(name, kind)
    if node.op in ("call_function", "call_method"):
        target = node.target
        kind = _function_name(node)
        if target in _ADD or target in ("add", "add_"):
            if len(node.args) != 2 or node.kwargs or not all(
                    isinstance(a, fx.Node) for a in node.args):
                raise _unsupported(node.name, kind, "other than a sum of two tensors")
            return "add"
        if target in _RELU or target in ("relu", "relu_"):
            if len(node.args) != 1:
                raise _unsupported(node.name, kind)
            return "relu"
        if target in _FLATTEN or target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if (start, end) != (1, -1):
                raise _unsupported(node.name, kind, "other than flatten(x, 1)")
            return "flatten"
        raise _unsupported(node.name, kind)
    raise _unsupported(node.name, f"fx {node.op} {node.target}")


@dataclass
class _Step:
    """One op of the plan: its kind, fx nodes (first = the layer), input, residual."""
    kind: str
    nodes: list
    input: fx.Node | None
    residual: fx.Node | None = None
    relu: bool = False
    name: str = ""

    @property
    def last(self) -> fx.Node:
        return self.nodes[-1]


def _plan(graph: fx.Graph, kinds: dict) -> list[_Step]:
    """Group the nodes into ops: GEMM [+ add] [+ ReLU] fused, pools and flatten alone."""
    member: dict[fx.Node, _Step] = {}
    steps: list[_Step] = []
    for node in graph.nodes:
        kind = kinds[node]
        if kind == "input":
            step = _Step("input", [node], None)
        elif kind in ("linear", "conv2d"):
            step = _Step("gemm", [node], node.args[0])
            users = list(node.users)
            if len(users) == 1 and kinds[users[0]] == "add" and _branch(users[0], kinds) is node:
                add = users[0]
                step.nodes.append(add)
                step.residual = add.args[1] if add.args[0] is node else add.args[0]
                users = list(add.users)
            if len(users) == 1 and kinds[users[0]] == "relu":
                step.nodes.append(users[0])
                step.relu = True
        elif kind in ("relu", "add"):
            if node not in member:
                why = ("a ReLU must directly follow a Linear, Conv2d or residual add that has "
                       "no other user" if kind == "relu" else
                       "a residual add needs one operand that is a Linear or Conv2d with no "
                       "other user, into whose requantization it is fused")
                raise _unsupported(node.name, _function_name(node) if node.op != "call_module"
                                   else "nn.ReLU", "— " + why)
            continue
        elif kind == "output":
            continue
        else:
            step = _Step(kind, [node], node.args[0])
        for member_node in step.nodes:
            member[member_node] = step
        steps.append(step)
    # Emit each op where its last node stands: by then every operand is computed.
    position = {node: i for i, node in enumerate(graph.nodes)}
    steps.sort(key=lambda step: position[step.last])
    return steps


def _branch(add: fx.Node, kinds: dict) -> fx.Node | None:
    """The operand of an add whose requantization takes the add: the first that is a GEMM
    with the add as its only user (None if neither is, or both operands are one node)."""
    left, right = add.args
    if left is right:
        return None
    for operand in (left, right):
        if kinds.get(operand) in ("linear", "conv2d") and list(operand.users) == [add]:
            return operand
    return None


class _Recorder(fx.Interpreter):
    """Runs the traced float model, keeping every node's output."""

    def __init__(self, module):
        super().__init__(module)
        self.seen = {}

    def run_node(self, node):
        result = super().run_node(node)
        self.seen[node] = result
        return result


def _requant(label: str, ratio) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return requant_params(torch.as_tensor(ratio, dtype=torch.float64))
    except ValueError as error:
        raise ProgramError(f"{label}: {error}") from None


def _quantize_weights(label: str, weight: torch.Tensor, scheme: str, bits: int,
                      options: dict) -> dict:
    """The integer weight fields of a ``Gemm`` and ``weight_scale`` (§9)."""
    n = weight.shape[0]
    rows = weight.detach().to(torch.float64).reshape(n, -1)
    if scheme == "mmse":
        scale = mmse_scale(rows, bits, per_channel=True)
        q = to_int_round_half_even(rows, scale, bits, signed=True)
        return {"weights": q.T.contiguous(), "weight_scale": scale.reshape(n)}
    if scheme == "value_aware":
        threshold = outlier_threshold(rows, options["outlier_ratio"], channel_dim=0)
        q, _ = to_value_aware_round_half_even(
            rows, threshold, bits, signed=True, channel_dim=0,
            outlier_bits=options["weight_outlier_bits"])
        return {"weights": q.dense.T.contiguous(), "weight_outliers": q.sparse.T.contiguous(),
                "weight_outlier_bits": options["weight_outlier_bits"],
                "weight_scale": value_aware_scale(threshold, bits, signed=True)}
    if scheme == "multi_tensor":
        mt = multi_tensor_quantize(rows, bits, options["planes"], per_channel=True)
        return {"weights": mt.planes.transpose(1, 2).contiguous(),
                "plane_exponents": mt.exponents, "weight_scale": mt.scales[-1].clone()}
    if scheme == "syq":
        if bits < 2:
            raise ProgramError(f"{label}: syq needs weight_bits >= 2")
        magnitudes = init_codebook(weight.detach(), granularity=options["syq_granularity"],
                                   idx_bits=options["syq_idx_bits"], zero=True)
        codes = encode(weight.detach(), magnitudes, zero=True, entry_bits=bits - 1)
        return {"codes": codes.codes, "tables": codes.tables, "idx_bits": codes.idx_bits,
                "weight_scale": torch.full((n,), 2.0 ** -codes.frac_bits, dtype=torch.float64)}
    raise ProgramError(f"{label}: scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")


def _align_shifts(label, residual_multiplier, residual_shift, shift):
    """Fit the residual's ``(M_r, s_r)`` to the GEMM's shift ``s`` (§11):
    ``t = s − s_r`` where ``s_r ≤ s``; else ``t = 0`` and ``M_r ← (M_r + 2^(d−1)) >> d``
    with ``d = s_r − s``."""
    excess = (residual_shift - shift).clamp(min=0)
    left = (shift - residual_shift).clamp(min=0)
    residual_multiplier = torch.where(
        excess > 0, (residual_multiplier + (1 << (excess - 1).clamp(min=0))) >> excess,
        residual_multiplier)
    if (left > RESIDUAL_SHIFT_RANGE[1]).any() or \
            (residual_multiplier < MIN_ALIGNED_MULTIPLIER).any():
        raise ProgramError(f"{label}: the GEMM and residual scales are too far apart for one "
                           f"shift (t would exceed {RESIDUAL_SHIFT_RANGE[1]} or M_r keep fewer "
                           f"than 9 bits)")
    return residual_multiplier, left


@torch.no_grad()
def quantize_model(model: nn.Module, calibration: torch.Tensor, *, act_bits: int = 4,
                   weight_bits: int = 4, scheme: str | Mapping[str, str] = "mmse",
                   input_bits: int | None = None, highway: bool = True,
                   act_calibration: str = "output",
                   bias_correction: bool = True, pixel_max: int = 16,
                   pixel_scale: float = 1 / 16, outlier_ratio: float = 1 / 64,
                   weight_outlier_bits: int | None = None, planes: int = 2,
                   syq_idx_bits: int = 1, syq_granularity: str = "row") -> IntegerProgram:
    """Lower ``model`` to an ``IntegerProgram`` (§9–§13), calibrated on ``calibration``.

    ``calibration``: real images ``N×input_shape`` (typically the training images); the
    float model's activations on them set every activation scale (§13). Widths:
    ``act_bits`` for the activations a GEMM reads and ``weight_bits`` for its weights
    (2..8); ``input_bits`` for the quantized pixels (``act_bits`` unless given); the skip
    tensors and residual sums (with ``highway``) and the output are 16-bit. ``scheme``:
    one of ``SCHEMES`` for every layer, or a mapping from layer name (``"layers.0"``,
    ``"conv1"``) to scheme, ``"mmse"`` for the layers it does not name;
    ``outlier_ratio``/``weight_outlier_bits`` (value-aware; the outlier width defaults to
    ``min(2·weight_bits, 16)``), ``planes`` (multi-tensor) and
    ``syq_idx_bits``/``syq_granularity`` (SYQ: ternary, per row) tune them.
    ``act_calibration`` sets the scales of the low-width activations: ``"output"`` (the
    default) starts from max-abs and picks, tensor by tensor, the clipping factor of
    ``CLIP_FACTORS`` whose program's float view (``run_fake_quant``) has the least KL
    divergence from the float model's logits on (at most ``SEARCH_IMAGES`` of) the
    calibration images, in two passes of coordinate descent; ``"max"`` is max-abs and
    ``"mmse"`` the per-tensor MMSE scale. ``bias_correction`` adds the mean output error of the quantized weights
    on the calibration batch back into the bias (§13). ``highway=False`` is the ablation
    of §11: the skip tensor is requantized to ``act_bits`` before the add and sums are
    low-width.

    Raises
    ------
    ProgramError
        For a layer the lowering does not support (``"unsupported layer 'layers.3'
        (nn.GELU)"``), a model torch.fx cannot trace, or a bias or scale that does not fit.
    TypeError
        If a width is out of range.
    ValueError
        If ``act_calibration`` is not one of ``ACT_CALIBRATIONS``.
    """
    if act_calibration not in ACT_CALIBRATIONS:
        raise ValueError(f"act_calibration must be one of {', '.join(map(repr, ACT_CALIBRATIONS))}"
                         f", not {act_calibration!r}")
    for name, bits in (("act_bits", act_bits), ("weight_bits", weight_bits),
                       ("input_bits", act_bits if input_bits is None else input_bits)):
        if isinstance(bits, bool) or not isinstance(bits, int) or \
                not ACT_BITS[0] <= bits <= ACT_BITS[1]:
            raise TypeError(f"{name} must be an integer in {ACT_BITS[0]}..{ACT_BITS[1]}, "
                            f"not {bits!r}")
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types for untraceable code
        raise ProgramError(f"torch.fx cannot trace the model: {error}") from error
    modules = dict(traced.named_modules())
    kinds = {node: _classify(node, modules) for node in traced.graph.nodes}
    inputs = [node for node, kind in kinds.items() if kind == "input"]
    if len(inputs) != 1:
        raise ProgramError(f"the model must take one input tensor, not {len(inputs)}")
    steps = _plan(traced.graph, kinds)
    result = next(node for node, kind in kinds.items() if kind == "output").args[0]
    if not isinstance(result, fx.Node):
        raise ProgramError("the model must return one tensor")
    produced = {step.last for step in steps}
    for step in steps:
        for node in (step.input, step.residual):
            if node is not None and node not in produced:
                raise ProgramError(f"'{node.name}' is read by '{step.nodes[0].name}' but is "
                                   f"not the output of a supported op")
    traced.eval()
    recorder = _Recorder(traced)
    recorder.run(calibration.to(torch.float32))
    cache = {}  # what does not depend on the activation scales, shared by every lowering

    def lower(clip: dict[str, float]) -> IntegerProgram:
        lowering = _Lowering(
            modules=modules, floats=recorder.seen, result=result, act_bits=act_bits,
            input_bits=act_bits if input_bits is None else input_bits,
            weight_bits=weight_bits, highway=highway,
            act_calibration="mmse" if act_calibration == "mmse" else "max",
            bias_correction=bias_correction,
            scheme_of=(lambda name: scheme) if isinstance(scheme, str)
            else (lambda name: scheme.get(name, "mmse")),
            options={"outlier_ratio": outlier_ratio,
                     "weight_outlier_bits": weight_outlier_bits
                     if weight_outlier_bits is not None else min(2 * weight_bits, HIGHWAY_BITS),
                     "planes": planes, "syq_idx_bits": syq_idx_bits,
                     "syq_granularity": syq_granularity},
            clip=clip, cache=cache)
        lowering.residuals = {step.residual for step in steps if step.residual is not None}
        for step in steps:
            lowering.lower(step, pixel_max, pixel_scale)
        return IntegerProgram(tuple(calibration.shape[1:]), pixel_max, float(pixel_scale),
                              lowering.values, tuple(lowering.ops), lowering.value_of[result])

    program = lower({})
    if act_calibration == "output":
        program = _search_clipping(program, lower, calibration, recorder.seen[result])
    return program


def _search_clipping(program: IntegerProgram, lower, calibration: torch.Tensor,
                     logits: torch.Tensor) -> IntegerProgram:
    """The ``"output"`` calibration (§13): per low-width activation a factor of
    ``CLIP_FACTORS`` on its max-abs scale, by coordinate descent (two passes, in program
    order) on the KL divergence of the float view's logits from the float ``logits``.

    The input keeps its declared range; flatten and max-pool outputs inherit their
    input's scale. A candidate replaces the current factor only if strictly better.
    """
    inherited = {op.output for op in program.ops
                 if isinstance(op, (QuantizeInput, Flatten, MaxPool))}
    names = [op.output for op in program.ops
             if program.values[op.output].bits <= ACT_BITS[1] and op.output not in inherited]
    stride = -(-len(calibration) // SEARCH_IMAGES)
    images, target = calibration[::stride], logits[::stride].detach().to(torch.float64)
    target = target.log_softmax(1)

    def loss(candidate: IntegerProgram) -> float:
        out = run_fake_quant(candidate, images).log_softmax(1)
        return float((target.exp() * (target - out)).sum(1).mean())

    clip, best = {}, loss(program)
    for _ in range(2):
        improved = False
        for name in names:
            for factor in CLIP_FACTORS:
                if factor == clip.get(name, 1.0):
                    continue
                candidate = lower({**clip, name: factor})
                score = loss(candidate)
                if score < best:
                    clip, best, program, improved = {**clip, name: factor}, score, candidate, True
        if not improved:
            break
    return program


@dataclass
class _Lowering:
    """The state of ``quantize_model`` while it emits ops in plan order."""
    modules: dict
    floats: dict
    result: fx.Node
    act_bits: int
    input_bits: int
    weight_bits: int
    highway: bool
    act_calibration: str
    bias_correction: bool
    scheme_of: object
    options: dict
    clip: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    residuals: set = field(default_factory=set)
    values: dict = field(default_factory=dict)
    value_of: dict = field(default_factory=dict)
    low_of: dict = field(default_factory=dict)
    ops: list = field(default_factory=list)

    def unique(self, name: str) -> str:
        candidate, k = name, 2
        while candidate in self.values:
            candidate, k = f"{name}#{k}", k + 1
        return candidate

    def scale(self, node: fx.Node, bits: int, signed: bool, name: str = "") -> float:
        """Calibrated scale of ``node``'s float output at ``bits`` (§13), for the value
        ``name`` (whose clipping factor of the ``"output"`` calibration applies)."""
        x = self.floats[node].detach().to(torch.float64).reshape(-1)
        if bits > ACT_BITS[1]:
            peak = float(x.abs().max())
            return peak / int_range(bits, signed)[1] if peak > 0 else 1.0
        if self.act_calibration == "mmse":
            # The grid search on every value of a large batch costs seconds per tensor;
            # a fixed stride keeps at most MMSE_SAMPLES of them (§13).
            x = x[::-(-len(x) // MMSE_SAMPLES)]
            return float(mmse_scale(x, bits, signed=signed))
        return float(max_abs_scale(x, bits, signed=signed)) * self.clip.get(name, 1.0)

    def add_value(self, node: fx.Node, name: str, bits: int, signed: bool,
                  scale: float) -> str:
        self.values[name] = Value(tuple(self.floats[node].shape[1:]), bits, signed, scale)
        self.value_of[node] = name
        return name

    def low(self, node: fx.Node) -> str:
        """The value of ``node`` at ``act_bits`` for a GEMM: itself if at most 8 bits wide,
        else a ``Requantize`` copy ``<name>.low`` (made once)."""
        name = self.value_of[node]
        source = self.values[name]
        if source.bits <= ACT_BITS[1]:
            return name
        if name not in self.low_of:
            copy = self.unique(f"{name}.low")
            scale = self.scale(node, self.act_bits, source.signed, copy)
            self.values[copy] = Value(source.shape, self.act_bits, source.signed, scale)
            multiplier, shift = _requant(f"requantize '{copy}'", source.scale / scale)
            self.ops.append(Requantize(copy, name, copy, int(multiplier), int(shift)))
            self.low_of[name] = copy
        return self.low_of[name]

    def lower(self, step: _Step, pixel_max: int, pixel_scale: float) -> None:
        node = step.nodes[0]
        if step.kind == "input":
            scale = pixel_max * pixel_scale / int_range(self.input_bits, False)[1]
            name = self.add_value(node, "input", self.input_bits, False, scale)
            multiplier, shift = _requant("quantize_input", pixel_scale / scale)
            self.ops.append(QuantizeInput(name, name, int(multiplier), int(shift)))
        elif step.kind == "gemm":
            self.ops.append(self.gemm(step))
        else:
            source = self.value_of[step.input]
            bits, signed, scale = (self.values[source].bits, self.values[source].signed,
                                   self.values[source].scale)
            name = self.unique(node.target if node.op == "call_module" else node.name)
            if step.kind == "flatten":
                self.add_value(node, name, bits, signed, scale)
                self.ops.append(Flatten(name, source, name))
                return
            module = self.modules[node.target]
            kernel = _pair(module.kernel_size)
            stride = _pair(module.stride or module.kernel_size)
            if step.kind == "maxpool":
                self.add_value(node, name, bits, signed, scale)
                self.ops.append(MaxPool(name, source, name, kernel, stride))
                return
            self.add_value(node, name, bits, signed, self.scale(node, bits, signed, name))
            multiplier, shift = _requant(f"avgpool '{name}'", scale / (
                kernel[0] * kernel[1] * self.values[name].scale))
            self.ops.append(AvgPool(name, source, name, kernel, stride, int(multiplier),
                                    int(shift)))

    def weights(self, label: str, weight: torch.Tensor, scheme: str) -> dict:
        key = ("weights", label)
        if key in self.cache:
            return self.cache[key]
        try:
            self.cache[key] = _quantize_weights(label, weight, scheme, self.weight_bits,
                                                self.options)
            return self.cache[key]
        except (TypeError, ValueError) as error:
            if isinstance(error, ProgramError):
                raise
            raise ProgramError(f"{label}: {scheme} weights: {error}") from error

    def gemm(self, step: _Step) -> Gemm:
        node = step.nodes[0]
        module = self.modules[node.target]
        label = f"layer '{node.target}'"
        source = self.low(step.input)
        act = self.values[source]
        # With the highway the skip tensors and the residual sums (the stream a following
        # block takes its skip from) are 16-bit (§11); the output is always 16-bit.
        wide = step.last is self.result or (self.highway and (
            step.last in self.residuals or step.residual is not None))
        signed = not step.relu
        bits = HIGHWAY_BITS if wide else self.act_bits
        name = self.unique(node.target)
        name = self.add_value(step.last, name, bits, signed,
                              self.scale(step.last, bits, signed, name))
        out = self.values[name]
        scheme = self.scheme_of(node.target)
        n = module.weight.shape[0]
        geometry = {}
        if isinstance(module, nn.Conv2d):
            geometry = {"kernel": _pair(module.kernel_size), "stride": _pair(module.stride),
                        "padding": (0, 0) if module.padding == "valid"
                        else _pair(module.padding)}
        zeros = torch.zeros(n, dtype=torch.int64)
        op = Gemm(name=name, input=source, output=name,
                  layer="conv2d" if geometry else "linear",
                  in_features=module.weight[0].numel(), out_features=n, scheme=scheme,
                  weight_bits=self.weight_bits, relu=step.relu, bias=zeros, multiplier=zeros,
                  shift=zeros, **geometry,
                  **self.weights(label, module.weight, scheme))
        weight_scale = op.weight_scale.to(torch.float64)
        bias_real = module.bias.detach().to(torch.float64) if module.bias is not None \
            else torch.zeros(n, dtype=torch.float64)
        if self.bias_correction:
            key = ("mean input", label)
            if key not in self.cache:
                acts = self.floats[step.input].detach().to(torch.float64)
                if geometry:
                    acts = im2col(acts, op.kernel, op.stride, op.padding)
                self.cache[key] = acts.mean(0)
            error = (module.weight.detach().to(torch.float64).reshape(n, -1).T
                     - op.weight_matrix().to(torch.float64) * weight_scale)
            bias_real = bias_real + self.cache[key] @ error
        bias = torch.round(bias_real / (act.scale * weight_scale))
        low_b, high_b = int_range(BIAS_BITS, signed=True)
        if ((bias < low_b) | (bias > high_b)).any():
            raise ProgramError(f"{label}: a bias does not fit s32 at the scale σ_a·σ_w")
        multiplier, shift = _requant(label, act.scale * weight_scale / out.scale)
        extra = {}
        if step.residual is not None:
            residual = self.value_of[step.residual] if self.highway else self.low(step.residual)
            residual_multiplier, residual_shift = _align_shifts(label, *_requant(
                label, torch.full((n,), self.values[residual].scale / out.scale,
                                  dtype=torch.float64)), shift)
            extra = {"residual": residual, "residual_multiplier": residual_multiplier,
                     "residual_shift": residual_shift}
        return replace(op, bias=bias.to(torch.int64), multiplier=multiplier, shift=shift,
                       **extra)
