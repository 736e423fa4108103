"""What a program is made of (docs/program.md §9): its values, the specification of an
op's tensors, and the error every rule of the page raises, with the field checks that
raise it."""

import math
from dataclasses import dataclass

import torch

from ..formats import format_name, int_range

__all__ = ["ProgramError", "ActOutliers", "Value", "TensorSpec", "check_field", "check_pair",
           "check_positive_finite"]


class ProgramError(ValueError):
    """An integer program (or a model being lowered to one) breaks a rule of docs/program.md;
    the message names the op or layer and the field."""


@dataclass(frozen=True)
class ActOutliers:
    """How a value stores its run-time activation outliers (§18): values outside the dense
    format are kept up to ``bits`` wide (the value's signedness), in blocks of
    ``block_words`` storage words of ``word_values`` values, at most ``slots`` per block."""
    bits: int
    word_values: int
    block_words: int
    slots: int

    @property
    def block_values(self) -> int:
        """Values per block, ``block_words·word_values``."""
        return self.block_words * self.word_values


@dataclass(frozen=True)
class Value:
    """A tensor of the program (§9): per-sample ``shape`` (``(C, H, W)`` or ``(F,)``), the
    integer format ``s<bits>``/``u<bits>`` and the real ``scale`` σ it stands for
    (value ``σ·q``; metadata for the float view, unused by the integer semantics);
    ``outliers`` when it keeps run-time activation outliers beyond that format (§18)."""
    shape: tuple[int, ...]
    bits: int
    signed: bool
    scale: float
    outliers: ActOutliers | None = None

    @property
    def format(self) -> str:
        if self.outliers is None:
            return format_name(self.bits, self.signed)
        dense, wide = (format_name(bits, self.signed) for bits in (self.bits,
                                                                   self.outliers.bits))
        return f"{dense}+{wide}"

    @property
    def produced_bits(self) -> int:
        """The width an op computes this value at before storing it (§18): the outlier
        width with outliers, else ``bits``."""
        return self.bits if self.outliers is None else self.outliers.bits


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

    @classmethod
    def integer(cls, shape, bits: int, signed: bool) -> "TensorSpec":
        """The spec of an ``s<bits>``/``u<bits>`` tensor, stored in the smallest numpy
        integer dtype that holds it.

        >>> TensorSpec.integer((2,), 6, False)
        TensorSpec(shape=(2,), dtype='uint8', lo=0, hi=63, format='u6')
        """
        lo, hi = int_range(bits, signed)
        width = 8 if bits <= 8 else 16 if bits <= 16 else 32 if bits <= 32 else 64
        return cls(tuple(shape), f"{'' if signed else 'u'}int{width}", lo, hi,
                   format_name(bits, signed))

    def check(self, label: str, name: str, tensor) -> None:
        """Raise ``ProgramError`` (naming ``label`` and the tensor ``name``) unless
        ``tensor`` meets this spec."""
        if not isinstance(tensor, torch.Tensor):
            raise ProgramError(f"{label}: tensor '{name}' is missing")
        if tuple(tensor.shape) != self.shape:
            raise ProgramError(f"{label}: tensor '{name}' has shape {tuple(tensor.shape)}, "
                               f"expected {self.shape}")
        if self.lo is None:
            if tensor.dtype != torch.float64:
                raise ProgramError(f"{label}: tensor '{name}' must be float64, not "
                                   f"{tensor.dtype}")
            if not (torch.isfinite(tensor) & (tensor > 0)).all():
                raise ProgramError(f"{label}: tensor '{name}' must be positive and finite")
            return
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex \
                or tensor.dtype == torch.bool:
            raise ProgramError(f"{label}: tensor '{name}' must be an integer tensor, not "
                               f"{tensor.dtype}")
        wide = tensor.to(torch.int64)
        outside = (wide < self.lo) | (wide > self.hi)
        if outside.any():
            position = [int(i) for i in outside.nonzero()[0]]
            raise ProgramError(f"{label}: tensor '{name}'{position} = "
                               f"{int(wide[tuple(position)])} is outside {self.format} "
                               f"({self.lo}..{self.hi})")


def check_field(label: str, field_name: str, value, kind, bounds=None):
    """``value`` if it is a ``kind`` (an ``int`` in ``bounds``, inclusive, when given);
    else raise ``ProgramError`` naming ``label`` and the field.

    >>> check_field("op 1", "shift", 64, int, (0, 63))
    Traceback (most recent call last):
    ...
    olmac.golden.program.types.ProgramError: op 1: field 'shift' must be int in 0..63, not 64
    """
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if ok and bounds is not None:
        ok = bounds[0] <= value <= bounds[1]
    if not ok:
        expected = kind.__name__ if bounds is None else f"{kind.__name__} in " \
                                                         f"{bounds[0]}..{bounds[1]}"
        raise ProgramError(f"{label}: field '{field_name}' must be {expected}, not {value!r}")
    return value


def check_pair(label: str, field_name: str, value, low: int) -> tuple[int, int]:
    """``value`` if it is a pair of integers ``>= low``; else raise ``ProgramError``."""
    if not (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= low
                    for v in value)):
        raise ProgramError(f"{label}: field '{field_name}' must be a pair of integers "
                           f">= {low}, not {value!r}")
    return value


def check_positive_finite(label: str, field_name: str, value) -> float:
    """``value`` if it is a positive, finite ``float``; else raise ``ProgramError``."""
    check_field(label, field_name, value, float)
    if not (math.isfinite(value) and value > 0):
        raise ProgramError(f"{label}: field '{field_name}' must be positive and finite, not "
                           f"{value!r}")
    return value
