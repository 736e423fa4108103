"""Integer ranges of Amaranth shapes, shared by the hardware generators."""

from amaranth.hdl import Shape, signed

__all__ = ["shape_bounds", "narrowest_signed"]


def shape_bounds(shape):
    """Inclusive ``(low, high)`` of the values a shape holds."""
    shape = Shape.cast(shape)
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def narrowest_signed(low, high):
    """The narrowest signed shape holding ``low..high``."""
    width = 1
    while not -(1 << (width - 1)) <= low <= high <= (1 << (width - 1)) - 1:
        width += 1
    return signed(width)
