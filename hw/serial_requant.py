"""A requantizer that works one channel at a time through one shift-and-add multiplier: the
integer semantics of :class:`hw.requant.Requantizer` (docs/semantics.md §3, docs/program.md
§11) in a few hundred logic cells instead of ``2·cols`` wide multipliers, for small FPGAs
(the iCE40UP5K has 5280 LUT4s; one 33×32-bit multiply in LUTs takes over a thousand).
"""

from dataclasses import dataclass

from amaranth.hdl import *
from amaranth.lib import data

from olmac.spec import MULTIPLIER_BITS, BIAS_BITS, SHIFT_RANGE, RESIDUAL_SHIFT_RANGE
from .config import ConfigProperty, ConfiguredComponent
from .requant import RequantConfig
from .shapes import shape_bounds

__all__ = ["SerialRequantizer"]


class SerialRequantizer(ConfiguredComponent):
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

    Made from keyword arguments, the fields of :class:`SerialRequantizer.Config`, which validates
    them (see its Raises).

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

    @dataclass(frozen=True, kw_only=True)
    class Config(RequantConfig):
        """A :class:`~hw.requant.RequantConfig` whose parameters may arrive one channel at a
        time (no output outliers).

        Parameters
        ----------
        per_channel : bool
            ``params`` carries one channel's parameters per beat (a ``RequantParams(1)``),
            one beat per channel in channel order, each taken when its channel is done: the
            source holds one channel word instead of ``cols`` (a narrow
            :class:`hw.network.NetworkCore` reads it from memory while the previous
            channel's result is written).

        Raises
        ------
        TypeError
            If a parameter is of the wrong type or outside its range.
        """
        per_channel: bool = False

        def __post_init__(self):
            super().__post_init__()
            if not isinstance(self.per_channel, bool):
                raise TypeError(f"per_channel must be a bool, not {self.per_channel!r}")

        @property
        def params_layout(self):
            """Payload of the ``params`` port."""
            return self._params_layout(1 if self.per_channel else self.cols)

        @property
        def out_layout(self):
            """Payload of the ``out`` port."""
            return data.ArrayLayout(self.out_shape, self.cols)

        @property
        def sum_width(self):
            """Width of the partial-sum register: every sum of §11 fits it exactly."""
            biased = max(self.acc_width, BIAS_BITS) + 1
            widest = biased + MULTIPLIER_BITS
            if self.residual_bits is not None:
                widest = max(widest, self.residual_bits + MULTIPLIER_BITS
                             + RESIDUAL_SHIFT_RANGE[1])
            # one bit for the sum of the two products, one for the rounding term (< 2^62)
            return max(widest, SHIFT_RANGE[1]) + 2

    cols = ConfigProperty()
    per_channel = ConfigProperty()
    out_shape = ConfigProperty()
    sum_width = ConfigProperty()

    def elaborate(self, platform):
        m = Module()
        cols = self._config.cols
        channel = Signal(range(cols))
        per_channel = self._config.per_channel
        channel_params = self.params.payload.channels[0 if per_channel else channel]

        biased = Signal(signed(max(self._config.acc_width, BIAS_BITS) + 1))
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
        if self._config.residual_bits is not None:
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
        terms = Signal(signed(max(len(biased), self._config.residual_bits or 0) + 2))
        m.d.comb += terms.eq(x_term + r_term)

        if self._config.runtime_bounds:
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
