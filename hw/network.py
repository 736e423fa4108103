"""The network sequencer: runs an integer program (docs/program.md §9–§13) layer by layer on
one MAC array, with on-chip program, weight, parameter and activation memories.

The program is a list of :class:`OpDescriptor` words (docs/network.md §15 gives the op
set, the loop order and the memory layout; a compiler, ``olmac.compiler``, produces
them with the memory images). The core runs them in order and starts again at op 0 after
an op marked ``final``, so a program that begins with a ``LOAD`` and ends with a ``STORE``
classifies one image per pass.
"""



from amaranth.hdl import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from olmac.spec import (MULTIPLIER_BITS, BIAS_BITS, SHIFT_RANGE, RESIDUAL_SHIFT_RANGE,
                          check_int)
from .mac_array import MacArray, WeightBeat
from .requant import Requantizer
from .serial_requant import SerialRequantizer

__all__ = ["OpKind", "OpDescriptor", "ChannelWord", "memory_layouts", "NetworkCore", "STORAGE_BITS",
           "MAX_DIM", "MAX_KERNEL"]

#: Every activation memory slot is 16 bits: a highway tensor is stored at full width and a
#: low-width tensor in its low bits (docs/network.md §15).
STORAGE_BITS = 16
#: Largest feature-map height/width and kernel/stride/padding the descriptors hold.
MAX_DIM = 255
MAX_KERNEL = 15
#: Widest window sum of a SUM op: the reducer keeps 17 + this many bits.
_WINDOW_GROWTH = 8
#: Bits of one row of a narrow memory (``memories="narrow"``): an iCE40 block RAM is 16 bits
#: wide at its full depth of 256 words.
CHUNK_BITS = 16
#: Choices of the ``requantizer`` and ``memories`` options of :class:`NetworkCore`.
REQUANTIZERS = ("parallel", "serial")
MEMORY_STYLES = ("wide", "narrow")


def _chunk_count(width):
    return -(-width // CHUNK_BITS)


def _row_slices(item_bits, items=1):
    """``(offset, bits)`` of each row of a narrow memory word made of ``items`` fields of
    ``item_bits`` bits, each starting on a row of its own (so one field, e.g. one channel's
    parameters, is read without the rest), least significant first."""
    return [(item * item_bits + row * CHUNK_BITS,
             min(CHUNK_BITS, item_bits - row * CHUNK_BITS))
            for item in range(items) for row in range(_chunk_count(item_bits))]


def _chunked(words, slices):
    """``words`` as rows: the bits of each of ``slices``."""
    return [(word >> offset) & ((1 << bits) - 1) for word in words for offset, bits in slices]


def _write_chunk(m, target, index, value, slices=None):
    """``target[offset:offset + bits] <= value`` for the row ``index`` (a signal) of
    ``slices`` (default: rows of :data:`CHUNK_BITS`)."""
    slices = slices or _row_slices(len(target))
    with m.Switch(index):
        for row, (offset, bits) in enumerate(slices):
            with m.Case(row):
                m.d.sync += target[offset:offset + bits].eq(value[:bits])


class OpKind(enum.Enum, shape=3):
    """What one op does (docs/network.md §15)."""
    #: ``count`` words from ``inputs`` into the activation memory at ``out_base``.
    LOAD = 0
    #: ``count`` words from the activation memory at ``in_base`` to ``outputs``.
    STORE = 1
    #: Convolution or linear layer on the MAC array, requantized (with a residual).
    GEMM = 2
    #: Lane-wise window sum, requantized: average pooling, requantize, input quantization.
    SUM = 3
    #: Lane-wise window maximum (max pooling), passed through the requantizer unchanged.
    MAX = 4


class OpDescriptor(data.StructLayout):
    """One op of a program; addresses are in words of the memory named."""

    def __init__(self, data_depth, weight_depth, param_depth):
        dim = range(MAX_DIM + 1)
        kernel = range(MAX_KERNEL + 1)
        super().__init__({
            "kind": OpKind,
            "final": unsigned(1),
            "in_base": range(data_depth),
            "out_base": range(data_depth),
            "res_base": range(data_depth),
            "count": range(data_depth + 1),
            "in_h": dim, "in_w": dim, "in_words": range(data_depth + 1),
            "out_h": dim, "out_w": dim, "out_words": range(data_depth + 1),
            "out_pixels": range(data_depth + 1),
            "kernel_h": kernel, "kernel_w": kernel,
            "stride_h": kernel, "stride_w": kernel,
            "pad_h": kernel, "pad_w": kernel,
            "in_signed": unsigned(1),
            "residual": unsigned(1),
            "res_signed": unsigned(1),
            "relu": unsigned(1),
            "low": signed(STORAGE_BITS + 1),
            "high": signed(STORAGE_BITS + 1),
            "weight_base": range(weight_depth),
            "param_base": range(param_depth),
        })


class ChannelWord(data.StructLayout):
    """Requantization parameters of one output channel in the parameter memory."""

    def __init__(self):
        super().__init__({
            "bias": signed(BIAS_BITS),
            "multiplier": signed(MULTIPLIER_BITS),
            "shift": range(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1),
            "residual_multiplier": signed(MULTIPLIER_BITS),
            "residual_shift": range(RESIDUAL_SHIFT_RANGE[0], RESIDUAL_SHIFT_RANGE[1] + 1),
        })


def _counters(m, name, limits, step, clear):
    """Nested counters, outermost first, each running ``0..limit``; ``step`` advances the
    innermost and carries outwards, ``clear`` restarts them all. Returns the counters, the
    "at its limit" flag of each and the flag that the position is the final one."""
    counters = [Signal(unsigned(len(limit)), name=f"{name}_{index}")
                for index, limit in enumerate(limits)]
    at_limit = [counter == limit for counter, limit in zip(counters, limits)]
    carry = step
    for counter, limit_reached in reversed(list(zip(counters, at_limit))):
        with m.If(clear):
            m.d.sync += counter.eq(0)
        with m.Elif(carry):
            m.d.sync += counter.eq(Mux(limit_reached, 0, counter + 1))
        carry = carry & limit_reached
    final = Signal(name=f"{name}_final")
    m.d.comb += final.eq(Cat(*at_limit).all())
    return counters, at_limit, final


def _tile_pointer(m, name, base, stride, step, end_of_tile, clear):
    """Address of the current output of a tile-major walk over a pixel-major tensor:
    ``base + pixel·stride + tile``, kept without a multiplier."""
    start = Signal.like(base, name=f"{name}_start")
    pointer = Signal.like(base, name=name)
    with m.If(clear):
        m.d.sync += [start.eq(base), pointer.eq(base)]
    with m.Elif(step):
        with m.If(end_of_tile):
            m.d.sync += [start.eq(start + 1), pointer.eq(start + 1)]
        with m.Else():
            m.d.sync += pointer.eq(pointer + stride)
    return pointer


def memory_layouts(core_params) -> dict:
    """The word layout of each memory of a ``NetworkCore(**core_params)`` (keys it does not
    read are ignored), without building one: ``program`` (:class:`OpDescriptor`),
    ``weights`` (the array's weight beat), ``params`` (a :class:`ChannelWord` per column)
    and ``data`` (16-bit slots)."""
    width = core_params["width"]
    slots = 0
    if core_params.get("weight_outlier_lanes"):
        slots = core_params.get("weight_outlier_slots") or width
    outlier_shape = signed(core_params.get("weight_outlier_bits", 8)) if slots else None
    return {
        "program": OpDescriptor(core_params["data_depth"], core_params["weight_depth"],
                                core_params["param_depth"]),
        "weights": WeightBeat(signed(core_params["weight_bits"]), width, width, outlier_shape,
                              slots),
        "params": data.ArrayLayout(ChannelWord(), width),
        "data": data.ArrayLayout(unsigned(STORAGE_BITS), width),
    }


class NetworkCore(wiring.Component):
    """Runs an integer program on one ``width × width`` MAC array (docs/network.md §15).

    Activations live in one memory of ``width``-slot words, each slot 16 bits; a tensor of
    ``C`` channels takes ``⌈C/width⌉`` words per pixel, pixels in row-major order, so a
    GEMM beat reads the ``width`` channels of one word and one weight tile, and the
    output vector of ``width`` channels is one word. GEMMs run on a :class:`MacArray`
    (``lanes = cols = width``); window sums and maxima on a lane-wise reducer; both end in
    one :class:`Requantizer` with residual and run-time bounds.

    Parameters
    ----------
    width : int
        Array lanes and columns, and channels per memory word; 1..64.
    act_bits, act_signed : int, bool
        The array's activation format; every GEMM input must fit it.
    weight_bits : int
        The dense weight width, 2..8.
    weight_outlier_lanes, weight_outlier_bits, weight_outlier_slots : int
        Weight-outlier multipliers (0: none), their width and the slots per weight word,
        as for :class:`MacArray`.
    max_k : int
        Longest reduction (the padded ``K``) of any GEMM.
    data_depth, weight_depth, param_depth, program_depth : int
        Words of the activation, weight, parameter and program memories, 1..65536.
    program, weights, params : list of int or None
        Initial memory contents (packed words; zeros where not given). The ``load`` port
        rewrites them while the core waits in a ``LOAD`` op. An all-zero program word is a
        ``LOAD`` of no words, which halts the core: a core built without a program waits
        for one to be loaded, then for a ``load`` beat to ``Memory.RESTART``.
    requantizer : str
        ``"parallel"`` (default): a :class:`Requantizer` with ``2·width`` wide multipliers,
        one vector a cycle. ``"serial"``: a :class:`SerialRequantizer`, one channel at a
        time through a shift-and-add multiplier (tens of cycles a channel, a few hundred
        logic cells), with the same results.
    memories : str
        ``"wide"`` (default): every memory one word per row, two read ports on the
        activation memory. ``"narrow"``: the program and parameter memories hold each word
        as rows of 16 bits (read and written a row a cycle, so a shallow wide memory fits
        one or two iCE40 block RAMs instead of one per 16 bits of width), and the
        activation memory has one read port that the residual reads share with the
        operand reads. Same results; loads of those memories and the walks take longer.
    multipliers : str
        Where the array's products go, as :class:`MacArray` takes it: ``"lut"`` (default),
        ``"dsp"`` (outlier products in DSP blocks) or ``"packed"`` (dense products too, two
        per block; an iCE40UP5K board top at width 2 or 4 uses it).

    Raises
    ------
    TypeError
        If a parameter is of the wrong type or outside its range.
    ValueError
        If initial contents do not fit their memory, ``requantizer`` or ``memories`` is
        not one of its choices, or as :class:`MacArray` raises.

    Members
    -------
    inputs : In(stream.Signature(ArrayLayout(unsigned(16), width)))
        Words for ``LOAD`` ops.
    outputs : Out(stream.Signature(ArrayLayout(unsigned(16), width)))
        Words of ``STORE`` ops; ``last`` marks the final word of each ``STORE``.
    load : In(stream.Signature(LoadBeat))
        Memory writes ``(memory, address, word)``, or a restart at op 0 (``RESTART``);
        taken only while a ``LOAD`` op waits and ``inputs`` offers nothing.
    op_index : Out(range(program_depth))
        The op running.
    gemm_beats : Out(32)
        Beats the array has taken since reset (for utilization figures).
    """

    class Memory(enum.Enum, shape=2):
        """Which memory a ``load`` beat writes."""
        PROGRAM = 0
        WEIGHTS = 1
        PARAMS = 2
        #: Not a memory: start the program again at op 0.
        RESTART = 3

    def __init__(self, *, width, act_bits, act_signed=False, weight_bits,
                 weight_outlier_lanes=0, weight_outlier_bits=8, weight_outlier_slots=None,
                 max_k, data_depth, weight_depth, param_depth, program_depth,
                 program=None, weights=None, params=None, requantizer="parallel",
                 memories="wide", multipliers="lut"):
        self._width = check_int("Width", width, (1, 64))
        if requantizer not in REQUANTIZERS:
            raise ValueError(f"requantizer must be one of {', '.join(map(repr, REQUANTIZERS))}"
                             f", not {requantizer!r}")
        if memories not in MEMORY_STYLES:
            raise ValueError(f"memories must be one of {', '.join(map(repr, MEMORY_STYLES))}, "
                             f"not {memories!r}")
        self._narrow = memories == "narrow"
        for description, depth in (("data_depth", data_depth), ("weight_depth", weight_depth),
                                   ("param_depth", param_depth),
                                   ("program_depth", program_depth)):
            check_int(description, depth, (1, 65536))
        self._depths = dict(data=data_depth, weights=weight_depth, params=param_depth,
                            program=program_depth)
        array_params = dict(lanes=width, cols=width, act_bits=act_bits, act_signed=act_signed,
                            weight_bits=weight_bits, max_k=max_k,
                            weight_outlier_lanes=weight_outlier_lanes,
                            weight_outlier_bits=weight_outlier_bits,
                            weight_outlier_slots=weight_outlier_slots,
                            multipliers=multipliers)
        # The accumulators also carry the reducer's window sums of 17-bit values.
        probe = MacArray(**array_params)
        # built to check the array parameters and read the least accumulator width
        probe._MustUse__used = True
        acc_width = max(probe.acc_width, STORAGE_BITS + 1 + _WINDOW_GROWTH)
        layouts = memory_layouts(dict(
            width=width, weight_bits=weight_bits, weight_outlier_lanes=weight_outlier_lanes,
            weight_outlier_bits=weight_outlier_bits, weight_outlier_slots=weight_outlier_slots,
            data_depth=data_depth, weight_depth=weight_depth, param_depth=param_depth))
        self._descriptor = layouts["program"]
        self._weight_layout = layouts["weights"]
        self._param_layout = layouts["params"]
        self._word = layouts["data"]
        self._init = {}
        for name, words, layout, depth in (
                ("program", program, self._descriptor, program_depth),
                ("weights", weights, self._weight_layout, weight_depth),
                ("params", params, self._param_layout, param_depth)):
            words = list(words or [])
            if len(words) > depth:
                raise ValueError(f"{len(words)} {name} words do not fit {name} memory of "
                                 f"depth {depth}")
            limit = 1 << Shape.cast(layout).width
            if any(not isinstance(w, int) or not 0 <= w < limit for w in words):
                raise ValueError(f"Every {name} word must be an integer in 0..{limit - 1}")
            self._init[name] = words
        self._array = MacArray(**array_params, acc_width=acc_width)
        requantizer_options = dict(cols=width, acc_width=acc_width, out_bits=STORAGE_BITS,
                                   residual_bits=STORAGE_BITS + 1, runtime_bounds=True)
        # A narrow core feeds the serial requantizer one channel's parameters at a time.
        self._per_channel = requantizer == "serial" and self._narrow
        if requantizer == "serial":
            self._requantizer = SerialRequantizer(**requantizer_options,
                                                  per_channel=self._per_channel)
        else:
            self._requantizer = Requantizer(**requantizer_options)
        load_width = max(Shape.cast(layout).width for layout in
                         (self._descriptor, self._weight_layout, self._param_layout))
        self._load_layout = data.StructLayout({
            "memory": NetworkCore.Memory,
            "address": range(max(program_depth, weight_depth, param_depth)),
            "word": unsigned(load_width),
        })
        super().__init__({
            "inputs": In(stream.Signature(self._word)),
            "outputs": Out(stream.Signature(data.StructLayout({"word": self._word,
                                                               "last": unsigned(1)}))),
            "load": In(stream.Signature(self._load_layout)),
            "op_index": Out(range(program_depth)),
            "gemm_beats": Out(32),
        })

    @property
    def width(self):
        """Array lanes and columns; channels per activation word."""
        return self._width

    @property
    def array(self):
        """The :class:`MacArray`."""
        return self._array

    @property
    def descriptor_layout(self):
        """The :class:`OpDescriptor` of a program word."""
        return self._descriptor

    @property
    def weight_layout(self):
        """The layout of a weight word: the array's weight beat."""
        return self._weight_layout

    @property
    def param_layout(self):
        """The layout of a parameter word: ``width`` :class:`ChannelWord`."""
        return self._param_layout

    @property
    def word_layout(self):
        """The layout of an activation word: ``width`` 16-bit slots."""
        return self._word

    @property
    def depths(self):
        """Memory depths by name: ``data``, ``weights``, ``params``, ``program``."""
        return dict(self._depths)

    def elaborate(self, platform):
        m = Module()
        width = self._width
        m.submodules.array = array = self._array
        m.submodules.requantizer = requantizer = self._requantizer

        narrow = self._narrow
        # Rows per word of each memory: the narrow program and parameter memories hold a
        # word as CHUNK_BITS-wide rows.
        chunks = {"program": 1, "weights": 1, "params": 1, "data": 1}
        # A narrow parameter word starts each channel on a row, so the serial requantizer's
        # parameters are read one channel at a time.
        channel_bits = Shape.cast(ChannelWord()).width
        slices = {"program": _row_slices(Shape.cast(self._descriptor).width),
                  "params": _row_slices(channel_bits, width)}
        memories = {}
        for name, layout in (("program", self._descriptor), ("weights", self._weight_layout),
                             ("params", self._param_layout), ("data", self._word)):
            word_width = Shape.cast(layout).width
            init = self._init.get(name, [])
            if narrow and name in ("program", "params"):
                chunks[name] = len(slices[name])
                memories[name] = Memory(shape=CHUNK_BITS,
                                        depth=self._depths[name] * chunks[name],
                                        init=_chunked(init, slices[name]))
            else:
                memories[name] = Memory(shape=unsigned(word_width), depth=self._depths[name],
                                        init=init)
            m.submodules[f"{name}_memory"] = memories[name]
        program_read = memories["program"].read_port()
        weight_read = memories["weights"].read_port()
        param_read = memories["params"].read_port()
        operand_read = memories["data"].read_port()
        # The narrow core's residual reads take turns with the operand reads on one port.
        residual_read = operand_read if narrow else memories["data"].read_port()
        data_write = memories["data"].write_port()
        loads = {kind: memories[name].write_port() for kind, name in (
            (NetworkCore.Memory.PROGRAM, "program"), (NetworkCore.Memory.WEIGHTS, "weights"),
            (NetworkCore.Memory.PARAMS, "params"))}
        load_chunks = {NetworkCore.Memory.PROGRAM: chunks["program"],
                       NetworkCore.Memory.WEIGHTS: 1,
                       NetworkCore.Memory.PARAMS: chunks["params"]}

        op = Signal(self._descriptor)
        pc = Signal(range(self._depths["program"]))
        m.d.comb += self.op_index.eq(pc)
        start = Signal()  # one cycle: the descriptor in `op` is new, restart every walk
        done = Signal()   # one cycle: the op has finished
        kind = op.kind
        is_gemm = kind == OpKind.GEMM
        is_vector = (kind == OpKind.SUM) | (kind == OpKind.MAX)

        # -- program sequencing ---------------------------------------------------------
        running = Signal()
        restart = Signal()
        fetch_index = Signal(range(chunks["program"] + 1))
        if narrow:
            m.d.comb += program_read.addr.eq(pc * chunks["program"] + fetch_index)
        else:
            m.d.comb += program_read.addr.eq(pc)
        with m.FSM():
            if narrow:
                with m.State("FETCH"):
                    # One row a cycle; a row arrives the cycle after its address.
                    with m.If(fetch_index != 0):
                        _write_chunk(m, op.as_value(), fetch_index - 1, program_read.data)
                    with m.If(fetch_index == chunks["program"]):
                        m.d.sync += fetch_index.eq(0)
                        m.next = "START"
                    with m.Else():
                        m.d.sync += fetch_index.eq(fetch_index + 1)
            else:
                with m.State("FETCH"):
                    m.next = "DECODE"
                with m.State("DECODE"):
                    m.d.sync += op.eq(program_read.data)
                    m.next = "START"
            with m.State("START"):
                m.d.comb += start.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += running.eq(1)
                with m.If(restart):
                    m.d.sync += pc.eq(0)
                    m.next = "FETCH"
                with m.Elif(done):
                    m.d.sync += pc.eq(Mux(op.final, 0, pc + 1))
                    m.next = "FETCH"

        # -- LOAD: input words to the activation memory, memory writes on `load` ---------
        loading = Signal()
        load_index = Signal(range(self._depths["data"] + 1))
        # `running`: a narrow core's descriptor is assembled in `op` during FETCH.
        m.d.comb += loading.eq(running & (kind == OpKind.LOAD) & (load_index != op.count))
        m.d.comb += self.inputs.ready.eq(loading)
        with m.If(start):
            m.d.sync += load_index.eq(0)
        with m.Elif(self.inputs.valid & self.inputs.ready):
            m.d.sync += load_index.eq(load_index + 1)
        # Program, weights and parameters change only while the core waits for an input.
        load_open = running & (kind == OpKind.LOAD) & ~self.inputs.valid
        if narrow:
            # A word of a narrow memory is written a row a cycle; the beat is taken with
            # its last row.
            load_row = Signal(range(max(load_chunks.values())))
            load_rows = Signal.like(load_row)
            with m.Switch(self.load.payload.memory):
                for memory_kind, count in load_chunks.items():
                    with m.Case(memory_kind):
                        m.d.comb += load_rows.eq(count - 1)
            load_writing = self.load.valid & load_open
            m.d.comb += self.load.ready.eq(load_open & (load_row == load_rows))
            with m.If(load_writing):
                m.d.sync += load_row.eq(Mux(self.load.ready, 0, load_row + 1))
        else:
            load_writing = self.load.valid & self.load.ready
            m.d.comb += self.load.ready.eq(load_open)
        m.d.comb += restart.eq(self.load.valid & self.load.ready
                               & (self.load.payload.memory == NetworkCore.Memory.RESTART))
        for memory_kind, port in loads.items():
            count = load_chunks[memory_kind]
            if count > 1:
                m.d.comb += [
                    port.addr.eq(self.load.payload.address * count + load_row),
                ]
                with m.Switch(load_row):
                    for row, (offset, bits) in enumerate(slices[
                            "program" if memory_kind == NetworkCore.Memory.PROGRAM
                            else "params"]):
                        with m.Case(row):
                            m.d.comb += port.data.eq(self.load.payload.word[offset:offset + bits])
            else:
                m.d.comb += [
                    port.addr.eq(self.load.payload.address),
                    port.data.eq(self.load.payload.word),
                ]
            m.d.comb += port.en.eq(load_writing & (self.load.payload.memory == memory_kind))

        # -- STORE: activation words to `outputs` ----------------------------------------
        store_index = Signal(range(self._depths["data"] + 1))
        storing = running & (kind == OpKind.STORE) & (store_index != op.count)
        store_valid = Signal()
        store_last = Signal()
        store_advance = ~store_valid | self.outputs.ready
        with m.If(start):
            m.d.sync += [store_index.eq(0), store_valid.eq(0)]
        with m.Elif(store_advance):
            m.d.sync += [store_valid.eq(storing), store_last.eq(store_index + 1 == op.count)]
            with m.If(storing):
                m.d.sync += store_index.eq(store_index + 1)
        m.d.comb += [
            self.outputs.valid.eq(store_valid),
            self.outputs.payload.word.eq(operand_read.data),
            self.outputs.payload.last.eq(store_last),
        ]

        # -- compute ops: the beat walk (operands) ---------------------------------------
        beat_step = Signal()
        beat_limits = [op.out_words - 1, op.out_h - 1, op.out_w - 1, op.kernel_h - 1,
                       op.kernel_w - 1, Mux(is_gemm, op.in_words - 1, 0)]
        (tile, oy, ox, ky, kx, ci), at_limit, beat_final = _counters(
            m, "beat", beat_limits, beat_step, start)
        end_of_pixel = at_limit[3] & at_limit[4] & at_limit[5]
        end_of_tile = end_of_pixel & at_limit[1] & at_limit[2]
        beats_left = Signal()
        with m.If(start):
            m.d.sync += beats_left.eq(is_gemm | is_vector)
        with m.Elif(beat_step & beat_final):
            m.d.sync += beats_left.eq(0)

        iy = Signal(signed(14))
        ix = Signal(signed(14))
        m.d.comb += [
            iy.eq(oy * op.stride_h + ky - op.pad_h),
            ix.eq(ox * op.stride_w + kx - op.pad_w),
        ]
        padding = (iy < 0) | (iy >= op.in_h) | (ix < 0) | (ix >= op.in_w)
        # Out of range under padding; the padded operand is zeroed after the read.
        operand_address = op.in_base + (iy * op.in_w + ix) * op.in_words + Mux(is_gemm, ci, tile)
        # Weights follow the beat order tile by tile, so a pointer replaces a multiplier.
        weight_pointer = Signal(range(self._depths["weights"]))
        tile_weights = Signal(range(self._depths["weights"]))
        with m.If(start):
            m.d.sync += [weight_pointer.eq(op.weight_base), tile_weights.eq(op.weight_base)]
        with m.Elif(beat_step):
            with m.If(end_of_tile):
                m.d.sync += [weight_pointer.eq(weight_pointer + 1),
                             tile_weights.eq(weight_pointer + 1)]
            with m.Elif(end_of_pixel):
                m.d.sync += weight_pointer.eq(tile_weights)
            with m.Else():
                m.d.sync += weight_pointer.eq(weight_pointer + 1)

        # One register stage after the memories: the beat, its padding and `last`.
        beat_valid = Signal()
        beat_padding = Signal()
        beat_last = Signal()
        beat_ready = Signal()
        beat_advance = ~beat_valid | beat_ready
        # The narrow core's side walk takes the activation read port for a residual read
        # (`steal`); the beat walk then skips a cycle.
        steal = Signal()
        residual_address = Signal.like(operand_read.addr)
        m.d.comb += beat_step.eq(beat_advance & beats_left & ~start & ~steal)
        with m.If(start):
            m.d.sync += beat_valid.eq(0)
        with m.Elif(beat_advance):
            m.d.sync += [beat_valid.eq(beats_left & ~steal), beat_padding.eq(padding),
                         beat_last.eq(end_of_pixel)]
        m.d.comb += [
            operand_read.addr.eq(Mux(kind == OpKind.STORE, op.in_base + store_index,
                                     Mux(steal, residual_address, operand_address))),
            operand_read.en.eq(Mux(kind == OpKind.STORE, store_advance,
                                   beat_advance | steal)),
            weight_read.addr.eq(weight_pointer),
            weight_read.en.eq(beat_advance),
        ]
        if narrow:
            # A stalled beat keeps its operand in a register, so a residual read may use
            # the port meanwhile (the requantizer waiting for that residual may be what
            # stalls the array).
            fresh = Signal()
            held = Signal.like(operand_read.data)
            m.d.sync += fresh.eq(beat_advance & ~steal)
            with m.If(fresh):
                m.d.sync += held.eq(operand_read.data)
            operand = data.View(self._word, Mux(fresh, operand_read.data, held))
        else:
            operand = data.View(self._word, operand_read.data)
        lanes = [Mux(beat_padding, 0, Mux(op.in_signed, operand[lane].as_signed(),
                                          operand[lane]))
                 for lane in range(width)]

        # GEMM beats to the array.
        m.d.comb += [
            array.act.valid.eq(beat_valid & is_gemm),
            array.act.payload.last.eq(beat_last),
            array.weights.valid.eq(beat_valid & is_gemm),
            array.weights.payload.eq(weight_read.data),
        ]
        for lane in range(width):
            m.d.comb += array.act.payload.data[lane].eq(
                Mux(beat_padding, 0, operand[lane][:array.act_shape.width]))
        beats = Signal(32)
        m.d.comb += self.gemm_beats.eq(beats)
        with m.If(array.act.valid & array.act.ready):
            m.d.sync += beats.eq(beats + 1)

        # Window sums and maxima, lane by lane.
        reduced = Signal(data.ArrayLayout(signed(requantizer.acc.payload.shape().elem_shape
                                                 .width), width))
        reduced_valid = Signal()
        reduced_ready = Signal()
        partial = Signal.like(reduced)
        first = Signal(init=1)
        vector_take = beat_valid & is_vector & (~reduced_valid | reduced_ready)
        with m.If(reduced_valid & reduced_ready):
            m.d.sync += reduced_valid.eq(0)
        with m.If(vector_take):
            for lane in range(width):
                value = lanes[lane]
                combined = Mux(first, value,
                               Mux(kind == OpKind.SUM, partial[lane] + value,
                                   Mux(value > partial[lane], value, partial[lane])))
                m.d.sync += partial[lane].eq(combined)
                with m.If(beat_last):
                    m.d.sync += reduced[lane].eq(combined)
            m.d.sync += first.eq(beat_last)
            with m.If(beat_last):
                m.d.sync += reduced_valid.eq(1)
        m.d.comb += beat_ready.eq(Mux(is_gemm, array.act.ready,
                                      is_vector & (~reduced_valid | reduced_ready)))

        m.d.comb += [
            requantizer.acc.valid.eq(Mux(is_gemm, array.acc.valid, reduced_valid)),
            requantizer.acc.payload.eq(Mux(is_gemm, array.acc.payload, reduced)),
            array.acc.ready.eq(is_gemm & requantizer.acc.ready),
            reduced_ready.eq(~is_gemm & requantizer.acc.ready),
        ]

        # -- compute ops: the output walk (parameters and residuals), then the writes -------
        outputs_limits = [op.out_words - 1, op.out_pixels - 1]
        side_step = Signal()
        _, side_at_limit, side_final = _counters(m, "side", outputs_limits, side_step, start)
        side_left = Signal()
        with m.If(start):
            m.d.sync += side_left.eq(is_gemm | is_vector)
        with m.Elif(side_step & side_final):
            m.d.sync += side_left.eq(0)
        param_pointer = Signal(range(self._depths["params"]))
        with m.If(start):
            m.d.sync += param_pointer.eq(op.param_base)
        with m.Elif(side_step & side_at_limit[1] & is_gemm):
            # a GEMM has a parameter word per output tile, a SUM/MAX one for all
            m.d.sync += param_pointer.eq(param_pointer + 1)
        residual_pointer = _tile_pointer(m, "residual_pointer", op.res_base, op.out_words,
                                         side_step, side_at_limit[1], start)
        side_valid = Signal()
        side_advance = ~side_valid | requantizer.params.ready
        per_channel = self._per_channel
        channel_index = Signal(range(width))  # per_channel: the channel offered
        if narrow:
            # Each beat gathers its parameter word (per_channel: the word of one channel,
            # then of the next as each is taken) a row a cycle and, for a residual op,
            # reads the residual word on the shared port, then offers the beat.
            rows = chunks["params"]
            beat_rows = rows // width if per_channel else rows
            side_loading = Signal()
            gathering = Signal()
            gather_index = Signal(range(beat_rows + 1))
            gather_base = Signal(range(self._depths["params"] * rows))
            param_word = Signal(channel_bits if per_channel
                                else Shape.cast(self._param_layout).width)
            residual_pending = Signal()
            residual_fresh = Signal()
            residual_capture = Signal.like(operand_read.data)
            more_channels = Signal()
            if per_channel:
                m.d.comb += more_channels.eq(side_valid & (channel_index != width - 1))
            m.d.comb += [
                side_step.eq(side_advance & side_left & ~start & ~side_loading
                             & ~more_channels),
                steal.eq(residual_pending),
                param_read.addr.eq(gather_base + gather_index),
                param_read.en.eq(1),
            ]
            m.d.sync += residual_fresh.eq(steal)
            with m.If(residual_fresh):
                m.d.sync += residual_capture.eq(operand_read.data)
            with m.If(steal):
                m.d.sync += residual_pending.eq(0)
            with m.If(gathering):
                with m.If(gather_index != 0):
                    _write_chunk(m, param_word, gather_index - 1, param_read.data,
                                 slices["params"][:beat_rows])
                with m.If(gather_index == beat_rows):
                    m.d.sync += gathering.eq(0)
                with m.Else():
                    m.d.sync += gather_index.eq(gather_index + 1)
            with m.If(start):
                m.d.sync += [side_valid.eq(0), side_loading.eq(0), gathering.eq(0),
                             residual_pending.eq(0)]
            with m.Elif(side_step):
                m.d.sync += [
                    side_valid.eq(0), side_loading.eq(1), gathering.eq(1),
                    gather_index.eq(0), gather_base.eq(param_pointer * rows),
                    residual_pending.eq(op.residual), residual_address.eq(residual_pointer),
                    channel_index.eq(0),
                ]
            with m.Elif(side_loading & ~gathering & ~residual_pending & ~residual_fresh):
                m.d.sync += [side_valid.eq(1), side_loading.eq(0)]
            with m.Elif(side_valid & requantizer.params.ready):
                m.d.sync += side_valid.eq(0)
                with m.If(more_channels):
                    m.d.sync += [
                        channel_index.eq(channel_index + 1), side_loading.eq(1),
                        gathering.eq(1), gather_index.eq(0),
                        gather_base.eq(gather_base + beat_rows),
                    ]
            channel_words = data.View(data.ArrayLayout(ChannelWord(), 1 if per_channel
                                                       else width), param_word)
            residual_word = data.View(self._word, residual_capture)
        else:
            m.d.comb += side_step.eq(side_advance & side_left & ~start)
            with m.If(start):
                m.d.sync += side_valid.eq(0)
            with m.Elif(side_advance):
                m.d.sync += side_valid.eq(side_left)
            m.d.comb += [
                param_read.addr.eq(param_pointer), param_read.en.eq(side_advance),
                residual_read.addr.eq(residual_pointer), residual_read.en.eq(side_advance),
            ]
            channel_words = data.View(self._param_layout, param_read.data)
            residual_word = data.View(self._word, residual_read.data)
        params = requantizer.params.payload
        m.d.comb += [
            requantizer.params.valid.eq(side_valid),
            params.relu.eq(op.relu),
            params.low.eq(op.low),
            params.high.eq(op.high),
        ]
        for col in range(1 if per_channel else width):
            channel, word = params.channels[col], channel_words[col]
            slot = residual_word[channel_index] if per_channel else residual_word[col]
            residual = Mux(op.res_signed, slot.as_signed(), slot)
            m.d.comb += [
                channel.bias.eq(word.bias),
                channel.multiplier.eq(word.multiplier),
                channel.shift.eq(word.shift),
                channel.residual.eq(Mux(op.residual, residual, 0)),
                channel.residual_multiplier.eq(Mux(op.residual, word.residual_multiplier, 0)),
                channel.residual_shift.eq(Mux(op.residual, word.residual_shift, 0)),
            ]

        write_step = requantizer.out.valid & requantizer.out.ready
        _, write_at_limit, write_final = _counters(m, "write", outputs_limits, write_step,
                                                   start)
        write_pointer = _tile_pointer(m, "write_pointer", op.out_base, op.out_words,
                                      write_step, write_at_limit[1], start)
        m.d.comb += requantizer.out.ready.eq(is_gemm | is_vector)
        with m.If(kind == OpKind.LOAD):
            m.d.comb += [
                data_write.addr.eq(op.out_base + load_index),
                data_write.data.eq(self.inputs.payload),
                data_write.en.eq(self.inputs.valid & self.inputs.ready),
            ]
        with m.Else():
            m.d.comb += [
                data_write.addr.eq(write_pointer),
                data_write.en.eq(write_step),
            ]
            for col in range(width):
                m.d.comb += data_write.data[col * STORAGE_BITS:(col + 1) * STORAGE_BITS].eq(
                    requantizer.out.payload[col])

        # -- completion ------------------------------------------------------------------
        with m.Switch(kind):
            with m.Case(OpKind.LOAD):
                # A LOAD of no words halts (an empty program memory is made of them).
                m.d.comb += done.eq(~start & (op.count != 0) & (load_index == op.count))
            with m.Case(OpKind.STORE):
                m.d.comb += done.eq(~start & (store_index == op.count) & ~store_valid)
            with m.Default():
                m.d.comb += done.eq(write_step & write_final)
        return m
