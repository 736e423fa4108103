"""The sequencer: fetches one op descriptor at a time and runs it, the end of one op
overlapping the start of the next (docs/network.md §15)."""

from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import ControlSignature, OpKind, writes_results

__all__ = ["Sequencer"]


class Sequencer(wiring.Component):
    """Fetches op ``pc``, announces it, waits until it is ``done`` and moves on: to op 0
    after an op marked ``final`` or on ``restart``, else to the next op.

    An op has a **front**, the parts that take its operands (loader, storer, beat walk,
    codebook path), announced on ``control``, and, if it writes results (a compute op or a
    quantizing ``LOAD``), a **back**, the parts that write them (output walk, parameter
    feed, write-back, table and outlier parts), announced on ``back`` with a copy of the
    descriptor. The back takes an op once it has finished the one before
    (``back_done``); the front ends with ``done`` and is let go once the back has taken
    its op, so the front may run one op ahead of the back: an op whose descriptor has
    ``overlap`` starts while the back still writes the previous op's results
    (``fenced`` until the back takes it; the beat walk then reads only what is written,
    docs/network.md §15), as does a ``STORE`` with ``overlap`` (which the back does not
    take: the ``Storer`` reads behind the back's writes), any other op once the back is
    idle, the cycle after its last
    write (an op with activation outliers merges its last block a cycle after its last
    word, and the op after may read that block). The front's descriptor
    stays in the memories' answer (``descriptor`` is taken when the front is let go);
    the next op's address goes out in that cycle and the op starts in the cycle its
    descriptor arrives, so with memories that answer in one cycle ops are one cycle apart.

    With ``config.fetch_ahead`` the front's descriptor is a register of the sequencer's
    and the memories read the next op's meanwhile, its address held on ``fetch`` and each
    answer taken the cycle it arrives: letting the front go moves that answer
    into the register, so ``done`` reaches no memory address. The address may then move
    while ``fetch`` waits, so the memories must take a fetch every cycle (``WideMemories``
    do while the sequencer takes every answer, as it does). An answer is stale the cycle
    after the address moved, a ``restart`` or a write of the program
    (``program_written``); the front then waits for the next one. Ops are still one cycle
    apart; op 0 starts a cycle later after a reset and two after a restart.

    A core with narrow memories (``config.overlap`` false, for small FPGAs) keeps no copy:
    its back reads the front's descriptor, so the front is let go only once the back is
    free, no op overlaps the one before and ``fenced`` is 0.

    Parameters
    ----------
    config : NetworkCore.Config
        The descriptor layout and the program depth.

    Members
    -------
    control : Out(ControlSignature(descriptor))
        The front's op and its ``start``/``running`` flags.
    back : Out(ControlSignature(descriptor))
        The back's op (a copy of its descriptor) and its ``start``/``running`` flags.
    fetch : Out(stream.Signature(range(program_depth)))
        The address of the next op.
    descriptor : In(stream.Signature(descriptor))
        The fetched op; taken when its front is let go.
    done : In(1)
        The front's op has finished (one cycle).
    back_done : In(1)
        The back's op has written its last result (one cycle).
    restart : In(1)
        Start again at op 0 (one cycle, while the front runs a ``LOAD``, which the back runs
        too or not at all); the back stops at once.
    prefetched : In(1)
        With ``config.prefetch``: the front's ``LOAD`` takes its words from the background
        loader (from its start, docs/network.md §15, prefetch): they are quantized
        already, so the back gets nothing of it.
    load_claimable : In(1)
        With ``config.prefetch``: a ``LOAD`` starting now would take its words from the
        background loader, so it may start beside the back (with ``config.overlap``).
    program_written : In(1)
        With ``config.fetch_ahead``: a word of the program memory is written (one cycle).
    queued : Out(1)
        The front's op waits for the back to take it (the back still writes an op before).
    fenced : Out(1)
        The front's op is ``queued`` behind the op just before it, which the back runs:
        its reads wait for the back's writes. An op after one the back never took (a
        claimed ``LOAD``) reads nothing the back writes.
    op_index : Out(range(program_depth))
        The front's op.
    """

    def __init__(self, config):
        descriptor = config.layouts["program"]
        super().__init__({
            "control": Out(ControlSignature(descriptor)),
            "back": Out(ControlSignature(descriptor)),
            "fetch": Out(stream.Signature(range(config.program_depth))),
            "descriptor": In(stream.Signature(descriptor)),
            "op_index": Out(range(config.program_depth)),
            "done": In(1),
            "back_done": In(1),
            "restart": In(1),
            **({"prefetched": In(1), "load_claimable": In(1)} if config.prefetch else {}),
            **({"program_written": In(1)} if config.fetch_ahead else {}),
            "queued": Out(1),
            "fenced": Out(1),
        })
        self._prefetch = config.prefetch
        self._copy = config.overlap
        self._ahead = config.fetch_ahead

    def elaborate(self, platform):
        m = Module()
        if self._ahead:
            op = Signal(self.descriptor.payload.shape(), name="front_op")
            take, to_op_0, arrived = self._fetch_ahead(m, op)
        else:
            op = self.descriptor.payload
            following = Signal.like(self.op_index)
            m.d.comb += following.eq(Mux(self.restart | op.final, 0, self.op_index + 1))
        m.d.comb += self.control.op.eq(op)

        # The back: its op's descriptor, a start cycle, then running until back_done.
        back_starting, back_running = Signal(), Signal()
        pending = Signal()      # the front's op is still to be handed to the back
        start = Signal()
        back_free = ~back_starting & (~back_running | self.back_done)
        hand = Signal()
        produces = writes_results(op) & ~(self.prefetched if self._prefetch else 0)
        # a restart comes only while the front runs (a LOAD)
        restart = self.restart & self.control.running
        m.d.comb += [
            self.back.start.eq(back_starting),
            self.back.running.eq(back_running),
            self.control.start.eq(start),
            hand.eq((pending | (start & produces)) & back_free & ~restart),
        ]
        if self._copy:
            back_op = Signal(op.shape())
            with m.If(hand):
                m.d.sync += back_op.eq(op)
            # the front is let go once the back has its copy
            let_go = ~pending | hand
            # whether the op before the front's went to the back
            after_produced, produced = Signal(), Signal()
            with m.If(start):
                m.d.sync += [after_produced.eq(produced), produced.eq(produces)]
            m.d.comb += [self.back.op.eq(back_op), self.queued.eq(pending),
                         self.fenced.eq(pending & after_produced)]
        else:
            let_go = back_free
            m.d.comb += self.back.op.eq(op)
        with m.If(restart):
            m.d.sync += [pending.eq(0), back_starting.eq(0), back_running.eq(0)]
        with m.Else():
            m.d.sync += [back_starting.eq(hand),
                         back_running.eq(back_starting | (back_running & ~self.back_done)),
                         pending.eq((pending | (start & produces)) & ~hand)]

        def release():
            if self._ahead:
                # the next op's descriptor, read already, moves into the front's register
                with m.If(restart):
                    m.d.comb += to_op_0.eq(1)
                    m.next = "FETCH"
                with m.Elif(arrived):
                    m.d.comb += take.eq(1)
                    m.next = "WAIT"
                with m.Else():
                    m.next = "FETCH"
                return
            # the next op is fetched as this one's descriptor is let go
            m.d.comb += [self.descriptor.ready.eq(1), self.fetch.valid.eq(1),
                         self.fetch.payload.eq(following)]
            m.d.sync += self.op_index.eq(following)
            with m.If(self.fetch.ready):
                m.next = "WAIT"
            with m.Else():
                m.next = "FETCH"

        with m.FSM():
            with m.State("FETCH"):
                if self._ahead:
                    with m.If(arrived):
                        m.d.comb += take.eq(1)
                        m.next = "WAIT"
                else:
                    m.d.comb += [self.fetch.valid.eq(1), self.fetch.payload.eq(self.op_index)]
                    with m.If(self.fetch.ready):
                        m.next = "WAIT"
            with m.State("WAIT"):
                # the op starts the cycle its descriptor arrives, once the back may take
                # it: at once with `overlap`, else once the back is idle, a cycle after
                # its last write (the outlier memory takes a block's merge a cycle after
                # the write-back's last word, and the op after reads it)
                # (a STORE with `overlap` reads beside the back, fenced by the Storer)
                # (a LOAD whose words came in the background waits for no back: the next
                # image's first op then starts beside the last op of the one before)
                overlap = ((op.overlap & (writes_results(op) | (op.kind == OpKind.STORE)))
                           | ((op.kind == OpKind.LOAD) & self.load_claimable
                              if self._prefetch else 0)
                           if self._copy else 0)
                idle = ~back_starting & ~back_running
                with m.If((1 if self._ahead else self.descriptor.valid) & (overlap | idle)):
                    m.d.comb += start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.control.running.eq(1)
                with m.If(restart | (self.done & let_go)):
                    release()
                with m.Elif(self.done):
                    m.next = "HELD"
            with m.State("HELD"):
                # the front is done; its descriptor waits for the back to copy it (or, without
                # a copy, to finish with it)
                with m.If(let_go):
                    release()
        return m

    def _fetch_ahead(self, m, op):
        """The memories read the descriptor of the op after the front's (``config.fetch_ahead``);
        returns the signals that move it into ``op`` (``take``), send the reads back to op 0
        (``to_op_0``) and say it is there (``arrived``)."""
        take, to_op_0, fresh = Signal(), Signal(), Signal()
        ahead = Signal.like(self.op_index)      # the op whose descriptor is read
        answer = self.descriptor.payload
        m.d.comb += [self.fetch.valid.eq(1), self.fetch.payload.eq(ahead),
                     self.descriptor.ready.eq(1)]
        # An answer is the word at the address of the cycle before, as it was before that
        # cycle's write: stale if the address moved, or the program was written, then.
        m.d.sync += fresh.eq(self.fetch.ready & ~take & ~to_op_0 & ~self.program_written)
        with m.If(to_op_0):
            m.d.sync += ahead.eq(0)
        with m.Elif(take):
            m.d.sync += [op.eq(answer), self.op_index.eq(ahead),
                         ahead.eq(Mux(answer.final, 0, ahead + 1))]
        return take, to_op_0, self.descriptor.valid & fresh
