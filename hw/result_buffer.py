from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from olmac.spec import check_int
from .ram import NO_COLLISIONS

__all__ = ["ResultBuffer"]


class ResultBuffer(wiring.Component):
    """Output queue of a stall-free pipeline, with credits for its entries.

    The pipelines in olmac never stall: their registers have no enable, so no
    high-fanout stall net limits the clock. Backpressure is applied at the pipeline's
    *input* instead. A beat that will produce a result may only enter after it has
    claimed an entry of this queue (``claim`` while ``can_claim``); the entry is released
    when its result leaves through ``r``. Results therefore always find room, and ``w``
    has no ``ready``.

    Because the credits guarantee a free entry for every result, nothing but the
    pipeline's own ``w.valid`` register reaches the write side: the write enable is
    ``w.valid`` itself, not ``w.valid`` and a "not full" compare (with a generic FIFO that
    compare, then the enable of every LUT-RAM bit of a 16-column queue, limited a 16×16
    :class:`~hw.mac_array.MacArray` on ECP5). Reads go through an output register, two
    cycles from ``w`` to ``r`` as with ``fifo.SyncFIFOBuffered``; the output register
    loads whenever it is free to, so an always-ready consumer leaves it with no enable.

    Parameters
    ----------
    payload_shape : ShapeLike
        Shape of one result.
    depth : int
        Number of entries. The pipeline runs at one result per cycle when ``depth`` exceeds
        its latency from ``claim`` to ``w`` by four (two cycles of queue latency, one
        for the write and one for the credit to return).

    Raises
    ------
    TypeError
        If ``depth`` is not an integer in 2..4096.

    Members
    -------
    claim : In(1)
        A result-producing beat enters the pipeline in this cycle. Only asserted while
        ``can_claim``.
    can_claim : Out(1)
        An entry is free to be claimed; a register of its own, so the pipeline's ``ready``
        (and whatever enable a feeder derives from it) starts at a flip-flop instead of
        behind the credit counter's compare. It counts this cycle's claim as made whether
        or not it is, so after a cycle without a claim it may stay low for a cycle with one
        entry still free.
    w : In(stream.Signature(payload_shape, always_ready=True))
        Results from the end of the pipeline, one per claim, in claim order.
    r : Out(stream.Signature(payload_shape))
        Results, in order.
    """

    def __init__(self, payload_shape, depth):
        self._depth = check_int("Result buffer depth", depth, (2, 4096))
        self._payload_shape = payload_shape
        super().__init__({
            "claim": In(1),
            "can_claim": Out(1, init=1),
            "w": In(stream.Signature(payload_shape, always_ready=True)),
            "r": Out(stream.Signature(payload_shape)),
        })

    @property
    def depth(self):
        """Number of entries."""
        return self._depth

    def elaborate(self, platform):
        m = Module()
        depth = self._depth
        # The entry under `consume` is written only while the queue is empty (its read is
        # then unused): a full queue has no credit left for a write. So no read needs
        # the iCE40 block RAM's undefined collision result emulated (two registers and a
        # multiplexer a bit).
        m.submodules.storage = storage = Memory(shape=self._payload_shape, depth=depth,
                                                init=[], attrs=NO_COLLISIONS)
        write, read = storage.write_port(), storage.read_port(domain="comb")
        produce = Signal(range(depth))
        consume = Signal(range(depth))
        stored = Signal(range(depth + 1))
        m.d.comb += [write.addr.eq(produce), write.data.eq(self.w.payload),
                     write.en.eq(self.w.valid), read.addr.eq(consume)]
        with m.If(self.w.valid):
            m.d.sync += produce.eq(Mux(produce == depth - 1, 0, produce + 1))

        free = ~self.r.valid | self.r.ready
        load = free & (stored != 0)
        with m.If(free):
            m.d.sync += [self.r.payload.eq(read.data), self.r.valid.eq(stored != 0)]
        with m.If(load):
            m.d.sync += consume.eq(Mux(consume == depth - 1, 0, consume + 1))
        m.d.sync += stored.eq(stored + self.w.valid - load)

        # can_claim is registered from the counter as if this cycle's claim were made, so
        # the claim (which comes late: through the pipeline's `ready` and its producer's
        # `valid`) reaches only the counter, never the compare. It never overclaims: a
        # claim next cycle finds at most depth - 1 entries claimed. In a cycle without a
        # claim it may hold back the queue's last entry for a cycle; at one claim a cycle,
        # the rate that needs every entry, it is the exact count. (On the UP5K the claim,
        # the counter's next value and the compare were the 8×8 array's critical path.)
        outstanding = Signal(range(depth + 1))
        released = self.r.valid & self.r.ready
        m.d.sync += [outstanding.eq(outstanding + self.claim - released),
                     self.can_claim.eq(Mux(released, outstanding < depth,
                                           outstanding < depth - 1))]
        return m
