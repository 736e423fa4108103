"""``LOAD`` and ``STORE``: words between the core's streams and the activation memory, and
memory writes from the ``load`` port (docs/network.md §15)."""

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from olmac.spec import MULTIPLIER_BITS, SHIFT_RANGE
from .layouts import (STORAGE_BITS, AddressedWord, ControlSignature, LoadTarget, OpKind,
                      VectorBeat)

__all__ = ["Loader", "Prefetcher", "Storer"]


class Loader(wiring.Component):
    """Runs a ``LOAD`` op: ``count`` words from ``inputs`` to the activation memory from
    ``out_base``, or, with the op's ``quantize``, to ``vector`` as windows of one word
    (read signed or unsigned as ``in_signed`` says), which the reducer, the requantizer
    and the write-back then treat as a 1×1 ``SUM`` would its operands (they read the
    parameter memory, so such a ``LOAD`` passes ``load`` beats only before its first word
    and takes no word while a write waits).
    While it waits and ``inputs`` offers nothing, it passes ``load`` beats on as memory
    writes (so program, weights and parameters change only between images) and turns a
    ``RESTART`` beat into ``restart``; a write offered on ``writes`` stays offered until it
    is taken, and the op ends only after it. ``loads_open`` says when ``load`` beats may
    still come in this op: until then nothing may read the memories they write (a
    quantizing ``LOAD``'s parameter reads wait for its first word). A ``LOAD`` of no words
    never ends: an empty program memory halts.

    Parameters
    ----------
    config : NetworkCore.Config
        The word and ``load`` beat layouts and the activation memory's depth.

    Members
    -------
    control : In(ControlSignature(descriptor))
        A ``LOAD`` op's ``out_base`` and ``count``.
    inputs : In(stream.Signature(word))
        Words of the ``LOAD``.
    write : In(WritePort.Signature(...))
        The activation memory's write port (driven here).
    vector : Out(stream.Signature(VectorBeat(width)))
        A quantizing ``LOAD``'s words, each with ``last``.
    load : In(stream.Signature(load_layout))
        Memory writes and restarts.
    writes : Out(stream.Signature(load_layout))
        The memory writes of ``load`` (never a ``RESTART``).
    restart : Out(1)
        A ``RESTART`` beat was taken.
    loads_open : Out(1)
        A ``LOAD`` runs that may still take ``load`` beats: one without ``quantize``, or
        one with it before its first word.
    done : Out(1)
        The ``LOAD`` op has taken its last word (a quantizing one's results may still be
        on their way to the write-back).
    prefetched : In(1)
        With ``config.prefetch``: the running ``LOAD``'s words came in the background
        (:class:`Prefetcher`): it takes no word and no ``load`` beat, and the prefetcher
        ends it.
    """

    def __init__(self, config):
        word = config.layouts["data"]
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "inputs": In(stream.Signature(word)),
            "write": In(WritePort.Signature(addr_width=ceil_log2(config.data_depth),
                                            shape=word)),
            "vector": Out(stream.Signature(VectorBeat(config.width))),
            "load": In(stream.Signature(config.load_layout)),
            "writes": Out(stream.Signature(config.load_layout)),
            "restart": Out(1),
            "loads_open": Out(1),
            "done": Out(1),
            **({"prefetched": In(1)} if config.prefetch else {}),
        })
        self._prefetch = config.prefetch
        # a quantizing LOAD counts the words of its output, which may be packed
        self._count_depth = config.address_depth
        self._width = config.width

    def elaborate(self, platform):
        m = Module()
        op, start = self.control.op, self.control.start
        prefetched = self.prefetched if self._prefetch else 0
        loading_op = self.control.running & (op.kind == OpKind.LOAD) & ~prefetched
        index = Signal(range(self._count_depth + 1))
        taken = self.inputs.valid & self.inputs.ready
        wanted = loading_op & (index != op.count)
        # A quantizing LOAD, which the write-back ends, takes memory writes only before its
        # first word and no word while one is offered, so it never ends under a write.
        waiting = self.writes.valid & ~self.writes.ready
        m.d.comb += [
            self.inputs.ready.eq(wanted & (~op.quantize | (self.vector.ready & ~waiting))),
            self.vector.valid.eq(wanted & op.quantize & self.inputs.valid & ~waiting),
            self.vector.payload.last.eq(1),
        ]
        for lane in range(self._width):
            slot = self.inputs.payload[lane]
            m.d.comb += self.vector.payload.lanes[lane].eq(
                Mux(op.in_signed, slot.as_signed(), slot))
        with m.If(start):
            m.d.sync += index.eq(0)
        with m.Elif(taken):
            m.d.sync += index.eq(index + 1)
        # A memory write once offered stays offered until it is taken (the stream rules:
        # a narrow memory takes a word a row a cycle), even if words arrive on `inputs`
        # meanwhile, and the op does not end under it.
        offered = Signal()
        m.d.sync += offered.eq(waiting)
        m.d.comb += [
            self.write.addr.eq(op.out_base + index),
            self.write.data.eq(self.inputs.payload),
            self.write.en.eq(taken & ~op.quantize),
            self.done.eq(loading_op & ~start & (op.count != 0) & (index == op.count)
                         & ~waiting),
        ]

        m.d.comb += self.loads_open.eq(loading_op & (~op.quantize | (index == 0)))
        open_ = self.loads_open & (~self.inputs.valid | offered)
        is_restart = self.load.payload.memory == LoadTarget.RESTART
        m.d.comb += [
            self.writes.valid.eq(self.load.valid & open_ & ~is_restart),
            self.writes.payload.eq(self.load.payload),
            self.load.ready.eq(open_ & (is_restart | self.writes.ready)),
            self.restart.eq(self.load.valid & self.load.ready & is_restart),
        ]
        return m


class Prefetcher(wiring.Component):
    """Takes the next image's words while the core still works on the one before
    (docs/network.md §15, prefetch): from the start of an op marked ``fetch_next`` (the
    first after the last reader of the quantizing ``LOAD``'s words) it takes ``count``
    words from ``inputs`` and quantizes each lane as the ``LOAD`` would,
    ``clamp((x·M + 2^(s−1)) >> s, low, high)`` with ``M``, ``s`` the ``LOAD``'s
    ``input_multiplier`` and ``input_shift`` (``x`` read signed as ``in_signed`` says),
    through a requantizer of ``config.prefetch_lanes`` lanes (``config.prefetch_config``),
    and writes each word to ``out_base`` on through ``write``, which the packed memory
    takes when no other part writes there. The ``LOAD``'s fields are kept from its last
    start, so an image is quantized with the program it then runs with: ``load`` beats
    come in only while a ``LOAD`` waits that holds no such word.

    The ``LOAD`` at the top of the next run is **claimed** if a word of it has been taken
    when it starts: it then takes no word and no ``load`` beat (``claimed`` goes to the
    loader and the sequencer, which hands it to no back), and ends (``done``) once its
    last word is written. A ``LOAD`` that starts before any word was taken runs as
    before, and the prefetcher leaves ``inputs`` to it. Words it does not take pass to
    ``passed`` unchanged (one the loader has not taken is withdrawn when a prefetch
    begins, at the start of a ``fetch_next`` op, never while a ``LOAD`` runs).

    Parameters
    ----------
    config : NetworkCore.Config
        The width, the word and descriptor layouts, the requantizer's configuration.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The front's op.
    inputs : In(stream.Signature(word))
        The core's input words.
    passed : Out(stream.Signature(word))
        The words it leaves to the loader.
    write : Out(stream.Signature(AddressedWord(...)))
        A quantized word for the packed memory; held until taken.
    claimed : Out(1)
        The front's ``LOAD`` (from its start) takes its words from here.
    holding : Out(1)
        A word of the next image has been taken: a ``LOAD`` starting now is claimed.
    done : Out(1)
        The claimed ``LOAD``'s last word is written.
    """

    def __init__(self, config):
        word = config.layouts["data"]
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "inputs": In(stream.Signature(word)),
            "passed": Out(stream.Signature(word)),
            "write": Out(stream.Signature(AddressedWord(config.address_depth, word))),
            "claimed": Out(1),
            "holding": Out(1),
            "done": Out(1),
        })
        self._config = config

    def elaborate(self, platform):
        m = Module()
        config = self._config
        op, start, running = self.control.op, self.control.start, self.control.running
        width, lanes, bits = config.width, config.prefetch_lanes, STORAGE_BITS
        groups = width // lanes
        m.submodules.requantizer = requantizer = config.requantizer_kind(
            **vars(config.prefetch_config))
        is_load = op.kind == OpKind.LOAD
        loading, load_starts = (start | running) & is_load, start & is_load

        # the LOAD's fields, kept from its start for the image taken during the run
        base = Signal(range(config.address_depth))
        count = Signal(range(config.address_depth + 1))
        multiplier = Signal(signed(MULTIPLIER_BITS))
        shift = Signal(range(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1))
        low, high = Signal(signed(bits + 1)), Signal(signed(bits + 1))
        in_signed = Signal()
        with m.If(load_starts):
            m.d.sync += [base.eq(op.out_base), count.eq(op.count),
                         multiplier.eq(op.input_multiplier), shift.eq(op.input_shift),
                         low.eq(op.low), high.eq(op.high), in_signed.eq(op.in_signed)]
        m.d.comb += [requantizer.params.valid.eq(1),
                     requantizer.params.payload.low.eq(low),
                     requantizer.params.payload.high.eq(high)]
        for channel in requantizer.params.payload.channels:
            m.d.comb += [channel.multiplier.eq(multiplier), channel.shift.eq(shift)]

        armed = Signal()        # the region is free: the next image's words may come
        claimed = Signal()      # the running LOAD is the prefetched image's
        taken = Signal(range(config.address_depth + 1))
        written = Signal(range(config.address_depth + 1))
        # A word goes to the requantizer `lanes` at a time, lane 0 first; its results are
        # shifted into `result` from the top, so lane 0 ends lowest.
        word = Signal(width * bits)
        busy = Signal()         # word holds lanes still to send
        sent = Signal(range(groups))
        result = Signal(width * bits)
        received = Signal(range(groups))
        full = Signal()         # result holds a whole word to write

        # decided at the LOAD's start: claimed if the next image has begun to come
        claiming = Mux(start, self.holding, claimed)
        mine = armed & (taken != count) & ~(loading & ~claiming)
        sending = requantizer.acc.valid & requantizer.acc.ready
        last_sent = sending & (sent == groups - 1)
        written_now = self.write.valid & self.write.ready
        receiving = requantizer.out.valid & requantizer.out.ready
        last_received = receiving & (received == groups - 1)
        take = mine & self.inputs.valid & self.inputs.ready
        m.d.comb += [
            self.passed.valid.eq(self.inputs.valid & ~mine),
            self.passed.payload.eq(self.inputs.payload),
            self.inputs.ready.eq(Mux(mine, ~busy | last_sent, self.passed.ready)),
            requantizer.acc.valid.eq(busy),
            requantizer.out.ready.eq(~full | written_now),
            self.write.valid.eq(full),
            self.write.payload.address.eq(base + written),
            self.holding.eq(taken != 0),
            self.claimed.eq(loading & claiming),
            self.done.eq(claimed & running & is_load & (written == count)),
        ]
        for lane in range(lanes):
            slot = word[lane * bits:(lane + 1) * bits]
            m.d.comb += requantizer.acc.payload[lane].eq(Mux(in_signed, slot.as_signed(), slot))
        for lane in range(width):
            m.d.comb += self.write.payload.word[lane].eq(result[lane * bits:(lane + 1) * bits])

        with m.If(sending):
            m.d.sync += [word.eq(word >> (lanes * bits)),
                         sent.eq(Mux(last_sent, 0, sent + 1))]
        with m.If(last_sent):
            m.d.sync += busy.eq(0)
        with m.If(take):
            m.d.sync += [word.eq(self.inputs.payload), busy.eq(1), taken.eq(taken + 1)]
        with m.If(receiving):
            # (the requantizer's lanes are a bit wider than a slot, as its bounds are)
            m.d.sync += [result.eq(Cat(result[lanes * bits:],
                                       *(lane[:bits] for lane in requantizer.out.payload))),
                         received.eq(Mux(last_received, 0, received + 1))]
        with m.If(last_received):
            m.d.sync += full.eq(1)
        with m.Elif(written_now):
            m.d.sync += full.eq(0)
        with m.If(written_now):
            m.d.sync += written.eq(written + 1)

        with m.If(load_starts):
            m.d.sync += claimed.eq(self.holding)
            with m.If(taken == 0):
                m.d.sync += armed.eq(0)
        with m.Elif(start & op.fetch_next):
            m.d.sync += armed.eq(1)
        with m.If(self.done):
            m.d.sync += [armed.eq(0), claimed.eq(0), taken.eq(0), written.eq(0)]
        return m


class Storer(wiring.Component):
    """Runs a ``STORE`` op: ``count`` words of the activation memory from ``in_base`` to
    ``outputs``, ``last`` on the final one. The read is one registered stage whose enable
    is ``~valid | ready``, so a word holds while ``outputs`` stalls.

    Parameters
    ----------
    config : NetworkCore.Config
        The activation word layout and memory depth.

    Members
    -------
    control : In(ControlSignature(descriptor))
        A ``STORE`` op's ``in_base`` and ``count``.
    read : In(ReadPort.Signature(...))
        An activation memory read port (driven here).
    outputs : Out(stream.Signature(StructLayout({"word": word, "last": 1})))
    done : Out(1)
        The ``STORE`` op's last word has left.
    fenced : In(1)
        The back still writes the op before (a ``STORE`` with ``overlap`` starts beside
        it, docs/network.md §15): word ``i`` is read only once ``written ≥ i + lead``
        (ignored where ``config.overlap`` is false).
    written : In(range(address_depth + 1))
        Results of the back's op written so far.
    """

    def __init__(self, config):
        word = config.layouts["data"]
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "read": In(ReadPort.Signature(addr_width=ceil_log2(config.data_depth), shape=word)),
            "outputs": Out(stream.Signature(data.StructLayout({"word": word,
                                                               "last": unsigned(1)}))),
            "done": Out(1),
            "fenced": In(1),
            "written": In(range(config.address_depth + 1)),
        })
        self._data_depth = config.data_depth
        self._fence = config.overlap

    def elaborate(self, platform):
        m = Module()
        op, start = self.control.op, self.control.start
        storing_op = op.kind == OpKind.STORE
        index = Signal(range(self._data_depth + 1))
        # a core without overlap (narrow memories) starts a STORE once the back is idle
        readable = (~self.fenced | (self.written >= index + op.lead)) if self._fence else 1
        storing = self.control.running & storing_op & (index != op.count) & readable
        advance = ~self.outputs.valid | self.outputs.ready
        with m.If(start):
            m.d.sync += [index.eq(0), self.outputs.valid.eq(0)]
        with m.Elif(advance):
            m.d.sync += [self.outputs.valid.eq(storing),
                         self.outputs.payload.last.eq(index + 1 == op.count)]
            with m.If(storing):
                m.d.sync += index.eq(index + 1)
        m.d.comb += [
            self.read.addr.eq(op.in_base + index),
            self.read.en.eq(advance),
            self.outputs.payload.word.eq(self.read.data),
            self.done.eq(storing_op & ~start & (index == op.count) & ~self.outputs.valid),
        ]
        return m
