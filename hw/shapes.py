"""Integer ranges of Amaranth shapes, shared by the hardware generators."""

from amaranth.hdl import Shape, signed

__all__ = ["shape_bounds", "narrowest_signed", "product_bounds"]


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


def product_bounds(a_shape, b_shape):
    """Inclusive ``(low, high)`` of every product of an ``a_shape`` and a ``b_shape`` value."""
    (a_low, a_high), (b_low, b_high) = shape_bounds(a_shape), shape_bounds(b_shape)
    products = [a * b for a in (a_low, a_high) for b in (b_low, b_high)]
    return min(products), max(products)
