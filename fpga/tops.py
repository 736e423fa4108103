"""Board-independent test tops: a :class:`~hw.MacArray` fed from block RAM, for fmax and
resource measurements.

The array is the only thing worth measuring, so everything around it is built to stay off
the critical path and to keep every bit of the datapath observable: the operands come from
registered block-RAM reads (random contents, so Yosys cannot fold any product to a
constant), and the accumulator vectors are XOR-folded into a register whose bits leave the
chip, so no product, partial sum or accumulator bit is dead logic.
"""

import random
from operator import attrgetter

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.hw import MacArray
from olmac.hw.stream import SkidBuffer
from olmac.spec import check_int
from .rom import RegisteredRom

__all__ = ["BramFeeder", "XorFold", "BramFedArray"]


def _random_value(shape, rng, index_bounds):
    """A random constant of ``shape`` (a layout or a plain shape), as a layout accepts it.

    Fields named in ``index_bounds`` (an outlier's ``lane`` and ``col``) are drawn within
    their bound, so every stored outlier addresses a multiplier that exists.
    """
    if isinstance(shape, data.StructLayout):
        return {name: (rng.randrange(index_bounds[name]) if name in index_bounds
                       else _random_value(field.shape, rng, index_bounds))
                for name, field in shape}
    if isinstance(shape, data.ArrayLayout):
        return [_random_value(shape.elem_shape, rng, index_bounds)
                for _ in range(shape.length)]
    shape = Shape.cast(shape)
    if shape.signed:
        return rng.randint(-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1)
    return rng.getrandbits(shape.width)


class BramFeeder(wiring.Component):
    """Streams the contents of two block-RAM ROMs into a :class:`~hw.MacArray`, one beat per
    cycle for as long as the array takes them.

    Beat ``i`` carries activation word ``i mod depth`` and weight word ``i mod depth``; every
    ``beats_per_reduction``-th activation beat has ``last`` set. Both memories are
    :class:`~fpga.rom.RegisteredRom`: block RAM with a registered output (the block's own
    output register on ECP5, fabric flip-flops elsewhere), so the slow block-RAM
    clock-to-output never shares a cycle with the array's input logic. The whole feeder
    advances together (a two-stage pipeline with one enable), which keeps the stream rules:
    a beat stays put while ``valid`` is high and ``ready`` low.

    Parameters
    ----------
    act_shape, weight_shape : data.StructLayout
        Payload layouts of the array's ``act`` and ``weights`` streams. The activation
        layout must have a ``last`` field; the feeder drives it, the memory holds the rest.
    depth : int
        Words in each memory, 2..65536.
    beats_per_reduction : int
        Beats from one ``last`` to the next, 1..2**40.
    seed : int
        Seed of the random memory contents, 0..2**64-1.
    index_bounds : dict of str to int
        Bounds of index fields in the payload (``{"lane": lanes, "col": cols}``).

    Raises
    ------
    TypeError
        If ``depth``, ``beats_per_reduction`` or ``seed`` is not an integer in its range.
    ValueError
        If ``act_shape`` has no ``last`` field.

    Members
    -------
    act : Out(stream.Signature(act_shape))
    weights : Out(stream.Signature(weight_shape))
    """

    def __init__(self, act_shape, weight_shape, *, depth, beats_per_reduction, seed,
                 index_bounds):
        if not isinstance(act_shape, data.StructLayout) or "last" not in act_shape.members:
            raise ValueError(f"Activation payload must be a StructLayout with a 'last' field, "
                             f"not {act_shape!r}")
        self._depth = check_int("Memory depth", depth, (2, 1 << 16))
        self._beats = check_int("Beats per reduction", beats_per_reduction, (1, 1 << 40))
        self._seed = check_int("Seed", seed, (0, (1 << 64) - 1))
        self._index_bounds = dict(index_bounds)
        # The activation memory holds everything of a beat except `last`, which the
        # sequencer knows.
        self._act_word = data.StructLayout({name: shape for name, shape
                                            in act_shape.members.items() if name != "last"})
        self._weight_word = weight_shape
        super().__init__({
            "act": Out(stream.Signature(act_shape)),
            "weights": Out(stream.Signature(weight_shape)),
        })

    depth = property(attrgetter("_depth"), doc="Words in each memory.")

    @property
    def memory_bits(self):
        """Bits of block RAM the two memories hold, ``depth × (act word + weight word)``."""
        return self._depth * (Shape.cast(self._act_word).width
                              + Shape.cast(self._weight_word).width)

    def contents(self):
        """The initial contents of the two memories, ``(activation words, weight words)``,
        each a list of ``depth`` values as the memory's layout accepts them (the activation
        words lack ``last``)."""
        rng = random.Random(self._seed)
        act = [_random_value(self._act_word, rng, self._index_bounds)
               for _ in range(self._depth)]
        weights = [_random_value(self._weight_word, rng, self._index_bounds)
                   for _ in range(self._depth)]
        return act, weights

    def elaborate(self, platform):
        m = Module()
        act_contents, weight_contents = self.contents()
        m.submodules.act_rom = act_rom = RegisteredRom(self._act_word, self._depth,
                                                       act_contents)
        m.submodules.weight_rom = weight_rom = RegisteredRom(self._weight_word, self._depth,
                                                             weight_contents)

        address = Signal(range(self._depth))
        beat = Signal(range(self._beats))
        fetched = Signal()               # the ROMs' first stage holds a beat
        fetched_last = Signal()
        # Both streams share `valid`, so the array's two readies are equal; a beat is taken
        # from both or from neither.
        taken = self.act.ready & self.weights.ready
        advance = ~self.act.valid | taken
        m.d.comb += [
            act_rom.addr.eq(address), act_rom.en.eq(advance),
            weight_rom.addr.eq(address), weight_rom.en.eq(advance),
            self.weights.payload.eq(weight_rom.data),
        ]
        m.d.comb += [self.act.payload[name].eq(act_rom.data[name])
                     for name in self._act_word.members]
        with m.If(advance):
            m.d.sync += [
                address.eq(Mux(address == self._depth - 1, 0, address + 1)),
                beat.eq(Mux(beat == self._beats - 1, 0, beat + 1)),
                fetched.eq(1),
                fetched_last.eq(beat == self._beats - 1),
                self.act.valid.eq(fetched),
                self.weights.valid.eq(fetched),
                self.act.payload.last.eq(fetched_last),
            ]
        return m


class XorFold(wiring.Component):
    """Takes every vector of a stream and XOR-folds it into a ``width``-bit register.

    Each output bit depends on bits of every element of every vector taken, so Yosys keeps
    all the logic that computes them. Each vector is registered as it is taken, as a
    consumer of the array would, and the fold is registered twice (across the elements,
    then down to ``width`` bits), so it adds no long path of its own: without the first
    register the XOR across the elements sat behind the array's output queue, whose
    block-RAM read (and Yosys's read-during-write bypass) alone take half a UP5K cycle.

    Parameters
    ----------
    payload_shape : ShapeLike
        Shape of one vector.
    width : int
        Output bits, 1..64.

    Raises
    ------
    TypeError
        If ``width`` is not an integer in 1..64.

    Members
    -------
    i : In(stream.Signature(payload_shape))
        Always ready.
    o : Out(width)
        Running XOR of the folded vectors.
    """

    def __init__(self, payload_shape, width):
        self._width = check_int("Fold width", width, (1, 64))
        super().__init__({
            "i": In(stream.Signature(payload_shape)),
            "o": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(1)
        payload = Signal.like(self.i.payload, reset_less=True)
        payload_valid = Signal()
        m.d.sync += [payload.eq(self.i.payload), payload_valid.eq(self.i.valid)]
        if isinstance(payload, data.View) and isinstance(payload.shape(), data.ArrayLayout):
            elements = [Value.cast(element) for element in payload]
        else:
            elements = [Value.cast(payload)]
        across = Signal(max(len(element) for element in elements))
        across_valid = Signal()
        total = 0
        for element in elements:
            total = total ^ element.as_unsigned()
        m.d.sync += [across.eq(total), across_valid.eq(payload_valid)]

        down = 0
        for start in range(0, len(across), self._width):
            down = down ^ across[start:start + self._width]
        with m.If(across_valid):
            m.d.sync += self.o.eq(self.o ^ down)
        return m


class BramFedArray(wiring.Component):
    """A :class:`~hw.MacArray` fed from block RAM, with its accumulators folded onto
    ``fold_width`` output bits: the top whose resources and fmax the FPGA builds measure.

    The array takes one beat per cycle in steady state: the activation stream carries
    ``last`` every ``ceil(max_k / lanes)`` beats, the output is always ready, and each beat
    holds at most as many outliers of each kind as the array has outlier lanes (so no beat
    needs a second cycle). Throughput is therefore ``lanes × cols`` MACs per cycle.

    With ``skid`` the feeder reaches the array through a :class:`SkidBuffer` per stream, so
    the array's combinational ``ready`` ends at one flip-flop instead of fanning out to the
    feeder and the block RAMs' enables (it costs a register and a multiplexer per payload
    bit, a lot on an iCE40).

    Parameters
    ----------
    lanes, cols, act_bits, weight_bits, act_signed, max_k, act_outlier_lanes,
    weight_outlier_lanes, act_outlier_bits, weight_outlier_bits, multipliers, product_stages,
    accumulator_stages
        As for :class:`~hw.MacArray`; the outlier slots per beat equal the outlier lanes.
    depth : int
        Words in the activation and in the weight memory, 2..65536.
    seed : int
        Seed of the random memory contents, 0..2**64-1.
    fold_width : int
        Output bits, 1..64.
    skid : bool
        Put a :class:`SkidBuffer` between the feeder and the array.

    Raises
    ------
    TypeError
        If ``depth``, ``seed`` or ``fold_width`` is not an integer in its range, and as
        :class:`~hw.MacArray` raises for the array parameters.
    ValueError
        As :class:`~hw.MacArray` raises.

    Members
    -------
    fold : Out(fold_width)
        Running XOR-fold of every accumulator vector; put it on pins or LEDs.
    """

    def __init__(self, *, lanes, cols, act_bits, weight_bits, act_signed=True, max_k,
                 act_outlier_lanes=0, weight_outlier_lanes=0, act_outlier_bits=16,
                 weight_outlier_bits=16, depth=256, seed=0, fold_width=8, multipliers="lut",
                 product_stages=1, accumulator_stages=1, skid=True):
        self._depth = check_int("Memory depth", depth, (2, 1 << 16))
        self._seed = check_int("Seed", seed, (0, (1 << 64) - 1))
        self._fold_width = check_int("Fold width", fold_width, (1, 64))
        if not isinstance(skid, bool):
            raise TypeError(f"Skid must be a bool, not {skid!r}")
        self._skid = skid
        self._array_config = MacArray.Config(
            lanes=lanes, cols=cols, act_bits=act_bits, weight_bits=weight_bits,
            act_signed=act_signed, max_k=max_k, act_outlier_lanes=act_outlier_lanes,
            weight_outlier_lanes=weight_outlier_lanes, act_outlier_bits=act_outlier_bits,
            weight_outlier_bits=weight_outlier_bits,
            act_outlier_slots=act_outlier_lanes or None,
            weight_outlier_slots=weight_outlier_lanes or None, multipliers=multipliers,
            product_stages=product_stages, accumulator_stages=accumulator_stages)
        super().__init__({"fold": Out(fold_width)})

    array = property(attrgetter("_array_config"),
                     doc="The :class:`~hw.MacArray.Config` of the array under measurement.")
    depth = property(attrgetter("_depth"), doc="Words in each memory.")
    seed = property(attrgetter("_seed"), doc="Seed of the memory contents.")
    fold_width = property(attrgetter("_fold_width"), doc="Output bits.")

    @property
    def macs_per_cycle(self):
        """Dense multiply-accumulates per cycle in steady state (``lanes × cols``)."""
        return self._array_config.lanes * self._array_config.cols

    def elaborate(self, platform):
        m = Module()
        config = self._array_config
        m.submodules.feeder = feeder = BramFeeder(
            config.act_layout, config.weight_layout, depth=self._depth,
            beats_per_reduction=-(-config.max_k // config.lanes), seed=self._seed,
            index_bounds={"lane": config.lanes, "col": config.cols})
        m.submodules.array = array = MacArray(**vars(config))
        m.submodules.fold = fold = XorFold(config.acc_layout, self._fold_width)
        if self._skid:
            m.submodules.act_skid = act_skid = SkidBuffer(config.act_layout)
            m.submodules.weight_skid = weight_skid = SkidBuffer(config.weight_layout)
            wiring.connect(m, feeder.act, act_skid.i)
            wiring.connect(m, act_skid.o, array.act)
            wiring.connect(m, feeder.weights, weight_skid.i)
            wiring.connect(m, weight_skid.o, array.weights)
        else:
            wiring.connect(m, feeder.act, array.act)
            wiring.connect(m, feeder.weights, array.weights)
        wiring.connect(m, array.acc, fold.i)
        m.d.comb += self.fold.eq(fold.o)
        return m
