"""Pack and unpack port values through the Amaranth layout the hardware uses."""

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["LayoutCodec"]


def _leaves(shape, offset=0):
    if isinstance(shape, data.Layout):
        for _, field in shape:
            yield from _leaves(field.shape, offset + field.offset)
    else:
        shape = Shape.cast(shape)
        yield offset, shape.width, shape.signed


class LayoutCodec:
    """Converts between integers on a port and the scalar leaves of its layout.

    The leaves are the layout's scalar fields in iteration order, so an
    ``ArrayLayout(ArrayLayout(s, cols), lanes)`` has ``lanes·cols`` leaves in the order of a
    C-contiguous ``lanes × cols`` array, and a ``StructLayout`` lists its fields in order.
    Conversions work on whole batches with numpy.

    >>> from amaranth.hdl import signed, unsigned
    >>> codec = LayoutCodec(data.StructLayout({"a": signed(4), "b": unsigned(2)}))
    >>> codec.pack(np.array([[-1, 2]]))
    [47]
    >>> codec.unpack([47]).tolist()
    [[-1, 2]]
    """

    def __init__(self, layout):
        self._leaves = list(_leaves(layout))
        self._width = Shape.cast(layout).width

    @property
    def leaf_count(self):
        return len(self._leaves)

    def pack(self, values):
        """Integers for a ``(batch, leaf_count)`` array of leaf values.

        Raises
        ------
        ValueError
            If the array has the wrong shape or a value does not fit its leaf.
        """
        values = np.asarray(values, dtype=np.int64)
        if values.ndim != 2 or values.shape[1] != len(self._leaves):
            raise ValueError(f"Expected a (batch, {len(self._leaves)}) array, not "
                             f"{values.shape}")
        bits = np.zeros((values.shape[0], self._width + (-self._width) % 8), dtype=np.uint8)
        for column, (offset, width, signed) in enumerate(self._leaves):
            leaf = values[:, column]
            low, high = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed \
                else (0, (1 << width) - 1)
            if ((leaf < low) | (leaf > high)).any():
                raise ValueError(f"Leaf {column} holds a value outside {low}..{high}")
            bits[:, offset:offset + width] = (leaf[:, None] >> np.arange(width)) & 1
        packed = np.packbits(bits, axis=1, bitorder="little")
        return [int.from_bytes(row.tobytes(), "little") for row in packed]

    def unpack(self, integers):
        """A ``(batch, leaf_count)`` int64 array for a sequence of port integers."""
        byte_count = (self._width + 7) // 8
        raw = np.frombuffer(b"".join(int(i).to_bytes(byte_count, "little") for i in integers),
                            dtype=np.uint8).reshape(len(integers), byte_count)
        bits = np.unpackbits(raw, axis=1, bitorder="little").astype(np.int64)
        values = np.empty((len(integers), len(self._leaves)), dtype=np.int64)
        for column, (offset, width, signed) in enumerate(self._leaves):
            leaf = bits[:, offset:offset + width] @ (np.int64(1) << np.arange(width))
            if signed:
                leaf = np.where(leaf >> (width - 1), leaf - (np.int64(1) << width), leaf)
            values[:, column] = leaf
        return values
