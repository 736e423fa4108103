"""8N1 UART: one start bit, eight data bits least significant first, one stop bit, no
parity. The bit period is ``divisor`` clock cycles (``divisor = f_clk / baud rate``)."""

from amaranth.hdl import *
from amaranth.lib import cdc, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.spec import check_int

__all__ = ["DIVISOR_RANGE", "UARTReceiver", "UARTTransmitter"]

#: Allowed bit periods in clock cycles, inclusive. Below 4 the receiver's one-cycle
#: uncertainty in finding the start edge is a quarter of a bit or more.
DIVISOR_RANGE = (4, 1 << 24)


class _Serial(wiring.Component):
    """What the receiver and the transmitter share: the bit period, validated."""

    def __init__(self, *, divisor):
        self._divisor = check_int("UART divisor", divisor, DIVISOR_RANGE)
        super().__init__()

    @property
    def divisor(self):
        """Clock cycles per bit."""
        return self._divisor


class UARTReceiver(_Serial):
    """Receives 8N1 bytes from the ``rx`` pin.

    The pin passes a two-flip-flop synchronizer first (it is asynchronous to ``clk``). A
    falling edge starts a byte; the start bit is checked again half a bit later (a shorter
    low pulse is a glitch and ignored) and every later bit is sampled in the middle of its
    period. The receiver returns to waiting for a falling edge right after the middle of
    the stop bit, so it re-synchronizes on every start bit and tolerates a clock mismatch
    of a few percent and stop bits shortened by up to half a bit.

    A byte whose stop bit reads low is dropped and flagged on ``framing_error``; the
    receiver then waits for the line to go high again, so a held-low line (a break) gives
    one error rather than a stream of zero bytes. UART has no flow control: a byte that
    completes while the previous one is still waiting on ``data.ready`` is dropped and
    flagged on ``overrun``.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, in :data:`DIVISOR_RANGE`.

    Raises
    ------
    TypeError
        If ``divisor`` is not an integer in :data:`DIVISOR_RANGE`.

    Members
    -------
    rx : In(1, init=1)
        The serial input pin (idle high).
    data : Out(stream.Signature(8))
        Received bytes.
    framing_error : Out(1)
        Strobe: a byte with a low stop bit was dropped.
    overrun : Out(1)
        Strobe: a byte was dropped because the previous one had not been taken.
    """

    rx: In(1, init=1)
    data: Out(stream.Signature(8))
    framing_error: Out(1)
    overrun: Out(1)

    def elaborate(self, platform):
        m = Module()

        line = Signal(init=1)
        m.submodules.sync = cdc.FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(self._divisor))
        bit = Signal(range(8))
        shift = Signal(8)
        m.d.sync += timer.eq(timer - 1)

        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self._divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self._divisor - 1), bit.eq(0)]
                    with m.If(line):
                        m.next = "IDLE"  # a glitch, not a start bit
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self._divisor - 1), shift.eq(Cat(shift[1:], line)),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        with m.If(self.data.valid & ~self.data.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.data.payload.eq(shift), self.data.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.framing_error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTransmitter(_Serial):
    """Sends 8N1 bytes on the ``tx`` pin, back to back while ``data`` has them.

    ``data.ready`` is high while the transmitter is idle; a byte taken starts its start
    bit in the next cycle, and the next byte can be taken in the last cycle of the stop
    bit, so a continuous stream leaves with no idle time between frames. The ``divisor``
    parameter and the ``TypeError`` it can raise are as for :class:`UARTReceiver`.

    Members
    -------
    data : In(stream.Signature(8))
        Bytes to send.
    tx : Out(1, init=1)
        The serial output pin (idle high).
    """

    data: In(stream.Signature(8))
    tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()

        # Stop bit, data bits and start bit, sent from the bottom; idle shifts in ones.
        shift = Signal(10, init=0x3FF)
        timer = Signal(range(self._divisor))
        bits_left = Signal(range(11))
        busy = bits_left != 0
        last_cycle = (bits_left == 1) & (timer == 0)

        m.d.comb += [
            self.tx.eq(shift[0]),
            self.data.ready.eq(~busy | last_cycle),
        ]
        with m.If(busy):
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [timer.eq(self._divisor - 1), shift.eq(Cat(shift[1:], 1)),
                             bits_left.eq(bits_left - 1)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [shift.eq(Cat(0, self.data.payload, 1)), bits_left.eq(10),
                         timer.eq(self._divisor - 1)]
        return m
