from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.params import ACT_BITS, WEIGHT_BITS, check_int
from .result_buffer import ResultBuffer

__all__ = ["ActBeat", "DenseMacArray", "MAX_ACC_WIDTH"]

#: Widest accumulator the semantics admits (docs/semantics.md §2).
MAX_ACC_WIDTH = 44


class ActBeat(data.StructLayout):
    """One activation vector of ``lanes`` elements; ``last`` ends a reduction (§4)."""

    def __init__(self, act_shape, lanes):
        super().__init__({
            "data": data.ArrayLayout(act_shape, lanes),
            "last": unsigned(1),
        })


def _signed_shape(low, high):
    """The narrowest signed shape holding ``low..high``."""
    width = 1
    while not -(1 << (width - 1)) <= low <= high <= (1 << (width - 1)) - 1:
        width += 1
    return signed(width)


def _shape_bounds(shape):
    shape = Shape.cast(shape)
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


class DenseMacArray(wiring.Component):
    """Dense low-bit multiply-accumulate array, output-stationary (docs/semantics.md §2, §4).

    Each beat multiplies one activation vector (``lanes`` elements along K) by one weight
    tile (``lanes × cols``) and adds the ``cols`` column sums to the accumulators. The beat
    whose activation has ``last`` set closes the reduction: the accumulators leave through
    ``acc`` and restart with the next beat, so reductions follow each other with no idle
    cycle and the array takes one beat per cycle in steady state.

    The datapath is a stall-free pipeline: input registers, registered products, one
    register per adder-tree level (which also keeps yosys from folding the whole sum of
    products into one wide cell), then the accumulators. Backpressure from ``acc`` reaches
    the inputs through a :class:`ResultBuffer` credit, never through the datapath.

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

    Raises
    ------
    TypeError
        If a parameter is of the wrong type or outside its range.
    ValueError
        If ``acc_width`` is narrower than §2 requires for ``max_k``, or ``max_k`` needs more
        than 44 bits.

    Members
    -------
    act : In(stream.Signature(ActBeat(act_shape, lanes)))
        Activation vectors with the ``last`` flag.
    weights : In(stream.Signature(ArrayLayout(ArrayLayout(signed(weight_bits), cols), lanes)))
        Weight tiles, indexed ``[lane][col]``; one per activation vector.
    acc : Out(stream.Signature(ArrayLayout(signed(acc_width), cols)))
        One vector of column sums per reduction.
    """

    def __init__(self, *, lanes, cols, act_bits, weight_bits, act_signed=True, max_k,
                 acc_width=None):
        self._lanes = check_int("Lane count", lanes, (1, 64))
        self._cols = check_int("Column count", cols, (1, 64))
        self._act_bits = check_int("Activation width", act_bits, ACT_BITS)
        self._weight_bits = check_int("Weight width", weight_bits, WEIGHT_BITS)
        if not isinstance(act_signed, bool):
            raise TypeError(f"Activation signedness must be a bool, not {act_signed!r}")
        self._act_signed = act_signed
        self._max_k = check_int("Maximum reduction length max_k", max_k, (1, 1 << 40))

        required = self._required_acc_width()
        if required > MAX_ACC_WIDTH:
            raise ValueError(f"Maximum reduction length max_k={max_k} needs a {required}-bit "
                             f"accumulator; at most {MAX_ACC_WIDTH} bits are supported")
        if acc_width is None:
            acc_width = required
        check_int("Accumulator width", acc_width, (1, MAX_ACC_WIDTH))
        if acc_width < required:
            low, high = self._accumulator_bounds()
            raise ValueError(
                f"Accumulator width {acc_width} can overflow: {self._padded_k} products of "
                f"{self.act_shape} × {self.weight_shape} range over {low}..{high}, which needs "
                f"at least {required} bits")
        self._acc_width = acc_width

        super().__init__({
            "act": In(stream.Signature(ActBeat(self.act_shape, lanes))),
            "weights": In(stream.Signature(
                data.ArrayLayout(data.ArrayLayout(self.weight_shape, cols), lanes))),
            "acc": Out(stream.Signature(data.ArrayLayout(signed(acc_width), cols))),
        })

    @property
    def lanes(self):
        """Multipliers per column (parallelism along K)."""
        return self._lanes

    @property
    def cols(self):
        """Columns (parallelism along N)."""
        return self._cols

    @property
    def act_shape(self):
        """Shape of one activation."""
        return signed(self._act_bits) if self._act_signed else unsigned(self._act_bits)

    @property
    def weight_shape(self):
        """Shape of one weight."""
        return signed(self._weight_bits)

    @property
    def max_k(self):
        """Longest reduction the accumulators hold exactly."""
        return self._max_k

    @property
    def acc_width(self):
        """Accumulator width in bits."""
        return self._acc_width

    @property
    def latency(self):
        """Cycles from a ``last`` beat's transfer to its result entering the output queue."""
        return 3 + self._tree_levels

    @property
    def _padded_k(self):
        return -(-self._max_k // self._lanes) * self._lanes

    @property
    def _tree_levels(self):
        return (self._lanes - 1).bit_length()

    def _product_bounds(self):
        act_low, act_high = _shape_bounds(self.act_shape)
        weight_low, weight_high = _shape_bounds(self.weight_shape)
        products = [a * w for a in (act_low, act_high) for w in (weight_low, weight_high)]
        return min(products), max(products)

    def _accumulator_bounds(self):
        low, high = self._product_bounds()
        return self._padded_k * low, self._padded_k * high

    def _required_acc_width(self):
        return _signed_shape(*self._accumulator_bounds()).width

    def elaborate(self, platform):
        m = Module()
        m.submodules.results = results = ResultBuffer(
            data.ArrayLayout(signed(self._acc_width), self._cols), depth=self.latency + 4)
        wiring.connect(m, wiring.flipped(self.acc), results.r)

        # Join the two input streams; a `last` beat also needs a result credit.
        credit_ok = ~self.act.payload.last | results.can_claim
        m.d.comb += [
            self.act.ready.eq(self.weights.valid & credit_ok),
            self.weights.ready.eq(self.act.valid & credit_ok),
        ]
        accepted = self.act.valid & self.act.ready
        m.d.comb += results.claim.eq(accepted & self.act.payload.last)

        # Stage 0: input registers.
        # Datapath registers have no reset: only the valid bits need one, and a reset net
        # to every product and partial sum would be the array's largest fanout.
        acts = Signal.like(self.act.payload.data, reset_less=True)
        weights = Signal.like(self.weights.payload, reset_less=True)
        valid = Signal()
        last = Signal(reset_less=True)
        m.d.sync += [
            acts.eq(self.act.payload.data),
            weights.eq(self.weights.payload),
            valid.eq(accepted),
            last.eq(self.act.payload.last),
        ]

        # Stage 1: products, then one register per adder-tree level. Each register is only
        # as wide as the sums it can hold (a 4×4 product fits 8 bits, not Amaranth's 9),
        # which takes one adder bit off every level of the tree.
        product_low, product_high = self._product_bounds()
        sum_shape = lambda count: _signed_shape(count * product_low, count * product_high)
        level = []
        for col in range(self._cols):
            products = []
            for lane in range(self._lanes):
                product = Signal(sum_shape(1), name=f"product_c{col}_l{lane}",
                                 reset_less=True)
                m.d.sync += product.eq(acts[lane] * weights[lane][col])
                products.append((product, 1))
            level.append(products)
        valid, last = self._delay(m, valid, last)

        for depth in range(self._tree_levels):
            next_level = []
            for col, terms in enumerate(level):
                sums = []
                for pair in range(0, len(terms), 2):
                    count = sum(count for _, count in terms[pair:pair + 2])
                    partial = Signal(sum_shape(count), name=f"sum_c{col}_d{depth}_{pair // 2}",
                                     reset_less=True)
                    m.d.sync += partial.eq(sum(term for term, _ in terms[pair:pair + 2]))
                    sums.append((partial, count))
                next_level.append(sums)
            level = next_level
            valid, last = self._delay(m, valid, last)

        # Accumulate; the beat after `last` starts afresh.
        starting = Signal(init=1)
        with m.If(valid):
            m.d.sync += starting.eq(last)
        for col, ((column_sum, _),) in enumerate(level):
            accumulator = Signal(signed(self._acc_width), name=f"acc_c{col}", reset_less=True)
            total = Mux(starting, 0, accumulator) + column_sum
            with m.If(valid):
                m.d.sync += accumulator.eq(total)
            m.d.sync += results.w.payload[col].eq(total)
        m.d.sync += results.w.valid.eq(valid & last)
        return m

    @staticmethod
    def _delay(m, valid, last):
        valid_delayed, last_delayed = Signal(name="valid_d"), Signal(name="last_d",
                                                                    reset_less=True)
        m.d.sync += [valid_delayed.eq(valid), last_delayed.eq(last)]
        return valid_delayed, last_delayed
