"""The core's four memories behind one set of ports, in two variants chosen once per core
(docs/network.md §15): :class:`WideMemories` (a word per row, two activation read ports)
and :class:`NarrowMemories` (program and parameter words as 16-bit rows, one activation
port shared by writes, operands and residuals, in an iCE40UP's SPRAM), for small FPGAs.

Every block RAM here is marked ``no_rw_check`` and read through
:func:`~hw.ram.no_collision_read_port`: no read ever uses a word written in the same cycle
(an op's output never shares words with its inputs, the compiler allocating each value
words of its own, and the program, weight and parameter memories are written
only by ``load`` beats, while a ``LOAD`` op waits and nothing reads them), so Yosys need not
emulate Amaranth's read-before-write on the iCE40 block RAMs, which define no collision
result: that took two registers and a multiplexer a bit of every memory word."""

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..ram import NO_COLLISIONS, SinglePortMemory, no_collision_read_port
from .layouts import CHUNK_BITS, LoadTarget, SideRequest, SideWords, row_slices

__all__ = ["WideMemories", "NarrowMemories"]

_TARGETS = {LoadTarget.PROGRAM: "program", LoadTarget.WEIGHTS: "weights",
            LoadTarget.PARAMS: "params"}


def _write_row(m, target, index, value, slices):
    """``target[offset:offset + bits] <= value`` for the row ``index`` (a signal) of
    ``slices``."""
    with m.Switch(index):
        for row, (offset, bits) in enumerate(slices):
            with m.Case(row):
                m.d.sync += target[offset:offset + bits].eq(value[:bits])


class _Memories(wiring.Component):
    """The ports and memories of both variants; ``slices`` gives the rows of a word of each
    memory stored as rows (the others hold a word per row)."""

    def __init__(self, config, contents, channels, slices):
        self._config = config
        self._contents = {name: list(contents.get(name) or []) for name in _TARGETS.values()}
        self._slices = slices
        depths, layouts = config.depths, config.layouts
        super().__init__({
            "fetch": In(stream.Signature(range(depths["program"]))),
            "granted": Out(1),
            "descriptor": Out(stream.Signature(layouts["program"])),
            "load": In(stream.Signature(config.load_layout)),
            "weights": Out(ReadPort.Signature(addr_width=ceil_log2(depths["weights"]),
                                              shape=layouts["weights"])),
            "operand": Out(ReadPort.Signature(addr_width=ceil_log2(depths["data"]),
                                              shape=layouts["data"])),
            "write": Out(WritePort.Signature(addr_width=ceil_log2(depths["data"]),
                                             shape=layouts["data"])),
            "side": In(stream.Signature(SideRequest(depths["data"], depths["params"]))),
            "side_words": Out(stream.Signature(SideWords(channels))),
        })

    def _rows(self, name):
        return len(self._slices.get(name, [None]))

    def _build(self, m):
        """The program, weight and parameter memories; connects the weight read port and
        writes ``load`` beats (:meth:`_write_loads`). Returns the memories by name."""
        config = self._config
        memories = {}
        for name in _TARGETS.values():
            words = self._contents.get(name, [])
            if name in self._slices:
                memories[name] = self._row_memory(name, words)
            else:
                memories[name] = Memory(shape=self._stored_bits(name),
                                        depth=config.depths[name], init=words,
                                        attrs=NO_COLLISIONS)
            m.submodules[f"{name}_memory"] = memories[name]
        weights = self._weight_port(m, memories["weights"])
        m.d.comb += [
            weights.addr.eq(self.weights.addr),
            weights.en.eq(self.weights.en),
            self.weights.data.eq(weights.data[:len(self.weights.data.as_value())]),
        ]
        self._write_loads(m, memories)
        return memories

    #: How the weight memory is read: see :class:`WideMemories`.
    _weight_port = staticmethod(no_collision_read_port)

    def _stored_bits(self, name):
        """Bits of a row of ``name``'s memory where it holds a word a row."""
        return Shape.cast(self._config.layouts[name]).width


class WideMemories(_Memories):
    """Every memory one word per row; the activation memory has a read port for the
    operands (and ``STORE``) and one for the residuals, so nothing waits.

    Parameters
    ----------
    config : NetworkCore.Config
        The core's configuration (layouts and depths).
    contents : dict
        Initial words of ``program``, ``weights`` and ``params`` (zeros where absent).

    Members
    -------
    fetch : In(stream.Signature(range(program_depth)))
        An op address; its descriptor follows on ``descriptor``.
    descriptor : Out(stream.Signature(OpDescriptor))
        The fetched descriptor, held until taken.
    load : In(stream.Signature(LoadBeat))
        Writes of program, weight and parameter words (never a ``RESTART``).
    weights : Out(ReadPort.Signature(...))
        The weight memory's read port.
    operand : Out(ReadPort.Signature(...))
        An activation read port for operands and ``STORE``.
    granted : Out(1)
        ``operand`` reads this cycle (always, here).
    write : Out(WritePort.Signature(...))
        The activation memory's write port.
    side : In(stream.Signature(SideRequest))
        A parameter word and a residual word to read.
    side_words : Out(stream.Signature(SideWords(width)))
        Their contents, a cycle later, held until taken.
    """

    def __init__(self, config, contents):
        super().__init__(config, contents, config.width, {})

    @staticmethod
    def _weight_port(m, memory):
        # A plain synchronous port: through no_collision_read_port, Yosys 0.70's synth_ecp5
        # drives a bit of the width-16 weight word (1 075 bits, 36-bit PDPW16KD blocks) from
        # two block RAM outputs and nextpnr refuses the netlist (docs/host_link.md §6).
        return memory.read_port()

    def _write_loads(self, m, memories):
        """A ``load`` beat writes a whole word, in one cycle."""
        beat = self.load.payload
        m.d.comb += self.load.ready.eq(1)
        for target, name in _TARGETS.items():
            port = memories[name].write_port()
            m.d.comb += [port.en.eq(self.load.valid & (beat.memory == target)),
                         port.addr.eq(beat.address), port.data.eq(beat.word)]

    def elaborate(self, platform):
        m = Module()
        memories = self._build(m)
        m.submodules.data_memory = activations = Memory(
            shape=Shape.cast(self._config.layouts["data"]).width,
            depth=self._config.depths["data"], init=[], attrs=NO_COLLISIONS)
        wiring.connect(m, wiring.flipped(self.write), activations.write_port())
        program = no_collision_read_port(m, memories["program"])
        m.d.comb += [
            self.fetch.ready.eq(~self.descriptor.valid | self.descriptor.ready),
            program.addr.eq(self.fetch.payload),
            program.en.eq(self.fetch.ready),
            self.descriptor.payload.eq(program.data),
        ]
        with m.If(self.fetch.ready):
            m.d.sync += self.descriptor.valid.eq(self.fetch.valid)

        wiring.connect(m, wiring.flipped(self.operand), no_collision_read_port(m, activations))
        m.d.comb += self.granted.eq(1)

        param_read = no_collision_read_port(m, memories["params"])
        residual_read = no_collision_read_port(m, activations)
        advance = ~self.side_words.valid | self.side_words.ready
        m.d.comb += [
            self.side.ready.eq(advance),
            param_read.addr.eq(self.side.payload.param),
            param_read.en.eq(advance),
            residual_read.addr.eq(self.side.payload.residual),
            residual_read.en.eq(advance),
            self.side_words.payload.channels.eq(param_read.data),
            self.side_words.payload.residuals.eq(residual_read.data),
        ]
        with m.If(advance):
            m.d.sync += self.side_words.valid.eq(self.side.valid)
        return m


class NarrowMemories(_Memories):
    """The program and parameter memories hold a word as 16-bit rows (a shallow wide memory
    then fits one or two iCE40 block RAMs instead of one per 16 bits of width), written by
    ``load`` and read a row a cycle; each channel's parameters start on a row of their own.
    The activation memory is a :class:`~hw.ram.SinglePortMemory` (on an iCE40UP,
    its SPRAM): a write, then a residual read, takes the port from the operands
    (``granted`` low), and an operand read meanwhile is kept in a register.

    Parameters
    ----------
    config, contents
        As for :class:`WideMemories`.
    per_channel : bool
        Answer a ``side`` request one channel at a time (``width`` answers of one channel),
        for a per-channel serial requantizer; the rows of one channel are all that is
        gathered.

    Members
    -------
    As :class:`WideMemories`, but a ``load`` beat writes one 16-bit row of a word
    (``config.load_rows``); ``side_words`` carries ``1 if per_channel else width``
    channels and comes after the rows are gathered and the residual is read.
    """

    def __init__(self, config, contents, *, per_channel=False):
        self._per_channel = per_channel
        slices = {name: row_slices(item_bits, items)
                  for name, (items, item_bits) in config.load_rows.items()
                  if name in ("program", "params")}
        # Where a word's rows lie: row `i` of item `j` (a channel's parameters) of word `w`
        # at `Cat(i, j, w)`, each field padded to a power of two, so an address is wires,
        # not a multiply and an add (on the iCE40UP5K at width 4: 14 rows a descriptor take
        # 16, 7 a channel's parameters 8).
        self._row_bits = {name: (ceil_log2(len(rows) // config.load_rows[name][0]),
                                 ceil_log2(config.load_rows[name][0]))
                          for name, rows in slices.items()}
        super().__init__(config, contents, 1 if per_channel else config.width, slices)

    def _row_offsets(self, name):
        """Where each row of a word of ``name`` lies from the word's first (in the order of
        ``row_slices``)."""
        row_bits, _item_bits = self._row_bits[name]
        item_rows = self._rows(name) // self._config.load_rows[name][0]
        return [(row // item_rows) << row_bits | row % item_rows
                for row in range(self._rows(name))]

    def _row_memory(self, name, words):
        """The 16-bit rows of ``name``'s words, at :meth:`_row_offsets` from each word's
        first row, ``2 ** sum(self._row_bits[name])`` rows a word."""
        word_rows = 1 << sum(self._row_bits[name])
        rows = [0] * (len(words) * word_rows)
        for index, word in enumerate(words):
            for offset, (low, bits) in zip(self._row_offsets(name), self._slices[name]):
                rows[index * word_rows + offset] = (word >> low) & ((1 << bits) - 1)
        return Memory(shape=CHUNK_BITS, depth=self._config.depths[name] * word_rows,
                      init=rows, attrs=NO_COLLISIONS)

    def _row_address(self, name, word, row):
        """The address of row ``row`` (a signal, in the order of ``row_slices``) of word
        ``word`` of ``name``."""
        offsets = self._row_offsets(name)
        if offsets == list(range(len(offsets))):
            offset = row[:max(sum(self._row_bits[name]), 1)]
        else:
            offset = Array(Const(offset, sum(self._row_bits[name])) for offset in offsets)[row]
        return Cat(offset[:sum(self._row_bits[name])], word)

    def _stored_bits(self, name):
        # whole rows, so that a load beat writes one of them (a write enable a row)
        return -(-super()._stored_bits(name) // CHUNK_BITS) * CHUNK_BITS

    def _write_loads(self, m, memories):
        """A ``load`` beat writes one row (``config.load_rows``), in one cycle: a row of
        the program or parameter memory, or a row's bits of a weight word."""
        beat = self.load.payload
        m.d.comb += self.load.ready.eq(1)
        for target, name in _TARGETS.items():
            selected = self.load.valid & (beat.memory == target)
            if name in self._slices:
                port = memories[name].write_port()
                m.d.comb += [port.en.eq(selected),
                             port.addr.eq(self._row_address(name, beat.address, beat.row)),
                             port.data.eq(beat.word)]
            else:
                rows = self._stored_bits(name) // CHUNK_BITS
                port = memories[name].write_port(granularity=CHUNK_BITS)
                m.d.comb += [port.en.eq(Mux(selected, Const(1, rows) << beat.row, 0)),
                             port.addr.eq(beat.address),
                             port.data.eq(Cat(beat.word for _ in range(rows)))]

    def elaborate(self, platform):
        m = Module()
        memories = self._build(m)
        self._fetch(m, no_collision_read_port(m, memories["program"]))

        config = self._config
        m.submodules.data_memory = port = SinglePortMemory(
            width=Shape.cast(config.layouts["data"]).width, depth=config.depths["data"])
        # A write takes the port first (the write-back cannot wait), then a residual read
        # (`steal`); the operand read of a stalled beat is kept, since the requantizer
        # waiting for that residual may be what stalls it.
        writing = self.write.en
        steal = Signal()
        residual_address = Signal.like(port.addr)
        fresh = Signal()
        held = Signal(self.operand.data.shape())
        m.d.comb += [
            port.addr.eq(Mux(writing, self.write.addr,
                             Mux(steal, residual_address, self.operand.addr))),
            port.write_en.eq(writing),
            port.write_data.eq(self.write.data),
            port.read_en.eq(self.operand.en | steal),
            self.operand.data.eq(Mux(fresh, port.read_data, held)),
            self.granted.eq(~steal & ~writing),
        ]
        m.d.sync += fresh.eq(self.operand.en & ~steal & ~writing)
        with m.If(fresh):
            m.d.sync += held.eq(port.read_data)
        self._side(m, no_collision_read_port(m, memories["params"]), port, steal & ~writing,
                   steal, residual_address)
        return m

    def _fetch(self, m, program):
        """A descriptor a row a cycle (a row arrives the cycle after its address)."""
        slices = self._slices["program"]
        rows = len(slices)
        gathering = Signal(name="fetch_gathering")
        index = Signal(range(rows + 1))
        address = Signal.like(self.fetch.payload)
        word = Signal(len(self.descriptor.payload.as_value()))
        m.d.comb += [
            self.fetch.ready.eq(~gathering & (~self.descriptor.valid | self.descriptor.ready)),
            # past the last row (index == rows) the read is not used
            program.addr.eq(self._row_address("program", address, index)),
            self.descriptor.payload.eq(word),
        ]
        with m.If(self.descriptor.ready):
            m.d.sync += self.descriptor.valid.eq(0)
        with m.If(self.fetch.valid & self.fetch.ready):
            m.d.sync += [gathering.eq(1), index.eq(0), address.eq(self.fetch.payload)]
        with m.If(gathering):
            with m.If(index != 0):
                _write_row(m, word, index - 1, program.data, slices)
            with m.If(index == rows):
                m.d.sync += [gathering.eq(0), self.descriptor.valid.eq(1)]
            with m.Else():
                m.d.sync += index.eq(index + 1)

    def _side(self, m, param_read, port, reading, steal, residual_address):
        """Each answer gathers its parameter rows (per channel: one channel's, then the
        next's as each is taken) and, if asked, reads the residual on the shared port:
        ``steal`` asks for it, ``reading`` is high when the port reads it. Per channel the
        residual word is read again for each channel and only that channel's slot is kept:
        a 16-bit register instead of the whole word (at width 4, 48 flip-flops fewer, each a
        logic cell of its own on the iCE40), for ``width − 1`` more cycles of the port per
        answer."""
        width = self._config.width
        rows = self._rows("params")
        beat_rows = rows // width if self._per_channel else rows
        answer = self.side_words
        loading = Signal()
        gathering = Signal()
        index = Signal(range(beat_rows + 1))
        param = Signal.like(self.side.payload.param)
        word = Signal(len(answer.payload.channels.as_value()))
        pending = Signal()
        with_residual = Signal()    # the request asked for a residual (per channel: each)
        fresh = Signal()
        view = data.View(self.operand.data.shape(), port.read_data)
        residuals = Signal(Shape.cast(self.operand.data.shape().elem_shape).width
                           if self._per_channel else len(port.read_data))
        channel = Signal(range(width))
        more_channels = Signal()
        if self._per_channel:
            m.d.comb += more_channels.eq(answer.valid & (channel != width - 1))
        request = self.side.payload
        m.d.comb += [
            self.side.ready.eq((~answer.valid | answer.ready) & ~loading & ~more_channels),
            steal.eq(pending),
            answer.payload.channels.eq(word),
        ]
        if self._per_channel:
            row_bits, item_bits = self._row_bits["params"]
            # past the channel's last row (index == beat_rows) the read is not used
            m.d.comb += param_read.addr.eq(Cat(index[:row_bits], channel[:item_bits], param))
        else:
            m.d.comb += param_read.addr.eq(self._row_address("params", param, index))
        m.d.comb += answer.payload.residuals.eq(residuals)
        m.d.sync += fresh.eq(reading)
        with m.If(fresh):
            m.d.sync += residuals.eq(view[channel] if self._per_channel else port.read_data)
        with m.If(reading):
            m.d.sync += pending.eq(0)
        with m.If(gathering):
            with m.If(index != 0):
                _write_row(m, word, index - 1, param_read.data, self._slices["params"][:beat_rows])
            with m.If(index == beat_rows):
                m.d.sync += gathering.eq(0)
            with m.Else():
                m.d.sync += index.eq(index + 1)
        with m.If(self.side.valid & self.side.ready):
            m.d.sync += [
                answer.valid.eq(0), loading.eq(1), gathering.eq(1), index.eq(0),
                param.eq(request.param), pending.eq(request.read_residual),
                with_residual.eq(request.read_residual),
                residual_address.eq(request.residual), channel.eq(0),
            ]
        with m.Elif(loading & ~gathering & ~pending & ~fresh):
            m.d.sync += [answer.valid.eq(1), loading.eq(0)]
        with m.Elif(answer.valid & answer.ready):
            m.d.sync += answer.valid.eq(0)
            with m.If(more_channels):
                m.d.sync += [channel.eq(channel + 1), loading.eq(1), gathering.eq(1),
                             index.eq(0), pending.eq(with_residual)]
