"""Property wrappers: each instantiates a block under test and states its rules.

A wrapper drives the block's inputs with free values (``AnySeq``), constrains them with
``Assume`` to what the block's documentation allows its environment to do, and states the
block's promises with ``Assert``. It takes the block as a parameter, so a test can hand it a
deliberately broken variant (:mod:`olmac.formal.mutants`) and see the proof fail.

Where k-induction needs them, a wrapper also asserts invariants on the block's own registers
(found by name in its elaborated fragment): without them the induction step starts from
unreachable states, such as a stored count that disagrees with the results written and read,
and fails though every reachable state is fine.
"""

from amaranth.asserts import AnyConst, AnySeq
from amaranth.hdl import *
from amaranth.hdl import Fragment
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out

from olmac.spec import ERROR_KIND, REPLY_KIND, SYNC, ErrorCode

__all__ = ["StreamRules", "ResultBufferProperties", "CodebookDecodeProperties",
           "CodebookStreamProperties", "CodebookLoadProperties", "RequantizerProperties",
           "RequestSlotsProperties",
           "MacArrayProperties", "SkidBufferProperties", "FrameReceiverProperties",
           "output_streams", "StreamPortProperties",
           "OutlierRulesProperties", "SerialRequantizerProperties", "fixed_command_counts",
           "frame_transmitter_counts",
           "load_handler_counts", "infer_handler_counts", "loopback_counts",
           "dispatcher_counts", "gemm_engine_counts"]


def _assigned(fragment):
    """Every signal that ``fragment`` or its subfragments assign, innermost first."""
    for subfragment, _name, _src_loc in fragment.subfragments:
        yield from _assigned(subfragment)
    for statements in fragment.statements.values():
        for statement in statements:
            yield from statement._lhs_signals()


def _registers(fragment, *names):
    """The first signals called ``names`` that ``fragment`` (or a subfragment) assigns."""
    found = {}
    for signal in _assigned(fragment):
        if signal.name in names:
            found.setdefault(signal.name, signal)
    missing = set(names) - set(found)
    if missing:
        raise ValueError(f"The block assigns no register named {', '.join(sorted(missing))}")
    return [found[name] for name in names]


class StreamRules(Elaboratable):
    """The transfer rules of one ``amaranth.lib.stream`` port, as seen from its sink side.

    Once ``valid`` is high it stays high, with the same payload, until a cycle with ``ready``:
    ``valid`` never waits on ``ready`` and a beat is neither withdrawn nor changed.

    Parameters
    ----------
    port : stream.Interface
        The port of the block under test that sends (its ``valid`` and ``payload`` are
        checked; its ``ready`` is read).
    assume : bool
        Assume the rules instead of asserting them: ``port`` is one through which the block
        receives, and its producer keeps them.
    """

    def __init__(self, port, *, assume=False):
        self._port = port
        self._check = Assume if assume else Assert
        #: A beat was offered and not taken in the previous cycle (so it is held now).
        self.held = Signal(name="held")

    def elaborate(self, platform):
        m = Module()
        port = self._port
        held = self.held
        payload = Signal.like(Value.cast(port.payload), name="held_payload")
        m.d.sync += [held.eq(port.valid & ~port.ready), payload.eq(port.payload)]
        with m.If(held):
            m.d.comb += [self._check(port.valid, "valid dropped before ready"),
                         self._check(Value.cast(port.payload) == payload,
                                     "payload changed while held")]
        return m


def _under_test(m, dut, platform):
    """Elaborate ``dut`` into ``m`` with the reset held low after the first cycle; returns
    its fragment, whose registers a wrapper may name."""
    fragment = Fragment.get(dut, platform)
    m.submodules.dut = fragment
    m.d.comb += Assume(~ResetSignal())
    return fragment


def output_streams(component, *, sending=True):
    """Every ``amaranth.lib.stream`` port through which ``component`` sends (nested
    signatures and arrays of them included), as ``(name, interface)`` pairs; with
    ``sending=False``, every one through which it receives."""
    driven = {id(value) for _path, member, value in component.signature.flatten(component)
              if member.flow == Out}
    found = []

    def visit(name, interface, signature):
        if isinstance(signature, stream.Signature):
            if (id(interface.valid) in driven) == sending:
                found.append((name, interface))
            return
        for member_name, member in signature.members.items():
            if not member.is_signature:
                continue
            children = [(f"{name}.{member_name}", getattr(interface, member_name))]
            for dimension in member.dimensions:
                children = [(f"{n}[{i}]", c[i]) for n, c in children for i in range(dimension)]
            for child_name, child in children:
                visit(child_name, child, member.signature)

    visit(type(component).__name__, component, component.signature)
    return found


class StreamPortProperties(Elaboratable):
    """The stream rules (:class:`StreamRules`) on every stream port through which ``block``
    sends, with every input of ``block`` free in every cycle (``AnySeq``: any consumer's
    ``ready``, any control input, any producer that keeps the stream rules itself) and the
    reset held low after the first cycle.

    Parameters
    ----------
    block : wiring.Component
        The block under test, or a broken variant with the same ports.
    invariants : callable or None
        ``invariants(fragment)`` returns assertions over the block's registers (found by
        name in its elaborated ``fragment``) that keep the induction step to reachable
        states.
    counting : callable or None
        ``counting(m, block, fragment)`` adds to ``m`` the block's count relation between
        the transfers it takes and those it sends (none created, lost or doubled), with the
        invariants over its registers that make it inductive.
    """

    def __init__(self, block, invariants=None, counting=None):
        self._block = block
        self._invariants = invariants
        self._counting = counting

    def elaborate(self, platform):
        m = Module()
        block = self._block
        fragment = _under_test(m, block, platform)
        if self._invariants is not None:
            m.d.comb += self._invariants(fragment)
        for _path, member, value in block.signature.flatten(block):
            if member.flow == In:
                m.d.comb += value.eq(AnySeq(len(Value.cast(value))))
        for index, (_name, port) in enumerate(output_streams(block)):
            m.submodules[f"rules_{index}"] = StreamRules(port)
        for index, (_name, port) in enumerate(output_streams(block, sending=False)):
            m.submodules[f"producer_{index}"] = StreamRules(port, assume=True)
        if self._counting is not None:
            self._counting(m, block, fragment)
        return m


def _ended(port):
    """The last beat of a message (a ``PacketByte`` stream) passes ``port`` in this cycle."""
    return port.valid & port.ready & port.payload.last


def _balance(m, up, down, name, *, width=4):
    """A signed counter in ``m`` of the cycles with ``up`` minus those with ``down`` (both
    1-bit); the assertions on it keep it far from its ``width`` bits."""
    count = Signal(signed(width), name=name)
    m.d.sync += count.eq(count + up - down)
    return count


def _in_states(state, *names):
    """``state`` (an elaborated ``FSM``'s state signal) is one of the states ``names``."""
    return Cat(*(state == code for code in _fsm_states(state, *names))).any()


def _one_reply_per_request(m, block, pending):
    """The count relation of an application (``host: In(AppSignature())``): requests
    ended (last byte taken) minus replies ended (last byte sent) equals ``pending``, which
    is 1 while the block owes a reply and 0 otherwise (-1 only for a block whose reply may
    end first): every request gets one reply, no reply comes without one."""
    open_requests = _balance(m, _ended(block.host.request), _ended(block.host.reply),
                             "open_requests")
    m.d.comb += Assert(open_requests == pending, "a request without one reply")


def fixed_command_counts(m, block, fragment):
    """:class:`~olmac.hw.network_app.FixedCommand`: one reply per request (pending from the
    request's last byte through ``ACTION``, ``REPLY`` or ``BAD_LENGTH``), and one ``action``
    beat per one-byte request, before its reply."""
    with_action = "action" in block.signature.members
    state, = _registers(fragment, "fsm_state")
    _one_reply_per_request(m, block, _in_states(state, "REPLY", "BAD_LENGTH",
                                                *(["ACTION"] if with_action else [])))
    if with_action:
        acted = _balance(m, _ended(block.host.request) & _in_states(state, "COMMAND"),
                         block.action.valid & block.action.ready, "unapplied")
        m.d.comb += Assert(acted == _in_states(state, "ACTION"), "an action lost or doubled")


def load_handler_counts(m, block, fragment):
    """:class:`~olmac.hw.network_app.LoadHandler`: one reply per request (pending in
    ``REPLY``, and in ``ALIGN`` and ``WRITE`` once the last byte is in), and the count it
    replies is the number of ``load`` beats sent for the request (none lost or doubled)."""
    state, request_done, count = _registers(fragment, "fsm_state", "request_done", "count")
    _one_reply_per_request(m, block, _in_states(state, "REPLY") |
                           (_in_states(state, "ALIGN", "WRITE") & request_done))
    loads = Signal.like(count, name="loads")
    with m.If(_ended(block.host.reply)):
        m.d.sync += loads.eq(0)
    with m.Elif(block.load.valid & block.load.ready):
        m.d.sync += loads.eq(loads + 1)
    command = _in_states(state, "COMMAND")
    m.d.comb += [Assert(command | (count == loads), "a load beat lost or doubled"),
                 Assert(~command | (loads == 0))]


def infer_handler_counts(input_words):
    """:class:`~olmac.hw.network_app.InferHandler` of ``input_words``-word images: one reply
    per request (pending from the last request byte: in ``ALIGN`` and ``WORD`` once it is
    in, and from ``OUTPUTS`` to the reply's end), and per request exactly ``input_words`` image words on
    ``inputs`` before its reply (none for a request of its command byte alone): counted
    since the previous reply, the words sent are the handler's ``words`` while it collects
    them, ``input_words`` once it waits for outputs or replies, 0 between requests."""
    def counting(m, block, fragment):
        state, request_done, words = _registers(fragment, "fsm_state", "request_done",
                                                "words")
        _one_reply_per_request(m, block, _in_states(
            state, "OUTPUTS", "STATUS", "TAKE", "SEND", "BAD_LENGTH", "FAULT") |
            (_in_states(state, "ALIGN", "WORD") & request_done))
        image = Signal(range(input_words + 2), name="image_words")
        with m.If(_ended(block.host.reply)):
            m.d.sync += image.eq(0)
        with m.Elif(block.inputs.valid & block.inputs.ready):
            m.d.sync += image.eq(image + 1)
        whole = _in_states(state, "DRAIN", "OUTPUTS", "STATUS", "TAKE", "SEND", "FAULT")
        m.d.comb += [
            Assert(~_in_states(state, "COMMAND") | (image == 0), "image words between requests"),
            Assert(~_in_states(state, "BYTES", "ALIGN", "WORD") | (image == words),
                   "an image word lost or doubled"),
            Assert(~whole | (image == input_words), "an image of the wrong length"),
            Assert(~_in_states(state, "BAD_LENGTH") | (image == 0) | (image == input_words),
                   "an image of the wrong length"),
        ]
    return counting


def loopback_counts(m, block, fragment):
    """:class:`~olmac.hw.host_link.LoopbackApp`: every request byte is a reply byte in the
    same cycle, ``last`` included (bytes and messages taken minus sent stay 0)."""
    request, reply = block.host.request, block.host.reply
    echoed = _balance(m, request.valid & request.ready, reply.valid & reply.ready, "echoed")
    m.d.comb += Assert(echoed == 0, "a byte lost or doubled")
    _one_reply_per_request(m, block, C(0))


def dispatcher_counts(m, block, fragment):
    """:class:`~olmac.hw.network_app.Dispatcher`: one reply on ``host`` per request, with
    handlers free (a handler may end its reply before it has taken its whole request): in a
    handler's state, requests ended minus replies ended is ``request_done - reply_done``, so
    at most one ahead either way; 1 while refusing a command, 0 otherwise."""
    commands = len(block.handlers)
    state, request_done, reply_done = _registers(fragment, "fsm_state", "request_done",
                                                 "reply_done")
    serving = _in_states(state, *(f"HANDLER_{index}" for index in range(commands)))
    ahead = C(0, signed(2)) + request_done - reply_done
    _one_reply_per_request(m, block, Mux(serving, ahead, _in_states(state, "BAD_COMMAND")))
    m.d.comb += Assert(~serving | ~(request_done & reply_done))


def _subfragment(fragment, *path):
    """The subfragment of ``fragment`` reached by the submodule names ``path``, each the
    first of its name at any depth below the last (so a mutant's wrapping layer is skipped)."""
    def find(parent, name):
        for sub, sub_name, _ in parent.subfragments:
            if sub_name == name:
                return sub
        for sub, _, _ in parent.subfragments:
            if isinstance(sub, Fragment) and (found := find(sub, name)) is not None:
                return found
        return None
    for name in path:
        fragment = find(fragment, name)
    return fragment


def gemm_engine_counts(latency, requant_latency=None):
    """The count relation of a :class:`~olmac.hw.gemm_engine.GemmEngine` whose array writes
    a reduction's sums to its output queue ``latency`` cycles after its closing beat (and,
    with ``requant_latency``, whose requantizer writes its result to its own queue that
    many cycles after it takes the sums): reductions closed minus results sent on ``out``
    equals the credits in use of the queues (``outstanding``), and each queue's equals its
    results in flight (the closing beats of the last ``latency`` cycles; the requantizer's
    pipeline valid bits) plus those it holds (``stored`` and its ``r.valid``). So the
    credits never let a result overflow a queue, and none is lost or doubled under any
    ready pattern."""
    def counting(m, block, fragment):
        closing = block.act.valid & block.act.ready & block.act.payload.last
        depth = latency + 4 + (0 if requant_latency is None else requant_latency + 4)
        results = _balance(m, closing, block.out.valid & block.out.ready, "results",
                           width=(2 * depth).bit_length() + 1)
        flight = [closing]
        for stage in range(latency):
            later = Signal(name=f"closed_d{stage}")
            m.d.sync += later.eq(flight[-1])
            flight.append(later)
        queues = [(_subfragment(fragment, "array", "results"), sum(flight[1:]))]
        if requant_latency is not None:
            requantizer = _subfragment(fragment, "requantizer")
            stages = _registers(requantizer, *(f"valid_{stage}"
                                               for stage in range(requant_latency - 1)),
                                "w__valid")
            queues.append((_subfragment(requantizer, "results"), sum(stages)))
        owed = 0
        for queue, in_flight in queues:
            stored, outstanding, offered = _registers(queue, "stored", "outstanding",
                                                      "r__valid")
            m.d.comb += Assert(outstanding == in_flight + stored + offered,
                               "a result lost or doubled")
            owed += outstanding
        m.d.comb += Assert(results == owed, "credits differ from results owed")
    return counting


def _free_streams(m, dut, inputs, output):
    """Put ``dut`` under test with every stream of ``inputs`` driven by the solver (valid and
    payload free in every cycle, so the producer is any producer), ``output``'s ready free
    too, its stream rules checked, and reset held low after the first cycle."""
    m.submodules.dut = dut
    m.submodules.rules = StreamRules(output)
    m.d.comb += Assume(~ResetSignal())
    for port in inputs:
        m.d.comb += [port.valid.eq(AnySeq(1)),
                     port.payload.eq(AnySeq(len(Value.cast(port.payload))))]
    m.d.comb += output.ready.eq(AnySeq(1))


def _check_nth_result(m, *, produced, predicted, delivered, actual, shape, width, early,
                      differs):
    """Check every result of a block with one register per value: the solver picks a result
    number (``AnyConst``); the prediction is recorded when that result is produced
    (``produced`` high for the ``n``-th time) and compared with what leaves when the
    ``n``-th result is ``delivered``. ``predicted`` and ``actual`` are matching lists of
    values of ``shape``; results are counted in ``width`` bits (more than a bounded run can
    reach). ``early`` and ``differs`` are the two assertions' messages."""
    made, sent = Signal(width, name="made"), Signal(width, name="sent")
    m.d.sync += [made.eq(made + produced), sent.eq(sent + delivered)]
    index = AnyConst(width)
    recorded = [Signal(shape, name=f"recorded_{i}") for i in range(len(predicted))]
    was_made = Signal()
    with m.If(produced & (made == index)):
        m.d.sync += [*(r.eq(p) for r, p in zip(recorded, predicted)), was_made.eq(1)]
    with m.If(delivered & (sent == index)):
        m.d.comb += Assert(was_made, early)
        m.d.comb += [Assert(a == r, differs) for a, r in zip(actual, recorded)]


class ResultBufferProperties(Elaboratable):
    """:class:`~olmac.hw.result_buffer.ResultBuffer` under every claim, write and ready pattern.

    Environment (the buffer's documented contract): ``claim`` only while ``can_claim``, and
    ``w.valid`` only for a result whose entry has been claimed in an earlier cycle and not yet
    written (one result per claim; the pipeline takes at least a cycle). ``r.ready`` and the
    payloads are free.

    Properties:

    * the stream rules on ``r`` (:class:`StreamRules`);
    * counting transfers: ``r`` never sends more results than ``w`` wrote (none created), the
      results held never exceed ``depth`` (no overflow: a write always finds room), and a
      result held is offered on ``r`` within a cycle (none lost or stuck);
    * credits: the claims not yet released by ``r`` never exceed ``depth``;
    * with ``order``, order and payload: a result chosen freely (``AnyConst``) among the
      writes leaves ``r`` as the same transfer number, with the same payload (no loss,
      duplication or reordering).

    The first three are k-inductive. The fourth is checked by BMC only: the tracked payload
    may wait in the buffer's memory, whose rows an Amaranth wrapper cannot name, so the
    induction step cannot be told that the row holds it.

    Parameters
    ----------
    buffer : ResultBuffer
        The block under test (or a broken variant with the same ports).
    order : bool
        Also track one result's number and payload.
    """

    def __init__(self, buffer, *, order):
        self._buffer = buffer
        self._order = order

    def elaborate(self, platform):
        m = Module()
        dut = self._buffer
        depth = dut.depth
        fragment = _under_test(m, dut, platform)
        m.submodules.rules = StreamRules(dut.r)

        m.d.comb += [dut.claim.eq(AnySeq(1)), dut.w.valid.eq(AnySeq(1)),
                     dut.w.payload.eq(AnySeq(len(Value.cast(dut.w.payload)))),
                     dut.r.ready.eq(AnySeq(1))]
        m.d.comb += Assume(~dut.claim | dut.can_claim)

        # Counts modulo a power of two above every bound checked, so their differences are
        # exact while the counts themselves may wrap.
        width = (2 * depth + 2).bit_length() + 1
        claims, written, read = (Signal(width, name=n) for n in ("claims", "written", "read"))
        wrote = dut.w.valid
        sent = dut.r.valid & dut.r.ready
        m.d.sync += [claims.eq(claims + dut.claim), written.eq(written + wrote),
                     read.eq(read + sent)]
        unwritten = (claims - written)[:width]
        held = (written - read)[:width]
        m.d.comb += Assume(~wrote | (unwritten != 0))

        m.d.comb += [
            Assert(held <= depth, "more results held than entries"),
            Assert(~sent | (held != 0), "a result sent that was never written"),
            Assert((claims - read)[:width] <= depth, "more entries claimed than exist"),
            Assert(unwritten <= depth, "claims outrun the entries"),
        ]
        # A written result reaches the output register a cycle after it is counted as held.
        waiting, waited = Signal(), Signal()
        m.d.comb += waiting.eq((held != 0) & ~dut.r.valid)
        m.d.sync += waited.eq(waiting)
        m.d.comb += Assert(~(waited & waiting), "a held result not offered")

        # Invariants of this implementation that make the induction step start from reachable
        # states only: the stored count and the output register hold exactly the results
        # written and not yet read, and the credit count is the claims not yet read.
        stored, outstanding = _registers(fragment, "stored", "outstanding")
        m.d.comb += [Assert(stored + dut.r.valid == held),
                     Assert(outstanding == (claims - read)[:width])]
        if not self._order:
            return m
        # One tracked result: its transfer number on `w` and its payload, chosen freely.
        index = AnyConst(width)
        payload = Signal.like(Value.cast(dut.w.payload), name="tracked_payload")
        tracked_written = Signal()
        with m.If(wrote & (written == index) & ~tracked_written):
            m.d.sync += [payload.eq(dut.w.payload), tracked_written.eq(1)]
        # A result may only be written once its number has not wrapped past the tracked one.
        m.d.comb += Assume(~wrote | (written != index) | ~tracked_written)
        with m.If(sent & (read == index)):
            m.d.comb += [Assert(tracked_written, "the tracked result left before it came"),
                         Assert(Value.cast(dut.r.payload) == payload,
                                "the tracked result left with another payload")]

        return m


class CodebookDecodeProperties(Elaboratable):
    """The weight of every code of a :class:`~olmac.hw.codebook.CodebookDecoder` row.

    For a free code and a free row of stored magnitudes (both ``AnySeq``), the decoder's
    per-weight decode equals docs/codebooks.md §3 written out code by code here, not with the
    decoder's multiplexers: with ``zero``, index 0 is 0 whatever the sign; otherwise index
    ``i`` is ``T[i - zero]``, and the same index with the sign bit set is its negation
    (symmetric entries negate). Combinational, so k-induction of depth 1 covers every input.

    Parameters
    ----------
    decoder : CodebookDecoder
        The block under test (or a broken variant). It is elaborated whole, with free
        inputs, but only its decode is checked.
    """

    def __init__(self, decoder):
        self._decoder = decoder

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = self._decoder
        config = self._decoder._config
        idx_bits, entry_bits, zero = config.idx_bits, config.entry_bits, config.zero
        row_layout = data.ArrayLayout(unsigned(entry_bits), config.stored)
        row = Signal(row_layout)
        code = Signal(1 + idx_bits)
        m.d.comb += [row.eq(AnySeq(row_layout.size)), code.eq(AnySeq(1 + idx_bits))]
        weight = Signal(config.weight_shape)
        m.d.comb += weight.eq(self._decoder._decode(code, row))

        expected = Signal(config.weight_shape)
        for sign in (0, 1):
            for index in range(1 << idx_bits):
                if zero and index == 0:
                    value = C(0, config.weight_shape)
                else:
                    magnitude = Cat(row[index - int(zero)], C(0, 1)).as_signed()
                    value = -magnitude if sign else magnitude
                with m.If(code == (sign << idx_bits) | index):
                    m.d.comb += expected.eq(value)
        m.d.comb += Assert(weight == expected, "a code decodes to another weight")
        return m


def _section3(m, acc, channel, relu, out_shape, param_bits, max_shift, name="expected"):
    """docs/semantics.md §3 for one accumulator ``acc`` with the parameters ``channel`` (a
    ``ChannelParams`` view) and ``relu``, written here as one expression:
    ``clamp(((acc + β)·M + r) >> s, max(lo, 0) if relu else lo, hi)`` with ``r = 2^(s-1)``
    for ``s > 0`` else 0 (round half up), ``lo``/``hi`` the bounds of ``out_shape``.
    Assumes ``|β|, |M| ≤ 2^(param_bits-1)`` and ``s ≤ max_shift``, and computes on operands
    cut to the bits they then fit, so the solver's multipliers stay small (the block's
    datapath is its full-width one). Returns the expected output (a signal of ``m`` called
    ``name``) and the cut ``acc + β`` and ``M``."""
    limit = 1 << (param_bits - 1)
    m.d.comb += [Assume((channel.bias >= -limit) & (channel.bias < limit)),
                 Assume((channel.multiplier >= -limit) & (channel.multiplier < limit)),
                 Assume(channel.shift <= max_shift)]
    x = (acc + channel.bias)[:max(len(acc), param_bits) + 1].as_signed()
    multiplier = channel.multiplier[:param_bits].as_signed()
    p = x * multiplier
    r = (C(1, 2) << channel.shift) >> 1
    q = (p + r) >> channel.shift
    lo = -(1 << (out_shape.width - 1)) if out_shape.signed else 0
    hi = (1 << (out_shape.width - int(out_shape.signed))) - 1
    low = Mux(relu, max(lo, 0), lo)
    expected = Signal(out_shape, name=name)
    m.d.comb += expected.eq(Mux(q < low, low, Mux(q > hi, hi, q)))
    return expected, x, multiplier


class RequantizerProperties(Elaboratable):
    """A :class:`~olmac.hw.requant.Requantizer` (one column, no residual, no outliers)
    against docs/semantics.md §3 written here as one Amaranth expression.

    ``clamp(((acc + β)·M + r) >> s, max(lo, 0) if relu else lo, hi)`` with
    ``r = 2^(s-1)`` for ``s > 0`` else 0 (round half up), among free accumulators and
    parameter beats, with the stream rules on ``out``. The parameters are assumed within
    ``|β|, |M| ≤ 2^(param_bits-1)`` and ``s ≤ max_shift`` so the solver's multipliers stay
    small; the datapath is the full-width one.

    Two forms. Without ``latency``, end to end: a freely chosen transfer (``AnyConst``
    number) leaves ``out`` with its value; checked by BMC only, because the output queue is
    a memory (see :class:`ResultBufferProperties`). With ``latency`` (the block's documented
    cycles from an input transfer to its output queue's write port), at the queue: every
    transfer is written to the queue exactly ``latency`` cycles later with its value, and
    nothing else is written. The datapath is a pipeline with no enables, so its state is a
    function of the last ``latency`` cycles' inputs and k-induction of ``latency + 1`` or
    more closes; the queue itself is :class:`ResultBufferProperties`' block (its counting
    proved by k-induction, its order and payloads bounded).

    Parameters
    ----------
    requantizer : Requantizer
        The block under test (``cols=1``), or a broken variant.
    param_bits : int
        Width the bias and the multiplier are assumed to fit, signed.
    max_shift : int
        Largest shift assumed.
    latency : int or None
        Check at the queue's write port (named ``w``), this many cycles after the input.
    """

    def __init__(self, requantizer, *, param_bits, max_shift, latency=None):
        self._dut = requantizer
        self._param_bits = param_bits
        self._max_shift = max_shift
        self._latency = latency

    def elaborate(self, platform):
        m = Module()
        dut = self._dut
        fragment = Fragment.get(dut, platform)
        _free_streams(m, fragment, (dut.acc, dut.params), dut.out)
        out_shape = Shape.cast(dut.out.payload.shape().elem_shape)
        expected, _, _ = _section3(m, dut.acc.payload[0], dut.params.payload.channels[0],
                                   dut.params.payload.relu, out_shape, self._param_bits,
                                   self._max_shift)
        accepted = dut.acc.valid & dut.acc.ready

        if self._latency is not None:
            written, value = _registers(fragment, "w__valid", "w__payload")
            for stage in range(self._latency):
                later = Signal(name=f"expect_valid_{stage}"), Signal(out_shape,
                                                                      name=f"expect_{stage}")
                m.d.sync += [later[0].eq(accepted), later[1].eq(expected)]
                accepted, expected = later
            m.d.comb += [Assert(written == accepted, "a result written out of step"),
                         Assert(~written | (value == expected.as_unsigned()),
                                "a value differs from §3")]
            return m
        _check_nth_result(m, produced=accepted, predicted=[expected],
                          delivered=dut.out.valid & dut.out.ready,
                          actual=[dut.out.payload[0]], shape=out_shape, width=6,
                          early="a result left before its input came",
                          differs="a value differs from §3")
        return m


class SerialRequantizerProperties(Elaboratable):
    """A :class:`~olmac.hw.serial_requant.SerialRequantizer` (no residual, no runtime
    bounds; parameters for the whole vector in one beat, or ``per_channel``) against
    docs/semantics.md §3 written here (as for :class:`RequantizerProperties`), by
    k-induction.

    Producers of ``acc`` and ``params`` keep the stream rules (assumed: the block reads its
    inputs while it holds them); their payloads and ``out.ready`` are free, and the
    parameters assumed as :class:`RequantizerProperties` has them. Properties:

    * every vector taken on ``acc`` leaves ``out`` exactly once (taken minus sent is
      ``out.valid``), each column with its §3 value: with the parameters of the beat taken
      with it, or ``per_channel`` with those of the ``c``-th beat taken since the previous
      vector for column ``c``;
    * ``per_channel``: the block takes exactly ``cols`` parameter beats per vector, all
      before the vector;
    * the stream rules on ``out``.

    Invariants of this implementation make the step inductive without the ~40 cycles a
    channel takes: outside ``IDLE`` the vector is held (and its parameters where they are
    one beat) and no result waits; the columns before the current ``channel`` hold their
    results; in ``SUM`` before position ``k`` (and in ``CLAMP``, after the last) the partial
    sum is ``⌊T_k / 2^k⌋`` of the terms below ``k``,
    ``T_k = x·(M mod 2^k) + [s − 1 < k]·2^(s-1)`` (``M`` itself from ``k = 32``), the result
    bits hold bits ``s..k − 1`` of the whole sum ``T`` (at most ``value_width`` of them, at
    the top), and the two flags say whether a bit of ``T`` at ``s + value_width − 1..k − 1``
    is 1 or 0. They are written for the assumed small parameters (operands cut to the bits
    they fit, so the solver's multipliers stay small).

    Parameters
    ----------
    requantizer : SerialRequantizer
        The block under test, or a broken variant.
    per_channel : bool
        The block's ``per_channel`` (one parameter beat per channel).
    param_bits : int
        Width the bias and the multiplier are assumed to fit, signed.
    max_shift : int
        Largest shift assumed.
    """

    def __init__(self, requantizer, *, per_channel, param_bits, max_shift):
        self._dut = requantizer
        self._per_channel = per_channel
        self._param_bits = param_bits
        self._max_shift = max_shift

    def elaborate(self, platform):
        m = Module()
        dut = self._dut
        fragment = _under_test(m, dut, platform)
        m.submodules.rules = StreamRules(dut.out)
        producers = [StreamRules(port, assume=True) for port in (dut.acc, dut.params)]
        m.submodules.acc_producer, m.submodules.params_producer = producers
        for port in (dut.acc, dut.params):
            m.d.comb += [port.valid.eq(AnySeq(1)),
                         port.payload.eq(AnySeq(len(Value.cast(port.payload))))]
        m.d.comb += dut.out.ready.eq(AnySeq(1))

        out_shape = Shape.cast(dut.out.payload.shape().elem_shape)
        cols = dut.out.payload.shape().length
        params = dut.params.payload
        # Column c's value under the parameters on `params` now: the vector's own (one beat
        # per vector) or, per channel, the beat of channel c when it is taken.
        sections = [_section3(m, dut.acc.payload[c], params.channels[0 if self._per_channel
                                                                      else c],
                              params.relu, out_shape, self._param_bits, self._max_shift,
                              name=f"expected_{c}")
                    for c in range(cols)]
        expected = [section[0] for section in sections]

        accepted = dut.acc.valid & dut.acc.ready
        taken = dut.params.valid & dut.params.ready
        sent = dut.out.valid & dut.out.ready
        waiting = _balance(m, accepted, sent, "waiting", width=3)
        kept = [Signal(out_shape, name=f"kept_{c}") for c in range(cols)]
        if self._per_channel:
            # Parameter beats taken since the last vector: beat c is column c's.
            beats = Signal(range(cols + 2), name="beats")
            m.d.sync += beats.eq(Mux(accepted, 0, beats + taken))
            for c in range(cols):
                with m.If(taken & (beats == c)):
                    m.d.sync += kept[c].eq(expected[c])
            done = kept
        else:
            with m.If(accepted):
                m.d.sync += [k.eq(e) for k, e in zip(kept, expected)]
            done = expected
        results = dut.out.payload
        m.d.comb += [
            Assert(waiting == dut.out.valid, "a vector lost or doubled"),
            *(Assert(~dut.out.valid | (results[c] == kept[c]), "a value differs from §3")
              for c in range(cols)),
        ]
        self._invariants(m, fragment, producers, sections, done,
                         beats if self._per_channel else None)
        return m

    def _invariants(self, m, fragment, producers, sections, done, beats):
        dut = self._dut
        cols = len(sections)
        state, channel, biased, partial, position, low_bits, ones, zeros, out_valid = \
            _registers(fragment, "fsm_state", "channel", "biased", "partial", "position",
                       "low_bits", "ones", "zeros", "out_valid")
        idle, load, sum_state, clamp_state, done_state = _fsm_states(
            state, "IDLE", "LOAD", "SUM", "CLAMP", "DONE")
        params = dut.params.payload.channels[0 if self._per_channel else channel]
        shift = params.shift
        x = Array(section[1] for section in sections)[channel]
        multiplier = Array(section[2] for section in sections)[channel]
        top = len(params.multiplier) - 1
        width = len(low_bits)
        last = Mux(top > shift + (width - 1), top, shift + (width - 1))
        rounding = (C(1, 2) << shift) >> 1
        whole = Signal(signed(len(x) + len(multiplier) + 2), name="whole")
        m.d.comb += whole.eq(x * multiplier + rounding)
        # The terms below `position`: M's bits below it (all of M from bit 32 on, its top
        # bit weighing -2^31), the rounding once its position is passed.
        k = position
        below = Mux(k > top, 0, multiplier >> k)
        passed = Mux((shift != 0) & (shift - 1 < k), rounding, 0)
        expected_partial = Signal(signed(len(partial) + 8), name="expected_partial")
        m.d.comb += expected_partial.eq(((x * multiplier + passed) >> k) - x * below)

        def mask(count):
            return (C(1, 1) << count.as_unsigned()) - 1

        above_s = Signal(signed(len(k) + 1), name="above_s")
        m.d.comb += above_s.eq(k - shift)
        collected = Mux(above_s < 0, 0, Mux(above_s > width, width, above_s))
        expected_low = Signal(width, name="expected_low")
        m.d.comb += expected_low.eq(((whole >> shift) & mask(collected))
                                    << (width - collected).as_unsigned())
        high_from = shift + (width - 1)
        high_count = Mux(k > high_from, k - high_from, 0)
        high_ones = ((whole >> high_from) & mask(high_count)) != 0
        high_zeros = ((~whole >> high_from) & mask(high_count)) != 0
        busy = state != idle
        working = busy & (state != done_state)
        in_step = (state == sum_state) | (state == clamp_state)
        acc_held, params_held = producers[0].held, producers[1].held
        results = dut.out.payload
        m.d.comb += [
            Assert(~busy | (acc_held & ~out_valid)),
            Assert((state != sum_state) | (position <= last)),
            Assert((state != clamp_state) | (position == last + 1)),
            Assert(~in_step | ((biased == x) & (partial == expected_partial)
                               & (low_bits == expected_low) & (ones == high_ones)
                               & (zeros == high_zeros))),
            Assert((state != done_state) | (channel == cols - 1)),
            # The channels done hold their results (all of them in DONE).
            *(Assert(~(working & (channel > c) | (state == done_state)) |
                     (results[c] == done[c])) for c in range(cols)),
        ]
        if beats is None:
            m.d.comb += Assert(~busy | params_held)
        else:
            # Each channel's beat is taken as its channel ends: `channel` of them before it.
            m.d.comb += [
                Assert(beats == Mux(state == done_state, cols, Mux(busy, channel, 0))),
                Assert(~in_step | params_held),
            ]


class CodebookStreamProperties(Elaboratable):
    """The streams of a :class:`~olmac.hw.codebook.CodebookDecoder` under free inputs and stalls.

    The stream rules on ``weights`` (:class:`StreamRules`), and counting transfers: every
    tile accepted on ``codes`` leaves ``weights`` once, one cycle later at the earliest
    (tiles accepted minus tiles sent is 1 exactly while ``weights.valid``, so none is created,
    lost or duplicated); no load is taken in a cycle that accepts a tile. k-induction.

    Parameters
    ----------
    decoder : CodebookDecoder
        The block under test, or a broken variant with the same ports.
    """

    def __init__(self, decoder):
        self._decoder = decoder

    def elaborate(self, platform):
        m = Module()
        dut = self._decoder
        _free_streams(m, dut, (dut.codes, dut.load), dut.weights)

        accepted = dut.codes.valid & dut.codes.ready
        sent = dut.weights.valid & dut.weights.ready
        taken, given = Signal(4), Signal(4)
        m.d.sync += [taken.eq(taken + accepted), given.eq(given + sent)]
        m.d.comb += [
            Assert((taken - given)[:4] == dut.weights.valid, "a tile created, lost or doubled"),
            Assert(~(accepted & dut.load.valid & dut.load.ready),
                   "a load taken in a cycle that accepts a tile"),
        ]
        return m


class CodebookLoadProperties(Elaboratable):
    """The table loads of a :class:`~olmac.hw.codebook.CodebookDecoder`: batch order and the
    values tiles decode with, bounded (its tables are a memory the wrapper cannot name; see
    :class:`ResultBufferProperties`).

    The producer of ``codes`` keeps the stream rules (assumed); ``load`` and
    ``weights.ready`` are free. The wrapper keeps its own copy of one table entry chosen
    freely (an ``AnyConst`` subgroup and stored slot), 0 at first as the tables are, written
    by every load taken to it. Properties (the decoder's docstring, *Reloads*):

    * between two accepted tiles the loads taken are one batch, ended by the load with
      ``last``, if the later tile asks for a reload, and none otherwise;
    * every weight of an accepted tile that reads the chosen entry (its subgroup id and its
      code's index) is, as long as the tile is on ``weights``, the copy's value as it was
      when the tile was accepted, negated with the sign bit: loads taken after it (for the
      next tile) leave a held tile as it was.

    Parameters
    ----------
    decoder : CodebookDecoder
        The block under test (``granularity="row"``), or a broken variant.
    config : CodebookDecoder.Config
        Its configuration.
    """

    def __init__(self, decoder, config):
        self._decoder = decoder
        self._config = config

    def elaborate(self, platform):
        m = Module()
        dut, config = self._decoder, self._config
        _free_streams(m, dut, (dut.codes, dut.load), dut.weights)
        m.submodules.producer = StreamRules(dut.codes, assume=True)

        accepted = dut.codes.valid & dut.codes.ready
        loaded = dut.load.valid & dut.load.ready
        entry = dut.load.payload
        # Loads taken since the last accepted tile, and whether one of them ended a batch.
        any_load, batch_ended = Signal(name="any_load"), Signal(name="batch_ended")
        with m.If(accepted):
            m.d.sync += [any_load.eq(0), batch_ended.eq(0)]
        with m.Elif(loaded):
            m.d.sync += [any_load.eq(1), batch_ended.eq(batch_ended | entry.last)]
        reload = dut.codes.payload.reload
        m.d.comb += [
            Assert(~accepted | Mux(reload, batch_ended, ~any_load),
                   "a tile without its batch of loads, or with loads it did not ask for"),
            Assert(~(loaded & batch_ended), "a load after its batch's last, before the tile"),
        ]

        subgroup = Signal(range(config.subgroups), name="chosen_subgroup")
        slot = Signal(range(config.stored), name="chosen_slot")
        m.d.comb += [subgroup.eq(AnyConst(len(subgroup))), slot.eq(AnyConst(len(slot))),
                     Assume(subgroup < config.subgroups), Assume(slot < config.stored)]
        index = slot + int(config.zero)
        copy = Signal(config.entry_bits, name="copy")
        with m.If(loaded & (entry.subgroup == subgroup) & (entry.index == index)):
            m.d.sync += copy.eq(entry.magnitude)
        magnitude = Cat(copy, C(0, 1)).as_signed()
        for lane in range(config.lanes):
            for col in range(config.cols):
                code = dut.codes.payload.tile[lane][col]
                reads = Signal(name=f"reads_{lane}_{col}")
                expected = Signal(config.weight_shape, name=f"expected_{lane}_{col}")
                with m.If(accepted):
                    m.d.sync += [
                        reads.eq((dut.codes.payload.subgroup[col] == subgroup) &
                                 (code[:config.idx_bits] == index)),
                        expected.eq(Mux(code[config.idx_bits], -magnitude, magnitude)),
                    ]
                m.d.comb += Assert(~(dut.weights.valid & reads) |
                                   (dut.weights.payload.tile[lane][col] == expected),
                                   "a weight decoded with another table entry")
        return m


class RequestSlotsProperties(Elaboratable):
    """The two frame slots of a :class:`~olmac.hw.host_link.RequestSlots`.

    Environment (the receiver's side of :class:`~olmac.hw.host_link.SlotWriteSignature`): a
    frame is written and committed only while ``busy`` is low (the receiver drops a frame
    that starts while it is high, and only its own commit raises it), at offsets below
    ``max_payload``, with no byte in the commit's cycle (the CRC comes between), with a
    length of 1..``max_payload``; byte values and ``request.ready`` are free. Properties
    (k-induction): the stream rules on ``request``; ``request.valid`` exactly while a
    committed frame is not yet released (none created or lost); each frame sends exactly its
    committed length, ``last`` on its final byte, oldest first; ``busy`` exactly while both
    slots hold a frame (no overflow, no frame refused while a slot is free). Byte values need
    the memory's contents and are not checked here.

    Parameters
    ----------
    slots : RequestSlots
        The block under test, or a broken variant with the same ports.
    max_payload : int
        Its slot size.
    """

    def __init__(self, slots, *, max_payload):
        self._slots = slots
        self._max_payload = max_payload

    def elaborate(self, platform):
        m = Module()
        dut = self._slots
        fragment = _under_test(m, dut, platform)
        m.submodules.rules = StreamRules(dut.request)
        write, request = dut.write, dut.request
        for name in ("en", "offset", "data", "commit", "length"):
            signal = getattr(write, name)
            m.d.comb += signal.eq(AnySeq(len(signal)))
        m.d.comb += request.ready.eq(AnySeq(1))
        m.d.comb += [Assume(~(write.commit | write.en) | ~write.busy),
                     Assume(~write.en | (write.offset < self._max_payload)),
                     Assume(~(write.en & write.commit)),
                     Assume(~write.commit | ((write.length >= 1) &
                                             (write.length <= self._max_payload)))]

        # The frames committed and not released, oldest first, and the bytes sent of the
        # oldest.
        lengths = Array(Signal(16, name=f"length_{n}") for n in range(2))
        count = Signal(range(3))
        sent_bytes = Signal(16)
        sent = request.valid & request.ready
        released = sent & request.payload.last
        with m.If(released):
            m.d.sync += [lengths[0].eq(lengths[1]), sent_bytes.eq(0)]
        with m.Elif(sent):
            m.d.sync += sent_bytes.eq(sent_bytes + 1)
        with m.If(write.commit):
            m.d.sync += lengths[count - released].eq(write.length)
        m.d.sync += count.eq(count + write.commit - released)

        m.d.comb += [
            Assert(request.valid == (count != 0), "a frame created or lost"),
            Assert(write.busy == (count == 2), "busy without two frames held"),
            Assert(~sent | (request.payload.last == (sent_bytes == lengths[0] - 1)),
                   "a frame sent with another length"),
        ]

        held, index, read_slot, write_slot, length_0, length_1 = _registers(
            fragment, "held", "index", "read_slot", "write_slot", "held_length_0",
            "held_length_1")
        held_lengths = Array([length_0, length_1])
        def plausible(length):
            return (length >= 1) & (length <= self._max_payload)
        m.d.comb += [
            Assert((count == 0) | plausible(lengths[0])),
            Assert((count != 2) | plausible(lengths[1])),
            Assert(index == sent_bytes),
            Assert(held[0] + held[1] == count),
            Assert((count != 0) | (sent_bytes == 0)),
            Assert((count == 0) | (sent_bytes < lengths[0])),
            Assert((count == 1) == (write_slot != read_slot)),
            Assert((count == 0) | held.bit_select(read_slot, 1)),
            Assert((count == 0) | (held_lengths[read_slot] == lengths[0])),
            Assert((count != 2) | (held_lengths[~read_slot] == lengths[1])),
        ]
        return m


class MacArrayProperties(Elaboratable):
    """A :class:`~olmac.hw.mac_array.MacArray` against docs/semantics.md §2/§4/§6/§8 written
    here: the accumulator vector of a reduction is the exact sum over its beats of
    ``Σ_lane a[lane] · w[lane][col]`` of the *recombined* operands (dense plus every valid
    outlier at its position, §6), the accumulator shifted left by each beat's plane shift
    before that beat is added (§8), and the stream rules hold on ``acc``. Beats, outliers,
    plane shifts, ``last`` and stalls are free within §6's rules for the producer: valid
    outlier slots first, positions in range, at most one outlier per position, the dense slot
    of an outlier position zero. So every outlier is counted once and an outlier × outlier
    product once.

    Two forms. Without ``config``, end to end: a freely chosen reduction (``AnyConst``
    number) leaves ``acc`` with its sums; checked by BMC only, because the output queue is a
    memory (see :class:`ResultBufferProperties`). With ``config`` (the array's
    :class:`~olmac.hw.mac_array.MacArray.Config`, whose documented ``latency`` and
    ``sum_stage`` give the timing), at the output queue's write port (named ``w``): every
    closing beat's sums are written exactly ``latency`` cycles after it is taken, and
    nothing else is written; k-induction, with the invariant that each column's accumulator
    register (``acc_c<col>``) holds the running sum of ``sum_stage + 1`` cycles before (split
    accumulators: ``acc_low_c<col>`` its low bits, ``acc_high_c<col>`` the rest of the sum of
    ``sum_stage + 2`` cycles before). This
    needs beats of one sub-beat (outlier slots no more than outlier lanes): a held beat's
    sub-beats reach the accumulators over several cycles.

    Parameters
    ----------
    array : MacArray
        The block under test (any outlier lanes and plane shifts), or a broken variant.
    config : MacArray.Config or None
        Check at the queue with this configuration's timing.
    """

    def __init__(self, array, config=None):
        self._array = array
        self._config = config

    def _assume_outlier_rules(self, m, slots, positions, lanes, cols):
        """§6's producer rules for one beat's outlier ``slots``; ``positions(slot)`` is the
        tuple of its indices, checked against ``(lanes, cols)``."""
        for index, slot in enumerate(slots):
            if index:
                m.d.comb += Assume(~slot.valid | slots[index - 1].valid)
            m.d.comb += Assume(~slot.valid | Cat(*(
                index_value < bound for index_value, bound in
                zip(positions(slot), (lanes, cols)))).all())
            for other in slots[:index]:
                same = Cat(*(x == y for x, y in zip(positions(slot), positions(other)))).all()
                m.d.comb += Assume(~(slot.valid & other.valid & same))

    def elaborate(self, platform):
        m = Module()
        dut = self._array
        fragment = Fragment.get(dut, platform)
        _free_streams(m, fragment, (dut.act, dut.weights), dut.acc)
        act_beat, weight_beat = dut.act.payload, dut.weights.payload
        act, tile = act_beat.data, weight_beat.tile
        lanes = len(act)
        acc_layout = dut.acc.payload.shape()
        cols, acc_shape = acc_layout.length, acc_layout.elem_shape
        act_fields = act_beat.shape().members
        weight_fields = weight_beat.shape().members

        # The recombined operands: dense plus the valid outliers at their positions.
        full_act = [Value.cast(act[lane]) for lane in range(lanes)]
        full_w = [[Value.cast(tile[lane][col]) for col in range(cols)] for lane in range(lanes)]
        if "outliers" in act_fields:
            slots = [act_beat.outliers[i] for i in range(len(act_beat.outliers))]
            self._assume_outlier_rules(m, slots, lambda slot: (slot.lane,), lanes, cols)
            for lane in range(lanes):
                for slot in slots:
                    here = slot.valid & (slot.lane == lane)
                    m.d.comb += Assume(~here | (act[lane] == 0))
                    full_act[lane] = full_act[lane] + Mux(here, slot.value, 0)
        if "outliers" in weight_fields:
            slots = [weight_beat.outliers[i] for i in range(len(weight_beat.outliers))]
            self._assume_outlier_rules(m, slots, lambda slot: (slot.lane, slot.col), lanes,
                                       cols)
            for lane in range(lanes):
                for col in range(cols):
                    for slot in slots:
                        here = slot.valid & (slot.lane == lane) & (slot.col == col)
                        m.d.comb += Assume(~here | (tile[lane][col] == 0))
                        full_w[lane][col] = full_w[lane][col] + Mux(here, slot.value, 0)
        beat = [sum(full_act[lane] * full_w[lane][col] for lane in range(lanes))
                for col in range(cols)]

        running = [Signal(acc_shape, name=f"running_{col}") for col in range(cols)]
        shifted = running
        if "plane_shift" in weight_fields:
            shifted = [running[col] << weight_beat.plane_shift[col] for col in range(cols)]
        summed = [Signal(acc_shape, name=f"summed_{col}") for col in range(cols)]
        m.d.comb += [summed[col].eq(shifted[col] + beat[col]) for col in range(cols)]
        accepted = dut.act.valid & dut.act.ready
        closing = accepted & act_beat.last

        with m.If(accepted):
            for col in range(cols):
                m.d.sync += running[col].eq(Mux(act_beat.last, 0, summed[col]))
        if self._config is not None:
            self._check_at_queue(m, fragment, closing, summed, running, acc_shape)
            return m
        _check_nth_result(m, produced=closing, predicted=summed,
                          delivered=dut.acc.valid & dut.acc.ready,
                          actual=[dut.acc.payload[col] for col in range(cols)],
                          shape=acc_shape, width=4,
                          early="a result left before its reduction closed",
                          differs="a column sum differs from the exact sum of products")
        return m

    def _check_at_queue(self, m, fragment, closing, summed, running, acc_shape):
        """The k-inductive form: ``summed`` of every ``closing`` beat at the queue's write
        port ``latency`` cycles later, the accumulators ``sum_stage + 1`` cycles behind
        ``running``."""
        config = self._config
        cols = len(summed)
        written, value = _registers(fragment, "w__valid", "w__payload")
        history = [(closing, summed, running)]
        for stage in range(config.latency):
            valid, sums, runs = history[-1]
            later = (Signal(name=f"closing_d{stage}"),
                     [Signal(acc_shape, name=f"summed_c{col}_d{stage}") for col in range(cols)],
                     [Signal(acc_shape, name=f"running_c{col}_d{stage}") for col in range(cols)])
            m.d.sync += [later[0].eq(valid),
                         *(a.eq(b) for a, b in zip(later[1], sums)),
                         *(a.eq(b) for a, b in zip(later[2], runs))]
            history.append(later)
        valid, sums, _ = history[config.latency]
        packed = Cat(*(total.as_unsigned() for total in sums))
        m.d.comb += [Assert(written == valid, "a result written out of step"),
                     Assert(~written | (value == packed),
                            "a column sum differs from the exact sum of products")]
        _, _, behind = history[config.sum_stage + 1]
        low_bits = config.accumulator_low_bits
        if low_bits is None:
            accumulators = _registers(fragment, *(f"acc_c{col}" for col in range(cols)))
            m.d.comb += [Assert(accumulator == expected)
                         for accumulator, expected in zip(accumulators, behind)]
            return
        # Split accumulators: the low half as one accumulator would be, the high half (the
        # rest of the running sum, carries included) one cycle behind it.
        lows = _registers(fragment, *(f"acc_low_c{col}" for col in range(cols)))
        highs = _registers(fragment, *(f"acc_high_c{col}" for col in range(cols)))
        _, _, further_behind = history[config.sum_stage + 2]
        m.d.comb += [Assert(low == expected[:low_bits]) for low, expected in zip(lows, behind)]
        m.d.comb += [Assert(high == expected.shift_right(low_bits))
                     for high, expected in zip(highs, further_behind)]


class SkidBufferProperties(Elaboratable):
    """A :class:`~olmac.hw.stream.SkidBuffer` against an ideal one-beat skid register.

    Beats on ``i`` (valid and payload free in every cycle, any producer) and ``o.ready`` are
    free. Properties (k-induction): the stream rules on ``o``; counting transfers, beats
    accepted on ``i`` minus beats sent on ``o`` is 0 or 1 and is 1 exactly while ``i.ready``
    is low (none created, lost or doubled, and upstream waits only on a held beat); the beat
    held is offered on ``o`` with the payload it was accepted with, and with none held ``o``
    is ``i`` itself (so beats leave in order, unchanged, with no cycle added).

    Parameters
    ----------
    buffer : SkidBuffer
        The block under test, or a broken variant with the same ports.
    """

    def __init__(self, buffer):
        self._buffer = buffer

    def elaborate(self, platform):
        m = Module()
        dut = self._buffer
        fragment = Fragment.get(dut, platform)
        _free_streams(m, fragment, (dut.i,), dut.o)
        accepted = dut.i.valid & dut.i.ready
        sent = dut.o.valid & dut.o.ready
        held = Signal(2)
        kept = Signal.like(Value.cast(dut.i.payload), name="kept")
        m.d.sync += held.eq(held + accepted - sent)
        with m.If(accepted & ~sent):
            m.d.sync += kept.eq(dut.i.payload)
        m.d.comb += [
            Assert(held <= 1, "more than one beat held"),
            Assert(dut.i.ready == (held == 0), "upstream stalled with no beat held"),
            Assert(dut.o.valid == ((held != 0) | dut.i.valid), "a beat created or lost"),
            Assert(Value.cast(dut.o.payload) ==
                   Mux(held != 0, kept, Value.cast(dut.i.payload)),
                   "a beat left with another payload"),
        ]
        # Invariants of this implementation: every copy of its state says "a beat held"
        # exactly while one is, and the skid register holds it.
        full, skid = _registers(fragment, "full", "skid")
        selects = [signal for signal in _assigned(fragment)
                   if signal.name.startswith("select_")]
        m.d.comb += [Assert(state == (held != 0)) for state in (full, *selects)]
        m.d.comb += Assert((held == 0) | (Value.cast(skid) == kept))
        return m


def frame_transmitter_counts(max_reply):
    """:class:`~olmac.hw.host_link.FrameTransmitter` with a ``max_reply``-byte reply memory
    (docs/host_link.md §2): one frame per reply and one per error code taken, none
    otherwise; a reply of ``n ≤ max_reply`` bytes is framed with kind ``0x00``, length
    ``n + 1`` and ``n`` body bytes, a longer one as the error ``REPLY_OVERFLOW``; an error
    code is framed with kind ``0xEE``, length 2 and that code as its body, whatever the
    code (a queued ``REPLY_OVERFLOW`` too); every frame is ``6 + body`` bytes. The body of
    a reply frame (the reply memory's rows) is not checked here."""
    def counting(m, block, fragment):
        state, is_error, for_reply, complete, code, count, overflow, body = _registers(
            fragment, "fsm_state", "is_error", "for_reply", "complete", "code", "count",
            "overflow", "body")
        idle, sync, length_low, length_high, kind, body_state, crc_low, crc_high = (
            _fsm_states(state, "IDLE", "SYNC", "LENGTH_LOW", "LENGTH_HIGH", "KIND", "BODY",
                        "CRC_LOW", "CRC_HIGH"))
        reply, errors, tx = block.reply, block.errors, block.tx
        sent = tx.valid & tx.ready
        framing = state != idle
        frame_ended = sent & (state == crc_high)
        error_taken = errors.valid & errors.ready
        # The frame being sent is for a queued error code (else for the collected reply).
        queued = Signal(name="queued")
        kept_code = Signal(8, name="kept_code")
        with m.If(error_taken):
            m.d.sync += [queued.eq(1), kept_code.eq(errors.payload)]
        with m.Elif(~framing):
            m.d.sync += queued.eq(0)
        # Reply bytes taken since the last reply frame, up to one past the memory.
        collected = Signal(range(max_reply + 2), name="collected")
        with m.If(frame_ended & ~queued):
            m.d.sync += collected.eq(0)
        with m.Elif(reply.valid & reply.ready & (collected <= max_reply)):
            m.d.sync += collected.eq(collected + 1)
        owed = Signal(signed(4), name="frames_owed")
        m.d.sync += owed.eq(owed + _ended(reply) + error_taken - frame_ended)
        frame_bytes = Signal(range(max_reply + 8), name="frame_bytes")
        m.d.sync += frame_bytes.eq(Mux(frame_ended, 0, frame_bytes + sent))

        too_long = collected > max_reply
        error_frame = queued | too_long
        body_length = Mux(error_frame, 1, collected)
        length = Signal(16, name="expected_length")
        m.d.comb += length.eq(body_length + 1)
        expected_byte = {sync: SYNC, length_low: length[:8], length_high: length[8:],
                         kind: Mux(error_frame, ERROR_KIND, REPLY_KIND)}
        stage = {sync: 0, length_low: 1, length_high: 2, kind: 3, body_state: 4 + body,
                 crc_low: 4 + body_length, crc_high: 5 + body_length}
        m.d.comb += [
            Assert(owed == complete + (framing & queued), "a frame lost or made up"),
            Assert(~framing | queued | complete, "a reply frame without a reply"),
            Assert(~complete | (collected != 0)),
            Assert((count == Mux(too_long, max_reply, collected)) & (overflow == too_long),
                   "reply bytes lost or doubled"),
            Assert(~framing | ((is_error == error_frame) & (for_reply == ~queued) &
                               (code == Mux(queued, kept_code, ErrorCode.REPLY_OVERFLOW)))),
            Assert(framing | (frame_bytes == 0)),
            Assert((state == body_state) | (body == 0)),
            Assert((state != body_state) | (body < body_length)),
            *(Assert((state != s) | (frame_bytes == at), "a frame of the wrong length")
              for s, at in stage.items()),
            *(Assert(~tx.valid | (state != s) | (tx.payload == byte), "a wrong header byte")
              for s, byte in expected_byte.items()),
            Assert(~tx.valid | (state != body_state) | ~error_frame |
                   (tx.payload == Mux(queued, kept_code, ErrorCode.REPLY_OVERFLOW)),
                   "a wrong error code"),
        ]
    return counting


def _crc16_ccitt_false(m, data_bytes, name):
    """CRC-16/CCITT-FALSE of ``data_bytes`` (8-bit values) as docs/host_link.md §2 writes it:
    polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR; bit by bit,
    independently of :mod:`amaranth.lib.crc`, which the receiver uses. Each step is a signal
    of ``m`` (an expression that names the previous step twice doubles in size per bit)."""
    crc = C(0xFFFF, 16)
    for index, byte in enumerate(data_bytes):
        crc = crc ^ Cat(C(0, 8), byte)
        for bit in range(8):
            step = Signal(16, name=f"{name}_{index}_{bit}")
            m.d.comb += step.eq((crc << 1)[:16] ^ Mux(crc[15], 0x1021, 0))
            crc = step
    return crc


def _fsm_states(state_signal, *names):
    """The encodings of the states called ``names`` of an elaborated ``FSM``'s state signal."""
    codes = {}
    for code in range(1 << len(state_signal)):
        try:
            codes[state_signal.decoder(code).split("/")[0]] = code
        except KeyError:    # an encoding no state has (fewer states than a power of two)
            pass
    return [codes[name] for name in names]


class FrameReceiverProperties(Elaboratable):
    """A :class:`~olmac.hw.host_link.FrameReceiver` under every byte sequence.

    Bytes, their timing, damaged bytes (``rx_error``) and ``slots.busy`` are free. The
    wrapper keeps the last ``max_payload + 5`` bytes received, and whether any was damaged.
    Properties (k-induction):

    * a frame is applied only if its length and CRC hold (docs/host_link.md §2): when
      ``slots.commit`` rises with length ``L``, ``1 ≤ L ≤ max_payload``, the last ``L + 5``
      bytes are the sync byte, ``L`` little-endian, ``L`` payload bytes and their
      CRC-16/CCITT-FALSE (computed here bit by bit), none of them damaged and none missed,
      and the bytes written to the slot at offsets ``0..L-1`` are that payload;
    * it returns to sync hunting: a frame in progress has taken at most ``max_payload + 4``
      bytes after its sync byte (so after one frame's bytes it hunts again or discards), and
      after ``timeout + 1`` quiet cycles following any byte sequence it is hunting.

    Parameters
    ----------
    receiver : FrameReceiver
        The block under test, or a broken variant with the same ports.
    max_payload : int
        Its longest payload.
    timeout : int
        Its inter-byte timeout in cycles.
    """

    def __init__(self, receiver, *, max_payload, timeout):
        self._receiver = receiver
        self._max_payload = max_payload
        self._timeout = timeout

    def elaborate(self, platform):
        m = Module()
        dut = self._receiver
        fragment = _under_test(m, dut, platform)
        for signal in (dut.rx.valid, dut.rx.payload, dut.rx_error, dut.slots.busy):
            m.d.comb += signal.eq(AnySeq(len(signal)))
        max_payload, frame_bytes = self._max_payload, self._max_payload + 5
        got = dut.rx.valid & dut.rx.ready & ~dut.rx_error

        # The bytes received, newest first (the current one included), and how many of the
        # latest were received whole and in a row (saturating at one frame).
        history = [Signal(8, name=f"history_{n}") for n in range(frame_bytes - 1)]
        with m.If(got):
            m.d.sync += [history[0].eq(dut.rx.payload)]
            m.d.sync += [later.eq(earlier) for earlier, later in zip(history, history[1:])]
        window = [dut.rx.payload, *history]
        clean = Signal(range(frame_bytes + 1))
        with m.If(dut.rx_error):
            m.d.sync += clean.eq(0)
        with m.Elif(got & (clean != frame_bytes)):
            m.d.sync += clean.eq(clean + 1)

        # What the receiver wrote to the slot, by offset.
        written = Array(Signal(8, name=f"written_{n}") for n in range(max_payload))
        with m.If(dut.slots.en):
            m.d.comb += Assert(dut.slots.offset < max_payload, "a write outside the slot")
            m.d.sync += written[dut.slots.offset].eq(dut.slots.data)

        with m.If(dut.slots.commit):
            m.d.comb += Assert(got, "a frame committed without its last byte")
            m.d.comb += Assert((dut.slots.length >= 1) & (dut.slots.length <= max_payload),
                               "a frame committed with a length out of range")
        for length in range(1, max_payload + 1):
            # window[0] is the CRC's high byte, window[length + 4] the sync byte.
            frame = window[:length + 5][::-1]
            good = ((frame[0] == SYNC) & (Cat(frame[1], frame[2]) == length) &
                    (_crc16_ccitt_false(m, frame[1:length + 3], f"crc_{length}") ==
                     Cat(frame[-2], frame[-1])) &
                    (clean >= length + 4))
            same = Cat(*written[:length]) == Cat(*frame[3:length + 3])
            with m.If(dut.slots.commit & (dut.slots.length == length)):
                m.d.comb += [Assert(good, "a frame applied whose sync, length or CRC fails"),
                             Assert(same, "a frame applied with other payload bytes")]

        # Sync hunting: bytes since the frame's sync, and quiet cycles since the last byte.
        state, length, low_byte, count, dropping, crc_reg, quiet, crc_low_byte = _registers(
            fragment, "fsm_state", "length", "low_byte", "count", "dropping", "crc_reg",
            "quiet", "crc_low")
        (hunt, garbage, discard, length_low, length_high, payload, crc_low,
         crc_high) = _fsm_states(state, "HUNT", "GARBAGE", "DISCARD", "LENGTH_LOW",
                                 "LENGTH_HIGH", "PAYLOAD", "CRC_LOW", "CRC_HIGH")
        hunting = (state == hunt) | (state == garbage)
        in_frame = ~hunting & (state != discard)
        since_sync = Signal(range(frame_bytes + 1))
        with m.If(got):
            m.d.sync += since_sync.eq(Mux(hunting, 0, since_sync + 1))
        # Exactly one frame's bytes: the sync byte, two length bytes, the payload, two CRC
        # bytes; the CRC's high byte ends the frame (at most max_payload + 4 after the sync).
        m.d.comb += [
            Assert((state != length_low) | (since_sync == 0), "a frame out of step"),
            Assert((state != length_high) | (since_sync == 1), "a frame out of step"),
            Assert((state != payload) | (since_sync == 2 + count), "a frame out of step"),
            Assert((state != crc_low) | (since_sync == 2 + length), "a frame out of step"),
            Assert((state != crc_high) | (since_sync == 3 + length), "a frame out of step"),
        ]
        silent = Signal(range(self._timeout + 2))
        with m.If(dut.rx.valid | dut.rx_error):
            m.d.sync += silent.eq(0)
        with m.Elif(silent <= self._timeout):
            m.d.sync += silent.eq(silent + 1)
        m.d.comb += Assert((silent <= self._timeout) | (state == hunt),
                           "not hunting after a quiet timeout")

        # Invariants of this implementation, so the induction step needs no whole frame: a
        # frame's length has checked before its payload, its byte count stays below it, and
        # its registers hold what the bytes since the sync say (length, CRC so far, payload
        # written, none damaged).
        payload_states = (state == payload) | (state == crc_low) | (state == crc_high)
        past = Array(history)
        m.d.comb += [
            Assert(~payload_states | ((length >= 1) & (length <= max_payload))),
            Assert((state != payload) | (count < length)),
            Assert(~in_frame | (past[since_sync] == SYNC)),
            Assert(~in_frame | (clean > since_sync)),
            Assert(~payload_states |
                   (length == Cat(past[since_sync - 1], past[since_sync - 2]))),
            Assert((state != length_low) | (crc_reg == 0xFFFF)),
            Assert((state != length_high) | (low_byte == history[0])),
            Assert((state != crc_high) | (crc_low_byte == history[0])),
            Assert(quiet == Mux(silent > self._timeout, self._timeout, silent)),
        ]
        crc_states = (state == length_high) | (state == payload) | (state == crc_low)
        for taken in range(1, max_payload + 3):
            so_far = _crc16_ccitt_false(m, history[:taken][::-1], f"so_far_{taken}")
            m.d.comb += Assert(~crc_states | (since_sync != taken) | (crc_reg == so_far))
            before_last = _crc16_ccitt_false(m, history[1:taken + 1][::-1],
                                             f"before_last_{taken}")
            m.d.comb += Assert((state != crc_high) | (since_sync != taken + 1) |
                               (crc_reg == before_last))
        kept = Mux(state == payload, count, length)
        for offset in range(max_payload):
            m.d.comb += Assert(~payload_states | dropping | (offset >= kept) |
                               (written[offset] == past[since_sync - 3 - offset]))
        return m


class OutlierRulesProperties(Elaboratable):
    """An :class:`~olmac.hw.outlier_rules.OutlierRules` against docs/semantics.md §6's
    producer rules written here: ``fault`` is high exactly from the second cycle after a
    checked beat (``check``) one of whose valid outliers lies outside the array (lane
    ``>= lanes``, column ``>= cols``) or shares its position with another valid outlier of
    its kind, and stays high. Positions, valid bits and ``check`` are free in every cycle;
    k-induction.

    Parameters
    ----------
    rules : OutlierRules
        The block under test, or a broken variant with the same ports.
    """

    def __init__(self, rules):
        self._rules = rules

    def elaborate(self, platform):
        m = Module()
        dut = self._rules
        fragment = _under_test(m, dut, platform)
        config = dut.config
        kinds = []
        if config.act_outlier_slots:
            kinds.append((dut.act, config.act_outlier_slots, ("lane",), (config.lanes,)))
        if config.weight_outlier_slots:
            kinds.append((dut.weights, config.weight_outlier_slots, ("lane", "col"),
                          (config.lanes, config.cols)))
        broken = Const(0)
        for port, count, fields, bounds in kinds:
            m.d.comb += Value.cast(port).eq(AnySeq(len(Value.cast(port))))
            slots = [port[index] for index in range(count)]
            for index, slot in enumerate(slots):
                for field, bound in zip(fields, bounds):
                    broken = broken | (slot.valid & (getattr(slot, field) >= bound))
                for other in slots[index + 1:]:
                    same = Cat(*(getattr(slot, f) == getattr(other, f) for f in fields)).all()
                    broken = broken | (slot.valid & other.valid & same)
        m.d.comb += dut.check.eq(AnySeq(1))
        seen, expected = Signal(), Signal()
        m.d.sync += [seen.eq(dut.check & broken), expected.eq(expected | seen)]
        m.d.comb += Assert(dut.fault == expected, "fault differs from the rules")
        # Invariant of this implementation: its verdict register is the last check's.
        verdict, = _registers(fragment, "verdict")
        m.d.comb += Assert(verdict == seen)
        return m
