"""The sequencer: fetches one op descriptor at a time and runs it (docs/network.md §15)."""

from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import ControlSignature

__all__ = ["Sequencer"]


class Sequencer(wiring.Component):
    """Fetches op ``pc``, announces it to the walks, waits until it is ``done`` and moves on:
    to op 0 after an op marked ``final`` or on ``restart``, else to the next op.

    The descriptor stays in the memories' answer (``descriptor`` is taken only when the op
    ends), so the core keeps no copy of it. The next op's address goes out in the cycle the
    op ends and the next op starts in the cycle its descriptor arrives: with memories that
    answer in one cycle, ops are one cycle apart (docs/network.md §15).

    Parameters
    ----------
    config : NetworkCore.Config
        The descriptor layout and the program depth.

    Members
    -------
    control : Out(ControlSignature(descriptor))
        The op and its ``start``/``running`` flags.
    fetch : Out(stream.Signature(range(program_depth)))
        The address of the next op.
    descriptor : In(stream.Signature(descriptor))
        The fetched op; taken when it is done.
    done : In(1)
        The op has finished (one cycle).
    restart : In(1)
        Start again at op 0 (one cycle, while the op runs).
    op_index : Out(range(program_depth))
        The op running.
    """

    def __init__(self, config):
        descriptor = config.layouts["program"]
        super().__init__({
            "control": Out(ControlSignature(descriptor)),
            "fetch": Out(stream.Signature(range(config.program_depth))),
            "descriptor": In(stream.Signature(descriptor)),
            "op_index": Out(range(config.program_depth)),
            "done": In(1),
            "restart": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        op = self.descriptor.payload
        following = Signal.like(self.op_index)
        m.d.comb += [self.control.op.eq(op), following.eq(Mux(self.restart | op.final, 0,
                                                              self.op_index + 1))]
        with m.FSM():
            with m.State("FETCH"):
                m.d.comb += [self.fetch.valid.eq(1), self.fetch.payload.eq(self.op_index)]
                with m.If(self.fetch.ready):
                    m.next = "WAIT"
            with m.State("WAIT"):
                # the op starts the cycle its descriptor arrives
                with m.If(self.descriptor.valid):
                    m.d.comb += self.control.start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.control.running.eq(1)
                with m.If(self.restart | self.done):
                    # the next op is fetched as this one's descriptor is let go, so two ops
                    # are one cycle apart
                    m.d.comb += [self.descriptor.ready.eq(1), self.fetch.valid.eq(1),
                                 self.fetch.payload.eq(following)]
                    m.d.sync += self.op_index.eq(following)
                    with m.If(self.fetch.ready):
                        m.next = "WAIT"
                    with m.Else():
                        m.next = "FETCH"
        return m
