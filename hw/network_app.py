"""The network application of the host link: a command protocol on frame payloads
(docs/host_link.md §6) that loads, restarts and runs a :class:`hw.network.NetworkCore`.
"""

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.spec import INFO_MAGIC, PROTOCOL_VERSION, Command, Status, check_int
from .host_link import AppSignature
from .network import STORAGE_BITS, NetworkCore

__all__ = ["NetworkApp"]

def _le(value, count):
    return [(value >> (8 * index)) & 0xFF for index in range(count)]


class NetworkApp(wiring.Component):
    """Commands from a :class:`hw.host_link.HostLink` to a :class:`NetworkCore`.

    Every request gets one reply that starts with a :class:`Status` byte:

    * ``LOAD memory address word…`` writes one or more words (``word_bytes[memory]`` bytes
      each, little-endian) to consecutive addresses of the program (0), weight (1) or
      parameter (2) memory; the reply is ``status, count`` (16 bits): how many words were
      written before the end or the first bad word (a bad address, or a last word cut
      short), so a partial write is always reported.
    * ``RESTART`` starts the program again at op 0 (after new program words).
    * ``INFER word…``: exactly ``input_words`` words of ``width`` 16-bit slots; the reply
      is ``OK`` and the words the program stores. A shorter or longer request is answered
      ``BAD_LENGTH`` (its image is completed with zeros, run, and the outputs dropped, so
      the core is ready for the next image).
    * ``INFO``: ``OK, "OM", version, width, input_words, output_words, program, weight,
      parameter and activation depths, word_bytes of the three memories`` (16-bit fields
      little-endian, byte fields as bytes).

    Any other first byte is ``BAD_COMMAND``; a command with a missing or extra byte is
    ``BAD_LENGTH`` and is not applied.

    Parameters
    ----------
    width : int
        Slots per activation word, 1..64.
    load_layout : data.StructLayout
        The core's ``load`` payload (``memory``, ``address``, ``word``).
    depths : dict
        Depths of the core's ``program``, ``weights``, ``params`` and ``data`` memories.
    word_bits : dict
        Bits of a word of the ``program``, ``weights`` and ``params`` memories.
    input_words, output_words : int
        Words an image takes on ``inputs`` and gives on ``outputs``, 1..65535.

    Raises
    ------
    TypeError
        If a parameter is of the wrong type or outside its range.
    ValueError
        If ``depths`` or ``word_bits`` lacks a memory.

    Members
    -------
    host : In(AppSignature())
        Requests and replies of the host link.
    inputs : Out(stream.Signature(ArrayLayout(unsigned(16), width)))
        Image words to the core.
    outputs : In(stream.Signature(StructLayout({"word": ..., "last": 1})))
        Stored words from the core.
    load : Out(stream.Signature(load_layout))
        Memory writes and restarts to the core.
    """

    def __init__(self, *, width, load_layout, depths, word_bits, input_words, output_words):
        self._width = check_int("Width", width, (1, 64))
        if not isinstance(load_layout, data.StructLayout):
            raise TypeError(f"Load layout must be a data.StructLayout, not {load_layout!r}")
        for name, table, needed in (("depths", depths, ("program", "weights", "params", "data")),
                                    ("word_bits", word_bits, ("program", "weights", "params"))):
            if not isinstance(table, dict):
                raise TypeError(f"{name} must be a dict, not {table!r}")
            missing = [key for key in needed if key not in table]
            if missing:
                raise ValueError(f"{name} lacks {', '.join(missing)}: {table!r}")
            for key in needed:
                check_int(f"{name}[{key!r}]", table[key], (1, 65536 * 8192))
        self._input_words = check_int("Input words", input_words, (1, 65535))
        self._output_words = check_int("Output words", output_words, (1, 65535))
        self._load_layout = load_layout
        self._depths = dict(depths)
        self._word_bytes = {name: -(-word_bits[name] // 8)
                            for name in ("program", "weights", "params")}
        self._word = data.ArrayLayout(unsigned(STORAGE_BITS), width)
        super().__init__({
            "host": In(AppSignature()),
            "inputs": Out(stream.Signature(self._word)),
            "outputs": In(stream.Signature(data.StructLayout({"word": self._word,
                                                              "last": unsigned(1)}))),
            "load": Out(stream.Signature(load_layout)),
        })

    @classmethod
    def for_core(cls, core, *, input_words, output_words):
        """The application for ``core`` (a :class:`NetworkCore`)."""
        return cls(width=core.width, load_layout=core.load.payload.shape(),
                   depths=core.depths,
                   word_bits={"program": Shape.cast(core.descriptor_layout).width,
                              "weights": Shape.cast(core.weight_layout).width,
                              "params": Shape.cast(core.param_layout).width},
                   input_words=input_words, output_words=output_words)

    @property
    def width(self):
        """Slots per activation word."""
        return self._width

    @property
    def word_bytes(self):
        """Bytes of one ``LOAD`` word, by memory name."""
        return dict(self._word_bytes)

    @property
    def request_bytes(self):
        """Length of the longest well-formed request of one image (``INFER``)."""
        return 1 + self._input_words * self._width * 2

    def info(self):
        """The bytes of the ``INFO`` reply."""
        depths, sizes = self._depths, self._word_bytes
        return bytes([Status.OK, *INFO_MAGIC, PROTOCOL_VERSION, self._width,
                      *_le(self._input_words, 2), *_le(self._output_words, 2),
                      *_le(depths["program"], 2), *_le(depths["weights"], 2),
                      *_le(depths["params"], 2), *_le(depths["data"], 2),
                      sizes["program"], sizes["weights"], sizes["params"]])

    def elaborate(self, platform):
        m = Module()
        request, reply = self.host.request, self.host.reply
        byte, is_last = request.payload.data, request.payload.last
        taken = request.valid & request.ready
        word_bytes = self._width * 2

        status = Signal(8)
        count = Signal(16)          # LOAD: words written
        memory = Signal(2)
        address = Signal(16)
        buffer_bits = max(Shape.cast(self._load_layout["word"].shape).width,
                          self._width * STORAGE_BITS)
        buffer = Signal(-(-buffer_bits // 8) * 8)
        byte_index = Signal(range(max(max(self._word_bytes.values()), word_bytes) + 1))
        request_done = Signal()     # the request's last byte has been taken
        words = Signal(16)          # INFER: words sent to the core
        bad = Signal()
        info = Array(Const(value, 8) for value in self.info())
        reply_index = Signal(range(max(len(self.info()), word_bytes, 3) + 1))
        out_word = Signal(self._width * STORAGE_BITS)
        out_last = Signal()

        memory_bytes = Signal.like(byte_index)
        memory_depth = Signal(range(max(self._depths.values()) + 1))
        with m.Switch(memory):
            for value, name in ((NetworkCore.Memory.PROGRAM, "program"),
                                (NetworkCore.Memory.WEIGHTS, "weights"),
                                (NetworkCore.Memory.PARAMS, "params")):
                with m.Case(value):
                    m.d.comb += [memory_bytes.eq(self._word_bytes[name]),
                                 memory_depth.eq(self._depths[name])]

        def take_byte():
            m.d.comb += request.ready.eq(1)

        m.d.comb += [
            self.load.payload.memory.eq(memory),
            self.load.payload.address.eq(address),
            self.load.payload.word.eq(buffer),
            self.inputs.payload.eq(buffer),
        ]

        with m.FSM():
            with m.State("COMMAND"):
                take_byte()
                m.d.sync += [count.eq(0), byte_index.eq(0), buffer.eq(0), words.eq(0),
                             bad.eq(0), reply_index.eq(0), status.eq(Status.OK)]
                with m.If(request.valid):
                    with m.Switch(byte):
                        with m.Case(Command.LOAD):
                            with m.If(is_last):
                                m.d.sync += status.eq(Status.BAD_LENGTH)
                                m.next = "LOAD_REPLY"
                            with m.Else():
                                m.next = "LOAD_MEMORY"
                        with m.Case(Command.RESTART):
                            with m.If(is_last):
                                m.next = "RESTART"
                            with m.Else():
                                m.d.sync += status.eq(Status.BAD_LENGTH)
                                m.next = "DRAIN"
                        with m.Case(Command.INFER):
                            with m.If(is_last):
                                m.d.sync += status.eq(Status.BAD_LENGTH)
                                m.next = "STATUS_REPLY"
                            with m.Else():
                                m.next = "INFER_BYTES"
                        with m.Case(Command.INFO):
                            with m.If(is_last):
                                m.next = "INFO_REPLY"
                            with m.Else():
                                m.d.sync += status.eq(Status.BAD_LENGTH)
                                m.next = "DRAIN"
                        with m.Default():
                            m.d.sync += status.eq(Status.BAD_COMMAND)
                            with m.If(is_last):
                                m.next = "STATUS_REPLY"
                            with m.Else():
                                m.next = "DRAIN"

            with m.State("DRAIN"):
                take_byte()
                with m.If(taken & is_last):
                    m.next = "STATUS_REPLY"

            with m.State("STATUS_REPLY"):
                m.d.comb += [reply.valid.eq(1), reply.payload.data.eq(status),
                             reply.payload.last.eq(1)]
                with m.If(reply.ready):
                    m.next = "COMMAND"

            # -- LOAD ----------------------------------------------------------------------
            def load_header(state, next_state, action):
                with m.State(state):
                    take_byte()
                    with m.If(request.valid):
                        action()
                        with m.If(is_last):
                            m.d.sync += status.eq(Status.BAD_LENGTH)
                            m.next = "LOAD_REPLY"
                        with m.Else():
                            m.next = next_state

            def take_memory():
                m.d.sync += [memory.eq(byte[:2]), bad.eq(byte > 2)]

            def take_address_low():
                m.d.sync += address[:8].eq(byte)

            load_header("LOAD_MEMORY", "LOAD_ADDRESS_LOW", take_memory)
            load_header("LOAD_ADDRESS_LOW", "LOAD_ADDRESS_HIGH", take_address_low)
            with m.State("LOAD_ADDRESS_HIGH"):
                take_byte()
                with m.If(request.valid):
                    m.d.sync += address[8:].eq(byte)
                    with m.If(is_last):
                        m.d.sync += status.eq(Status.BAD_LENGTH)
                        m.next = "LOAD_REPLY"
                    with m.Elif(bad):
                        m.d.sync += status.eq(Status.BAD_MEMORY)
                        m.next = "LOAD_DRAIN"
                    with m.Else():
                        m.next = "LOAD_WORD"
            with m.State("LOAD_WORD"):
                take_byte()
                with m.If(request.valid):
                    m.d.sync += [buffer.word_select(byte_index, 8).eq(byte),
                                 byte_index.eq(byte_index + 1), request_done.eq(is_last)]
                    with m.If(byte_index + 1 == memory_bytes):
                        with m.If(address >= memory_depth):
                            m.d.sync += status.eq(Status.BAD_ADDRESS)
                            m.next = "LOAD_DRAIN_OR_REPLY"
                        with m.Else():
                            m.next = "LOAD_WRITE"
                    with m.Elif(is_last):
                        m.d.sync += status.eq(Status.BAD_LENGTH)
                        m.next = "LOAD_REPLY"
            with m.State("LOAD_DRAIN_OR_REPLY"):
                with m.If(request_done):
                    m.next = "LOAD_REPLY"
                with m.Else():
                    m.next = "LOAD_DRAIN"
            with m.State("LOAD_WRITE"):
                m.d.comb += self.load.valid.eq(1)
                with m.If(self.load.ready):
                    m.d.sync += [count.eq(count + 1), address.eq(address + 1),
                                 byte_index.eq(0), buffer.eq(0)]
                    with m.If(request_done):
                        m.next = "LOAD_REPLY"
                    with m.Else():
                        m.next = "LOAD_WORD"
            with m.State("LOAD_DRAIN"):
                take_byte()
                with m.If(taken & is_last):
                    m.next = "LOAD_REPLY"
            with m.State("LOAD_REPLY"):
                m.d.comb += [
                    reply.valid.eq(1),
                    reply.payload.data.eq(Array([status, count[:8], count[8:]])[reply_index]),
                    reply.payload.last.eq(reply_index == 2),
                ]
                with m.If(reply.ready):
                    m.d.sync += reply_index.eq(reply_index + 1)
                    with m.If(reply_index == 2):
                        m.next = "COMMAND"

            # -- RESTART and INFO ----------------------------------------------------------
            with m.State("RESTART"):
                m.d.comb += [self.load.valid.eq(1),
                             self.load.payload.memory.eq(NetworkCore.Memory.RESTART)]
                with m.If(self.load.ready):
                    m.next = "STATUS_REPLY"
            with m.State("INFO_REPLY"):
                m.d.comb += [reply.valid.eq(1), reply.payload.data.eq(info[reply_index]),
                             reply.payload.last.eq(reply_index == len(info) - 1)]
                with m.If(reply.ready):
                    m.d.sync += reply_index.eq(reply_index + 1)
                    with m.If(reply_index == len(info) - 1):
                        m.next = "COMMAND"

            # -- INFER ---------------------------------------------------------------------
            with m.State("INFER_BYTES"):
                take_byte()
                with m.If(request.valid):
                    m.d.sync += [buffer.word_select(byte_index, 8).eq(byte),
                                 byte_index.eq(byte_index + 1), request_done.eq(is_last)]
                    with m.If((byte_index + 1 == word_bytes) | is_last):
                        m.d.sync += bad.eq(is_last & (byte_index + 1 != word_bytes))
                        m.next = "INFER_WORD"
            with m.State("INFER_WORD"):
                # a short request's image is completed with zero words (`bad`)
                m.d.comb += self.inputs.valid.eq(1)
                with m.If(self.inputs.ready):
                    m.d.sync += [words.eq(words + 1), byte_index.eq(0), buffer.eq(0)]
                    with m.If(words + 1 == self._input_words):
                        with m.If(request_done):
                            m.next = "INFER_OUTPUTS"
                        with m.Else():
                            m.d.sync += bad.eq(1)
                            m.next = "INFER_DRAIN"
                    with m.Elif(request_done):
                        m.d.sync += bad.eq(1)
                    with m.Else():
                        m.next = "INFER_BYTES"
            with m.State("INFER_DRAIN"):
                take_byte()
                with m.If(taken & is_last):
                    m.next = "INFER_OUTPUTS"
            with m.State("INFER_OUTPUTS"):
                with m.If(bad):
                    m.d.comb += self.outputs.ready.eq(1)
                    with m.If(self.outputs.valid & self.outputs.payload.last):
                        m.d.sync += status.eq(Status.BAD_LENGTH)
                        m.next = "STATUS_REPLY"
                with m.Else():
                    m.d.comb += [reply.valid.eq(1), reply.payload.data.eq(Status.OK)]
                    with m.If(reply.ready):
                        m.next = "INFER_TAKE"
            with m.State("INFER_TAKE"):
                m.d.comb += self.outputs.ready.eq(1)
                with m.If(self.outputs.valid):
                    m.d.sync += [out_word.eq(self.outputs.payload.word),
                                 out_last.eq(self.outputs.payload.last), reply_index.eq(0)]
                    m.next = "INFER_SEND"
            with m.State("INFER_SEND"):
                final = reply_index == word_bytes - 1
                m.d.comb += [reply.valid.eq(1),
                             reply.payload.data.eq(out_word.word_select(reply_index, 8)),
                             reply.payload.last.eq(final & out_last)]
                with m.If(reply.ready):
                    m.d.sync += reply_index.eq(reply_index + 1)
                    with m.If(final):
                        m.next = "INFER_NEXT"
            with m.State("INFER_NEXT"):
                with m.If(out_last):
                    m.next = "COMMAND"
                with m.Else():
                    m.next = "INFER_TAKE"
        return m
