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

    The sum ``T = Σ c_k·2^k`` is formed least significant position first: ``c_k`` is ``x``
    where bit ``k`` of ``M`` is set, ``r`` where bit ``k − t`` of ``M_r`` is set (the sign
    bits with negative weight) and the rounding ``1`` at ``k = s − 1``. Every cycle the
    partial sum ``P`` takes ``c_k`` and halves (an arithmetic shift), so it always holds
    ``⌊(Σ_{j<k} c_j·2^j) / 2^k⌋``, never more than ``|x| + |r| + 1``: a register as wide
    as the operands instead of the whole 82-bit sum, and no shifter. The bit each halving
    drops is bit ``k`` of ``T``, final from then on; bits ``s`` and up are the result's,
    collected in a register as wide as the output, while two flags note whether any bit
    above the output's sign bit was 1 or 0, and the clamp reads them with the sign left in
    ``P`` once every term is in (no comparator wider than the output). A channel takes
    ``max(32 + t, s + w) + 2`` cycles (``t`` only with a residual; ``w`` bits of a
    signed value hold every output); the vector leaves when all ``cols`` channels are done.
    The inputs are held by the stream rules while the channels run, so only the partial
    sum, the result bits and the output vector are registered.

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
        def biased_width(self):
            """Width of ``acc + β`` (signed)."""
            return max(self.acc_width, BIAS_BITS) + 1

        @property
        def sum_width(self):
            """Width of the partial-sum register ``P`` (signed): ``|P| ≤ |x| + |r| + 1``
            after every step, since ``|⌊(P + c)/2⌋| ≤ (|P| + |c|)/2``."""
            bound = 1 << (self.biased_width - 1)
            if self.residual_bits is not None:
                bound += 1 << (self.residual_bits - 1)
            return (bound + 1).bit_length() + 1

        @property
        def value_width(self):
            """Bits of a signed value that holds every output (and every bound): the result
            bits collected; a sum whose higher bits are not all its sign is clamped."""
            shape = Shape.cast(self.out_shape)
            return shape.width + (0 if shape.signed else 1)

    cols = ConfigProperty()
    per_channel = ConfigProperty()
    out_shape = ConfigProperty()
    sum_width = ConfigProperty()

    def elaborate(self, platform):
        m = Module()
        config = self._config
        cols = config.cols
        channel = Signal(range(cols))
        per_channel = config.per_channel
        channel_params = self.params.payload.channels[0 if per_channel else channel]

        biased = Signal(signed(config.biased_width))
        partial = Signal(signed(self.sum_width))
        width = config.value_width
        # The last position is below 32 + t and s + width; one more after the last step.
        position = Signal(range(max(MULTIPLIER_BITS + RESIDUAL_SHIFT_RANGE[1],
                                    SHIFT_RANGE[1] + width) + 1))
        low_bits = Signal(width)        # bits s.. of the sum, the first at the bottom
        ones = Signal()                 # a bit at s + width - 1 or above was 1
        zeros = Signal()                # ... or 0
        results = Signal(data.ArrayLayout(self.out_shape, cols))
        out_valid = Signal()
        m.d.comb += [self.out.valid.eq(out_valid), self.out.payload.eq(results)]
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += out_valid.eq(0)

        multiplier = channel_params.multiplier
        shift = channel_params.shift
        top = MULTIPLIER_BITS - 1
        residual = config.residual_bits is not None
        if residual:
            residual_shift = channel_params.residual_shift
            residual_multiplier = channel_params.residual_multiplier

        def selection(at):
            """Which terms position ``at`` adds: bit ``at`` of M (bit 31 weighs -2^31), bit
            ``at − t`` of M_r, each negative at bit 31, and the rounding 1."""
            m_bit = (at <= top) & multiplier.as_unsigned().bit_select(at[:5], 1)
            # A term of negative weight is added as its complement and a carry (-x = ~x + 1):
            # no negating adder.
            terms = {"m_bit": m_bit, "x_negative": m_bit & (at == top),
                     "rounding": (shift != 0) & (at == shift - 1)}
            if residual:
                j = (at - residual_shift).as_signed()   # one bit wider than either
                r_bit = (j >= 0) & (j <= top) & \
                    residual_multiplier.as_unsigned().bit_select(j[:5], 1)
                terms |= {"r_bit": r_bit, "r_negative": r_bit & (j == top)}
            return terms

        # The terms of each position are chosen the cycle before (from position + 1, or 0
        # as a channel loads), so the sum's carry chains start at a register: selected in
        # the same cycle, the bit selects of M and M_r led the UP5K board's critical path.
        chosen = selection(Const(0, len(position)))
        selected = {name: Signal(name=f"selected_{name}") for name in chosen}
        m_bit, x_negative = selected["m_bit"], selected["x_negative"]
        x_term = Mux(m_bit, Mux(x_negative, ~biased, biased), 0)
        terms_end = top
        if residual:
            residual_value = channel_params.residual
            r_bit, r_negative = selected["r_bit"], selected["r_negative"]
            r_term = Mux(r_bit, Mux(r_negative, ~residual_value, residual_value), 0)
            terms_end = top + residual_shift
        else:
            r_term = r_negative = 0
        rounding = selected["rounding"]
        terms = Signal(signed(max(len(biased), config.residual_bits or 0) + 2))
        m.d.comb += terms.eq(x_term + r_term)
        step = Signal(signed(self.sum_width + 1))
        m.d.comb += step.eq(partial + terms + (rounding + x_negative + r_negative))
        # The last position: every term is in and the output's bits are collected.
        collected = shift + (width - 1)
        last = Mux(terms_end > collected, terms_end, collected)
        above = Signal(signed(len(position) + 1))      # k − s: which result bit k is
        m.d.comb += above.eq(position - shift)

        if config.runtime_bounds:
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
                        partial.eq(0), position.eq(0), low_bits.eq(0), ones.eq(0),
                        zeros.eq(0),
                        *(selected[name].eq(value) for name, value in chosen.items()),
                    ]
                    m.next = "SUM"
            with m.State("SUM"):
                bit = step[0]
                m.d.sync += [partial.eq(step >> 1), position.eq(position + 1),
                             *(selected[name].eq(value)
                               for name, value in selection(position + 1).items())]
                with m.If((above >= 0) & (above < width)):
                    m.d.sync += low_bits.eq(Cat(low_bits[1:], bit))
                with m.If(above >= width - 1):
                    m.d.sync += [ones.eq(ones | bit), zeros.eq(zeros | ~bit)]
                with m.If(position == last):
                    m.next = "CLAMP"
            with m.State("CLAMP"):
                # P is the sum's bits above the last position: all of them the sign when
                # the value fits `width` bits.
                negative = partial < 0
                fits = Mux(negative, ~zeros & (partial == -1), ~ones & (partial == 0))
                value = low_bits.as_signed()
                clamped = Mux(fits, Mux(value < floor, floor, Mux(value > high, high, value)),
                              Mux(negative, floor, high))
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
