from dataclasses import dataclass

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.spec import (ACT_BITS, ARRAY_DIM, WEIGHT_BITS, OUTLIER_BITS, OUTLIER_LANES,
                          PLANE_SHIFT_BITS, check_int)
from .config import ConfigProperty, ConfiguredComponent
from .multipliers import (DSP_STAGES, MODES, ODD_DIGIT_WEIGHT_BITS, PACKED_STAGES, DotPair,
                          DspProduct, PackedPair, as_signed_operand, dot_fits, odd_digit_bounds,
                          odd_digit_product, packable)
from .outlier_rules import OutlierRules
from .result_buffer import ResultBuffer
from .shapes import narrowest_signed, product_bounds, shape_bounds

__all__ = ["ActOutlier", "WeightOutlier", "ActBeat", "WeightBeat", "MacArray", "MAX_ACC_WIDTH"]

#: Widest accumulator the semantics admits (docs/semantics.md §2).
MAX_ACC_WIDTH = 44

#: Columns that share one copy of the activation register. A 16×16 array would otherwise
#: drive each activation bit into 16 columns of product logic from one flip-flop, and that
#: fan-out was the critical path of the block-RAM-fed builds.
ACT_FANOUT_COLS = 4

#: Lanes among which an activation-outlier lane selects its weight row in the first of
#: two registered steps (DSP modes): for 16 lanes, two 4-to-1 multiplexers of two LUT4
#: levels each instead of one 16-to-1 of four.
ROW_SELECT_LANES = 4

#: Attributes of the copies of a register that exist to split its fan-out; synthesis must
#: keep the flip-flops apart (see fpga.synth.KEEP_REPLICAS).
_KEEP = {"keep": 1}


def _index_shape(count):
    return unsigned(max(1, (count - 1).bit_length()))


class ActOutlier(data.StructLayout):
    """One activation outlier of a beat (§6): ``value`` belongs at lane ``lane``."""

    def __init__(self, value_shape, lanes):
        super().__init__({"valid": unsigned(1), "lane": _index_shape(lanes),
                          "value": value_shape})


class WeightOutlier(data.StructLayout):
    """One weight outlier of a tile (§6): ``value`` belongs at ``[lane][col]``."""

    def __init__(self, value_shape, lanes, cols):
        super().__init__({"valid": unsigned(1), "lane": _index_shape(lanes),
                          "col": _index_shape(cols), "value": value_shape})


class ActBeat(data.StructLayout):
    """One activation vector of ``lanes`` dense elements; ``last`` ends a reduction (§4);
    with outlier slots, up to ``slots`` activation outliers (§6)."""

    def __init__(self, act_shape, lanes, outlier_shape=None, slots=0):
        fields = {"data": data.ArrayLayout(act_shape, lanes), "last": unsigned(1)}
        if slots:
            fields["outliers"] = data.ArrayLayout(ActOutlier(outlier_shape, lanes), slots)
        super().__init__(fields)


class WeightBeat(data.StructLayout):
    """One dense weight tile indexed ``[lane][col]``; with outlier slots, up to ``slots``
    weight outliers (§6); with plane shifts, a left shift per column applied to the
    accumulator before this beat is added (§8)."""

    def __init__(self, weight_shape, lanes, cols, outlier_shape=None, slots=0,
                 plane_shift_bits=0):
        fields = {"tile": data.ArrayLayout(data.ArrayLayout(weight_shape, cols), lanes)}
        if slots:
            fields["outliers"] = data.ArrayLayout(WeightOutlier(outlier_shape, lanes, cols),
                                                  slots)
        if plane_shift_bits:
            fields["plane_shift"] = data.ArrayLayout(unsigned(plane_shift_bits), cols)
        super().__init__(fields)


class MacArray(ConfiguredComponent):
    """Low-bit multiply-accumulate array with optional outlier lanes, output-stationary
    (docs/semantics.md §2, §4, §6).

    Each beat multiplies one activation vector (``lanes`` elements along K) by one weight
    tile (``lanes × cols``) and adds the ``cols`` column sums to the accumulators. The beat
    whose activation has ``last`` set closes the reduction: the accumulators leave through
    ``acc`` and restart with the next beat, so reductions follow each other with no idle
    cycle and the array takes one beat per cycle in steady state.

    **Multi-tensor layers** (§8). With ``plane_shift_bits``, each weight beat carries a
    left shift per column that is applied to the accumulator before the beat is added, so
    the planes of ``W ≈ Σ α_p Q_p`` (power-of-two scale ratios) stream as one reduction and
    combine exactly in one accumulator. ``max_k`` then counts the products of all planes.

    **Outlier lanes** (§6). A beat may also carry sparse activation outliers (16-bit
    values at given lanes, whose dense slots are zero) and weight outliers (8- or 16-bit
    values at given ``[lane][col]``). Each of the ``act_outlier_lanes`` multiplies one
    activation outlier by its lane's dense weight row (all columns); each of the
    ``weight_outlier_lanes`` multiplies one weight outlier by the full activation at its
    lane (dense or outlier, so the product of two outliers is counted exactly once). Their
    sums join the column sums before the accumulators. A beat whose outliers outnumber the
    lanes is held for extra cycles, one per further group of slots, with ``ready`` low:
    every outlier is counted once, none is dropped.

    The datapath is a stall-free pipeline: input registers, registered products, one
    register per adder-tree level (which also keeps yosys from folding the whole sum of
    products into one wide cell), then the accumulators. Backpressure from ``acc`` reaches
    the inputs through a credit of its output queue, never through the datapath.

    **Where the products go** (``multipliers``, :mod:`hw.multipliers`). ``"lut"`` writes every
    product as ``*`` and leaves the mapping to synthesis (Yosys puts each into an ECP5
    DSP block unless told otherwise). ``"dsp"`` puts each outlier product into a DSP block
    with registered operands and product (:class:`~hw.multipliers.DspProduct`:
    ``MULT18X18D`` instantiated for an ECP5 platform, ``SB_MAC16`` for iCE40, ``*`` between
    the same registers elsewhere) and leaves the dense products as ``*``, for the flow to
    keep in LUTs: ``synth_ecp5 -nodsp`` or the ``booth`` pass (``fpga.build``'s
    ``multipliers="booth"``) map every ``*`` to LUT logic and leave the instantiated blocks
    alone. ``"packed"`` also puts the dense products into DSP blocks, two per block:
    ``a × (b0 + b1·2^k)`` for two columns of one lane (:class:`~hw.multipliers.PackedPair`).
    The results are the same in every mode; the DSP stages may lengthen the pipeline (see
    :attr:`Config.latency`). Dense products in LUT logic with weights of at most 4 bits and
    one stage are not written as ``*`` but as :func:`~hw.multipliers.odd_digit_product`
    (:attr:`Config.odd_digit_products`): ``3a`` is registered once per lane beside the
    activation, each partial-product bit is one LUT4, and each product comes out one short
    where its weight is negative; the column's adder tree takes those sign bits back as
    carry-ins (``lanes - 1`` adders) and the accumulator's adder takes the last one.
    On the iCE40UP5K this took the 8×8 4-bit array from 44.5 to 31.3 LUT4 per PE.

    **Cycle timing.** Stage 0 holds the beat; the dense products are registered at stage 1
    (``"packed"``: stage 3, the DSP block's two and the split; ``product_stages=2``: stage
    2, the partial products and their sum), each adder-tree level adds a stage, the outlier products are
    registered at stage 1 (``"dsp"``, ``"packed"``: stage 4, after a register for the
    lane-selected operands, a fabric register at the DSP block and the block's two) and
    summed per column one stage later; whichever is later sets the stage ``S`` at which
    both sums join the accumulators, and a result enters the output queue
    ``latency = S + 2`` cycles after its ``last`` beat is taken (16 lanes: 7 in ``"lut"``
    and ``"dsp"``, 9 in ``"packed"``), one more with ``accumulator_stages=2`` (the high
    half of each accumulator a stage behind the low half). The accumulators' enable and clear are registered once per column (kept
    apart in synthesis by a ``keep`` attribute), so no single control net reaches every
    accumulator bit, each group of :data:`ACT_FANOUT_COLS` columns has its own copy of
    the activation register, and the activation-outlier lanes have their own copy of the
    weight tile.

    Made from keyword arguments, the fields of :class:`MacArray.Config`, which validates
    them (see its Raises).

    Members
    -------
    act : In(stream.Signature(ActBeat(...)))
        Activation vectors with the ``last`` flag (and activation outliers).
    weights : In(stream.Signature(WeightBeat(...)))
        Weight tiles (and weight outliers); one per activation vector.
    acc : Out(stream.Signature(ArrayLayout(signed(acc_width), cols)))
        One vector of column sums per reduction.
    fault : Out(1)
        A beat broke §6's outlier rules (a position outside the array, or two outliers of
        one kind at one position; :class:`~hw.outlier_rules.OutlierRules`); sticky until
        reset. Always 0 without outlier lanes: dense beats cannot break a rule.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """The parameters of a :class:`MacArray`, validated, and what follows from them
        (accumulator width, port layouts, pipeline stages) without building the array.

        The defaulted parameters (``acc_width``, the outlier slots, ``max_plane_shift``)
        hold their resolved values once the configuration is made, so two configurations
        of the same array compare equal.

        Parameters
        ----------
        lanes : int
            Multipliers per column, along K; 1..64.
        cols : int
            Columns, along N; 1..64.
        act_bits : int
            Activation width, 2..8.
        weight_bits : int
            Weight width, 2..8; weights are signed.
        act_signed : bool
            Signed (``s<act_bits>``) or unsigned (``u<act_bits>``) activations.
        max_k : int
            Longest reduction (K) the accumulators must hold exactly.
        acc_width : int or None
            Accumulator width; by default the least width of §2.
        act_outlier_lanes, weight_outlier_lanes : int
            Outlier multipliers of each kind, 0..16 (0: no such outliers).
        act_outlier_bits : int
            Width of activation outliers (same signedness as the activations),
            act_bits+1..16.
        weight_outlier_bits : int
            Width of the signed weight outliers, weight_bits+1..16.
        act_outlier_slots, weight_outlier_slots : int or None
            Outliers one beat can carry, 1..1024; by default ``lanes`` (0 without outlier
            lanes of that kind).
        plane_shift_bits : int
            Width of the per-column plane shift of multi-tensor layers (§8), 0..4 (0: none).
        max_plane_shift : int or None
            Largest total shift within one reduction, which widens the accumulator (§8); by
            default two shifts of the largest size (three planes; 0 without plane shifts).
        multipliers : str
            Where products go: ``"lut"`` (default, ``*`` left to synthesis), ``"dsp"`` (dense
            in LUTs, outliers in registered DSP blocks) or ``"packed"`` (dense two per
            registered DSP block, outliers one per block).
        product_stages : int
            Registers in each dense product outside DSP blocks, 1 (default) or 2: the
            weight split into its low and high halves, the two partial products
            registered, then their sum (one stage more; the 16×16 array's critical path
            on ECP5 was the one-stage 4×4 product). Not with ``"packed"``.
        dsp_lane_pairs : int
            Lane pairs of each column whose two dense products and their sum come from one
            DSP block (:class:`~hw.multipliers.DotPair`), 0..``lanes // 2`` (default 0):
            ``cols · dsp_lane_pairs`` blocks, their sums joining the adder tree after its
            first level, so the timing is unchanged (the iCE40UP5K network board at width
            4 puts lanes 0 and 1 into 4 of its SB_MAC16). Only with ``"lut"`` or ``"dsp"``
            and one product stage, for operands whose pair fits a 16×16 multiply (4 bits).
        accumulator_stages : int
            1 (default) or 2: each accumulator split into a low half (its lower
            :attr:`accumulator_low_bits` bits) and a high half that adds the low half's
            carry one cycle later, so no carry chain runs the accumulator's whole width
            (the UP5K 8×8 array's critical path was its 16-bit accumulator); one stage more
            from a ``last`` beat to the output queue. Not with plane shifts.

        Raises
        ------
        TypeError
            If a parameter is of the wrong type (``multipliers`` not a string) or outside
            its range.
        ValueError
            If ``acc_width`` is narrower than §2 requires for ``max_k``, or ``max_k`` needs
            more than 44 bits, or an outlier width is not wider than its dense width, or
            ``multipliers`` is not one of its modes, or is ``"packed"`` for operands two of
            whose products do not fit one 18×18 multiply (wider than 5 bits), or with two
            ``product_stages``, or with two ``accumulator_stages`` and plane shifts, or
            ``dsp_lane_pairs`` is not 0 with ``"packed"``, two ``product_stages`` or
            operands whose pair does not fit a 16×16 multiply.
        """
        lanes: int
        cols: int
        act_bits: int
        weight_bits: int
        act_signed: bool = True
        max_k: int
        acc_width: int | None = None
        act_outlier_lanes: int = 0
        weight_outlier_lanes: int = 0
        act_outlier_bits: int = 16
        weight_outlier_bits: int = 16
        act_outlier_slots: int | None = None
        weight_outlier_slots: int | None = None
        plane_shift_bits: int = 0
        max_plane_shift: int | None = None
        multipliers: str = "lut"
        product_stages: int = 1
        accumulator_stages: int = 1
        dsp_lane_pairs: int = 0

        def __post_init__(self):
            resolve = lambda name, value: object.__setattr__(self, name, value)
            check_int("Lane count", self.lanes, ARRAY_DIM)
            check_int("Column count", self.cols, ARRAY_DIM)
            check_int("Activation width", self.act_bits, ACT_BITS)
            check_int("Weight width", self.weight_bits, WEIGHT_BITS)
            if not isinstance(self.act_signed, bool):
                raise TypeError(f"Activation signedness must be a bool, not "
                                f"{self.act_signed!r}")
            check_int("Maximum reduction length max_k", self.max_k, (1, 1 << 40))
            check_int("Activation outlier lane count", self.act_outlier_lanes, OUTLIER_LANES)
            check_int("Weight outlier lane count", self.weight_outlier_lanes, OUTLIER_LANES)
            check_int("Activation outlier width", self.act_outlier_bits, OUTLIER_BITS)
            check_int("Weight outlier width", self.weight_outlier_bits, OUTLIER_BITS)
            if self.act_outlier_lanes and self.act_outlier_bits <= self.act_bits:
                raise ValueError(f"Activation outlier width {self.act_outlier_bits} must "
                                 f"exceed the activation width {self.act_bits}")
            if self.weight_outlier_lanes and self.weight_outlier_bits <= self.weight_bits:
                raise ValueError(f"Weight outlier width {self.weight_outlier_bits} must exceed "
                                 f"the weight width {self.weight_bits}")
            for kind, description in (("act", "Activation"), ("weight", "Weight")):
                slots = 0
                if getattr(self, f"{kind}_outlier_lanes"):
                    given = getattr(self, f"{kind}_outlier_slots")
                    slots = check_int(f"{description} outlier slot count",
                                      self.lanes if given is None else given, (1, 1024))
                resolve(f"{kind}_outlier_slots", slots)

            check_int("Plane shift width", self.plane_shift_bits, PLANE_SHIFT_BITS)
            max_plane_shift = 0
            if self.plane_shift_bits:
                max_plane_shift = check_int(
                    "Maximum plane shift", 2 * ((1 << self.plane_shift_bits) - 1)
                    if self.max_plane_shift is None else self.max_plane_shift,
                    (0, MAX_ACC_WIDTH))
            resolve("max_plane_shift", max_plane_shift)

            required = self._required_acc_width()
            if required > MAX_ACC_WIDTH:
                raise ValueError(
                    f"Maximum reduction length max_k={self.max_k} with plane shifts up to "
                    f"{max_plane_shift} needs a {required}-bit accumulator; at most "
                    f"{MAX_ACC_WIDTH} bits are supported" if max_plane_shift else
                    f"Maximum reduction length max_k={self.max_k} needs a {required}-bit "
                    f"accumulator; at most {MAX_ACC_WIDTH} bits are supported")
            acc_width = required if self.acc_width is None else self.acc_width
            check_int("Accumulator width", acc_width, (1, MAX_ACC_WIDTH))
            if acc_width < required:
                low, high = self._accumulator_bounds()
                act_shape, weight_shape = self._widest_operand_shapes()
                raise ValueError(
                    f"Accumulator width {acc_width} can overflow: {self.padded_k} products "
                    f"of {act_shape} × {weight_shape} range over {low}..{high}, which needs "
                    f"at least {required} bits")
            resolve("acc_width", acc_width)

            if not isinstance(self.multipliers, str):
                raise TypeError(f"Multipliers must be a string, not {self.multipliers!r}")
            if self.multipliers not in MODES:
                raise ValueError(f"Multipliers must be one of {', '.join(map(repr, MODES))}, "
                                 f"not {self.multipliers!r}")
            if self.multipliers == "packed" and not packable(self.act_shape,
                                                              self.weight_shape):
                raise ValueError(f"Packed multipliers need two {self.act_shape!r} × "
                                 f"{self.weight_shape!r} products to fit one 18×18 "
                                 f"multiply, which they do not")
            check_int("Dense product stages", self.product_stages, (1, 2))
            if self.multipliers == "packed" and self.product_stages == 2:
                raise ValueError("Packed multipliers take their stages from the DSP block; "
                                 "product_stages must be 1, not 2")
            check_int("DSP lane pairs", self.dsp_lane_pairs, (0, self.lanes // 2))
            if self.dsp_lane_pairs and (self.multipliers == "packed" or self.product_stages == 2
                                        or not dot_fits(self.act_shape, self.weight_shape)):
                # the pairs' sums join the tree one stage after one-stage LUT products
                raise ValueError(f"DSP lane pairs need \"lut\" or \"dsp\" multipliers, one "
                                 f"product stage and a {self.act_shape!r} × "
                                 f"{self.weight_shape!r} pair that fits a 16×16 multiply; "
                                 f"dsp_lane_pairs must be 0, not {self.dsp_lane_pairs}")
            check_int("Accumulator stages", self.accumulator_stages, (1, 2))
            if self.accumulator_stages == 2 and self.plane_shift_bits:
                # a shift would move the low half's bits into a high half a cycle behind
                raise ValueError(f"Split accumulators cannot take plane shifts; with "
                                 f"accumulator_stages=2, plane_shift_bits must be 0, not "
                                 f"{self.plane_shift_bits}")

        @property
        def act_shape(self):
            """Shape of one dense activation."""
            return signed(self.act_bits) if self.act_signed else unsigned(self.act_bits)

        @property
        def weight_shape(self):
            """Shape of one dense weight."""
            return signed(self.weight_bits)

        @property
        def act_outlier_shape(self):
            """Shape of one activation outlier (signedness of the activations)."""
            bits = self.act_outlier_bits
            return signed(bits) if self.act_signed else unsigned(bits)

        @property
        def weight_outlier_shape(self):
            """Shape of one weight outlier."""
            return signed(self.weight_outlier_bits)

        @property
        def act_layout(self):
            """Payload of the ``act`` port."""
            return ActBeat(self.act_shape, self.lanes, self.act_outlier_shape,
                           self.act_outlier_slots)

        @property
        def weight_layout(self):
            """Payload of the ``weights`` port."""
            return WeightBeat(self.weight_shape, self.lanes, self.cols,
                              self.weight_outlier_shape, self.weight_outlier_slots,
                              self.plane_shift_bits)

        @property
        def acc_layout(self):
            """Payload of the ``acc`` port: one accumulator per column."""
            return data.ArrayLayout(signed(self.acc_width), self.cols)

        @property
        def signature(self):
            """The array's signature: ``act``, ``weights``, ``acc`` and ``fault``."""
            return wiring.Signature({
                "act": In(stream.Signature(self.act_layout)),
                "weights": In(stream.Signature(self.weight_layout)),
                "acc": Out(stream.Signature(self.acc_layout)),
                "fault": Out(1),
            })

        @property
        def latency(self):
            """Cycles from a ``last`` beat's transfer to its result entering the output
            queue."""
            return 2 + self.sum_stage + self.accumulator_stages - 1

        @property
        def accumulator_low_bits(self):
            """Bits of an accumulator's low half with two ``accumulator_stages`` (half its
            width, rounded up), or ``None`` with one."""
            return (self.acc_width + 1) // 2 if self.accumulator_stages == 2 else None

        @property
        def has_outliers(self):
            """Whether the array has outlier lanes of either kind."""
            return bool(self.act_outlier_lanes or self.weight_outlier_lanes)

        @property
        def tree_levels(self):
            """Levels of the per-column adder tree."""
            return (self.lanes - 1).bit_length()

        @property
        def dense_product_stage(self):
            """Stage at which the dense products are registered."""
            return PACKED_STAGES if self.multipliers == "packed" else self.product_stages

        @property
        def odd_digit_products(self):
            """Whether the dense products are :func:`~hw.multipliers.odd_digit_product`
            (one stage in LUT logic, weights of at most 4 bits)."""
            return (self.multipliers != "packed" and self.product_stages == 1
                    and self.weight_bits <= ODD_DIGIT_WEIGHT_BITS)

        @property
        def outlier_product_stage(self):
            """Stage at which the outlier products are registered."""
            # DSP modes: a register for the lane-selected operands, a fabric register for
            # the operands at the block, then the block's two stages
            return 1 if self.multipliers == "lut" else 2 + DSP_STAGES

        @property
        def sum_stage(self):
            """Stage at which the column sums (and outlier sums) reach the accumulators."""
            stage = self.dense_product_stage + self.tree_levels
            if self.has_outliers:
                # products, then their per-column sum; a shallower dense tree waits for them
                stage = max(stage, self.outlier_product_stage + 1)
            return stage

        @property
        def groups(self):
            """Sub-beats needed for a beat whose every outlier slot is used."""
            groups = [1]
            if self.act_outlier_slots:
                groups.append(-(-self.act_outlier_slots // self.act_outlier_lanes))
            if self.weight_outlier_slots:
                groups.append(-(-self.weight_outlier_slots // self.weight_outlier_lanes))
            return max(groups)

        @property
        def padded_k(self):
            """``max_k`` rounded up to whole beats."""
            return -(-self.max_k // self.lanes) * self.lanes

        def _widest_operand_shapes(self):
            act = self.act_outlier_shape if self.act_outlier_lanes else self.act_shape
            weight = (self.weight_outlier_shape if self.weight_outlier_lanes else
                      self.weight_shape)
            return act, weight

        def _accumulator_bounds(self):
            low, high = product_bounds(*self._widest_operand_shapes())
            return self.padded_k * low, self.padded_k * high

        def _required_acc_width(self):
            # Shifting the accumulator left by S in total multiplies the bound by at most 2^S.
            return narrowest_signed(*self._accumulator_bounds()).width + self.max_plane_shift

    lanes = ConfigProperty()
    cols = ConfigProperty()
    act_shape = ConfigProperty()
    weight_shape = ConfigProperty()
    act_outlier_shape = ConfigProperty()
    weight_outlier_shape = ConfigProperty()
    act_outlier_lanes = ConfigProperty()
    weight_outlier_lanes = ConfigProperty()
    act_outlier_slots = ConfigProperty()
    weight_outlier_slots = ConfigProperty()
    plane_shift_bits = ConfigProperty()
    max_plane_shift = ConfigProperty()
    max_k = ConfigProperty()
    acc_width = ConfigProperty()
    multipliers = ConfigProperty()
    product_stages = ConfigProperty()
    accumulator_stages = ConfigProperty()
    dsp_lane_pairs = ConfigProperty()
    latency = ConfigProperty()

    def elaborate(self, platform):
        m = Module()
        m.submodules.results = results = ResultBuffer(self._config.acc_layout,
                                                     depth=self._config.latency + 4)
        wiring.connect(m, wiring.flipped(self.acc), results.r)

        # Stage 0: hold each beat for as many sub-beats as its outliers need. Sub-beat g
        # issues outlier slots [g·L, (g+1)·L) of each kind; the dense vector goes with g = 0.
        held = Signal()
        sub = Signal(range(self._config.groups))
        final_sub = Signal(range(self._config.groups), reset_less=True)
        at_final = sub == final_sub
        can_take = ~held | at_final
        credit_ok = ~self.act.payload.last | results.can_claim
        m.d.comb += [
            self.act.ready.eq(self.weights.valid & credit_ok & can_take),
            self.weights.ready.eq(self.act.valid & credit_ok & can_take),
        ]
        accepted = self.act.valid & self.act.ready
        m.d.comb += results.claim.eq(accepted & self.act.payload.last)

        # Datapath registers have no reset: only the valid bits need one, and a reset net
        # to every product and partial sum would be the array's largest fanout.
        act_copies = [Signal.like(self.act.payload.data, reset_less=True,
                                  name=f"acts_g{group}", attrs=_KEEP)
                      for group in range(-(-self._config.cols // ACT_FANOUT_COLS))]
        tile = Signal.like(self.weights.payload.tile, reset_less=True, attrs=_KEEP)
        last = Signal(reset_less=True)
        loads = [tile.eq(self.weights.payload.tile), last.eq(self.act.payload.last)]
        loads += [acts.eq(self.act.payload.data) for acts in act_copies]
        triple_copies = self._triple_registers(loads)
        plane_shift = None
        if self._config.plane_shift_bits:
            plane_shift = Signal.like(self.weights.payload.plane_shift, reset_less=True)
            loads.append(plane_shift.eq(self.weights.payload.plane_shift))
        # With one sub-beat a beat never needs holding: the input registers load every
        # cycle with no enable (a beat not taken is marked invalid by `held`), so the
        # credit and handshake logic drives no enable net to a thousand flip-flops.
        hold = self._config.has_outliers and self._config.groups > 1
        act_slots = weight_slots = full_acts = outlier_tile = None
        if self._config.has_outliers:
            act_slots = self._register_slots(m, self.act, "act", hold)
            weight_slots = self._register_slots(m, self.weights, "weight", hold)
            self._check_rules(m, act_slots, weight_slots, held & (sub == 0))
            full_acts = Signal.like(self.act.payload.data, reset_less=True)
            loads.append(full_acts.eq(self.act.payload.data))
            # The activation-outlier lanes read the weights through a lane multiplexer;
            # their own copy of the tile lets each dense weight register sit by its product.
            outlier_tile = Signal.like(self.weights.payload.tile, reset_less=True,
                                       name="outlier_tile", attrs=_KEEP)
            loads.append(outlier_tile.eq(self.weights.payload.tile))
        if not hold:
            m.d.sync += loads
            m.d.sync += held.eq(accepted)
        else:
            with m.If(accepted):
                m.d.sync += loads
                m.d.sync += [held.eq(1), sub.eq(0),
                             final_sub.eq(self._final_group(self.act.payload,
                                                            self.weights.payload))]
            with m.Elif(held):
                # the dense vector went with sub-beat 0; later sub-beats add outliers only
                m.d.sync += [acts.eq(0) for acts in act_copies + triple_copies]
                if plane_shift is not None:
                    m.d.sync += plane_shift.eq(0)
                with m.If(at_final):
                    m.d.sync += held.eq(0)
                with m.Else():
                    m.d.sync += sub.eq(sub + 1)

        # The control (valid, last, plane shifts) of every stage, registered as needed.
        control = [(held, last & at_final, plane_shift)]

        def control_at(stage):
            while len(control) <= stage:
                valid, last, shift = control[-1]
                index = len(control)
                valid_d = Signal(name=f"valid_s{index}")
                last_d = Signal(name=f"last_s{index}", reset_less=True)
                m.d.sync += [valid_d.eq(valid), last_d.eq(last)]
                if shift is not None:
                    shift_d = Signal.like(shift, name=f"plane_shift_s{index}",
                                          reset_less=True)
                    m.d.sync += shift_d.eq(shift)
                    shift = shift_d
                control.append((valid_d, last_d, shift))
            return control[stage]

        # Products, then one register per adder-tree level. Each register is only as wide
        # as the sums it can hold (a 4×4 product fits 8 bits, not Amaranth's 9).
        column_sums, corrections = self._column_sums(m, act_copies, triple_copies, tile)
        stage = self._config.dense_product_stage + self._config.tree_levels
        for _ in range(stage, self._config.sum_stage):
            column_sums = self._delay_values(m, column_sums)
        if self._config.has_outliers:
            outlier_sums = self._outlier_sums(m, sub, act_slots, weight_slots, full_acts,
                                              outlier_tile)
            for _ in range(self._config.outlier_product_stage + 1, self._config.sum_stage):
                outlier_sums = self._delay_values(m, outlier_sums)

        # Accumulate: the beat's column sum (and outlier sum) and the one correction bit of
        # the column that no adder of its tree took.
        control = control_at(self._config.sum_stage), control_at(self._config.sum_stage - 1)
        terms = [[column_sum] + ([outlier_sums[col]] if self._config.has_outliers else [])
                 for col, column_sum in enumerate(column_sums)]
        carry_ins = [self._delayed(m, bits[0][0], self._config.sum_stage - bits[0][1])
                     if bits else None for bits in corrections]
        accumulate = (self._accumulate if self._config.accumulator_stages == 1 else
                      self._accumulate_split)
        accumulate(m, results.w, terms, carry_ins, control)
        return m

    @staticmethod
    def _accumulator_control(m, col, previous, suffix=""):
        """The enable and clear of column ``col``'s accumulator: one register pair per
        column, loaded from the previous stage's control (``previous``: valid and last), so
        no single control net reaches every accumulator bit. A `last` beat clears the
        accumulator after adding, so the next beat starts afresh (the clear register comes
        out of reset set, for the same reason)."""
        previous_valid, previous_last, _ = previous
        enable = Signal(name=f"acc_enable{suffix}_c{col}", attrs=_KEEP)
        clear = Signal(name=f"acc_clear{suffix}_c{col}", init=1, attrs=_KEEP)
        m.d.sync += [enable.eq(previous_valid), clear.eq(previous_valid & previous_last)]
        return enable, clear

    def _accumulate(self, m, results, terms, carry_ins, control):
        """One accumulator per column (``acc_c<col>``), its sum with the beat at stage
        ``sum_stage`` copied into the output queue's write register."""
        (valid, last, shifts), previous = control
        for col, (column_terms, carry_in) in enumerate(zip(terms, carry_ins)):
            enable, clear = self._accumulator_control(m, col, previous)
            accumulator = Signal(signed(self._config.acc_width), name=f"acc_c{col}",
                                 reset_less=True)
            base = accumulator
            if shifts is not None:
                base = base << shifts[col]
            column_sum, *outlier_sum = column_terms
            total = base + column_sum
            if carry_in is not None:
                total = total + carry_in
            for term in outlier_sum:
                total = total + term
            with m.If(clear):
                m.d.sync += accumulator.eq(0)
            with m.Elif(enable):
                m.d.sync += accumulator.eq(total)
            m.d.sync += results.payload[col].eq(total)
        m.d.sync += results.valid.eq(valid & last)

    def _accumulate_split(self, m, results, terms, carry_ins, control):
        """Each accumulator in two halves: the low half (``acc_low_c<col>``) adds the beat's
        low bits at stage ``sum_stage``; the high half (``acc_high_c<col>``) adds the beat's
        high bits and the low half's carry, both registered, one stage later. So each carry
        chain is half the accumulator's width, and the high half lags one beat. The sum goes
        into the output queue's write register a stage later than with one accumulator."""
        (valid, last, _), previous = control
        low_bits = self._config.accumulator_low_bits
        high_bits = self._config.acc_width - low_bits
        for col, (column_terms, carry_in) in enumerate(zip(terms, carry_ins)):
            enable, clear = self._accumulator_control(m, col, previous)
            # the high half's own copies, a stage behind (kept apart like the low half's)
            enable_high = Signal(name=f"acc_enable_high_c{col}", attrs=_KEEP)
            clear_high = Signal(name=f"acc_clear_high_c{col}", init=1, attrs=_KEEP)
            m.d.sync += [enable_high.eq(enable), clear_high.eq(clear)]
            low = Signal(low_bits, name=f"acc_low_c{col}", reset_less=True)
            high = Signal(signed(high_bits), name=f"acc_high_c{col}", reset_less=True)

            # Each term's low bits, sign-extended where it is narrower than the low half:
            # the high half takes the rest of each term (its sign alone, for a column sum
            # narrower than the low half), so every term counts exactly once.
            low_total = low
            for term in column_terms:
                term = Value.cast(term)
                low_total = low_total + Cat(term, term[-1].replicate(
                    max(0, low_bits - len(term))))[:low_bits]
            if carry_in is not None:
                low_total = low_total + carry_in
            # With n terms of low_bits bits each and a carry-in, the carry is at most n.
            carry = Signal(range(len(column_terms) + 1), name=f"acc_carry_c{col}",
                           reset_less=True)
            high_terms, *others = (Value.cast(term).shift_right(low_bits)
                                   for term in column_terms)
            for other in others:
                high_terms = high_terms + other
            high_term = Signal(high_terms.shape(), name=f"acc_high_term_c{col}",
                               reset_less=True)
            low_result = Signal(low_bits, name=f"acc_low_result_c{col}", reset_less=True)
            m.d.sync += [carry.eq(low_total[low_bits:]), high_term.eq(high_terms),
                         low_result.eq(low_total[:low_bits])]
            with m.If(clear):
                m.d.sync += low.eq(0)
            with m.Elif(enable):
                m.d.sync += low.eq(low_total[:low_bits])

            high_total = high + high_term + carry
            with m.If(clear_high):
                m.d.sync += high.eq(0)
            with m.Elif(enable_high):
                m.d.sync += high.eq(high_total)
            m.d.sync += results.payload[col].eq(Cat(low_result, high_total[:high_bits]))
        closing = Signal(name="closing_high")
        m.d.sync += [closing.eq(valid & last), results.valid.eq(closing)]

    def _triple_registers(self, loads):
        """With odd-digit products, a register of ``3·a`` for each copy of the activation
        register (its load appended to ``loads``): one adder per lane, shared by every
        column, in place of one multiplier per lane and column. Otherwise none."""
        if not self._config.odd_digit_products:
            return []
        low, high = shape_bounds(self.act_shape)
        layout = data.ArrayLayout(narrowest_signed(3 * low, 3 * high), self._config.lanes)
        copies = [Signal(layout, reset_less=True, name=f"triples_g{group}", attrs=_KEEP)
                  for group in range(-(-self._config.cols // ACT_FANOUT_COLS))]
        # a shift and an add, not `* 3`, which Yosys would put in an ECP5 DSP block
        triples = [(as_signed_operand(act) << 1) + as_signed_operand(act)
                   for act in self.act.payload.data]
        loads += [copy[lane].eq(triple) for copy in copies
                  for lane, triple in enumerate(triples)]
        return copies

    def _column_sums(self, m, act_copies, triple_copies, tile):
        """The dense products summed per column by a tree with one register per level;
        returns the column sums (at stage ``dense_product_stage + tree_levels``) and, per
        column, the carry bits that its tree did not add as carry-ins (one or none), each
        as ``(bit, stage)``: the correction bits of the odd-digit products (stage 0) and
        the borrows of the DSP lane pairs (stage 2)."""
        # Each register is only as wide as the sums it can hold (a 4×4 product fits 8
        # bits, not Amaranth's 9; an odd-digit one 7). A sum of `count` odd-digit products
        # has taken at most `count - 1` of their corrections as carry-ins.
        if self._config.odd_digit_products:
            low, high = odd_digit_bounds(self.act_shape, self.weight_shape)
            sum_shape = lambda count: narrowest_signed(count * low, count * high + count - 1)
        else:
            low, high = product_bounds(self.act_shape, self.weight_shape)
            sum_shape = lambda count: narrowest_signed(count * low, count * high)
        level, corrections = self._dense_products(m, act_copies, triple_copies, tile,
                                                  sum_shape(1))
        corrections = [[(bit, 0) for bit in bits] for bits in corrections]
        pair_sums = self._dsp_lane_pairs(m, act_copies, tile)
        stage = self._config.dense_product_stage
        for depth in range(self._config.tree_levels):
            next_level = []
            for col, terms in enumerate(level):
                sums = []
                for pair in range(0, len(terms), 2):
                    count = sum(count for _, count in terms[pair:pair + 2])
                    partial = Signal(sum_shape(count), name=f"sum_c{col}_d{depth}_{pair // 2}",
                                     reset_less=True)
                    total = sum(term for term, _ in terms[pair:pair + 2])
                    # an adder's carry-in is free: it takes a carry that is ready by now
                    ready = [index for index, (_, at) in enumerate(corrections[col])
                             if at <= stage]
                    if count > 1 and ready:
                        bit, at = corrections[col].pop(ready[-1])
                        total = total + self._delayed(m, bit, stage - at)
                    m.d.sync += partial.eq(total)
                    sums.append((partial, count))
                if depth == 0:
                    # the DSP lane pairs' sums are as late as the first level's
                    sums[:0] = [(pair_sum, 2) for pair_sum, _ in pair_sums[col]]
                    corrections[col] += [(borrow, stage + 1) for _, borrow in pair_sums[col]]
                next_level.append(sums)
            level = next_level
            stage += 1
        return [terms[0][0] for terms in level], corrections

    def _dsp_lane_pairs(self, m, act_copies, tile):
        """Per column, ``(sum − borrow, borrow)`` of each of its first ``dsp_lane_pairs``
        lane pairs from a :class:`~hw.multipliers.DotPair`, at stage
        ``dense_product_stage + 1``."""
        if not self._config.dsp_lane_pairs:
            return [[] for _ in range(self._config.cols)]
        assert self._config.dense_product_stage + 1 == DSP_STAGES
        pair_sums = []
        for col in range(self._config.cols):
            acts = act_copies[col // ACT_FANOUT_COLS]
            sums = []
            for lane in range(0, 2 * self._config.dsp_lane_pairs, 2):
                pair = DotPair(self.act_shape, self.weight_shape)
                m.submodules[f"dot_c{col}_l{lane}_l{lane + 1}"] = pair
                m.d.comb += [pair.a0.eq(acts[lane]), pair.a1.eq(acts[lane + 1]),
                             pair.b0.eq(tile[lane][col]), pair.b1.eq(tile[lane + 1][col])]
                sums.append((pair.s, pair.c))
            pair_sums.append(sums)
        return pair_sums

    def _dense_products(self, m, act_copies, triple_copies, tile, shape):
        """The first level of the adder tree: per column, ``(product, 1)`` for each lane,
        ready at stage :attr:`Config.dense_product_stage`; and per column the bits that
        make its odd-digit products exact (empty lists without them)."""
        level = [[] for _ in range(self._config.cols)]
        corrections = [[] for _ in range(self._config.cols)]
        acts_of = lambda col: act_copies[col // ACT_FANOUT_COLS]
        if self._config.multipliers == "packed":
            for lane in range(self._config.lanes):
                for col in range(0, self._config.cols, 2):
                    if col + 1 < self._config.cols:
                        pair = PackedPair(self.act_shape, self.weight_shape)
                        m.submodules[f"product_c{col}_c{col + 1}_l{lane}"] = pair
                        m.d.comb += [pair.a.eq(acts_of(col)[lane]),
                                     pair.b0.eq(tile[lane][col]),
                                     pair.b1.eq(tile[lane][col + 1])]
                        level[col].append((pair.p0, 1))
                        level[col + 1].append((pair.p1, 1))
                    else:
                        single = DspProduct(self.act_shape, self.weight_shape)
                        m.submodules[f"product_c{col}_l{lane}"] = single
                        m.d.comb += [single.a.eq(acts_of(col)[lane]),
                                     single.b.eq(tile[lane][col])]
                        # one register more, to line up with the pairs' registered split
                        product = Signal(shape, name=f"product_c{col}_l{lane}",
                                         reset_less=True)
                        m.d.sync += product.eq(single.p)
                        level[col].append((product, 1))
            return level, corrections
        for col in range(self._config.cols):
            for lane in range(2 * self._config.dsp_lane_pairs, self._config.lanes):
                product = Signal(shape, name=f"product_c{col}_l{lane}", reset_less=True)
                act, weight = acts_of(col)[lane], tile[lane][col]
                if self._config.odd_digit_products:
                    short, correction = odd_digit_product(
                        as_signed_operand(act), triple_copies[col // ACT_FANOUT_COLS][lane],
                        weight)
                    sign = Signal(name=f"correction_c{col}_l{lane}")
                    m.d.comb += sign.eq(correction)
                    m.d.sync += product.eq(short)
                    corrections[col].append(sign)
                elif self._config.product_stages == 2:
                    # w = high·2^h + low, low unsigned: two narrower products a cycle, each
                    # about half the 4×4 product's logic depth, summed the next cycle.
                    half = self._config.weight_bits // 2
                    partials = []
                    for part, operand in (("low", weight[:half]),
                                          ("high", weight[half:].as_signed())):
                        partial = Signal((act * operand).shape(), reset_less=True,
                                         name=f"product_{part}_c{col}_l{lane}")
                        m.d.sync += partial.eq(act * operand)
                        partials.append(partial)
                    m.d.sync += product.eq(partials[0] + (partials[1] << half))
                else:
                    m.d.sync += product.eq(act * weight)
                level[col].append((product, 1))
        return level, corrections

    def _register_slots(self, m, port, kind, hold):
        if "outliers" not in port.payload.shape().members:
            return None
        slots = Signal.like(port.payload.outliers, name=f"{kind}_slots", reset_less=True)
        if hold:
            with m.If(port.valid & port.ready):
                m.d.sync += slots.eq(port.payload.outliers)
        else:
            m.d.sync += slots.eq(port.payload.outliers)
        return slots

    def _check_rules(self, m, act_slots, weight_slots, check):
        """Hand the registered outlier slots' positions to an :class:`OutlierRules` while
        ``check`` (a taken beat's first sub-beat), and its fault to ``fault``."""
        config = self._config
        m.submodules.rules = rules = OutlierRules(
            lanes=config.lanes, cols=config.cols, act_outlier_slots=config.act_outlier_slots,
            weight_outlier_slots=config.weight_outlier_slots)
        for slots, positions in ((act_slots, getattr(rules, "act", None)),
                                 (weight_slots, getattr(rules, "weights", None))):
            for index in range(len(slots) if slots is not None else 0):
                m.d.comb += [getattr(positions[index], field).eq(getattr(slots[index], field))
                             for field in positions[index].shape().members]
        m.d.comb += [rules.check.eq(check), self.fault.eq(rules.fault)]

    def _final_group(self, act_payload, weight_payload):
        """Index of the last group of slots holding a valid outlier (0 if none)."""
        final = Const(0, range(self._config.groups))
        for group in range(1, self._config.groups):
            used = Const(0)
            for slots, lanes in ((getattr(act_payload, "outliers", None),
                                  self._config.act_outlier_lanes),
                                 (getattr(weight_payload, "outliers", None),
                                  self._config.weight_outlier_lanes)):
                if slots is not None:
                    for index in range(group * lanes,
                                       min((group + 1) * lanes, slots.shape().length)):
                        used = used | slots[index].valid
            final = Mux(used, group, final)
        return final

    def _issued_slots(self, m, sub, slots, lanes, kind):
        """The slots sub-beat ``sub`` hands to the ``lanes`` outlier multipliers."""
        issued = []
        for lane in range(lanes):
            slot = Signal(slots.shape().elem_shape, name=f"{kind}_issue_{lane}")
            with m.Switch(sub):
                for group in range(self._config.groups):
                    if group * lanes + lane < slots.shape().length:
                        with m.Case(group):
                            m.d.comb += slot.eq(slots[group * lanes + lane])
            issued.append(slot)
        return issued

    def _outlier_product(self, m, name, a, b, valid):
        """``a × b`` where ``valid``, else 0, ready at stage :attr:`_outlier_product_stage`
        (in the DSP modes ``a``, ``b`` and ``valid`` are a stage late: see
        :meth:`_lane_selected`).

        In the DSP modes the operands are registered in the fabric once more before the
        block: the DSP blocks sit in a few fixed rows, far from the registers that feed
        them. The zeroing goes on an operand, so the block's product register is the only
        logic after the multiply.
        """
        low, high = product_bounds(Value.cast(a).shape(), Value.cast(b).shape())
        if self._config.multipliers == "lut":
            product = Signal(narrowest_signed(low, high), reset_less=True, name=name)
            m.d.sync += product.eq(Mux(valid, a * b, 0))
            return product
        m.submodules[name] = dsp = DspProduct(Value.cast(a).shape(), Value.cast(b).shape())
        a_reg = Signal(Value.cast(a).shape(), name=f"{name}_a", reset_less=True)
        b_reg = Signal(Value.cast(b).shape(), name=f"{name}_b", reset_less=True)
        m.d.sync += [a_reg.eq(Mux(valid, a, 0)), b_reg.eq(b)]
        m.d.comb += [dsp.a.eq(a_reg), dsp.b.eq(b_reg)]
        return dsp.p

    def _lane_selected(self, m, tile, slot, name):
        """The weight row at an activation outlier's lane (``tile[slot.lane]``), with the
        slot's value and valid bit: as they are with LUT products, a stage later in the
        DSP modes, where the row is selected in two registered steps (among
        :data:`ROW_SELECT_LANES` lanes, then among those groups). The select fans out to
        every column; on the ECP5 16×16 array the one-step multiplexer and its route to
        the DSP operand register were the critical path."""
        if self._config.multipliers == "lut":
            return tile[slot.lane], slot.value, slot.valid
        rows = [Value.cast(tile[lane]) for lane in range(self._config.lanes)]
        step = (ROW_SELECT_LANES - 1).bit_length()
        parts = []
        for group, start in enumerate(range(0, len(rows), ROW_SELECT_LANES)):
            part = Signal(tile.shape().elem_shape, name=f"{name}_row_g{group}",
                          reset_less=True)
            choices = Array(rows[start:start + ROW_SELECT_LANES])
            m.d.sync += part.eq(choices[slot.lane[:step]])
            parts.append(part)
        group_index = Signal(max(1, len(slot.lane) - step), name=f"{name}_row_group",
                             reset_less=True)
        m.d.sync += group_index.eq(slot.lane[step:])
        value, valid = self._delay_values(m, [slot.value, slot.valid],
                                          [f"{name}_value", f"{name}_valid"])
        row = Signal(tile.shape().elem_shape, name=f"{name}_row")
        m.d.comb += row.eq(Array(parts)[group_index])
        return row, value, valid

    def _outlier_sums(self, m, sub, act_slots, weight_slots, full_acts, tile):
        """Outlier products (stage :attr:`_outlier_product_stage`), then their sum per
        column (registered one stage later)."""
        terms = [[] for _ in range(self._config.cols)]
        if act_slots is not None:
            for index, slot in enumerate(self._issued_slots(
                    m, sub, act_slots, self._config.act_outlier_lanes, "act_outlier")):
                row, value, valid = self._lane_selected(m, tile, slot, f"act_outlier_{index}")
                for col in range(self._config.cols):
                    terms[col].append(self._outlier_product(
                        m, f"act_outlier_product_{index}_c{col}", value, row[col], valid))
        if weight_slots is not None:
            act_shape = self.act_outlier_shape if act_slots is not None else self.act_shape
            for index, slot in enumerate(self._issued_slots(
                    m, sub, weight_slots, self._config.weight_outlier_lanes, "weight_outlier")):
                # The full activation at the outlier's lane: an activation outlier there
                # replaces the (zero) dense slot, so outlier × outlier is counted here once.
                act = Signal(act_shape, name=f"weight_outlier_act_{index}")
                m.d.comb += act.eq(full_acts[slot.lane])
                if act_slots is not None:
                    for act_slot in act_slots:
                        with m.If(act_slot.valid & (act_slot.lane == slot.lane)):
                            m.d.comb += act.eq(act_slot.value)
                operands = [slot.value, act, slot.valid]
                if self._config.multipliers != "lut":
                    # registered after the lane multiplexer, in step with the activation
                    # outlier lanes' selected rows
                    operands = self._delay_values(m, operands, [
                        f"weight_outlier_{index}_{part}" for part in ("value", "act", "valid")])
                product = self._outlier_product(m, f"weight_outlier_product_{index}",
                                                *operands)
                col = slot.col
                for stage in range(self._config.outlier_product_stage):
                    col_d = Signal.like(slot.col, name=f"weight_outlier_col_{index}_s{stage}",
                                        reset_less=True)
                    m.d.sync += col_d.eq(col)
                    col = col_d
                for target in range(self._config.cols):
                    terms[target].append(Mux(col == target, product, 0))
        sums = []
        for col, column_terms in enumerate(terms):
            total = Signal(signed(self._config.acc_width), name=f"outlier_sum_c{col}",
                           reset_less=True)
            m.d.sync += total.eq(sum(column_terms))
            sums.append(total)
        return sums

    @classmethod
    def _delayed(cls, m, value, stages):
        """``value`` (a signal of stage 0) delayed to stage ``stages``."""
        for _ in range(stages):
            (value,) = cls._delay_values(m, [value])
        return value

    @staticmethod
    def _delay_values(m, values, names=None):
        """``values`` registered once, each named ``<name>_d`` after its signal or after
        the matching entry of ``names``."""
        names = names or [Value.cast(value).name for value in values]
        delayed = [Signal.like(value, name=f"{name}_d", reset_less=True)
                   for value, name in zip(values, names)]
        m.d.sync += [out.eq(value) for out, value in zip(delayed, values)]
        return delayed
