from amaranth.hdl import *
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.spec import check_int

__all__ = ["ResultBuffer"]


class ResultBuffer(wiring.Component):
    """Output queue of a stall-free pipeline, with credits for its entries.

    The pipelines in olmac never stall: their registers have no enable, so no
    high-fanout stall net limits the clock. Backpressure is applied at the pipeline's
    *input* instead. A beat that will produce a result may only enter after it has
    claimed an entry of this queue (``claim`` while ``can_claim``); the entry is released
    when its result leaves through ``r``. Results therefore always find room, and ``w``
    has no ``ready``.

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
        An entry is free to be claimed; depends only on registers.
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
            "can_claim": Out(1),
            "w": In(stream.Signature(payload_shape, always_ready=True)),
            "r": Out(stream.Signature(payload_shape)),
        })

    @property
    def depth(self):
        """Number of entries."""
        return self._depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(
            width=Shape.cast(self._payload_shape).width, depth=self._depth)

        m.d.comb += [
            queue.w_data.eq(self.w.payload),
            queue.w_en.eq(self.w.valid),
            self.r.payload.eq(queue.r_data),
            self.r.valid.eq(queue.r_rdy),
            queue.r_en.eq(self.r.ready),
        ]

        outstanding = Signal(range(self._depth + 1))
        released = self.r.valid & self.r.ready
        m.d.sync += outstanding.eq(outstanding + self.claim - released)
        m.d.comb += self.can_claim.eq(outstanding < self._depth)
        return m
