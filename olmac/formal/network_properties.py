"""Property wrappers of the network core's parts (hw/network/): the stream rules on every port
through which a part sends, and transfers counted between what it takes and what it sends.

A part of the core listens to the sequencer's ``control`` port and reads memories through
read ports; both are its environment, and a wrapper drives them as the rest of the core
does (each rule below is a promise of the sequencer or of a memory, stated in
docs/formal.md and, for the sequencer, proved by ``net_sequencer``):

* **control**: ``start`` is a one-cycle pulse between ops, ``running`` follows it and lasts
  until the op ends, and the descriptor ``op`` is free between ops and holds from ``start``
  until the op's last running cycle. When an op may end is the part's own environment
  rule (e.g. a compute op ends with the write-back's last write, so after every beat of
  its walks has been taken).
* **read ports**: a memory read port's ``data`` changes only in the cycle after a cycle
  with ``en`` (a synchronous read port with an enable; what it reads is free).
* **streams**: every stream the part receives keeps the stream rules (assumed); ready and
  every other input are free in every cycle unless the part's environment says otherwise.
"""

from types import SimpleNamespace

from amaranth.asserts import AnySeq
from amaranth.hdl import *
from amaranth.lib import data
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In

from olmac.hw.network.layouts import (CodebookMode, ControlSignature, LoadTarget, OpKind,
                                      is_compute)
from .properties import (StreamRules, _assigned, _fsm_states, _registers, _under_test,
                         output_streams)

__all__ = ["PartProperties", "count_transfers", "PART_SPECS"]


def _read_ports(part):
    """Every memory read port through which ``part`` reads (its ``data`` an input of
    ``part``)."""
    received = {id(value) for _path, member, value in part.signature.flatten(part)
                if member.flow == In}
    return [getattr(part, name) for name, member in part.signature.members.items()
            if member.is_signature and isinstance(member.signature, ReadPort.Signature)
            and id(getattr(part, name).data) in received]


def count_transfers(m, name, taken, sent, capacity, *, held_is=None):
    """Counts transfers into and out of a part: ``taken`` (beats taken this cycle, a value)
    and ``sent`` (beats sent this cycle). Asserts that no more leave than came in (none
    created) and that at most ``capacity`` are inside after the cycle (none lost or stuck
    beyond the part's room); with ``held_is``, that the beats inside before this cycle are
    exactly that value (the part's own storage, e.g. its output ``valid``)."""
    held = Signal(range(capacity + 1), name=f"{name}_held")
    total = Signal(range(capacity + (1 << len(Value.cast(taken)))), name=f"{name}_total")
    m.d.comb += total.eq(held + taken)
    m.d.sync += held.eq(total - sent)
    m.d.comb += [Assert(held <= capacity),
                 Assert(total >= sent, f"{name}: a transfer sent that never came in"),
                 Assert(total - sent <= capacity, f"{name}: a transfer lost or doubled")]
    if held_is is not None:
        m.d.comb += Assert(held == held_is, f"{name}: the beats held differ from the count")


class PartProperties(Elaboratable):
    """The stream rules on every port through which ``part`` sends, under the environment of
    the module docstring, plus a part's own environment rules and promises.

    Parameters
    ----------
    part : wiring.Component
        The part under test, or a broken variant with the same ports.
    environment : callable or None
        ``environment(env)`` returns the part's own assumptions; ``env`` is a namespace with
        ``m``, ``part``, ``fragment`` (to name registers), ``control`` (or ``None``),
        ``running`` (the op runs) and ``end`` (high in the op's last running cycle; free
        unless the part's environment restricts it).
    promises : callable or None
        ``promises(env)`` adds the part's assertions (counting, invariants) to ``env.m``.
    pace : dict or None
        Sending or receiving port name → the port whose ``ready`` takes it: a sideband
        stream, valid with and taken with another (the beat walk's ``weights`` with
        ``act``). Its rules are stated against that ``ready``.
    """

    def __init__(self, part, *, environment=None, promises=None, pace=None):
        self._part = part
        self._environment = environment
        self._promises = promises
        self._pace = pace or {}

    def elaborate(self, platform):
        m = Module()
        part = self._part
        fragment = _under_test(m, part, platform)
        members = part.signature.members
        control = (part.control if "control" in members and members["control"].flow == In
                   and isinstance(members["control"].signature, ControlSignature) else None)
        env = SimpleNamespace(m=m, part=part, fragment=fragment, control=control,
                              running=Signal(name="env_running"), end=Signal(name="env_end"))
        driven = set()
        if control is not None:
            driven |= {id(control.op), id(control.start), id(control.running)}
            self._drive_control(env)
        for port in _read_ports(part):
            driven.add(id(port.data))
            self._drive_read_port(m, port)
        for _path, member, value in part.signature.flatten(part):
            if member.flow == In and id(value) not in driven:
                m.d.comb += Value.cast(value).eq(AnySeq(len(Value.cast(value))))
        ports = {name.split(".", 1)[1]: port for name, port in
                 output_streams(part) + output_streams(part, sending=False)}
        sending = {name.split(".", 1)[1] for name, _ in output_streams(part)}
        for index, (name, port) in enumerate(ports.items()):
            if name in self._pace:
                leader = ports[self._pace[name]]
                port = SimpleNamespace(valid=port.valid, ready=leader.ready,
                                       payload=port.payload)
                m.d.comb += (Assert if name in sending else Assume)(
                    port.valid == leader.valid, f"{name} not valid with its beat")
            m.submodules[f"rules_{index}"] = StreamRules(port, assume=name not in sending)
        if self._environment is not None:
            m.d.comb += self._environment(env)
        if self._promises is not None:
            self._promises(env)
        return m

    @staticmethod
    def _drive_control(env):
        """The sequencer's side of ``control`` (module docstring)."""
        m, control = env.m, env.control
        start, end, running = AnySeq(1), env.end, env.running
        op = Value.cast(control.op)
        previous = Signal.like(op, name="env_previous_op")
        m.d.comb += [control.start.eq(start), control.running.eq(running),
                     op.eq(AnySeq(len(op))), end.eq(AnySeq(1) & running)]
        m.d.sync += [running.eq(start | (running & ~end)), previous.eq(op)]
        # `running` follows a start or a running cycle that did not end the op
        m.d.comb += [Assume(~(start & running), "start between ops only"),
                     Assume(~running | (op == previous), "the op changed while it ran")]

    @staticmethod
    def _drive_read_port(m, port):
        """A synchronous read port: ``data`` changes only after a cycle with ``en``."""
        data = Value.cast(port.data)
        enabled = Signal(name="env_read_en")
        previous = Signal.like(data, name="env_read_data")
        m.d.comb += data.eq(AnySeq(len(data)))
        m.d.sync += [enabled.eq(port.en), previous.eq(data)]
        m.d.comb += Assume(enabled | (data == previous), "read data changed without en")


def _op_ends(may=None, must=None):
    """An environment rule: the op may end only where ``may(env)`` and must end where
    ``must(env)`` (each a condition checked while the op runs)."""
    def rules(env):
        result = []
        if may is not None:
            result.append(Assume(~env.end | may(env)))
        if must is not None:
            result.append(Assume(~(env.running & must(env)) | env.end))
        return result
    return rules


def _both(*environments):
    """All the rules of ``environments``."""
    return lambda env: [rule for environment in environments for rule in environment(env)]


def _kind(env, *kinds):
    """The op is of one of ``kinds``."""
    kind = env.control.op.kind
    return Cat(*(kind == k for k in kinds)).any()


def _idle(port):
    """No beat of ``port`` waits for ``ready`` this cycle."""
    return ~port.valid | port.ready


def _only_while(port_name, *kinds):
    """The producer of ``port_name`` offers beats only while an op of ``kinds`` runs."""
    def rule(env):
        port = getattr(env.part, port_name)
        return [Assume(~port.valid | (env.running & _kind(env, *kinds)),
                       f"{port_name} outside its ops")]
    return rule


def _per_op(env, name, step):
    """A count of ``step`` since the op's start."""
    count = Signal(8, name=name)
    with env.m.If(env.control.start):
        env.m.d.sync += count.eq(0)
    with env.m.Elif(step):
        env.m.d.sync += count.eq(count + 1)
    return count


# The parts, each with its environment and promises -------------------------------------

def _sequencer_promises(env):
    """The control contract every other proof assumes, on the front's ``control`` and the
    back's, and one descriptor per fetch, kept while the front runs or waits for the back."""
    m, part = env.m, env.part
    fetch, descriptor = part.fetch, part.descriptor
    was_restart = Signal()
    m.d.sync += was_restart.eq(part.restart)
    for name, control, ending in (("front", part.control, part.done | part.restart),
                                  ("back", part.back, part.back_done | part.restart)):
        op = Value.cast(control.op)
        was_start, was_running, was_ending = (Signal(name=f"{name}_{what}") for what in
                                              ("was_start", "was_running", "was_ending"))
        previous = Signal.like(op, name=f"previous_{name}_op")
        m.d.sync += [was_start.eq(control.start), was_running.eq(control.running),
                     was_ending.eq(ending), previous.eq(op)]
        # the back takes a quantizing LOAD at its start, where a RESTART may still come:
        # that start is then followed by no op (the front's always is)
        cut = was_restart if name == "back" else Const(0)
        m.d.comb += [
            Assert(~(control.start & control.running), f"{name}: start while an op runs"),
            Assert(~control.running | was_start | was_running,
                   f"{name}: an op runs without a start"),
            Assert(~was_start | control.running | cut,
                   f"{name}: a start not followed by its op"),
            Assert(~control.running | (op == previous), f"{name}: the op changed while it ran"),
            Assert(~(was_running & ~control.running) | was_ending,
                   f"{name}: an op ended without done or restart"),
        ]
    state, = _registers(env.fragment, "fsm_state")
    fetch_state, run_state, held_state = _fsm_states(state, "FETCH", "RUN", "HELD")
    count_transfers(m, "descriptors", fetch.valid & fetch.ready,
                    descriptor.valid & descriptor.ready, 1, held_is=state != fetch_state)
    # The descriptor's producer keeps it from the cycle the sequencer saw it valid (the
    # op's start) until the op's front is let go.
    m.d.comb += Assert(((state != run_state) & (state != held_state)) | descriptor.valid)


def _loader_environment(env):
    """A ``LOAD`` ends exactly with the loader's ``done`` or ``restart``."""
    part = env.part
    loading = _kind(env, OpKind.LOAD)
    return _op_ends(may=lambda env: ~loading | part.done | part.restart,
                    must=lambda env: loading & (part.done | part.restart))(env)


def _loader_promises(env):
    """Every ``load`` beat but a restart leaves on ``writes`` in its cycle; every word
    taken from ``inputs`` is written, or with ``quantize`` sent on ``vector`` as a window of
    one; a ``LOAD`` takes ``count`` words, then one without ``quantize`` is done; ``load``
    beats are taken only while ``loads_open``, which a quantizing ``LOAD`` closes with its
    first word."""
    m, part = env.m, env.part
    op = part.control.op
    restart = part.load.payload.memory == LoadTarget.RESTART
    count_transfers(m, "writes", part.load.valid & part.load.ready & ~restart,
                    part.writes.valid & part.writes.ready, 0)
    taken = part.inputs.valid & part.inputs.ready
    sent = part.vector.valid & part.vector.ready
    m.d.comb += [
        Assert(part.write.en == (taken & ~op.quantize),
               "a word taken but not written, or not taken"),
        Assert(sent == (taken & op.quantize), "a word taken but not sent, or not taken"),
        Assert(~part.vector.valid | part.vector.payload.last, "a window of more than a word"),
    ]
    words = _per_op(env, "load_words", taken)
    loading = env.running & (op.kind == OpKind.LOAD)
    index, = _registers(env.fragment, "index")
    m.d.comb += [Assert(~loading | (words <= op.count), "more words than the LOAD's count"),
                 Assert(~part.done | (words == op.count), "a LOAD done early"),
                 Assert(~loading | (index == words)),
                 Assert(~(part.load.valid & part.load.ready) | part.loads_open,
                        "a load beat taken while the loads are closed"),
                 Assert(~(loading & op.quantize & (words != 0)) | ~part.loads_open,
                        "a quantizing LOAD open to loads after its first word")]


def _storer_promises(env):
    """A ``STORE`` sends ``count`` words, ``last`` on the final one, then is done."""
    m, part = env.m, env.part
    op, outputs = part.control.op, part.outputs
    sent = outputs.valid & outputs.ready
    words = _per_op(env, "store_words", sent)
    storing = env.running & (op.kind == OpKind.STORE)
    index, = _registers(env.fragment, "index")
    m.d.comb += [
        Assert(~storing | (words + outputs.valid <= op.count), "more words than the count"),
        Assert(~(storing & outputs.valid) | (outputs.payload.last ==
                                             (words + 1 == op.count)), "last misplaced"),
        Assert(~(storing & part.done) | (words == op.count), "a STORE done early"),
        Assert(~storing | (index == words + outputs.valid)),
        Assert(~outputs.valid | storing),
    ]


def _walk_finished(*names):
    """A compute op ends only once the walk has nothing left to send: its registers
    ``names`` (what is left, what its stage holds) are clear."""
    def may(env):
        return ~Cat(*_registers(env.fragment, *names)).any()
    return _op_ends(may=may)


def _walk_runs(*names):
    """Invariant: the walk's registers ``names`` are set only while its op runs."""
    def promises(env):
        env.m.d.comb += [Assert(~register | env.running)
                         for register in _registers(env.fragment, *names)]
    return promises


def _output_walk_promises(env):
    """One side request per output of a compute op: ``out_words · out_pixels`` of them,
    then the walk ends (as the write-back writes one result per output); none while
    ``hold`` or between ops."""
    _walk_runs("left")(env)
    m, part = env.m, env.part
    op = part.control.op
    requests = _per_op(env, "requests", part.requests.valid & part.requests.ready)
    total = op.out_words * op.out_pixels
    left, tiles, pixels = _registers(env.fragment, "left", "side_tiles_left",
                                     "side_pixels_left")
    compute = env.running & is_compute(op.kind)
    m.d.comb += [Assert(~compute | Mux(left, requests < total, requests == total),
                        "side requests differ from the op's outputs"),
                 Assert(~(part.requests.valid & part.hold), "a side request while held"),
                 Assert(~part.requests.valid | env.running, "a side request between ops"),
                 Assert(~(compute & left) | _counted(op, requests, tiles, pixels))]


def _hold_only_falls(env):
    """The loader's ``loads_open`` (the output walk's ``hold``) rises only as an op starts
    to run: within an op it only falls (a quantizing ``LOAD``'s first word)."""
    hold, was_hold, was_start = env.part.hold, Signal(name="was_hold"), Signal()
    env.m.d.sync += [was_hold.eq(hold), was_start.eq(env.control.start)]
    return [Assume(~(hold & ~was_hold) | was_start | ~env.running, "hold rose in an op")]


def _outputs_exist(env):
    """The compiler's compute ops: at least one output word and pixel (the walks' counters
    count to ``− 1``)."""
    op = env.control.op
    return [Assume(~(env.running & is_compute(op.kind)) |
                   ((op.out_words != 0) & (op.out_pixels != 0)))]


def _reducer_environment(env):
    """The array offers results only while the back's op is a GEMM (``array_results``),
    which changes only between the back's ops, so never under a result held on ``acc``."""
    m, part = env.m, env.part
    held, previous = Signal(name="env_acc_held"), Signal(name="env_array_results")
    m.d.sync += [held.eq(part.acc.valid & ~part.acc.ready),
                 previous.eq(part.array_results)]
    return [Assume(~part.array.valid | part.array_results,
                   "array results while the back's op is no GEMM"),
            Assume(~held | (part.array_results == previous),
                   "the back's op changed under a held result")]


def _reducer_promises(env):
    """One result per window of a SUM or MAX (held in the reducer's register) and the
    array's results passed on one for one while the back's op is a GEMM."""
    m, part = env.m, env.part
    windows = part.beats.valid & part.beats.ready & part.beats.payload.last
    valid, = _registers(env.fragment, "valid")
    count_transfers(m, "results", windows + (part.array.valid & part.array.ready),
                    part.acc.valid & part.acc.ready, 1, held_is=valid)


def _staged_reducer_promises(env):
    """With ``reducer_stage``: as :func:`_reducer_promises`, a window's last beat held in
    the stage or its result in the reducer's register, two at most."""
    m, part = env.m, env.part
    windows = part.beats.valid & part.beats.ready & part.beats.payload.last
    valid, staged_valid, staged = _registers(env.fragment, "valid", "staged__valid",
                                             "staged__payload")
    last = data.View(part.beats.payload.shape(), staged).last
    count_transfers(m, "results", windows + (part.array.valid & part.array.ready),
                    part.acc.valid & part.acc.ready, 2, held_is=valid + (staged_valid & last))


#: The reducer's: the front's op ends once its beats are in; a window result may wait for
#: the back.
_REDUCER_ENVIRONMENT = _both(_only_while("beats", OpKind.SUM, OpKind.MAX), _reducer_environment,
                             _op_ends(may=lambda env: ~env.part.beats.valid))


def _pass_one_for_one(source, sink):
    """Every beat taken on ``source`` leaves on ``sink`` in the same cycle."""
    def promises(env):
        taken, sent = getattr(env.part, source), getattr(env.part, sink)
        count_transfers(env.m, sink, taken.valid & taken.ready, sent.valid & sent.ready, 0)
    return promises


def _write_back_environment(env):
    """A compute op ends exactly with the write-back's ``done``; results come only while a
    compute op runs, which has at least one output word and pixel."""
    part = env.part
    compute = is_compute(part.control.op.kind)
    return [*_op_ends(may=lambda env: ~compute | part.done,
                      must=lambda env: compute & part.done)(env),
            *_only_while("results", OpKind.GEMM, OpKind.SUM, OpKind.MAX)(env),
            *_outputs_exist(env)]


def _write_back_promises(env):
    """Each result taken is written once, in its cycle, and the op is done with the
    ``out_words · out_pixels``-th."""
    m, part = env.m, env.part
    op = part.control.op
    taken = part.results.valid & part.results.ready
    m.d.comb += Assert(part.write.en == taken, "a result taken but not written, or not taken")
    written = _per_op(env, "written", taken)
    # `written` counts in as many bits as the data memory's words need (it wraps there)
    m.d.comb += Assert(part.written == written[:len(part.written)],
                       "written differs from the results taken")
    total = op.out_words * op.out_pixels
    compute = env.running & is_compute(op.kind)
    m.d.comb += [Assert(~compute | (written < total), "more results than outputs"),
                 Assert(part.done == (taken & compute & (written + 1 == total)),
                        "done not with the last output")]
    tiles, pixels = _registers(env.fragment, "write_tiles_left", "write_pixels_left")
    m.d.comb += Assert(~compute | _counted(op, written, tiles, pixels))


def _counted(op, done, tiles, pixels):
    """``output_counters``' down-counters (``tiles`` and ``pixels`` left after the current
    output) agree with ``done`` outputs so far, and are within the op's counts."""
    return ((done + tiles * op.out_pixels + pixels + 1 == op.out_words * op.out_pixels)
            & (tiles < op.out_words) & (pixels < op.out_pixels))


def _table_promises(env):
    """One vector out per vector in, held in the register stage."""
    part = env.part
    count_transfers(env.m, "vectors", part.results.valid & part.results.ready,
                    part.out.valid & part.out.ready, 1, held_is=part.out.valid)


def _memories_promises(answers, fetching, answering):
    """A descriptor per fetch and ``answers`` side answers per side request; inside, a
    fetch whose descriptor is being read or offered (``fetching(env)``), a request being
    answered (``answering(env)``: the answers still to send)."""
    def promises(env):
        part = env.part
        count_transfers(env.m, "descriptors", part.fetch.valid & part.fetch.ready,
                        part.descriptor.valid & part.descriptor.ready, 1,
                        held_is=fetching(env))
        count_transfers(env.m, "side_words",
                        Mux(part.side.valid & part.side.ready, answers, 0),
                        part.side_words.valid & part.side_words.ready, answers,
                        held_is=answering(env))
    return promises


def _narrow_promises(env):
    """The narrow memories' counts (per channel: ``width`` answers a request, the answers
    left being ``width − channel``), and invariants of their gathering: a word is offered
    only once gathered, and the side answer's rows are gathered only while it loads."""
    part = env.part
    answers = len(part.operand.data) // len(part.side_words.payload.channels)
    fetching, loading, gathering, pending, channel = _registers(
        env.fragment, "fetch_gathering", "loading", "gathering", "pending", "channel")
    _memories_promises(
        answers, lambda env: part.descriptor.valid | fetching,
        lambda env: Mux(part.side_words.valid | loading, answers - channel, 0))(env)
    env.m.d.comb += [Assert(~(part.descriptor.valid & fetching)),
                     Assert(~(part.side_words.valid & loading)),
                     Assert(~(gathering | pending) | loading),
                     Assert(channel < answers)]


def _array_takes(env):
    """The MAC array's side of ``act`` and ``weights``: it takes a beat whole, both
    halves together when it has credit (``act.ready = weights.valid & credit``,
    ``weights.ready = act.valid & credit``, hw/mac_array.py), the credit free."""
    part, credit = env.part, AnySeq(1)
    return [Assume(part.act.ready == (part.weights.valid & credit)),
            Assume(part.weights.ready == (part.act.valid & credit))]


def _codebook_path_environment(env):
    """The beat walk's GEMM beats: ``beat_act``, ``beat_weights`` and ``beat_codes`` one beat
    (valid together, paced in ``PartProperties``), only in a GEMM; codebook words only in
    an SYQ GEMM, and no other op has a codebook mode; the op ends once nothing waits in the path (the reload request and the
    table words are used before the op's beats, so before its end); the array takes beats
    whole."""
    part = env.part
    op = part.control.op
    syq = (op.kind == OpKind.GEMM) & (op.codebook != CodebookMode.DENSE)
    busy = Cat(*_registers(env.fragment, "loading", "drop", "have")).any()
    return [*_only_while("beat_act", OpKind.GEMM)(env),
            Assume(~part.beat_codebooks.valid | (env.running & syq)),
            # the compiler's descriptors: codebooks only in GEMMs (the path reads the mode
            # alone; the beat walk also checks the kind)
            Assume((op.codebook == CodebookMode.DENSE) | (op.kind == OpKind.GEMM)),
            *_op_ends(may=lambda env: _idle(part.act) & _idle(part.weights) & ~busy &
                      ~part.beat_act.valid & ~part.beat_codebooks.valid)(env),
            *_array_takes(env)]


def _codebook_path_promises(env):
    """Invariants: the path's registers (and the decoder's output register, ``full``) hold
    a beat, a reload or table words only while an SYQ GEMM runs."""
    op = env.part.control.op
    syq = env.running & (op.kind == OpKind.GEMM) & (op.codebook != CodebookMode.DENSE)
    env.m.d.comb += [Assert(~register | syq) for register in _registers(
        env.fragment, "held_valid", "loading", "drop", "have", "full")]
    # a beat's halves are marked taken only while the beat is still offered, never both
    act_taken, codes_taken = _registers(env.fragment, "act_taken", "codes_taken")
    env.m.d.comb += [Assert(~(act_taken | codes_taken) | (env.part.beat_act.valid & syq)),
                     Assert(~(act_taken & codes_taken))]


def _beat_walk_holds(env):
    """The beat walk's registers that say it has beats to send: what is left, its address
    stages (``walk_stages`` of them) and its memory stage."""
    assigned = {signal.name for signal in _assigned(env.fragment)}
    stages = [f"address_{cut}_valid" for cut in range(3) if f"address_{cut}_valid" in assigned]
    return ["left", *stages, "valid"]


def _beat_walk_promises(env):
    """Invariants: the walk and its stages hold beats only while the op runs, codebook
    words only in an SYQ GEMM; ``done`` only once all of them are empty."""
    holds = _beat_walk_holds(env)
    _walk_runs(*holds)(env)
    env.m.d.comb += Assert(~env.part.done | (env.running
                                             & ~Cat(*_registers(env.fragment, *holds)).any()),
                           "done with a beat left")
    if "codebooks" in env.part.signature.members:
        op = env.part.control.op
        syq = env.running & (op.kind == OpKind.GEMM) & (op.codebook != CodebookMode.DENSE)
        left, is_codebook = _registers(env.fragment, "codebook_words_left", "is_codebook")
        env.m.d.comb += [Assert(~is_codebook | syq), Assert((left == 0) | syq)]


def _store_part_promises(env):
    """Every result taken leaves to the write-back in its cycle and, in an op with
    ``store``, on ``outputs`` too."""
    part = env.part
    _pass_one_for_one("results", "out")(env)
    count_transfers(env.m, "outputs",
                    part.results.valid & part.results.ready & part.control.op.store,
                    part.outputs.valid & part.outputs.ready, 0)


#: name → (environment, promises, pace) of each part, for ``proofs``.
PART_SPECS = {
    "sequencer": (None, _sequencer_promises, None),
    "loader": (_loader_environment, _loader_promises, None),
    "storer": (_op_ends(may=lambda env: ~_kind(env, OpKind.STORE) | env.part.done,
                        must=lambda env: _kind(env, OpKind.STORE) & env.part.done),
               _storer_promises, None),
    "beat_walk": (lambda env: _walk_finished(*_beat_walk_holds(env))(env), _beat_walk_promises,
                  {"weights": "act", "codes": "act"}),
    "output_walk": (_both(_walk_finished("left"), _outputs_exist, _hold_only_falls),
                    _output_walk_promises, None),
    "reducer": (_REDUCER_ENVIRONMENT, _reducer_promises, None),
    "staged_reducer": (_REDUCER_ENVIRONMENT, _staged_reducer_promises, None),
    "param_feed": (_both(_only_while("words", OpKind.GEMM, OpKind.SUM, OpKind.MAX),
                         _op_ends(may=lambda env: _idle(env.part.params))),
                   _pass_one_for_one("words", "params"), None),
    "write_back": (_write_back_environment, _write_back_promises, None),
    "act_outlier_store": (_both(_only_while("results", OpKind.GEMM, OpKind.SUM, OpKind.MAX),
                                _op_ends(may=lambda env: _idle(env.part.dense))),
                          _pass_one_for_one("results", "dense"), None),
    # a copying op ends with its last copy, so with no result in flight; the write-back
    # takes every result of a copying op in its cycle (its ready is the op's
    # writes_results), so the fork's side to it never waits on the requantizer's
    "copy_part": (_both(_only_while("results", OpKind.GEMM, OpKind.SUM, OpKind.MAX),
                        _op_ends(may=lambda env: _idle(env.part.out)),
                        lambda env: [Assume(~env.part.control.op.copy | env.part.out.ready,
                                            "the write-back waits")]),
                  _pass_one_for_one("results", "out"), None),
    # the same fork to the core's outputs (a fused STORE), under the same assumption
    "store_part": (_both(_only_while("results", OpKind.GEMM, OpKind.SUM, OpKind.MAX),
                         _op_ends(may=lambda env: _idle(env.part.out)
                                  & _idle(env.part.outputs)),
                         lambda env: [Assume(~env.part.control.op.store | env.part.out.ready,
                                             "the write-back waits")]),
                   _store_part_promises, None),
    "table_part": (None, _table_promises, None),
    "codebook_path": (_codebook_path_environment, _codebook_path_promises,
                      {"beat_weights": "beat_act", "beat_codes": "beat_act"}),
    "wide_memories": (None, _memories_promises(
        1, lambda env: env.part.descriptor.valid, lambda env: env.part.side_words.valid),
        None),
    "narrow_memories": (None, _narrow_promises, None),
}
