"""Stream blocks that sit between a producer and a consumer without changing the beats."""

from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer", "PipeValid"]

#: Payload bits of a SkidBuffer that share one copy of its state.
_SKID_SLICE = 64


class _Slice(wiring.Component):
    """A stream in (``i``) and the same stream out (``o``), beats of ``payload_shape``."""

    def __init__(self, payload_shape):
        super().__init__({
            "i": In(stream.Signature(payload_shape)),
            "o": Out(stream.Signature(payload_shape)),
        })


class SkidBuffer(_Slice):
    """Passes a stream on with its upstream ``ready`` taken from a register.

    A :class:`~olmac.hw.mac_array.MacArray`'s ``ready`` is combinational (it waits on the
    result credit), and in the block-RAM-fed top of :mod:`olmac.fpga.tops` the feeder's whole
    state and both block RAMs' enables hung on it: in a 16×16 array that one net limited the
    clock. Here upstream ``ready`` is "the skid register is empty", so the
    feeder sees a register; a beat that arrives while downstream stalls waits in the skid
    register, which loads whenever it is empty (an enable from a register, not from
    ``ready``). Downstream ``valid`` never waits on ``ready``, and a beat stays put while
    ``valid`` is high and ``ready`` low, as the stream rules ask.

    Parameters
    ----------
    payload_shape : ShapeLike
        Shape of one beat.

    Members
    -------
    i : In(stream.Signature(payload_shape))
    o : Out(stream.Signature(payload_shape))
    """

    def elaborate(self, platform):
        m = Module()
        # Copies of the state: one in the handshake loop (valid → downstream ready → next
        # state), and one per 64 payload bits selecting and loading them; one register doing
        # all of it sat between a thousand loads and the loop, which took 6 ns of routing
        # on ECP5.
        payload, skid_payload = Value.cast(self.i.payload), Value.cast(
            Signal.like(self.i.payload, reset_less=True, name="skid"))
        full = Signal(attrs={"keep": 1})
        slices = range(0, len(payload), _SKID_SLICE)
        selects = [Signal(name=f"select_{start}", attrs={"keep": 1}) for start in slices]
        chosen = []
        for select, start in zip(selects, slices):
            here = slice(start, start + _SKID_SLICE)
            with m.If(~select):
                m.d.sync += skid_payload[here].eq(payload[here])
            chosen.append(Mux(select, skid_payload[here], payload[here]))
        m.d.comb += [
            self.i.ready.eq(~full),
            self.o.valid.eq(full | self.i.valid),
            self.o.payload.eq(Cat(*chosen)),
        ]
        stalled = self.i.valid & ~self.o.ready
        with m.If(~full):
            m.d.sync += [state.eq(stalled) for state in (full, *selects)]
        with m.Elif(self.o.ready):
            m.d.sync += [state.eq(0) for state in (full, *selects)]
        return m


class PipeValid(_Slice):
    """Passes a stream on with its downstream ``valid`` and payload taken from registers.

    A beat taken from ``i`` is offered on ``o`` from the next cycle, so no path runs from
    the producer's logic (or a block RAM's slow output) into the consumer's; upstream
    ``ready`` is ``~o.valid | o.ready``, so beats still pass one a cycle. Put after a
    :class:`SkidBuffer`, which takes ``ready`` from a register, the two cut every path of
    the handshake.

    Parameters
    ----------
    payload_shape : ShapeLike
        Shape of one beat.

    Members
    -------
    i : In(stream.Signature(payload_shape))
    o : Out(stream.Signature(payload_shape))
    """

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        return m
