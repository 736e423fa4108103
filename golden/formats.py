"""Integer formats of docs/semantics.md §1."""

import torch

__all__ = ["int_range", "format_name", "check_in_format"]


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Inclusive range of a ``bits``-wide integer (§1).

    ``s<b>`` is ``-2^(b-1) .. 2^(b-1) - 1`` and ``u<b>`` is ``0 .. 2^b - 1``.

    >>> int_range(4, signed=True), int_range(4, signed=False)
    ((-8, 7), (0, 15))
    """
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def format_name(bits: int, signed: bool) -> str:
    """``s4``, ``u8``: the notation of §1."""
    return f"{'s' if signed else 'u'}{bits}"


def check_in_format(name: str, values: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Return ``values`` if every element lies in the format, else raise.

    Raises
    ------
    TypeError
        If ``values`` is not an integer tensor.
    ValueError
        If an element lies outside the format; the message names the first such position,
        its value and the allowed range.
    """
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, not {values.dtype}")
    low, high = int_range(bits, signed)
    # Compare in int64: torch would cast the bounds to a narrow dtype such as uint8.
    wide = values.to(torch.int64)
    outside = (wide < low) | (wide > high)
    if outside.any():
        position = tuple(int(i) for i in outside.nonzero()[0])
        raise ValueError(
            f"{name}{list(position)} = {int(wide[position])} is outside "
            f"{format_name(bits, signed)} ({low}..{high})")
    return values
