"""The ops of an integer program (docs/program.md §9–§13), one frozen dataclass each.

An op's fields are its attributes (JSON-able) and its tensors (``metadata={"tensor":
True}``); the artifact (golden/artifact.py) writes and reads them in field order.
"""

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import ClassVar

import torch
from torch.nn import functional as F

from .schemes import SCHEMES, WeightScheme

__all__ = ["QuantizeInput", "Gemm", "AvgPool", "MaxPool", "Requantize", "Rotate", "Flatten",
           "Concat", "Lookup", "TABLE_FUNCTIONS", "OPS"]


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


@dataclass(frozen=True, eq=False)
class _Mapping(_Op):
    """An op that reads the value ``input`` and writes ``output``; ``name`` labels it."""
    name: str
    input: str
    output: str


def _tensor(optional: bool = False):
    return field(default=None, metadata={"tensor": True}) if optional else \
        field(metadata={"tensor": True})


@dataclass(frozen=True, eq=False)
class QuantizeInput(_Op):
    """Pixels ``p`` (``pixel_min..pixel_max``) to the first activation format (§13):
    ``y = clamp((p·M + 2^(s−1)) >> s, lo, hi)`` (§3 with ``acc = p``, ``β = 0``)."""
    name: str
    output: str
    multiplier: int
    shift: int
    KIND: ClassVar[str] = "quantize_input"


@dataclass(frozen=True, eq=False)
class Gemm(_Mapping):
    """A ``Linear`` or (im2col-lowered) ``Conv2d`` layer with its requantization (§9–§11).

    ``layer`` is ``"linear"`` or ``"conv2d"`` (then ``kernel``, ``stride``, ``padding`` are
    ``(h, w)`` pairs). ``K = in_features`` (``C·kh·kw`` for a convolution) and
    ``N = out_features``. ``scheme`` names how the weights are held (§9), one of
    ``SCHEMES`` (golden/program/schemes.py): ``weights`` (``mmse``); ``weights`` and
    ``weight_outliers`` with ``weight_outlier_bits`` (``value_aware``); ``weights`` planes
    and ``plane_exponents`` (``multi_tensor``); ``codes`` and ``tables`` with ``idx_bits``
    (``syq``). ``weight_scheme`` is that scheme, bound to this op.

    ``bias``, ``multiplier``, ``shift`` (and ``residual_multiplier``, ``residual_shift``
    with a ``residual``)
    have one entry per output channel; ``weight_scale`` (float64, ``N``) is the real value
    of one unit of the integer weight, metadata for the float view.
    """
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

    @cached_property
    def weight_scheme(self) -> WeightScheme:
        """The weight scheme named by ``scheme``, bound to this op (``scheme`` must be one
        of ``SCHEMES``: ``check_program`` checks that first)."""
        return SCHEMES[self.scheme](self)


@dataclass(frozen=True, eq=False)
class AvgPool(_Mapping):
    """Average pooling (§12): the window sum over the input padded with zeros (``padding``
    ``(ph, pw)`` on each side), requantized by §3 with ``β = 0`` and the scalar ``(M, s)``:
    ``y = clamp((Σ·M + 2^(s−1)) >> s, lo, hi)``."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    multiplier: int
    shift: int
    KIND: ClassVar[str] = "avgpool"


@dataclass(frozen=True, eq=False)
class MaxPool(_Mapping):
    """Max pooling (§12): the window maximum over the input padded with the minimum of its
    format (``padding`` ``(ph, pw)`` on each side), exact, same format and scale."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    KIND: ClassVar[str] = "maxpool"


@dataclass(frozen=True, eq=False)
class Requantize(_Mapping):
    """A tensor to another format and scale, elementwise (§3 with ``β = 0``):
    ``y = clamp((x·M + 2^(s−1)) >> s, lo, hi)``; the low-width copy of a 16-bit tensor."""
    multiplier: int
    shift: int
    KIND: ClassVar[str] = "requantize"


@dataclass(frozen=True, eq=False)
class Rotate(_Mapping):
    """A tensor rotated into a GEMM's input space and requantized (§19): the unnormalized
    Walsh–Hadamard transform ``h = x ×₀ H_n`` over the first axis (``F`` features or
    ``C`` channels of every pixel; ``n`` a power of two), exact, then §3 with ``β = 0``:
    ``y = clamp((h·M + 2^(s−1)) >> s, lo, hi)``, ``M·2^(−s) = σ_x/(√n·σ_y)``."""
    multiplier: int
    shift: int
    KIND: ClassVar[str] = "rotate"


@dataclass(frozen=True, eq=False)
class Flatten(_Mapping):
    """``C×H×W`` to ``C·H·W`` features in row-major ``(c, y, x)`` order; no arithmetic."""
    KIND: ClassVar[str] = "flatten"


@dataclass(frozen=True, eq=False)
class Concat(_Op):
    """``torch.cat`` along the first axis (channels of ``C×H×W``, features of ``F``): the
    values ``parts`` in order, each already in the output's format and scale; a layout, no
    arithmetic (§17)."""
    name: str
    parts: tuple[str, ...]
    output: str
    KIND: ClassVar[str] = "concat"

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.parts)


#: The functions a ``lookup`` op tabulates, by name (float64 in, float64 out).
TABLE_FUNCTIONS = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "hardswish": F.hardswish, "silu": F.silu,
    "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass(frozen=True, eq=False)
class Lookup(_Mapping):
    """An elementwise function as a table (§12): ``y = table[x − lo]`` for ``x`` in the
    input's format ``[lo, hi]`` (``in_bits`` wide, 2..8); ``table`` (``2^in_bits``
    entries) holds ``clamp(round_half_even(f(σ_x·x)/σ_y), lo', hi')`` in the output's
    format for ``f = TABLE_FUNCTIONS[function]``."""
    function: str
    in_bits: int
    table: torch.Tensor = _tensor()
    KIND: ClassVar[str] = "lookup"


#: The op classes by ``KIND``.
OPS = {cls.KIND: cls for cls in (QuantizeInput, Gemm, AvgPool, MaxPool, Requantize, Rotate,
                                 Flatten, Concat, Lookup)}
