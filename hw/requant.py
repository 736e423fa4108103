import itertools
from dataclasses import dataclass

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.spec import (ARRAY_DIM, OUT_BITS, OUTLIER_BITS, MULTIPLIER_BITS, BIAS_BITS, SHIFT_RANGE,
                          RESIDUAL_BITS, RESIDUAL_SHIFT_RANGE, REQUANT_STAGES, check_int)
from .config import ConfigProperty, ConfiguredComponent
from .mac_array import MAX_ACC_WIDTH
from .result_buffer import ResultBuffer
from .shapes import shape_bounds

__all__ = ["ChannelParams", "RequantParams", "OutputOutlier", "RequantOutput", "RequantConfig",
           "Requantizer"]


class ChannelParams(data.StructLayout):
    """Requantization parameters of one output channel (docs/semantics.md §3), without
    ``bias`` those of a per-tensor requantization ``x·M``; with a residual width, also the
    channel's residual value ``r`` and its ``M_r``, ``t`` (docs/program.md §11)."""

    def __init__(self, residual_shape=None, *, bias=True):
        fields = {"bias": signed(BIAS_BITS)} if bias else {}
        fields["multiplier"] = signed(MULTIPLIER_BITS)
        fields["shift"] = range(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1)
        if residual_shape is not None:
            fields["residual"] = residual_shape
            fields["residual_multiplier"] = signed(MULTIPLIER_BITS)
            fields["residual_shift"] = range(RESIDUAL_SHIFT_RANGE[0], RESIDUAL_SHIFT_RANGE[1] + 1)
        super().__init__(fields)


class RequantParams(data.StructLayout):
    """Parameters for one vector of ``cols`` accumulators, the layer's ReLU flag and, with
    output outliers (§7), the layer's outlier threshold ``0..hi`` of the dense format; with
    run-time bounds, the output range ``low..high`` (the format of the layer's output);
    ``bias`` as :class:`ChannelParams`."""

    def __init__(self, cols, threshold_shape=None, residual_shape=None, bounds_shape=None, *,
                 bias=True):
        fields = {"channels": data.ArrayLayout(ChannelParams(residual_shape, bias=bias), cols),
                  "relu": unsigned(1)}
        if threshold_shape is not None:
            fields["outlier_threshold"] = threshold_shape
        if bounds_shape is not None:
            fields["low"] = bounds_shape
            fields["high"] = bounds_shape
        super().__init__(fields)


class OutputOutlier(data.StructLayout):
    """One output outlier (§7): ``value`` belongs at column ``col`` of its vector."""

    def __init__(self, value_shape, cols):
        super().__init__({"valid": unsigned(1), "col": range(max(cols, 2)),
                          "value": value_shape})


class RequantOutput(data.StructLayout):
    """A requantized vector with its outliers split off (§7): one slot per column."""

    def __init__(self, dense_shape, outlier_shape, cols):
        super().__init__({"dense": data.ArrayLayout(dense_shape, cols),
                          "outliers": data.ArrayLayout(OutputOutlier(outlier_shape, cols),
                                                       cols)})


@dataclass(frozen=True, kw_only=True)
class RequantConfig:
    """What every requantizer of §3/§11 is configured with, validated, and the port layouts
    that follow from it; :class:`Requantizer.Config` and
    :class:`~hw.serial_requant.SerialRequantizer.Config` add their own parameters.

    Parameters
    ----------
    cols : int
        Values per vector, 1..64.
    acc_width : int
        Width of the signed accumulators, 1..44.
    out_bits : int
        Output width, 2..16.
    out_signed : bool
        Signed (``s<out_bits>``) or unsigned (``u<out_bits>``) output.
    residual_bits : int or None
        With a width (2..17), each channel's parameters carry a signed residual value of
        that width with its multiplier and shift (0..31), added before the rounding (§11).
        A ``u16`` highway tensor needs 17 signed bits.
    runtime_bounds : bool
        Take the clamp range ``low..high`` from each parameter beat instead of the output
        format, for a sequencer running layers of different formats. The output is then
        ``signed(out_bits + 1)``, which holds both ``s<out_bits>`` and ``u<out_bits>``, and
        ``out_signed`` is ignored.

    Raises
    ------
    TypeError
        If a parameter is of the wrong type or outside its range.
    """
    cols: int
    acc_width: int
    out_bits: int
    out_signed: bool = True
    residual_bits: int | None = None
    runtime_bounds: bool = False

    def __post_init__(self):
        check_int("Column count", self.cols, ARRAY_DIM)
        check_int("Accumulator width", self.acc_width, (1, MAX_ACC_WIDTH))
        check_int("Output width", self.out_bits, OUT_BITS)
        if not isinstance(self.out_signed, bool):
            raise TypeError(f"Output signedness must be a bool, not {self.out_signed!r}")
        if self.residual_bits is not None:
            check_int("Residual width", self.residual_bits, RESIDUAL_BITS)
        if not isinstance(self.runtime_bounds, bool):
            raise TypeError(f"runtime_bounds must be a bool, not {self.runtime_bounds!r}")

    @property
    def out_shape(self):
        """Shape of one requantized value."""
        if self.runtime_bounds:
            return signed(self.out_bits + 1)
        return signed(self.out_bits) if self.out_signed else unsigned(self.out_bits)

    @property
    def acc_layout(self):
        """Payload of the ``acc`` port."""
        return data.ArrayLayout(signed(self.acc_width), self.cols)

    @property
    def signature(self):
        """The requantizer's signature: ``acc``, ``params`` (the subclass's
        ``params_layout``) and ``out`` (its ``out_layout``)."""
        return wiring.Signature({
            "acc": In(stream.Signature(self.acc_layout)),
            "params": In(stream.Signature(self.params_layout)),
            "out": Out(stream.Signature(self.out_layout)),
        })

    def _params_layout(self, cols, threshold_shape=None, *, bias=True):
        residual_shape = None if self.residual_bits is None else signed(self.residual_bits)
        bounds_shape = self.out_shape if self.runtime_bounds else None
        return RequantParams(cols, threshold_shape, residual_shape, bounds_shape, bias=bias)


class Requantizer(ConfiguredComponent):
    """Per-channel requantization ``clamp(((acc + bias)·M + 2^(s-1)) >> s, lo, hi)`` (§3),
    optionally with a residual added before the one rounding,
    ``clamp(((acc + bias)·M + r·M_r·2^t + 2^(s-1)) >> s, lo, hi)`` (docs/program.md §11);
    or, ``per_tensor``, ``clamp((acc·M + 2^(s-1)) >> s, lo, hi)`` with one ``M`` and ``s``
    for the whole vector (the network core's copies, docs/network.md §15).

    Each accumulator vector is joined with one parameter beat (the sequencer streams the
    parameters of the columns the vector came from). Every step is exact: the sum keeps one
    more bit than its widest operand and the product is full width, up to 78 bits, before
    the arithmetic shift rounds half up. Like the array, the pipeline never stalls; the
    input waits for a :class:`ResultBuffer` credit.

    Made from keyword arguments, the fields of :class:`Requantizer.Config`, which validates
    them (see its Raises).

    Members
    -------
    acc : In(stream.Signature(ArrayLayout(signed(acc_width), cols)))
        Accumulator vectors.
    params : In(stream.Signature(RequantParams(cols)))
        One parameter beat per accumulator vector (``per_tensor``: ``RequantParams(1)``,
        its one channel without ``bias``).
    out : Out(stream.Signature(ArrayLayout(out_shape, cols) or RequantOutput(...)))
        Requantized vectors (with ``outlier_bits``, dense vectors and their outliers).
    """

    @dataclass(frozen=True, kw_only=True)
    class Config(RequantConfig):
        """A :class:`RequantConfig` with output-outlier extraction (§7) and a per-tensor
        form.

        Parameters
        ----------
        outlier_bits : int or None
            With a width (out_bits+1..16), output outliers are extracted (§7): a value whose
            magnitude exceeds the layer's threshold leaves as a ``(col, value)`` outlier of
            that width and its dense slot is zero.
        split_stages : int
            Register stages added for a faster clock, 0..2 (default 0), each a cycle more of
            :attr:`latency`: 1 gives the rounding shift a stage of its own before the
            rounding increment; 2 also registers each product's 18×18 partial products
            (one MULT18X18D each on ECP5) before their sum.
        per_tensor : bool
            One multiplier and shift for every column and no bias (default False): the
            parameter beat holds one channel, and each product is ``acc_width + 32`` bits
            instead of ``max(acc_width, 32) + 33`` (the network core's copy requantizer:
            17 × 32-bit products).

        Raises
        ------
        TypeError
            If a parameter is of the wrong type or outside its range.
        ValueError
            If ``outlier_bits`` is combined with ``runtime_bounds``, or ``residual_bits``
            with ``per_tensor``.
        """
        outlier_bits: int | None = None
        split_stages: int = 0
        per_tensor: bool = False

        def __post_init__(self):
            super().__post_init__()
            check_int("split_stages", self.split_stages, REQUANT_STAGES)
            if not isinstance(self.per_tensor, bool):
                raise TypeError(f"per_tensor must be a bool, not {self.per_tensor!r}")
            if self.per_tensor and self.residual_bits is not None:
                raise ValueError("A per-tensor requantizer (per_tensor=True) has no residual "
                                 f"(residual_bits={self.residual_bits})")
            if self.outlier_bits is not None:
                check_int("Output outlier width", self.outlier_bits,
                          (self.out_bits + 1, OUTLIER_BITS[1]))
            if self.runtime_bounds and self.outlier_bits is not None:
                raise ValueError("Run-time bounds (runtime_bounds=True) cannot be combined "
                                 f"with output outliers (outlier_bits={self.outlier_bits})")

        @property
        def latency(self):
            """Cycles from an input transfer to its result entering the output queue."""
            return 5 + self.split_stages

        @property
        def outlier_shape(self):
            """Shape of one output outlier, or ``None`` without extraction."""
            if self.outlier_bits is None:
                return None
            return signed(self.outlier_bits) if self.out_signed else unsigned(self.outlier_bits)

        @property
        def params_layout(self):
            """Payload of the ``params`` port."""
            threshold_shape = None
            if self.outlier_bits is not None:
                threshold_shape = range(shape_bounds(self.out_shape)[1] + 1)
            if self.per_tensor:
                return self._params_layout(1, threshold_shape, bias=False)
            return self._params_layout(self.cols, threshold_shape)

        @property
        def out_layout(self):
            """Payload of the ``out`` port."""
            if self.outlier_bits is None:
                return data.ArrayLayout(self.out_shape, self.cols)
            return RequantOutput(self.out_shape, self.outlier_shape, self.cols)

    cols = ConfigProperty()
    out_shape = ConfigProperty()
    outlier_shape = ConfigProperty()
    latency = ConfigProperty()

    def elaborate(self, platform):
        m = Module()
        m.submodules.results = results = ResultBuffer(self._config.out_layout,
                                                      depth=self.latency + 4)
        wiring.connect(m, wiring.flipped(self.out), results.r)

        m.d.comb += [
            self.acc.ready.eq(self.params.valid & results.can_claim),
            self.params.ready.eq(self.acc.valid & results.can_claim),
        ]
        accepted = self.acc.valid & self.acc.ready
        m.d.comb += results.claim.eq(accepted)

        # With outlier extraction the value is clamped to the outlier format first (§7).
        low, high = shape_bounds(self.outlier_shape if self._config.outlier_bits else
                                 self.out_shape)

        # Only the valid bits are reset; the datapath registers need none. The stages:
        # the biased accumulators (added at the ports), the products, their sum, the
        # rounded shift, the clamp; the sum and the shift have a stage each, so no stage
        # holds more than one carry chain and one shifter (for the ECP5 board's clock).
        # `split_stages` cuts the rounding increment from the shift, and the products
        # between their MULT18X18Ds and the sum of their partial products.
        split = self._config.split_stages
        delay = 3 + split
        params = Signal.like(self.params.payload, reset_less=True)
        valid = [Signal(name=f"valid_{stage}") for stage in range(self.latency - 1)]
        m.d.sync += [
            params.eq(self.params.payload),
            valid[0].eq(accepted),
        ]
        m.d.sync += [valid[stage + 1].eq(valid[stage]) for stage in range(len(valid) - 1)]
        m.d.sync += results.w.valid.eq(valid[-1])
        # The registers after the input stage (`first`) move only while a vector is in
        # them, enabled by the valid bits (registers: no path from the ports). The same
        # results, and a simulator skips the idle cycles' wide arithmetic (most cycles of a
        # network core, whose requantizer takes one vector per reduction).
        first, m = m, Module()
        first.submodules.pipeline = EnableInserter(Cat(*valid).any())(m)
        relu = self._delayed(m, params.relu, "relu", delay)
        zero = Const(0, signed(2))
        if self._config.runtime_bounds:
            low = self._delayed(m, params.low, "low", delay)
            high = self._delayed(m, params.high, "high", delay)

        if self._config.outlier_bits is not None:
            threshold = self._delayed(m, params.outlier_threshold, "threshold", delay)

        per_tensor = self._config.per_tensor
        for col in range(self._config.cols):
            if per_tensor:
                channel = self.params.payload.channels[0]
                value, value_shape = self.acc.payload[col], signed(self._config.acc_width)
            else:
                channel = self.params.payload.channels[col]
                value = self.acc.payload[col] + channel.bias
                value_shape = signed(max(self._config.acc_width, BIAS_BITS) + 1)
            product, shift = self._product(first, m, value, value_shape, channel.multiplier,
                                           channel.shift, f"{col}", partial=split >= 2)
            summed = product
            if self._config.residual_bits is not None:
                residual_product, residual_shift = self._product(
                    first, m, channel.residual, channel.residual.shape(),
                    channel.residual_multiplier, channel.residual_shift, f"residual_{col}",
                    partial=split >= 2)
                summed = product + (residual_product << residual_shift)
            total = Signal(summed.shape(), name=f"total_{col}", reset_less=True)
            late_shift = Signal.like(shift, name=f"shift_{col}_2", reset_less=True)
            m.d.sync += [total.eq(summed), late_shift.eq(shift)]
            # Arithmetic shift = floor division by 2^s; adding 2^(s-1) first rounds half up:
            # (t + 2^(s-1)) >> s = ((2t >> s) + 1) >> 1, which keeps every step one bit
            # wider than t, where 2^(s-1) needs t's width plus the largest shift (63).
            halves = (total << 1) >> late_shift
            if split >= 1:
                (halves,) = self._register(m, f"halves_{col}", halves)
            shifted = Signal(total.shape(), name=f"shifted_{col}", reset_less=True)
            m.d.sync += shifted.eq((halves + 1) >> 1)
            if self._config.runtime_bounds:
                floor = Mux(relu & (low < 0), zero, low)
            else:
                floor = Mux(relu, max(low, 0), low)
            clamped = Mux(shifted < floor, floor, Mux(shifted > high, high, shifted))
            if self._config.outlier_bits is None:
                m.d.sync += results.w.payload[col].eq(clamped)
            else:
                outlier = Mux(clamped < 0, -clamped, clamped) > threshold
                slot = results.w.payload.outliers[col]
                m.d.sync += [
                    results.w.payload.dense[col].eq(Mux(outlier, 0, clamped)),
                    slot.valid.eq(outlier),
                    slot.col.eq(col),
                    slot.value.eq(Mux(outlier, clamped, 0)),
                ]
        return first

    @staticmethod
    def _register(m, name, *values):
        """``values`` a stage later, as registers named ``name`` and ``name_1``, ..."""
        registers = [Signal.like(value, name=name if index == 0 else f"{name}_{index}",
                                 reset_less=True) for index, value in enumerate(values)]
        m.d.sync += [register.eq(value) for register, value in zip(registers, values)]
        return registers

    @classmethod
    def _product(cls, first, m, value, value_shape, multiplier, shift, name, *, partial):
        """``value·multiplier`` two stages later (operands registered in ``first``, then
        the product in ``m``), or with ``partial`` three (its 18×18 partial products
        registered in between), with ``shift`` delayed to match: one of the products of
        §3 and §11."""
        (shift,) = cls._register(first, f"shift_{name}_0", shift)
        if not partial:
            operand = Signal(value_shape, name=f"operand_{name}", reset_less=True)
            factor = Signal.like(multiplier, name=f"multiplier_{name}", reset_less=True)
            first.d.sync += [operand.eq(value), factor.eq(multiplier)]
            product = operand * factor
        else:
            terms = []
            for (a, a_at), (b, b_at) in itertools.product(
                    cls._halves(first, value, value_shape, f"operand_{name}"),
                    cls._halves(first, multiplier, multiplier.shape(), f"multiplier_{name}")):
                (term,) = cls._register(m, f"partial_{name}_{len(terms)}", a * b)
                terms.append(term << (a_at + b_at))
            (shift,) = cls._register(m, f"shift_{name}_p", shift)
            product = sum(terms[1:], terms[0])
        late = Signal(signed(value_shape.width + MULTIPLIER_BITS), name=f"product_{name}",
                      reset_less=True)
        m.d.sync += late.eq(product)
        (shift,) = cls._register(m, f"shift_{name}_1", shift)
        return late, shift

    @staticmethod
    def _halves(m, value, shape, name):
        """``value`` (signed, of ``shape``) registered as ``(part, position)`` pairs: whole
        up to 18 bits, else its unsigned low 17 bits at 0 and its signed rest at 17, so each
        partial product fits a MULT18X18D. Every register is at least 17 bits wide: the
        ECP5 flow's "hybrid" mapping puts a product whose operands are both 16 bits or
        narrower in LUT logic instead."""
        width = shape.width
        if width <= 18:
            whole = Signal(signed(max(width, 17)), name=name, reset_less=True)
            m.d.sync += whole.eq(value)
            return [(whole, 0)]
        low = Signal(unsigned(17), name=f"{name}_low", reset_less=True)
        high = Signal(signed(max(width - 17, 17)), name=f"{name}_high", reset_less=True)
        m.d.sync += [low.eq(value[:17]), high.eq(value[17:].as_signed())]
        return [(low, 0), (high, 17)]

    @staticmethod
    def _delayed(m, value, name, stages):
        """``value`` ``stages`` stages later, in step with the shifted products."""
        for stage in range(stages):
            delayed = Signal.like(value, name=f"{name}_d{stage}", reset_less=True)
            m.d.sync += delayed.eq(value)
            value = delayed
        return value
