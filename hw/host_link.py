"""Framed host link over a byte stream (docs/host_link.md).

The frame bytes and the error codes are plain data in :mod:`olmac.spec`; the host side
(:mod:`olmac.host_link`) implements the format in Python, and this module is the hardware
reading of the same spec: a :class:`FrameReceiver`, :class:`RequestSlots` and a
:class:`FrameTransmitter` make a :class:`HostLink`, which :class:`SerialHostLink` puts behind
a UART.
"""

from operator import attrgetter

from amaranth.hdl import *
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from olmac.spec import ERROR_KIND, REPLY_KIND, SYNC, ErrorCode, check_int
from .uart import DIVISOR_RANGE, UARTReceiver, UARTTransmitter

__all__ = ["PacketByte", "AppSignature", "SlotWriteSignature", "FrameReceiver", "RequestSlots",
           "FrameTransmitter", "HostLink", "SerialHostLink", "LoopbackApp", "MAX_PAYLOAD_RANGE",
           "TIMEOUT_RANGE"]

#: Allowed payload capacities in bytes, inclusive. Replies carry one more byte (the kind),
#: so a reply holds at most 65534 application bytes.
MAX_PAYLOAD_RANGE = (1, 65535)
#: Allowed inter-byte timeouts in clock cycles, inclusive.
TIMEOUT_RANGE = (2, (1 << 32) - 1)
#: Error reports queued while an earlier one is still being sent; more are dropped.
ERROR_QUEUE_DEPTH = 4


class PacketByte(data.StructLayout):
    """One byte of a message; ``last`` marks the final byte."""

    def __init__(self):
        super().__init__({"data": unsigned(8), "last": unsigned(1)})


class AppSignature(wiring.Signature):
    """The port between a :class:`HostLink` (``Out``) and an application (``In``).

    The application takes every byte of each request, up to the one marked ``last``, and
    answers it with one reply. It may start its reply, and even end it, before it has taken
    the whole request (a :class:`~hw.network_app.Dispatcher` waits for both ends, in either
    order, before it hands its handlers the next request).

    Members
    -------
    request : Out(stream.Signature(PacketByte()))
        The payload of one good frame after another, each ending with ``last``.
    reply : In(stream.Signature(PacketByte()))
        The application's replies, each at least one byte and ending with ``last``.
    """

    def __init__(self):
        super().__init__({
            "request": Out(stream.Signature(PacketByte())),
            "reply": In(stream.Signature(PacketByte())),
        })


class SlotWriteSignature(wiring.Signature):
    """The port between a :class:`FrameReceiver` (``Out``) and its :class:`RequestSlots`
    (``In``): a frame's payload is written into the free slot as it arrives and kept only
    once the whole frame has checked.

    Members
    -------
    en : Out(1)
        Write ``data`` at ``offset`` of the free slot.
    offset : Out(16)
        Position of the byte in the payload.
    data : Out(8)
        A payload byte.
    commit : Out(1)
        Strobe: the frame in the free slot has checked; it is ``length`` bytes long.
    length : Out(16)
        Payload bytes of the committed frame.
    busy : In(1)
        The free slot still holds a frame for the application: a frame that starts now
        cannot be kept.
    """

    def __init__(self):
        super().__init__({"en": Out(1), "offset": Out(16), "data": Out(8), "commit": Out(1),
                          "length": Out(16), "busy": In(1)})


def _check_timeout(timeout):
    return check_int("Inter-byte timeout", timeout, TIMEOUT_RANGE)


def _check_max_payload(max_payload):
    return check_int("Maximum payload length", max_payload, MAX_PAYLOAD_RANGE)


def _check_max_reply(max_reply):
    return check_int("Maximum reply length", max_reply,
                     (MAX_PAYLOAD_RANGE[0], MAX_PAYLOAD_RANGE[1] - 1))


class FrameReceiver(wiring.Component):
    """Frames from a host's byte stream into :class:`RequestSlots` (the receiving half of a
    :class:`HostLink`).

    Incoming frames are parsed byte by byte, their payload written to the free slot while
    their CRC is computed; only a frame whose length and CRC check is committed, so a bad
    frame is never partially applied. ``rx`` is always accepted (a UART cannot be held up):
    a frame that starts while no slot is free is parsed but dropped and reported ``BUSY``.
    After a damaged frame header (bad length, UART framing
    error) the rest of the frame is discarded until the line has been quiet for ``timeout``
    cycles, so its tail is never mistaken for a new frame. A frame stalled in the middle for
    ``timeout`` cycles is ``TRUNCATED``. Every state returns to hunting for the sync byte.

    Parameters
    ----------
    max_payload : int
        Longest request payload, 1..65535 bytes.
    timeout : int
        Quiet cycles after which a frame is truncated, 2..2**32-1.

    Raises
    ------
    TypeError
        If ``max_payload`` or ``timeout`` is not an integer in its range.

    Members
    -------
    rx : In(stream.Signature(8))
        Bytes from the host; ``ready`` is always high.
    rx_error : In(1)
        Strobe: a byte from the host was lost or damaged.
    slots : Out(SlotWriteSignature())
        Payload writes and commits.
    error : Out(8)
        Strobe: the :class:`ErrorCode` of an error to report, 0 for none.
    """

    def __init__(self, *, max_payload, timeout):
        self._max_payload = _check_max_payload(max_payload)
        self._timeout = _check_timeout(timeout)
        super().__init__({
            "rx": In(stream.Signature(8)),
            "rx_error": In(1),
            "slots": Out(SlotWriteSignature()),
            "error": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = catalog.CRC16_CCITT_FALSE(data_width=8).create()
        slots = self.slots
        byte = self.rx.payload
        got = self.rx.valid & ~self.rx_error
        m.d.comb += [self.rx.ready.eq(1), crc.data.eq(byte)]

        quiet = Signal(range(self._timeout + 1))
        timed_out = quiet == self._timeout
        with m.If(self.rx.valid | self.rx_error):
            m.d.sync += quiet.eq(0)
        with m.Elif(~timed_out):
            m.d.sync += quiet.eq(quiet + 1)

        # The length and the payload count are as wide as the longest payload taken (the
        # length field's 16 bits are checked against it first).
        low_byte = Signal(8)         # of the length
        length = Signal(range(self._max_payload + 1))
        count = Signal(range(self._max_payload))
        crc_low = Signal(8)
        dropping = Signal()         # no slot was free when this frame began
        pending = Signal(8)         # the error reported once a discarded frame ends
        report = self.error
        received_length = Cat(low_byte, byte)

        def start_frame():
            m.d.comb += crc.start.eq(1)
            m.d.sync += dropping.eq(slots.busy)
            m.next = "LENGTH_LOW"

        def discard(code):
            m.d.sync += pending.eq(code)
            m.next = "DISCARD"

        with m.FSM():
            with m.State("HUNT"):
                with m.If(self.rx_error):
                    discard(int(ErrorCode.FRAMING))
                with m.Elif(got & (byte == SYNC)):
                    start_frame()
                with m.Elif(got):
                    m.next = "GARBAGE"
            with m.State("GARBAGE"):
                with m.If(self.rx_error):
                    discard(int(ErrorCode.FRAMING))
                with m.Elif(got & (byte == SYNC)):
                    m.d.comb += report.eq(int(ErrorCode.GARBAGE))
                    start_frame()
                with m.Elif(timed_out):
                    m.d.comb += report.eq(int(ErrorCode.GARBAGE))
                    m.next = "HUNT"

            def in_frame(state, on_byte):
                with m.State(state):
                    with m.If(self.rx_error):
                        discard(int(ErrorCode.FRAMING))
                    with m.Elif(got):
                        on_byte()
                    with m.Elif(timed_out):
                        m.d.comb += report.eq(int(ErrorCode.TRUNCATED))
                        m.next = "HUNT"

            def length_low():
                m.d.comb += crc.valid.eq(1)
                m.d.sync += low_byte.eq(byte)
                m.next = "LENGTH_HIGH"
            in_frame("LENGTH_LOW", length_low)

            def length_high():
                m.d.comb += crc.valid.eq(1)
                m.d.sync += [length.eq(received_length), count.eq(0)]
                with m.If((received_length == 0) | (received_length > self._max_payload)):
                    discard(int(ErrorCode.LENGTH))
                with m.Else():
                    m.next = "PAYLOAD"
            in_frame("LENGTH_HIGH", length_high)

            def payload():
                m.d.comb += [crc.valid.eq(1), slots.offset.eq(count), slots.data.eq(byte),
                             slots.en.eq(~dropping)]
                # the incremented count, not `length - 1`: one adder fewer
                m.d.sync += count.eq(count + 1)
                with m.If(count + 1 == length):
                    m.next = "CRC_LOW"
            in_frame("PAYLOAD", payload)

            def crc_low_byte():
                m.d.sync += crc_low.eq(byte)
                m.next = "CRC_HIGH"
            in_frame("CRC_LOW", crc_low_byte)

            def crc_high_byte():
                with m.If(Cat(crc_low, byte) != crc.crc):
                    m.d.comb += report.eq(int(ErrorCode.CRC))
                with m.Elif(dropping):
                    m.d.comb += report.eq(int(ErrorCode.BUSY))
                with m.Else():
                    m.d.comb += [slots.commit.eq(1), slots.length.eq(length)]
                m.next = "HUNT"
            in_frame("CRC_HIGH", crc_high_byte)

            with m.State("DISCARD"):
                with m.If(timed_out):
                    m.d.comb += report.eq(pending)
                    m.next = "HUNT"
        return m


class RequestSlots(wiring.Component):
    """Two slots of request payloads between a :class:`FrameReceiver` and the application:
    one frame can arrive while the application still takes the previous one. Checked frames
    are released on ``request``, oldest first.

    Parameters
    ----------
    max_payload : int
        Bytes of a slot, 1..65535.

    Raises
    ------
    TypeError
        If ``max_payload`` is not an integer in its range.

    Members
    -------
    write : In(SlotWriteSignature())
        Payload writes and commits from the receiver.
    request : Out(stream.Signature(PacketByte()))
        The payload of one committed frame after another, each ending with ``last``.
    """

    def __init__(self, *, max_payload):
        self._max_payload = _check_max_payload(max_payload)
        super().__init__({"write": In(SlotWriteSignature()),
                          "request": Out(stream.Signature(PacketByte()))})

    def elaborate(self, platform):
        m = Module()
        # Each slot a power of two long, so a slot's address is the offset below its
        # number: no adder on either port (the board's 1 537-byte slots took 12-bit ones).
        offset_bits = Shape.cast(range(self._max_payload)).width
        m.submodules.requests = requests = Memory(shape=8, depth=2 << offset_bits, init=[])
        port = requests.write_port()
        read = requests.read_port()

        def address(slot, offset):
            return Cat(Cat(offset, Const(0, offset_bits))[:offset_bits], slot)

        held = Signal(2)            # which slots hold a checked frame not yet released
        held_length = Array(Signal(range(self._max_payload + 1), name=f"held_length_{slot}")
                            for slot in range(2))
        write_slot = Signal()
        read_slot = Signal()
        index = Signal(range(self._max_payload))
        request, write = self.request, self.write
        sent = request.valid & request.ready
        m.d.comb += [
            request.valid.eq(held.bit_select(read_slot, 1)),
            request.payload.data.eq(read.data),
            request.payload.last.eq(index + 1 == held_length[read_slot]),
        ]
        # Read ahead so the port's output is always the byte at `index`.
        with m.If(sent & request.payload.last):
            m.d.comb += read.addr.eq(address(~read_slot, 0))
            m.d.sync += [held.bit_select(read_slot, 1).eq(0), index.eq(0),
                         read_slot.eq(~read_slot)]
        with m.Elif(sent):
            m.d.comb += read.addr.eq(address(read_slot, index + 1))
            m.d.sync += index.eq(index + 1)
        with m.Else():
            m.d.comb += read.addr.eq(address(read_slot, index))

        m.d.comb += [
            write.busy.eq(held.bit_select(write_slot, 1)),
            port.addr.eq(address(write_slot, write.offset)),
            port.data.eq(write.data),
            port.en.eq(write.en),
        ]
        with m.If(write.commit):
            m.d.sync += [held.bit_select(write_slot, 1).eq(1),
                         held_length[write_slot].eq(write.length), write_slot.eq(~write_slot)]
        return m


class FrameTransmitter(wiring.Component):
    """Replies and error reports to a host's byte stream, framed (the sending half of a
    :class:`HostLink`).

    Each reply on ``reply`` is collected in a reply memory until ``last`` (so its length is
    known) and then framed on ``tx`` with kind byte ``0x00``; a reply longer than the memory
    is dropped and answered ``REPLY_OVERFLOW``. An error code on ``errors`` is framed with
    kind ``0xEE``, ahead of a collected reply.

    Parameters
    ----------
    max_reply : int
        Capacity of the reply memory, 1..65534 bytes.

    Raises
    ------
    TypeError
        If ``max_reply`` is not an integer in its range.

    Members
    -------
    reply : In(stream.Signature(PacketByte()))
        The application's replies, each at least one byte and ending with ``last``.
    errors : In(stream.Signature(8))
        Codes of errors to report.
    tx : Out(stream.Signature(8))
        Bytes to the host.
    """

    def __init__(self, *, max_reply):
        self._max_reply = _check_max_reply(max_reply)
        super().__init__({
            "reply": In(stream.Signature(PacketByte())),
            "errors": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.replies = replies = Memory(shape=8, depth=self._max_reply, init=[])
        write = replies.write_port()
        read = replies.read_port()
        m.submodules.tx_crc = crc = catalog.CRC16_CCITT_FALSE(data_width=8).create()

        # Collection of the application's reply.
        complete = Signal()         # a whole reply waits in the memory to be framed
        count = Signal(range(self._max_reply + 1))
        overflow = Signal()
        reply = self.reply
        m.d.comb += [
            reply.ready.eq(~complete),
            write.addr.eq(count),
            write.data.eq(reply.payload.data),
        ]
        with m.If(reply.valid & reply.ready):
            with m.If(count == self._max_reply):
                m.d.sync += overflow.eq(1)
            with m.Else():
                m.d.comb += write.en.eq(1)
                m.d.sync += count.eq(count + 1)
            with m.If(reply.payload.last):
                m.d.sync += complete.eq(1)

        # Framer: the byte on `tx` is a function of the state, the CRC register and the
        # memory output, so it holds still while the transmitter stalls.
        is_error = Signal()
        for_reply = Signal()        # the frame is the collected reply's (or its overflow)
        code = Signal(8)
        body = Signal(range(self._max_reply))
        body_length = Mux(is_error, 1, count)
        frame_length = Signal(16)
        m.d.comb += frame_length.eq(body_length + 1)
        sent = self.tx.valid & self.tx.ready
        m.d.comb += [crc.data.eq(self.tx.payload), read.addr.eq(body)]

        def send(value, next_state, *, checked=True):
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
            with m.If(sent):
                if checked:
                    m.d.comb += crc.valid.eq(1)
                m.next = next_state

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.errors.valid):
                    m.d.comb += self.errors.ready.eq(1)
                    m.d.sync += [is_error.eq(1), for_reply.eq(0), code.eq(self.errors.payload)]
                    m.next = "SYNC"
                with m.Elif(complete):
                    m.d.sync += [is_error.eq(overflow), for_reply.eq(1),
                                 code.eq(int(ErrorCode.REPLY_OVERFLOW))]
                    m.next = "SYNC"
            with m.State("SYNC"):
                m.d.comb += crc.start.eq(1)
                send(SYNC, "LENGTH_LOW", checked=False)
            with m.State("LENGTH_LOW"):
                send(frame_length[:8], "LENGTH_HIGH")
            with m.State("LENGTH_HIGH"):
                send(frame_length[8:], "KIND")
            with m.State("KIND"):
                send(Mux(is_error, ERROR_KIND, REPLY_KIND), "BODY")
            with m.State("BODY"):
                send(Mux(is_error, code, read.data), "BODY")
                with m.If(sent):
                    m.d.comb += read.addr.eq(body + 1)
                    m.d.sync += body.eq(body + 1)
                    with m.If(body + 1 == body_length):
                        m.d.comb += read.addr.eq(0)
                        m.d.sync += body.eq(0)
                        m.next = "CRC_LOW"
            with m.State("CRC_LOW"):
                send(crc.crc[:8], "CRC_HIGH", checked=False)
            with m.State("CRC_HIGH"):
                send(crc.crc[8:], "IDLE", checked=False)
                # An error frame from the queue leaves a pending reply where it was, whatever
                # its code (a queued REPLY_OVERFLOW code too).
                with m.If(sent & for_reply):
                    m.d.sync += [complete.eq(0), count.eq(0), overflow.eq(0)]
        return m


class _LinkParameters(wiring.Component):
    """The parameters :class:`HostLink` and :class:`SerialHostLink` share, validated and
    exposed as properties."""

    def __init__(self, members, *, max_payload, max_reply, timeout):
        self._max_payload = _check_max_payload(max_payload)
        if max_reply is None:
            max_reply = min(max_payload, MAX_PAYLOAD_RANGE[1] - 1)
        self._max_reply = _check_max_reply(max_reply)
        self._timeout = _check_timeout(timeout)
        super().__init__(members)

    max_payload = property(attrgetter("_max_payload"),
                           doc="Capacity of the request memory in bytes.")
    max_reply = property(attrgetter("_max_reply"), doc="Capacity of the reply memory in bytes.")
    timeout = property(attrgetter("_timeout"), doc="Inter-byte timeout in clock cycles.")


class HostLink(_LinkParameters):
    """Frames between a host's byte stream and an application (docs/host_link.md): a
    :class:`FrameReceiver` that fills :class:`RequestSlots`, and a :class:`FrameTransmitter`
    with a queue of error reports from the receiver.

    A request reaches ``app.request`` only once its whole frame has checked; the application
    may produce its reply while it consumes the request. Up to four error frames
    (:class:`ErrorCode`) wait while the transmitter is busy; the queue drops reports beyond
    that, so the receiver never stalls.

    Parameters
    ----------
    max_payload : int
        Longest request payload, as for :class:`FrameReceiver`; longer frames are refused.
    max_reply : int or None
        Capacity of the reply memory, as for :class:`FrameTransmitter` (default:
        ``max_payload``, at most 65534).
    timeout : int
        As for :class:`FrameReceiver`. Must exceed the time between two bytes of a frame
        (over a UART, a byte time of ``10·divisor`` cycles, plus the host's gaps).

    Raises
    ------
    TypeError
        If a parameter is not an integer in its range.

    Members
    -------
    rx, rx_error
        Bytes from the host, as :class:`FrameReceiver` takes them.
    tx : Out(stream.Signature(8))
        Bytes to the host.
    app : Out(AppSignature())
        Requests to and replies from the application.
    """

    def __init__(self, *, max_payload, max_reply=None, timeout):
        super().__init__({
            "rx": In(stream.Signature(8)),
            "rx_error": In(1),
            "tx": Out(stream.Signature(8)),
            "app": Out(AppSignature()),
        }, max_payload=max_payload, max_reply=max_reply, timeout=timeout)

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = receiver = FrameReceiver(max_payload=self._max_payload,
                                                         timeout=self._timeout)
        m.submodules.slots = slots = RequestSlots(max_payload=self._max_payload)
        m.submodules.transmitter = transmitter = FrameTransmitter(max_reply=self._max_reply)
        m.submodules.errors = errors = fifo.SyncFIFO(width=8, depth=ERROR_QUEUE_DEPTH)
        wiring.connect(m, wiring.flipped(self.rx), receiver.rx)
        wiring.connect(m, receiver.slots, slots.write)
        wiring.connect(m, slots.request, wiring.flipped(self.app.request))
        wiring.connect(m, wiring.flipped(self.app.reply), transmitter.reply)
        wiring.connect(m, transmitter.tx, wiring.flipped(self.tx))
        wiring.connect(m, errors.r_stream, transmitter.errors)
        # The receiver cannot wait for the queue: a report it has no room for is dropped.
        m.d.comb += [
            receiver.rx_error.eq(self.rx_error),
            errors.w_data.eq(receiver.error),
            errors.w_en.eq(receiver.error != 0),
        ]
        return m


class SerialHostLink(_LinkParameters):
    """A :class:`HostLink` behind an 8N1 UART: the block a board top puts on its serial
    pins, in front of the application.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (``f_clk / baud rate``), see :class:`hw.uart.UARTReceiver`.
    max_payload, max_reply, timeout
        As for :class:`HostLink`; ``timeout`` defaults to four byte times.

    Raises
    ------
    TypeError
        If a parameter is not an integer in its range.
    ValueError
        If ``timeout`` is not longer than one byte time (``10·divisor`` cycles).

    Members
    -------
    rx : In(1, init=1)
        Serial input pin.
    tx : Out(1, init=1)
        Serial output pin.
    app : Out(AppSignature())
        Requests to and replies from the application.
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)
    app: Out(AppSignature())

    def __init__(self, *, divisor, max_payload, max_reply=None, timeout=None):
        self._divisor = check_int("UART divisor", divisor, DIVISOR_RANGE)
        if timeout is None:
            timeout = 40 * divisor
        if _check_timeout(timeout) <= 10 * divisor:
            raise ValueError(f"Inter-byte timeout must exceed one byte time of "
                             f"{10 * divisor} cycles, not {timeout}")
        super().__init__(None, max_payload=max_payload, max_reply=max_reply, timeout=timeout)

    divisor = property(attrgetter("_divisor"), doc="Clock cycles per bit.")

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = receiver = UARTReceiver(divisor=self._divisor)
        m.submodules.transmitter = transmitter = UARTTransmitter(divisor=self._divisor)
        m.submodules.link = link = HostLink(max_payload=self._max_payload,
                                            max_reply=self._max_reply, timeout=self._timeout)
        wiring.connect(m, receiver.data, link.rx)
        wiring.connect(m, link.tx, transmitter.data)
        wiring.connect(m, wiring.flipped(self.app), link.app)
        m.d.comb += [
            receiver.rx.eq(self.rx),
            self.tx.eq(transmitter.tx),
            # Neither can happen with the link's receiver always ready, but a lost byte
            # is a damaged frame either way.
            link.rx_error.eq(receiver.framing_error | receiver.overrun),
        ]
        return m


class LoopbackApp(wiring.Component):
    """An application that answers every request with its own payload, byte for byte
    (for link bring-up and tests).

    Members
    -------
    host : In(AppSignature())
        Requests from and replies to a :class:`HostLink`.
    """

    host: In(AppSignature())

    def elaborate(self, platform):
        m = Module()
        wiring.connect(m, wiring.flipped(self.host.request), wiring.flipped(self.host.reply))
        return m
