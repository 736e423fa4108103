"""The network application of the host link: a command protocol on frame payloads
(docs/host_link.md §6) that loads, restarts and runs a :class:`hw.network.NetworkCore`.

One component per command behind a :class:`Dispatcher` that hands each request to the
handler of its command byte: :class:`LoadHandler` (``LOAD``), :class:`InferHandler`
(``INFER``) and :class:`FixedCommand` (``RESTART`` and ``INFO``). Each handler is an
application of the link by itself (``host: In(AppSignature())``): it sees the whole request,
command byte included, and gives one reply. :class:`NetworkApp` wires them together.
"""

from operator import attrgetter
from types import SimpleNamespace

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.spec import (ARRAY_DIM, HIGHWAY_BITS, INFO_MAGIC, PROTOCOL_VERSION, Command, Status,
                        check_int)
from .host_link import MAX_PAYLOAD_RANGE, AppSignature
from .network import CHUNK_BITS, TABLE_ENTRY_BITS, NetworkCore, row_slices

__all__ = ["NetworkApp", "Dispatcher", "LoadHandler", "InferHandler", "FixedCommand"]

#: The memories ``LOAD`` writes, by the names of their depths and word sizes; a core with a
#: table memory adds ``"tables"``.
_LOADABLE = ("program", "weights", "params")
#: The ``LOAD`` memory byte of each of them (the core's memory numbers; 3 is the core's
#: restart, which has a command of its own).
_MEMORY = {"program": NetworkCore.Memory.PROGRAM, "weights": NetworkCore.Memory.WEIGHTS,
           "params": NetworkCore.Memory.PARAMS, "tables": NetworkCore.Memory.TABLES}
#: Bytes of a ``LOAD`` word of the table memory: one entry (``TABLE_ENTRY_BITS``).
TABLE_WORD_BYTES = -(-TABLE_ENTRY_BITS // 8)


def _le(value, count):
    return [(value >> (8 * index)) & 0xFF for index in range(count)]


def _check_table(name, table, needed, bounds, optional=()):
    """``table`` restricted to the keys ``needed`` and those of ``optional`` it has, each
    an integer within ``bounds``."""
    if not isinstance(table, dict):
        raise TypeError(f"{name} must be a dict, not {table!r}")
    missing = [key for key in needed if key not in table]
    if missing:
        raise ValueError(f"{name} lacks {', '.join(missing)}: {table!r}")
    return {key: check_int(f"{name}[{key!r}]", table[key], bounds)
            for key in (*needed, *(key for key in optional if key in table))}


def _core_streams(width):
    """The ``inputs`` and ``outputs`` members of an application of a core ``width`` slots
    wide."""
    word = data.ArrayLayout(unsigned(HIGHWAY_BITS), width)
    return {"inputs": Out(stream.Signature(word)),
            "outputs": In(stream.Signature(data.StructLayout({"word": word,
                                                              "last": unsigned(1)})))}


def _check_load_layout(load_layout):
    if not isinstance(load_layout, data.StructLayout):
        raise TypeError(f"Load layout must be a data.StructLayout, not {load_layout!r}")
    return load_layout


def _check_rows(rows, word_bytes):
    """``rows`` (``None`` or ``(items, item_bits)`` by memory name) for the memories of
    ``word_bytes``, each pair making a word of that many bytes."""
    if rows is None:
        return None
    if not isinstance(rows, dict) or any(
            not isinstance(pair, tuple) or len(pair) != 2
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in pair)
            for pair in rows.values()):
        raise TypeError(f"rows must be None or a dict of (items, item_bits) pairs of positive "
                        f"integers, not {rows!r}")
    for name, size in word_bytes.items():
        if name not in rows:
            raise ValueError(f"rows lacks {name}: {rows!r}")
        items, item_bits = rows[name]
        if -(-items * item_bits // 8) != size:
            raise ValueError(f"rows[{name!r}] = {rows[name]!r} is not a word of "
                             f"word_bytes[{name!r}] = {size} bytes")
    return {name: rows[name] for name in word_bytes}


def _take(m, request):
    """Take ``request``'s bytes; returns "its last byte is taken in this cycle"."""
    m.d.comb += request.ready.eq(1)
    return request.valid & request.payload.last


def _send(m, reply, byte, last):
    """Offer ``byte`` on ``reply``; returns "it is taken in this cycle"."""
    m.d.comb += [reply.valid.eq(1), reply.payload.data.eq(byte), reply.payload.last.eq(last)]
    return reply.ready


def _send_bytes(m, reply, values, index, *, last=1):
    """Offer ``values[index]`` on ``reply`` and step ``index`` when it is taken, the last of
    ``values`` marked with ``last``; returns "the last of them is taken in this cycle" (``index``
    then returns to 0)."""
    final = index == len(values) - 1
    taken = _send(m, reply, Array(values)[index], final & last)
    with m.If(taken):
        m.d.sync += index.eq(Mux(final, 0, index + 1))
    return taken & final


def _command(m, request, *, alone, more, reset=()):
    """The FSM state ``"COMMAND"``: wait for a request (applying ``reset`` meanwhile) and
    take its command byte; then state ``alone`` if that was all of it, else ``more``."""
    with m.State("COMMAND"):
        m.d.sync += reset
        with m.If(_take(m, request)):
            m.next = alone
        with m.Elif(request.valid):
            m.next = more


def _drain(m, request, then):
    """The FSM state ``"DRAIN"``: take the rest of the request, then state ``then``."""
    with m.State("DRAIN"):
        with m.If(_take(m, request)):
            m.next = then


def _refusal(m, request, reply, status, *, drain=True):
    """The FSM states that refuse a request: ``"DRAIN"`` takes the rest of it (only with
    ``drain``), then state ``status.name`` replies ``status`` alone; then ``"COMMAND"``."""
    if drain:
        _drain(m, request, status.name)
    with m.State(status.name):
        with m.If(_send(m, reply, status, 1)):
            m.next = "COMMAND"


class Dispatcher(wiring.Component):
    """Hands each request to the handler of its command byte and the handler's reply back.

    The command byte stays in the request: a handler sees the whole request. A request whose
    command has no handler is taken whole and answered ``BAD_COMMAND``. The next request is
    dispatched once the handler has both taken its request's last byte and sent its reply's
    last byte, in either order (``AppSignature`` lets a handler end its reply early): until
    then the rest of the request still goes to that handler, and nothing else of it does.

    Parameters
    ----------
    commands : sequence of Command
        The command of each handler: ``handlers[i]`` serves ``commands[i]``.

    Raises
    ------
    TypeError
        If ``commands`` is not a non-empty sequence of :class:`Command`.
    ValueError
        If a command appears twice.

    Members
    -------
    host : In(AppSignature())
        Requests and replies of the host link.
    handlers : Out(AppSignature()).array(len(commands))
        Requests to and replies from each handler.
    """

    def __init__(self, commands):
        if (not isinstance(commands, (list, tuple)) or not commands
                or not all(isinstance(command, Command) for command in commands)):
            raise TypeError(f"Commands must be a non-empty sequence of Command, not {commands!r}")
        if len(set(commands)) != len(commands):
            raise ValueError(f"Commands must differ, not {commands!r}")
        self._commands = tuple(commands)
        super().__init__({"host": In(AppSignature()),
                          "handlers": Out(AppSignature()).array(len(commands))})

    commands = property(attrgetter("_commands"), doc="The command of each handler.")

    def _serve(self, m, handler, request_done, reply_done):
        """In a handler's state: pass its request (until its last byte is taken) and its reply
        (until its last byte is sent) through; back to ``"COMMAND"`` when both have ended."""
        request, reply = self.host.request, self.host.reply
        m.d.comb += [
            handler.request.valid.eq(request.valid & ~request_done),
            request.ready.eq(handler.request.ready & ~request_done),
            reply.valid.eq(handler.reply.valid & ~reply_done),
            reply.payload.eq(handler.reply.payload),
            handler.reply.ready.eq(reply.ready & ~reply_done),
        ]
        request_ends = request.valid & request.ready & request.payload.last
        reply_ends = reply.valid & reply.ready & reply.payload.last
        with m.If((request_done | request_ends) & (reply_done | reply_ends)):
            m.next = "COMMAND"
        with m.Else():
            m.d.sync += [request_done.eq(request_done | request_ends),
                         reply_done.eq(reply_done | reply_ends)]

    def elaborate(self, platform):
        m = Module()
        request = self.host.request
        for handler in self.handlers:
            m.d.comb += handler.request.payload.eq(request.payload)
        # The selected handler's request and reply have passed their last byte.
        request_done, reply_done = Signal(name="request_done"), Signal(name="reply_done")
        with m.FSM():
            with m.State("COMMAND"):
                m.d.sync += [request_done.eq(0), reply_done.eq(0)]
                with m.If(request.valid):
                    with m.Switch(request.payload.data):
                        for index, command in enumerate(self._commands):
                            with m.Case(command):
                                m.next = f"HANDLER_{index}"
                        with m.Default():
                            m.next = "DRAIN"
            for index, handler in enumerate(self.handlers):
                with m.State(f"HANDLER_{index}"):
                    self._serve(m, handler, request_done, reply_done)
            _refusal(m, request, self.host.reply, Status.BAD_COMMAND)
        return m


class FixedCommand(wiring.Component):
    """A command of one byte with a fixed reply (``RESTART``, ``INFO``).

    A request of more bytes is taken whole and answered ``BAD_LENGTH``; nothing is applied.

    Parameters
    ----------
    reply : bytes
        The reply to the one-byte request, 1..65534 bytes.
    action : bool
        Whether the command is applied by a beat on ``action`` before the reply.

    Raises
    ------
    TypeError
        If ``reply`` is not 1..65534 bytes or ``action`` not a bool.

    Members
    -------
    host : In(AppSignature())
        Requests and replies.
    action : Out(stream.Signature(0))
        One beat per applied command; only with ``action``.
    """

    def __init__(self, reply, *, action=False):
        if not isinstance(reply, bytes) or not 1 <= len(reply) < MAX_PAYLOAD_RANGE[1]:
            raise TypeError(f"Reply must be 1..{MAX_PAYLOAD_RANGE[1] - 1} bytes, not {reply!r}")
        if not isinstance(action, bool):
            raise TypeError(f"action must be a bool, not {action!r}")
        self._reply = reply
        self._action = action
        members = {"host": In(AppSignature())}
        if action:
            members["action"] = Out(stream.Signature(0))
        super().__init__(members)

    reply = property(attrgetter("_reply"), doc="The reply to the one-byte request.")

    def elaborate(self, platform):
        index = Signal(range(len(self._reply)))
        request, reply = self.host.request, self.host.reply
        m = Module()
        with m.FSM():
            _command(m, request, alone="ACTION" if self._action else "REPLY", more="DRAIN")
            if self._action:
                with m.State("ACTION"):
                    m.d.comb += self.action.valid.eq(1)
                    with m.If(self.action.ready):
                        m.next = "REPLY"
            with m.State("REPLY"):
                with m.If(_send_bytes(m, reply, [Const(byte, 8) for byte in self._reply],
                                      index)):
                    m.next = "COMMAND"
            _refusal(m, request, reply, Status.BAD_LENGTH)
        return m


class LoadHandler(wiring.Component):
    """``LOAD memory address word…``: writes words to consecutive addresses of the program
    (memory 0), weight (1) or parameter (2) memory of a :class:`NetworkCore`, or of its
    lookup tables (4, an entry a word) where it has them.

    A word is ``word_bytes[memory]`` bytes, little-endian. The reply is ``status, count``
    (16 bits): how many words were written before the end of the request or the first bad
    word, so a partial write is always reported. The status is ``BAD_LENGTH`` for a header
    cut short or a last word cut short, ``BAD_MEMORY`` for a memory other than these
    (nothing written) and ``BAD_ADDRESS`` for a word past the end of its memory; the rest
    of a refused request is dropped.

    With ``rows`` (a core with narrow memories, ``NetworkCore.Config.load_rows``), each
    word goes to the core a 16-bit row at a time as its bytes arrive, a bit a cycle, so
    nothing holds a whole word; the rows of a word cut short that were complete are then
    written too (``count`` still counts whole words only).

    Parameters
    ----------
    load_layout : data.StructLayout
        The core's ``load`` payload (``memory``, ``address``, ``word``; with ``rows``
        also ``row``, and ``word`` one row).
    depths : dict
        Depths of the ``program``, ``weights`` and ``params`` memories, and of the
        ``tables`` where the core has them (absent or 0: memory 4 is ``BAD_MEMORY``).
    word_bytes : dict
        Bytes of a word of each of them.
    rows : dict or None
        ``(items, item_bits)`` of each of them: a word is ``items`` fields of
        ``item_bits`` bits, each cut into rows of its own (``hw.network.row_slices``);
        ``None``: a ``load`` beat a word.

    Raises
    ------
    TypeError
        If ``load_layout`` is not a ``data.StructLayout``, or ``depths`` or ``word_bytes``
        not a dict of integers in range, or ``rows`` neither ``None`` nor a dict of pairs
        of positive integers.
    ValueError
        If ``depths`` or ``word_bytes`` lacks one of the three memories, or ``rows`` lacks
        one of the memories or gives a word of other than its ``word_bytes``.

    Members
    -------
    host : In(AppSignature())
        Requests and replies.
    load : Out(stream.Signature(load_layout))
        Memory writes to the core.
    """

    def __init__(self, *, load_layout, depths, word_bytes, rows=None):
        self._load_layout = _check_load_layout(load_layout)
        tables = ("tables",) if isinstance(depths, dict) and depths.get("tables") else ()
        self._depths = _check_table("depths", depths, _LOADABLE + tables, (1, 65536 * 8192))
        self._word_bytes = _check_table("word_bytes", word_bytes, _LOADABLE + tables,
                                        (1, 65536 * 1024))
        self._rows = _check_rows(rows, self._word_bytes)
        super().__init__({"host": In(AppSignature()),
                          "load": Out(stream.Signature(load_layout))})

    @property
    def depths(self):
        """Depths of the loadable memories, by name."""
        return dict(self._depths)

    @property
    def word_bytes(self):
        """Bytes of one word, by memory name."""
        return dict(self._word_bytes)

    def elaborate(self, platform):
        request, reply = self.host.request, self.host.reply
        byte, is_last = request.payload.data, request.payload.last
        m = Module()

        status = Signal(8)
        count = Signal(16)          # words written
        memory = Signal(3)
        bad_memory = Signal()
        address = Signal(16)
        widest = max(self._word_bytes.values())
        index = Signal(range(max(3, widest) + 1))   # byte of header or word
        request_done = Signal()     # the request's last byte has been taken
        sent = Signal(range(3))     # reply bytes sent

        last_byte = Signal.like(index)     # of a word of `memory`
        memory_depth = Signal(range(max(self._depths.values()) + 1))
        with m.Switch(memory):
            for name in self._depths:
                with m.Case(_MEMORY[name]):
                    m.d.comb += [last_byte.eq(self._word_bytes[name] - 1),
                                 memory_depth.eq(self._depths[name])]
        m.d.comb += [
            self.load.payload.memory.eq(memory),
            self.load.payload.address.eq(address),
        ]

        def refuse(code, last=is_last):
            m.d.sync += status.eq(code)
            with m.If(last):
                m.next = "REPLY"
            with m.Else():
                m.next = "DRAIN"

        def written():
            """The word is written: on to the next one, or the reply."""
            m.d.sync += [count.eq(count + 1), address.eq(address + 1), index.eq(0)]
            with m.If(request_done):
                m.next = "REPLY"
            with m.Else():
                m.next = "WORD"

        words = self._rows_states if self._rows else self._word_states
        word_states = words(m, SimpleNamespace(
            byte=byte, is_last=is_last, memory=memory, index=index, last_byte=last_byte,
            bad_address=address >= memory_depth, request_done=request_done,
            refuse=refuse, written=written, widest=widest))
        with m.FSM():
            # a command byte alone lacks the header
            _command(m, request, alone="REPLY", more="HEADER", reset=[
                count.eq(0), index.eq(0),
                status.eq(Mux(request.payload.last, Status.BAD_LENGTH, Status.OK))])
            with m.State("HEADER"):
                m.d.comb += request.ready.eq(1)
                with m.If(request.valid):
                    m.d.sync += index.eq(index + 1)
                    with m.Switch(index):
                        with m.Case(0):
                            loadable = [byte == _MEMORY[name].value for name in self._depths]
                            m.d.sync += [memory.eq(byte[:3]), bad_memory.eq(~Cat(*loadable).any())]
                        with m.Case(1):
                            m.d.sync += address[:8].eq(byte)
                        with m.Case(2):
                            m.d.sync += address[8:].eq(byte)
                    with m.If(is_last):
                        refuse(Status.BAD_LENGTH)
                    with m.Elif(index == 2):
                        m.d.sync += index.eq(0)
                        with m.If(bad_memory):
                            refuse(Status.BAD_MEMORY)
                        with m.Else():
                            m.next = "WORD"
            word_states()
            _drain(m, request, "REPLY")
            with m.State("REPLY"):
                with m.If(_send_bytes(m, reply, [status, count[:8], count[8:]], sent)):
                    m.next = "COMMAND"
        return m

    def _word_states(self, m, word_of):
        """Returns what adds the states ``WORD`` to ``WRITE`` with a ``load`` beat a word.
        The word's bytes shift in at the top, so no byte needs an enable of its own; a word
        narrower than the widest then shifts down to bit 0 (``ALIGN``), zeros above."""
        w = word_of
        word = Signal(8 * w.widest)
        m.d.comb += self.load.payload.word.eq(word)
        return lambda: self._word_fsm(m, w, word)

    def _word_fsm(self, m, w, word):
        request = self.host.request
        with m.State("WORD"):
            m.d.comb += request.ready.eq(1)
            with m.If(request.valid):
                m.d.sync += [word.eq(Cat(word[8:], w.byte)), w.index.eq(w.index + 1),
                             w.request_done.eq(w.is_last)]
                with m.If(w.index == w.last_byte):
                    with m.If(w.bad_address):
                        w.refuse(Status.BAD_ADDRESS)
                    with m.Else():
                        m.next = "ALIGN"
                with m.Elif(w.is_last):
                    w.refuse(Status.BAD_LENGTH)
        with m.State("ALIGN"):
            with m.If(w.index == w.widest):
                m.next = "WRITE"
            with m.Else():
                m.d.sync += [word.eq(word[8:]), w.index.eq(w.index + 1)]
        with m.State("WRITE"):
            m.d.comb += self.load.valid.eq(1)
            with m.If(self.load.ready):
                w.written()

    def _rows_states(self, m, word_of):
        """Returns what adds the states ``WORD`` to ``WRITE`` with a ``load`` beat a row:
        each byte's bits go one a cycle (``BITS``) into a 16-bit row at its place; a full
        row, or the last (short) one of a field, is a beat (``WRITE``); the bits past the
        last row of a word (its last byte's padding) are dropped. A word at a bad address
        is read to its end without a beat, then refused, as with a beat a word."""
        w = word_of
        shapes = {name: (items, item_bits, len(row_slices(item_bits, items)))
                  for name, (items, item_bits) in self._rows.items()}
        last_item_bit = Signal(range(max(bits for _, bits, _ in shapes.values())))
        rows = Signal(range(max(count for _, _, count in shapes.values()) + 1))
        with m.Switch(w.memory):
            for name, (_, item_bits, count) in shapes.items():
                with m.Case(_MEMORY[name]):
                    m.d.comb += [last_item_bit.eq(item_bits - 1), rows.eq(count)]
        byte = Signal(8)                    # the bits still to go, the next one at bit 0
        bit = Signal(range(9))              # of `byte`; 8: all gone
        row = Signal.like(rows)             # the row being gathered; `rows`: all written
        row_bit = Signal(range(CHUNK_BITS))
        item_bit = Signal.like(last_item_bit)
        gathered = Signal(CHUNK_BITS)
        m.d.comb += [self.load.payload.row.eq(row), self.load.payload.word.eq(gathered)]
        return lambda: self._rows_fsm(m, w, SimpleNamespace(
            rows=rows, last_item_bit=last_item_bit, byte=byte, bit=bit, row=row,
            row_bit=row_bit, item_bit=item_bit, gathered=gathered))

    def _rows_fsm(self, m, w, r):
        request = self.host.request
        rows, last_item_bit, byte, bit, row = r.rows, r.last_item_bit, r.byte, r.bit, r.row
        row_bit, item_bit, gathered = r.row_bit, r.item_bit, r.gathered
        with m.State("WORD"):
            m.d.comb += request.ready.eq(1)
            with m.If(request.valid):
                m.d.sync += [byte.eq(w.byte), bit.eq(0), w.request_done.eq(w.is_last)]
                m.next = "BITS"
        with m.State("BITS"):
            with m.If(bit == 8):
                with m.If((w.index == w.last_byte) | w.request_done):
                    # the word ends, or the request does: the next word starts a row
                    m.d.sync += [row.eq(0), row_bit.eq(0), item_bit.eq(0), gathered.eq(0)]
                with m.If(w.index == w.last_byte):
                    with m.If(w.bad_address):
                        w.refuse(Status.BAD_ADDRESS, w.request_done)
                    with m.Else():
                        w.written()
                with m.Elif(w.request_done):
                    w.refuse(Status.BAD_LENGTH, 1)
                with m.Else():
                    m.d.sync += w.index.eq(w.index + 1)
                    m.next = "WORD"
            with m.Else():
                m.d.sync += [byte.eq(byte >> 1), bit.eq(bit + 1)]
                with m.If(row != rows):
                    item_end = item_bit == last_item_bit
                    row_end = (row_bit == CHUNK_BITS - 1) | item_end
                    m.d.sync += [gathered.bit_select(row_bit, 1).eq(byte[0]),
                                 item_bit.eq(Mux(item_end, 0, item_bit + 1)),
                                 row_bit.eq(Mux(row_end, 0, row_bit + 1))]
                    with m.If(row_end):
                        m.next = "WRITE"
        with m.State("WRITE"):
            m.d.comb += self.load.valid.eq(~w.bad_address)
            with m.If(self.load.ready | w.bad_address):
                m.d.sync += [row.eq(row + 1), gathered.eq(0)]
                m.next = "BITS"


class InferHandler(wiring.Component):
    """``INFER word…``: one image to the core, its outputs back.

    The request holds exactly ``input_words`` words of ``width`` 16-bit slots (slot 0 first,
    little-endian); the reply is ``OK`` and the words the core gives up to the one marked
    ``last``, or ``FAULT`` alone (the words dropped) if the core's ``fault`` is high when its
    first output word comes: by then every op before the ``STORE`` has finished. A request with other than ``input_words`` words is answered ``BAD_LENGTH``: if it
    has any word, its image is completed with zero words (a long request's extra bytes are
    dropped) and run, and its outputs are dropped, so the core waits for the next image
    either way.

    Parameters
    ----------
    width : int
        Slots per word, 1..64.
    input_words : int
        Words of an image, 1..65535.

    Raises
    ------
    TypeError
        If ``width`` or ``input_words`` is not an integer in its range.

    Members
    -------
    host : In(AppSignature())
        Requests and replies.
    inputs : Out(stream.Signature(ArrayLayout(unsigned(16), width)))
        Image words to the core.
    outputs : In(stream.Signature(StructLayout({"word": ..., "last": 1})))
        Output words from the core.
    fault : In(1)
        The core's ``fault``.
    """

    def __init__(self, *, width, input_words):
        self._width = check_int("Width", width, ARRAY_DIM)
        self._input_words = check_int("Input words", input_words, (1, 65535))
        super().__init__({"host": In(AppSignature()), **_core_streams(width),
                          "fault": In(1)})

    width = property(attrgetter("_width"), doc="Slots per word.")
    input_words = property(attrgetter("_input_words"), doc="Words of an image.")

    def elaborate(self, platform):
        request, reply = self.host.request, self.host.reply
        byte, is_last = request.payload.data, request.payload.last
        word_bytes = self._width * HIGHWAY_BITS // 8
        m = Module()

        # One register for the input word being collected and, once the image is in, the
        # output word being sent. Bytes shift in at the top and out at the bottom, so no
        # byte needs an enable or a multiplexer of its own (a short word then shifts down
        # to bit 0 in ``ALIGN``, zeros above).
        word = Signal(self._width * HIGHWAY_BITS)
        index = Signal(range(word_bytes))
        words = Signal(range(self._input_words))    # words sent to the core
        request_done = Signal()     # the request's last byte has been taken
        bad = Signal()              # the request is not one image: drop its outputs
        faulted = Signal()          # the core's array faulted: drop the outputs too
        last = Signal()             # the output word being sent is the last
        m.d.comb += self.inputs.payload.eq(word)

        with m.FSM():
            _command(m, request, alone="BAD_LENGTH", more="BYTES",
                     reset=[words.eq(0), index.eq(0), word.eq(0), bad.eq(0),
                            faulted.eq(0)])
            with m.State("BYTES"):
                m.d.comb += request.ready.eq(1)
                with m.If(request.valid):
                    m.d.sync += [word.eq(Cat(word[8:], byte)), index.eq(index + 1),
                                 request_done.eq(is_last)]
                    with m.If(index == word_bytes - 1):
                        m.next = "WORD"
                    with m.Elif(is_last):
                        m.d.sync += bad.eq(1)
                        m.next = "ALIGN"
            with m.State("ALIGN"):
                m.d.sync += [word.eq(word >> 8), index.eq(index + 1)]
                with m.If(index == word_bytes - 1):
                    m.next = "WORD"
            with m.State("WORD"):
                # after a short request's last byte, zero words complete the image
                m.d.comb += self.inputs.valid.eq(1)
                with m.If(self.inputs.ready):
                    m.d.sync += [words.eq(words + 1), index.eq(0), word.eq(0)]
                    with m.If(words == self._input_words - 1):
                        with m.If(request_done):
                            m.next = "OUTPUTS"
                        with m.Else():
                            m.d.sync += bad.eq(1)
                            m.next = "DRAIN"
                    with m.Elif(request_done):
                        m.d.sync += bad.eq(1)
                    with m.Else():
                        m.next = "BYTES"
            _drain(m, request, "OUTPUTS")
            with m.State("OUTPUTS"):
                with m.If(bad | faulted):
                    m.d.comb += self.outputs.ready.eq(1)
                    with m.If(self.outputs.valid & self.outputs.payload.last):
                        m.next = "BAD_LENGTH"
                        with m.If(~bad):
                            m.next = "FAULT"
                with m.Elif(self.outputs.valid):
                    # decided once: a fault rising later must not withdraw an offered OK
                    with m.If(self.fault):
                        m.d.sync += faulted.eq(1)
                    with m.Else():
                        m.next = "STATUS"
            with m.State("STATUS"):
                with m.If(_send(m, reply, Status.OK, 0)):
                    m.next = "TAKE"
            with m.State("TAKE"):
                m.d.comb += self.outputs.ready.eq(1)
                with m.If(self.outputs.valid):
                    m.d.sync += [word.eq(self.outputs.payload.word),
                                 last.eq(self.outputs.payload.last)]
                    m.next = "SEND"
            with m.State("SEND"):
                final = index == word_bytes - 1
                with m.If(_send(m, reply, word[:8], final & last)):
                    m.d.sync += [word.eq(word >> 8), index.eq(Mux(final, 0, index + 1))]
                    with m.If(final & last):
                        m.next = "COMMAND"
                    with m.Elif(final):
                        m.next = "TAKE"
            _refusal(m, request, reply, Status.BAD_LENGTH, drain=False)
            _refusal(m, request, reply, Status.FAULT, drain=False)
        return m


class NetworkApp(wiring.Component):
    """Commands from a :class:`hw.host_link.HostLink` to a :class:`NetworkCore`
    (docs/host_link.md §6).

    Every request gets one reply that starts with a :class:`Status` byte:

    * ``LOAD memory address word…`` writes words to the program (0), weight (1) or
      parameter (2) memory or the lookup tables (4) and replies ``status, count``
      (:class:`LoadHandler`);
    * ``RESTART`` starts the program again at op 0 (after new program words) and replies
      ``OK``;
    * ``INFER word…`` runs one image of ``input_words`` words and replies ``OK`` and the words
      the program stores (:class:`InferHandler`);
    * ``INFO`` replies ``OK, "OM", version, width, input_words, output_words, program,
      weight, parameter and activation depths, word_bytes of the three memories, table
      depth, word_bytes of the tables`` (16-bit fields little-endian, byte fields as
      bytes; the table fields 0 for a core without tables).

    Any other first byte is ``BAD_COMMAND``; a command with a missing or extra byte is
    ``BAD_LENGTH`` and is not applied.

    Parameters
    ----------
    width : int
        Slots per activation word, 1..64.
    load_layout : data.StructLayout
        The core's ``load`` payload (``memory``, ``address``, ``word``).
    depths : dict
        Depths of the core's ``program``, ``weights``, ``params`` and ``data`` memories,
        and of its ``tables`` if it has them.
    word_bits : dict
        Bits of a word of the ``program``, ``weights`` and ``params`` memories (and of
        the ``tables``, with them).
    input_words, output_words : int
        Words an image takes on ``inputs`` and gives on ``outputs``, 1..65535.
    rows : dict or None
        How ``load`` beats cut words into rows (``NetworkCore.Config.load_rows``), as
        :class:`LoadHandler` takes it.

    Raises
    ------
    TypeError
        If a parameter is of the wrong type or outside its range.
    ValueError
        If ``depths`` or ``word_bits`` lacks a memory, or ``rows`` does not match them.

    Members
    -------
    host : In(AppSignature())
        Requests and replies of the host link.
    inputs, outputs, fault
        Image words to and stored words from the core, and its fault flag, as
        :class:`InferHandler` has them.
    load : Out(stream.Signature(load_layout))
        Memory writes and restarts to the core.
    """

    def __init__(self, *, width, load_layout, depths, word_bits, input_words, output_words,
                 rows=None):
        self._width = check_int("Width", width, ARRAY_DIM)
        self._load_layout = _check_load_layout(load_layout)
        self._depths = _check_table("depths", depths, (*_LOADABLE, "data"), (1, 65536 * 8192),
                                    optional=("tables",))
        word_bits = _check_table("word_bits", word_bits, _LOADABLE, (1, 65536 * 8192),
                                 optional=("tables",))
        self._input_words = check_int("Input words", input_words, (1, 65535))
        self._output_words = check_int("Output words", output_words, (1, 65535))
        self._word_bytes = {name: -(-bits // 8) for name, bits in word_bits.items()}
        self._rows = _check_rows(rows, self._word_bytes)
        super().__init__({"host": In(AppSignature()), **_core_streams(width),
                          "load": Out(stream.Signature(load_layout)), "fault": In(1)})

    @classmethod
    def for_core(cls, core, *, input_words, output_words):
        """The application for ``core`` (a :class:`NetworkCore`)."""
        tables = core.config.table_depth
        return cls(width=core.width, load_layout=core.load.payload.shape(),
                   depths={**core.depths, **({"tables": tables} if tables else {})},
                   word_bits={"program": Shape.cast(core.descriptor_layout).width,
                              "weights": Shape.cast(core.weight_layout).width,
                              "params": Shape.cast(core.param_layout).width,
                              **({"tables": TABLE_ENTRY_BITS} if tables else {})},
                   input_words=input_words, output_words=output_words,
                   rows=core.config.load_rows)

    width = property(attrgetter("_width"), doc="Slots per activation word.")

    @property
    def word_bytes(self):
        """Bytes of one ``LOAD`` word, by memory name."""
        return dict(self._word_bytes)

    @property
    def request_bytes(self):
        """Length of the longest request the link must take: one image (``INFER``), or a
        ``LOAD`` of one word of the widest memory where that is longer (a small input and
        wide program words), so every word can be loaded."""
        return max(1 + self._input_words * self._width * HIGHWAY_BITS // 8,
                   4 + max(self._word_bytes.values()))

    def info(self):
        """The bytes of the ``INFO`` reply."""
        depths, sizes = self._depths, self._word_bytes
        return bytes([Status.OK, *INFO_MAGIC, PROTOCOL_VERSION, self._width,
                      *_le(self._input_words, 2), *_le(self._output_words, 2),
                      *_le(depths["program"], 2), *_le(depths["weights"], 2),
                      *_le(depths["params"], 2), *_le(depths["data"], 2),
                      sizes["program"], sizes["weights"], sizes["params"],
                      *_le(depths.get("tables", 0), 2), sizes.get("tables", 0)])

    def elaborate(self, platform):
        m = Module()
        handlers = {
            Command.LOAD: LoadHandler(load_layout=self._load_layout, depths=self._depths,
                                      word_bytes=self._word_bytes, rows=self._rows),
            Command.RESTART: FixedCommand(bytes([Status.OK]), action=True),
            Command.INFER: InferHandler(width=self._width, input_words=self._input_words),
            Command.INFO: FixedCommand(self.info()),
        }
        m.submodules.dispatcher = dispatcher = Dispatcher(list(handlers))
        for port, (command, handler) in zip(dispatcher.handlers, handlers.items()):
            m.submodules[command.name.lower()] = handler
            wiring.connect(m, port, handler.host)
        wiring.connect(m, wiring.flipped(self.host), dispatcher.host)

        infer = handlers[Command.INFER]
        wiring.connect(m, infer.inputs, wiring.flipped(self.inputs))
        wiring.connect(m, wiring.flipped(self.outputs), infer.outputs)
        m.d.comb += infer.fault.eq(self.fault)

        # A restart is a load beat to memory RESTART, whose address and word the core does
        # not read: only `memory` is chosen (a multiplexer on the word would cost a LUT a bit).
        load, restart = handlers[Command.LOAD].load, handlers[Command.RESTART].action
        m.d.comb += [
            self.load.payload.eq(load.payload),
            self.load.valid.eq(load.valid | restart.valid),
            load.ready.eq(self.load.ready),
            restart.ready.eq(self.load.ready),
        ]
        with m.If(restart.valid):
            m.d.comb += self.load.payload.memory.eq(NetworkCore.Memory.RESTART)
        return m
