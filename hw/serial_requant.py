"""A requantizer that works one channel at a time through one shift-and-add multiplier: the
integer semantics of :class:`hw.requant.Requantizer` (docs/semantics.md §3, docs/program.md
§11) in a few hundred logic cells instead of ``2·cols`` wide multipliers, for small FPGAs
(the iCE40UP5K has 5280 LUT4s; one 33×32-bit multiply in LUTs takes over a thousand).
"""

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.spec import (OUT_BITS, MULTIPLIER_BITS, BIAS_BITS, SHIFT_RANGE, RESIDUAL_BITS,
                          RESIDUAL_SHIFT_RANGE, check_int)
from .mac_array import MAX_ACC_WIDTH
from .requant import RequantParams
from .shapes import shape_bounds

__all__ = ["SerialRequantizer"]


class SerialRequantizer(wiring.Component):
    """Per-channel requantization, one channel after another:
    ``clamp(((acc + β)·M + r·M_r·2^t + 2^(s-1)) >> s, lo, hi)`` (docs/program.md §11; without
    a residual, docs/semantics.md §3), exactly as :class:`hw.requant.Requantizer`.

    The sum is formed by Horner's rule, most significant position first: every cycle the
    partial sum doubles and takes the terms of one bit position, ``x`` where bit ``k`` of
    ``M`` is set, ``r`` where bit ``k − t`` of ``M_r`` is set (the sign bits with negative
    weight) and the rounding ``1`` at position ``s − 1``. Then the sum shifts right one bit a
    cycle, ``s`` times (an arithmetic shift: floor division), and is clamped. A channel
    takes ``max(32, 32 + t, s) + s + 2`` cycles (``t`` only with a residual); the vector
    leaves when all ``cols`` channels are done. The inputs are held by the stream rules
    while the channels run, so only the partial sum and the output vector are registered.

    Parameters
    ----------
    cols : int
        Values per vector, 1..64.
    acc_width : int
        Width of the signed accumulators, 1..44.
    out_bits : int
        Output width, 2..16.
    out_signed : bool
        Signed or unsigned output (ignored with ``runtime_bounds``).
    residual_bits : int or None
        With a width (2..17), each channel's parameters carry a signed residual of that
        width with its multiplier and shift, added before the one rounding (§11).
    runtime_bounds : bool
        Take the clamp range ``low..high`` from each parameter beat; the output is then
        ``signed(out_bits + 1)``.
    per_channel : bool
        ``params`` carries one channel's parameters per beat (a ``RequantParams(1)``), one
        beat per channel in channel order, each taken when its channel is done: the source
        holds one channel word instead of ``cols`` (a narrow :class:`hw.network.NetworkCore`
        reads it from memory while the previous channel's result is written).

    Raises
    ------
    TypeError
        If a parameter is of the wrong type or outside its range.

    Members
    -------
    acc : In(stream.Signature(ArrayLayout(signed(acc_width), cols)))
        Accumulator vectors.
    params : In(stream.Signature(RequantParams(cols)))
        One parameter beat per accumulator vector (``per_channel``: ``RequantParams(1)``,
        ``cols`` beats per vector).
    out : Out(stream.Signature(ArrayLayout(out_shape, cols)))
        Requantized vectors.
    """

    def __init__(self, *, cols, acc_width, out_bits, out_signed=True, residual_bits=None,
                 runtime_bounds=False, per_channel=False):
        self._cols = check_int("Column count", cols, (1, 64))
        self._acc_width = check_int("Accumulator width", acc_width, (1, MAX_ACC_WIDTH))
        self._out_bits = check_int("Output width", out_bits, OUT_BITS)
        if not isinstance(out_signed, bool):
            raise TypeError(f"Output signedness must be a bool, not {out_signed!r}")
        self._out_signed = out_signed
        self._residual_bits = None
        if residual_bits is not None:
            self._residual_bits = check_int("Residual width", residual_bits, RESIDUAL_BITS)
        if not isinstance(runtime_bounds, bool):
            raise TypeError(f"runtime_bounds must be a bool, not {runtime_bounds!r}")
        self._runtime_bounds = runtime_bounds
        if not isinstance(per_channel, bool):
            raise TypeError(f"per_channel must be a bool, not {per_channel!r}")
        self._per_channel = per_channel
        residual_shape = None if residual_bits is None else signed(residual_bits)
        bounds_shape = self.out_shape if runtime_bounds else None
        super().__init__({
            "acc": In(stream.Signature(data.ArrayLayout(signed(acc_width), cols))),
            "params": In(stream.Signature(RequantParams(1 if per_channel else cols, None,
                                                        residual_shape, bounds_shape))),
            "out": Out(stream.Signature(data.ArrayLayout(self.out_shape, cols))),
        })

    @property
    def cols(self):
        """Values per vector."""
        return self._cols

    @property
    def per_channel(self):
        """Whether ``params`` carries one channel per beat."""
        return self._per_channel

    @property
    def out_shape(self):
        """Shape of one requantized value."""
        if self._runtime_bounds:
            return signed(self._out_bits + 1)
        return signed(self._out_bits) if self._out_signed else unsigned(self._out_bits)

    @property
    def sum_width(self):
        """Width of the partial-sum register: every sum of §11 fits it exactly."""
        biased = max(self._acc_width, BIAS_BITS) + 1
        widest = biased + MULTIPLIER_BITS
        if self._residual_bits is not None:
            widest = max(widest, self._residual_bits + MULTIPLIER_BITS
                         + RESIDUAL_SHIFT_RANGE[1])
        # one bit for the sum of the two products, one for the rounding term (< 2^62)
        return max(widest, SHIFT_RANGE[1]) + 2

    def elaborate(self, platform):
        m = Module()
        cols = self._cols
        channel = Signal(range(cols))
        per_channel = self._per_channel
        channel_params = self.params.payload.channels[0 if per_channel else channel]

        biased = Signal(signed(max(self._acc_width, BIAS_BITS) + 1))
        total = Signal(signed(self.sum_width))
        position = Signal(range(SHIFT_RANGE[1] + RESIDUAL_SHIFT_RANGE[1] + 1))
        shifts_left = Signal(range(SHIFT_RANGE[1] + 1))
        results = Signal(data.ArrayLayout(self.out_shape, cols))
        out_valid = Signal()
        m.d.comb += [self.out.valid.eq(out_valid), self.out.payload.eq(results)]
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += out_valid.eq(0)

        multiplier = channel_params.multiplier
        shift = channel_params.shift
        # Bit k of M (bit 31 weighs -2^31).
        top = MULTIPLIER_BITS - 1
        in_multiplier = position <= top
        m_bit = in_multiplier & multiplier.as_unsigned().bit_select(position[:5], 1)
        x_term = Mux(m_bit, Mux(position == top, -biased, biased), 0)
        if self._residual_bits is not None:
            residual = channel_params.residual
            residual_shift = channel_params.residual_shift
            residual_multiplier = channel_params.residual_multiplier
            j = Signal(signed(len(position) + 1))
            m.d.comb += j.eq(position - residual_shift)
            in_residual = (j >= 0) & (j <= top)
            r_bit = in_residual & residual_multiplier.as_unsigned().bit_select(j[:5], 1)
            r_term = Mux(r_bit, Mux(j == top, -residual, residual), 0)
            first_position = Mux(residual_shift > 0, top + residual_shift, top)
        else:
            r_term = 0
            first_position = top
        rounding = (shift != 0) & (position == shift - 1)
        terms = Signal(signed(max(len(biased), self._residual_bits or 0) + 2))
        m.d.comb += terms.eq(x_term + r_term)

        if self._runtime_bounds:
            low = self.params.payload.low
            high = self.params.payload.high
            floor = Mux(self.params.payload.relu & (low < 0), 0, low)
        else:
            low, high = shape_bounds(self.out_shape)
            floor = Mux(self.params.payload.relu, max(low, 0), low)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.acc.valid & self.params.valid & ~out_valid):
                    m.d.sync += channel.eq(0)
                    m.next = "LOAD"
            with m.State("LOAD"):
                # per_channel: this channel's beat may still be on its way.
                with m.If(self.params.valid if per_channel else 1):
                    m.d.sync += [
                        biased.eq(self.acc.payload[channel] + channel_params.bias),
                        total.eq(0),
                        position.eq(Mux(shift > first_position, shift - 1, first_position)),
                        shifts_left.eq(shift),
                    ]
                    m.next = "SUM"
            with m.State("SUM"):
                m.d.sync += [total.eq((total << 1) + terms + rounding),
                             position.eq(position - 1)]
                with m.If(position == 0):
                    m.next = "SHIFT"
            with m.State("SHIFT"):
                with m.If(shifts_left != 0):
                    m.d.sync += [total.eq(total >> 1), shifts_left.eq(shifts_left - 1)]
                with m.Else():
                    clamped = Mux(total < floor, floor, Mux(total > high, high, total))
                    m.d.sync += results[channel].eq(clamped)
                    if per_channel:
                        m.d.comb += self.params.ready.eq(1)
                    with m.If(channel == cols - 1):
                        m.next = "DONE"
                    with m.Else():
                        m.d.sync += channel.eq(channel + 1)
                        m.next = "LOAD"
            with m.State("DONE"):
                m.d.comb += self.acc.ready.eq(1)
                if not per_channel:
                    m.d.comb += self.params.ready.eq(1)
                m.d.sync += out_valid.eq(1)
                m.next = "IDLE"
        return m
