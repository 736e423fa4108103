"""Plain data shared by ``golden/`` and ``hw/``: the allowed ranges of docs/semantics.md §1.

No arithmetic of the semantics lives here, so the golden model and the hardware stay two
independent readings of the written spec.
"""

__all__ = [
    "ACT_BITS", "WEIGHT_BITS", "OUTLIER_BITS", "OUTLIER_LANES", "PLANE_SHIFT_BITS",
    "OUT_BITS", "MULTIPLIER_BITS", "BIAS_BITS", "SHIFT_RANGE", "RESIDUAL_BITS",
    "RESIDUAL_SHIFT_RANGE",
    "check_int",
]

#: Allowed activation widths (§1), inclusive.
ACT_BITS = (2, 8)
#: Allowed weight widths (§1), inclusive. Weights are always signed.
WEIGHT_BITS = (2, 8)
#: Allowed widths of activation and weight outliers (§6), inclusive.
OUTLIER_BITS = (3, 16)
#: Allowed numbers of outlier multipliers of each kind (§6), inclusive.
OUTLIER_LANES = (0, 16)
#: Allowed widths of the per-column plane shift of multi-tensor layers (§8), inclusive.
PLANE_SHIFT_BITS = (0, 4)
#: Allowed requantized output widths (§1), inclusive.
OUT_BITS = (2, 16)
#: Width of the signed per-channel requantization multiplier and bias (§3).
MULTIPLIER_BITS = 32
BIAS_BITS = 32
#: Allowed requantization shifts (§3), inclusive.
SHIFT_RANGE = (0, 63)
#: Allowed widths of the signed residual a requantizer adds (docs/program.md §11), inclusive:
#: a ``u16`` highway tensor needs 17.
RESIDUAL_BITS = (2, 17)
#: Allowed residual shifts ``t`` (docs/program.md §11), inclusive.
RESIDUAL_SHIFT_RANGE = (0, 31)


def check_int(description, value, bounds):
    """Return ``value`` if it is an ``int`` within the inclusive ``bounds``.

    Raises
    ------
    TypeError
        If ``value`` is not an integer (``bool`` is refused too) or is outside ``bounds``;
        the message names ``description`` and shows the allowed range and the value.
    """
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TypeError(f"{description} must be an integer in {low}..{high}, not {value!r}")
    return value
