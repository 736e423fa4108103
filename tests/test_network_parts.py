"""Each part of the network core (hw/network/) on Amaranth's simulator, against what
docs/network.md §15 says it does: the sequencer's op order, LOAD and STORE, the beat and
output walks' orders and addresses, the reducer's window sums and maxima, the parameter
feed, the write-back, and the two memory variants, which answer alike."""

import dataclasses
import random

import pytest
from amaranth.hdl import *
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from olmac.hw.network import (BeatWalk, Loader, NarrowMemories, NetworkCore, OpDescriptor,
                              OpKind, OutputWalk, ParamFeed, Reducer, Sequencer, Storer,
                              StorePart, WideMemories, WriteBack)

pytestmark = pytest.mark.filterwarnings("error")

WIDTH = 2
CONFIG = NetworkCore.Config(width=WIDTH, act_bits=4, weight_bits=4, max_k=8, data_depth=64,
                            weight_depth=32, param_depth=8, program_depth=4)
DESCRIPTOR = CONFIG.layouts["program"]
WORD = CONFIG.layouts["data"]
# a core with a background loader: its descriptors have `fetch_next` and `store`
PREFETCHING = dataclasses.replace(CONFIG, packed_depth=8, prefetch=True)


def _op(config=CONFIG, **fields):
    return config.layouts["program"].const(fields)


class _Harness(Elaboratable):
    """``dut`` with memories (name → (shape, contents)) whose read or write ports are
    connected to its members of the same names."""

    def __init__(self, dut, **memories):
        self.dut = dut
        self._memories = memories

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()  # a purely combinational part has none of its own
        m.submodules.dut = self.dut
        for name, (shape, contents, kind) in self._memories.items():
            depth = 1 << len(getattr(self.dut, name).addr)
            m.submodules[name] = memory = Memory(shape=Shape.cast(shape).width, depth=depth,
                                                 init=contents)
            port = memory.read_port() if kind == "read" else memory.write_port()
            wiring.connect(m, getattr(self.dut, name), port)
        return m


def _simulate(top, *benches):
    sim = Simulator(top if isinstance(top, _Harness) else _Harness(top))
    sim.add_clock(1e-6)
    for bench in benches[:-1]:
        sim.add_testbench(bench, background=True)
    sim.add_testbench(benches[-1])
    sim.run()


async def _run(ctx, control, op):
    """Announce ``op`` as the sequencer does: ``start`` for one cycle, then ``running``."""
    ctx.set(control.op, op)
    ctx.set(control.start, 1)
    await ctx.tick()
    ctx.set(control.start, 0)
    ctx.set(control.running, 1)


async def _take(ctx, port, count, *, pause=0.3, seed=1, until=None):
    """``count`` payloads of the stream ``port``, with ``ready`` dropped at random."""
    rng = random.Random(seed)
    taken = []
    while len(taken) < count:
        ready = rng.random() >= pause
        ctx.set(port.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if ready and valid:
            taken.append(payload)
    ctx.set(port.ready, 0)
    return taken


async def _send(ctx, port, payloads, *, pause=0.3, seed=2):
    rng = random.Random(seed)
    for payload in payloads:
        while rng.random() < pause:
            await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(port.payload, payload)
        await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)


def _sequencer_memories(dut, program, fetched):
    """The program memory's side of the sequencer: each fetched descriptor offered until
    taken."""
    async def memories(ctx):
        ctx.set(dut.fetch.ready, 1)
        async for _, _, fetching, address, taken in ctx.tick().sample(
                dut.fetch.valid & dut.fetch.ready, dut.fetch.payload, dut.descriptor.ready):
            if taken:
                ctx.set(dut.descriptor.valid, 0)
                ctx.set(dut.fetch.ready, 1)
            if fetching:
                fetched.append(address)
                ctx.set(dut.fetch.ready, 0)
                ctx.set(dut.descriptor.payload, program[address])
                ctx.set(dut.descriptor.valid, 1)
    return memories


def _sequencer_back(dut, cycles, backs):
    """The write-back: each op the back starts (its kind recorded in ``backs``) is done
    ``cycles`` cycles later."""
    async def back(ctx):
        left = None     # cycles until the back's op is done (no await in the loop's body)
        async for _, _, starting, running, kind in ctx.tick().sample(
                dut.back.start, dut.back.running, dut.back.op.kind):
            ctx.set(dut.back_done, 0)
            if starting:
                backs.append(kind)
                left = cycles
            elif left is not None:
                assert running
                left -= 1
                if not left:
                    ctx.set(dut.back_done, 1)
                    left = None
    return back


def test_sequencer_runs_ops_in_order_and_wraps_after_final():
    """§15: ops run in order, each announced by one ``start`` cycle; after the op marked
    ``final`` the core starts again at op 0; a restart (which comes only in a ``LOAD``)
    goes to op 0 at once. A GEMM's back starts after its front; the STORE, which has no
    back, waits until the back is done."""
    dut = Sequencer(CONFIG)
    program = [_op(kind=OpKind.LOAD), _op(kind=OpKind.GEMM), _op(kind=OpKind.STORE, final=1)]
    fetched, backs = [], []

    async def bench(ctx):
        for _ in range(4):
            await ctx.tick().until(dut.control.start)  # returns after that edge
            assert ctx.get(dut.control.running) and not ctx.get(dut.control.start)
            if ctx.get(dut.op_index) == 2:
                assert not ctx.get(dut.back.running) and not ctx.get(dut.back.start)
            await ctx.tick().repeat(3)
            assert ctx.get(dut.control.running)
            if len(fetched) == 4:
                ctx.set(dut.restart, 1)
            else:
                ctx.set(dut.done, 1)
            await ctx.tick()
            ctx.set(dut.done, 0)
            ctx.set(dut.restart, 0)
        await ctx.tick().until(dut.control.start)
        assert ctx.get(dut.op_index) == 0

    _simulate(dut, _sequencer_memories(dut, program, fetched), _sequencer_back(dut, 9, backs),
              bench)
    assert fetched == [0, 1, 2, 0, 0]
    assert backs == [OpKind.GEMM]


class _SequencerOnMemories(Elaboratable):
    """A :class:`Sequencer` fetching from :class:`WideMemories` holding ``program``; a
    ``load`` beat of the memories that writes the program tells the sequencer, as the core
    does."""

    def __init__(self, config, program):
        self.sequencer = Sequencer(config)
        self.memories = WideMemories(config, {"program": program})
        self._ahead = config.fetch_ahead

    def elaborate(self, platform):
        m = Module()
        m.submodules.sequencer = sequencer = self.sequencer
        m.submodules.memories = memories = self.memories
        wiring.connect(m, sequencer.fetch, memories.fetch)
        wiring.connect(m, memories.descriptor, sequencer.descriptor)
        if self._ahead:
            load = memories.load
            m.d.comb += sequencer.program_written.eq(
                load.valid & (load.payload.memory == NetworkCore.Memory.PROGRAM))
        return m


def _sequencer_starts(config, program, *, rewrite, restart_in_round, rounds):
    """Runs ``program`` ``rounds`` times on a :class:`Sequencer` with wide memories: each
    op's front is done 3 cycles after its start, each back op 5 cycles after its start;
    ``rewrite`` (address, descriptor) is written into the program memory in the second
    cycle of the first op, and the first op of round ``restart_in_round`` ends with a
    restart instead. Returns every start, ``(cycle, "front" or "back", op index or None,
    out_base)``."""
    top = _SequencerOnMemories(config, program)
    dut, memories = top.sequencer, top.memories
    starts = []

    async def bench(ctx):
        front_left = back_left = None
        rounds_begun = 0
        for cycle in range(40 * rounds):
            for port in (dut.done, dut.back_done, dut.restart, memories.load.valid):
                ctx.set(port, 0)
            if ctx.get(dut.control.start):
                index = ctx.get(dut.op_index)
                starts.append((cycle, "front", index, ctx.get(dut.control.op.out_base)))
                rounds_begun += index == 0
                if rounds_begun > rounds:
                    break
                front_left = 3
            elif front_left is not None:
                front_left -= 1
                if front_left == 1 and rounds_begun == 1 and ctx.get(dut.op_index) == 0:
                    address, descriptor = rewrite
                    ctx.set(memories.load.payload, config.load_beats(
                        NetworkCore.Memory.PROGRAM, address, descriptor.as_value().value)[0])
                    ctx.set(memories.load.valid, 1)
                if not front_left:
                    front_left = None
                    if rounds_begun == restart_in_round and ctx.get(dut.op_index) == 0:
                        ctx.set(dut.restart, 1)
                    else:
                        ctx.set(dut.done, 1)
            if ctx.get(dut.back.start):
                starts.append((cycle, "back", None, ctx.get(dut.back.op.out_base)))
                back_left = 5
            elif back_left is not None:
                back_left -= 1
                if not back_left:
                    back_left = None
                    ctx.set(dut.back_done, 1)
            await ctx.tick()

    _simulate(top, bench)
    return starts


def test_sequencer_fetching_ahead_keeps_ops_one_cycle_apart():
    """With ``fetch_ahead`` (the front's descriptor read while the op before runs) every op
    and every back op starts one cycle later than when the descriptor is read as the op
    before is let go (the first read after reset), and two more after a restart (the reads
    go back to op 0); an op whose descriptor is rewritten while the op before runs runs as
    rewritten."""
    program = [_op(kind=OpKind.LOAD, quantize=1, out_base=1),
               _op(kind=OpKind.GEMM, out_base=2),
               _op(kind=OpKind.SUM, overlap=1, out_base=3),
               _op(kind=OpKind.STORE, overlap=1, final=1)]
    # op 1, whose descriptor is read already when it is rewritten
    rewrite = (1, _op(kind=OpKind.GEMM, out_base=7))
    runs = {ahead: _sequencer_starts(
                dataclasses.replace(CONFIG, fetch_ahead=ahead),
                [op.as_value().value for op in program], rewrite=rewrite, restart_in_round=2,
                rounds=3)
            for ahead in (False, True)}
    on_release, ahead = runs[False], runs[True]
    # the restarted round's op 0 is the second one; the third begins after the restart
    after_restart = [n for n, (_, part, index, _) in enumerate(on_release)
                     if part == "front" and index == 0][2]
    assert [start[1:] for start in ahead] == [start[1:] for start in on_release]
    assert [cycle for cycle, *_ in ahead] == [
        cycle + (1 if n < after_restart else 3) for n, (cycle, *_) in enumerate(on_release)]
    assert [out_base for _, part, index, out_base in ahead if part == "front"] \
        == [1, 7, 3, 0, 1, 1, 7, 3, 0, 1]


def test_sequencer_overlaps_the_back_of_the_op_before():
    """An op with ``overlap`` starts while the back still writes the op before (``fenced``
    until the back takes it, a copy of its descriptor); its front, once done, waits for
    that; an op without ``overlap`` waits until the back is free."""
    dut = Sequencer(CONFIG)
    program = [_op(kind=OpKind.GEMM, out_base=1), _op(kind=OpKind.SUM, overlap=1, out_base=2),
               _op(kind=OpKind.GEMM, out_base=3, final=1)]
    fetched, backs = [], []

    async def bench(ctx):
        await ctx.tick().until(dut.control.start)
        ctx.set(dut.done, 1)          # the first op's front ends at once
        await ctx.tick()
        ctx.set(dut.done, 0)
        await ctx.tick().until(dut.control.start)
        # the SUM runs while the back writes the GEMM
        assert ctx.get(dut.op_index) == 1 and ctx.get(dut.fenced)
        assert ctx.get(dut.back.running) and ctx.get(dut.back.op.out_base) == 1
        ctx.set(dut.done, 1)
        await ctx.tick()
        ctx.set(dut.done, 0)
        # its front is done, its descriptor held until the back takes it
        assert not ctx.get(dut.control.running) and ctx.get(dut.fenced)
        await ctx.tick().until(dut.back.start)
        assert ctx.get(dut.back.op.out_base) == 2 and not ctx.get(dut.fenced)
        await ctx.tick().until(dut.control.start)
        # the last op has no overlap: it starts once the back is done with the SUM
        assert ctx.get(dut.op_index) == 2 and ctx.get(dut.back.start)
        assert ctx.get(dut.back.op.out_base) == 3
        assert backs == [OpKind.GEMM, OpKind.SUM]

    _simulate(dut, _sequencer_memories(dut, program, fetched), _sequencer_back(dut, 9, backs),
              bench)


def test_sequencer_starts_a_claimed_load_and_the_op_after_beside_the_back():
    """With a background loader (§15, prefetch): a ``LOAD`` whose words came in the
    background starts while the back still writes the program's last op and goes to no
    back, and the op after it starts at once, queued for the back but not fenced (it reads
    only the ``LOAD``'s words); the first image's ``LOAD``, not claimed, waits for the
    back to be idle, and the op after it is fenced behind the ``LOAD``'s writes."""
    dut = Sequencer(PREFETCHING)
    program = [_op(PREFETCHING, kind=OpKind.LOAD, quantize=1, out_base=1),
               _op(PREFETCHING, kind=OpKind.GEMM, overlap=1, out_base=2),
               _op(PREFETCHING, kind=OpKind.GEMM, overlap=1, out_base=3, store=1, final=1)]
    fetched, backs = [], []

    async def end_front(ctx):
        ctx.set(dut.done, 1)
        await ctx.tick()
        ctx.set(dut.done, 0)

    async def bench(ctx):
        await ctx.tick().until(dut.control.start)   # the first image's LOAD
        await end_front(ctx)
        await ctx.tick().until(dut.control.start)
        assert ctx.get(dut.op_index) == 1 and ctx.get(dut.queued) and ctx.get(dut.fenced)
        await end_front(ctx)
        await ctx.tick().until(dut.control.start)
        assert ctx.get(dut.op_index) == 2
        await end_front(ctx)
        # the next image's words have come in the background: the LOAD is claimed from
        # its start (the prefetcher's `claimed` holds in its start cycle)
        ctx.set(dut.load_claimable, 1)
        ctx.set(dut.prefetched, 1)
        await ctx.tick().until(dut.control.start)
        assert ctx.get(dut.op_index) == 0 and ctx.get(dut.back.running)
        assert ctx.get(dut.back.op.out_base) == 3
        await end_front(ctx)
        ctx.set(dut.prefetched, 0)
        ctx.set(dut.load_claimable, 0)
        await ctx.tick().until(dut.control.start)
        assert ctx.get(dut.op_index) == 1 and ctx.get(dut.back.running)
        assert ctx.get(dut.back.op.out_base) == 3
        assert ctx.get(dut.queued) and not ctx.get(dut.fenced)
        await ctx.tick().until(dut.back.start)
        assert ctx.get(dut.back.op.out_base) == 2

    _simulate(dut, _sequencer_memories(dut, program, fetched), _sequencer_back(dut, 9, backs),
              bench)
    # (the claimed LOAD went to no back)
    assert backs == [OpKind.LOAD, OpKind.GEMM, OpKind.GEMM, OpKind.GEMM]


def test_loader_writes_inputs_and_passes_load_beats_between_them():
    """``LOAD``: ``count`` input words to the activation memory from ``out_base``, done with
    the last; ``load`` beats pass only while ``inputs`` offers nothing, and a ``RESTART``
    beat becomes ``restart``, not a write."""
    dut = Loader(CONFIG)
    words = [[1, 2], [3, 4], [5, 6]]
    writes = []
    restarts = []

    async def watch(ctx):
        async for _, _, en, addr, value, restart in ctx.tick().sample(
                dut.write.en, dut.write.addr, dut.write.data, dut.restart):
            if en:
                writes.append((addr, list(value)))
            restarts.append(restart)

    async def bench(ctx):
        ctx.set(dut.writes.ready, 1)
        await _run(ctx, dut.control, _op(kind=OpKind.LOAD, out_base=10, count=3))
        ctx.set(dut.load.valid, 1)
        ctx.set(dut.load.payload, {"memory": NetworkCore.Memory.WEIGHTS, "address": 5,
                                   "word": 77})
        ctx.set(dut.inputs.valid, 1)
        ctx.set(dut.inputs.payload, words[0])
        assert not ctx.get(dut.writes.valid) and not ctx.get(dut.load.ready)
        for word in words:
            ctx.set(dut.inputs.payload, word)
            await ctx.tick().until(dut.inputs.ready)
        ctx.set(dut.inputs.valid, 0)
        assert ctx.get(dut.done)
        assert ctx.get(dut.writes.valid) and ctx.get(dut.writes.payload.word) == 77
        await ctx.tick()
        ctx.set(dut.load.payload.memory, NetworkCore.Memory.RESTART)
        assert not ctx.get(dut.writes.valid) and ctx.get(dut.load.ready)
        await ctx.tick()
        ctx.set(dut.load.valid, 0)
        await ctx.tick()

    _simulate(dut, watch, bench)
    assert writes == [(10, [1, 2]), (11, [3, 4]), (12, [5, 6])]
    assert sum(restarts) == 1


@pytest.mark.parametrize("in_signed", [0, 1])
def test_quantizing_loader_sends_each_word_as_a_window_under_stalls(in_signed):
    """A ``LOAD`` with ``quantize``: each of its ``count`` input words goes to ``vector`` as
    a window of one (``last`` on every beat), its slots read as ``in_signed`` says, in
    order and once each under random stalls on both sides; nothing is written, and the
    op's front is done only once its last word has been taken (its results are the
    back's)."""
    dut = Loader(CONFIG)
    words = [[1, 0xFFFF], [0x8000, 7], [3, 0x7FFF], [0xFFFE, 0]]
    writes, done = [], []

    async def watch(ctx):
        async for _, _, en, ending, taken in ctx.tick().sample(
                dut.write.en, dut.done, dut.vector.valid & dut.vector.ready):
            writes.append(en)
            done.append((ending, taken))

    async def source(ctx):
        await ctx.tick().until(dut.control.running)
        await _send(ctx, dut.inputs, words)

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=OpKind.LOAD, quantize=1, count=len(words),
                                         in_signed=in_signed))
        taken = await _take(ctx, dut.vector, len(words))
        await ctx.tick().repeat(5)
        assert not ctx.get(dut.vector.valid) and not ctx.get(dut.inputs.ready)
        sign = (lambda v: v - 0x10000 if v >= 0x8000 else v) if in_signed else (lambda v: v)
        assert [list(beat.lanes) for beat in taken] == [[sign(v) for v in word]
                                                        for word in words]
        assert all(beat.last for beat in taken)

    _simulate(dut, watch, source, bench)
    assert not any(writes)
    # done comes after the fourth word, and in no cycle before it
    first_done = [ending for ending, _ in done].index(1)
    assert sum(taken for _, taken in done[:first_done]) == len(words)


def test_quantizing_loader_takes_load_beats_only_before_its_first_word():
    """A quantizing ``LOAD`` (ended by the write-back, not by the loader) passes ``load``
    beats on while it waits for its first word, and none once a word has been taken, so
    it never ends under a memory write."""
    dut = Loader(CONFIG)
    beat = {"memory": NetworkCore.Memory.WEIGHTS, "address": 5, "word": 77}

    async def bench(ctx):
        ctx.set(dut.writes.ready, 1)
        ctx.set(dut.vector.ready, 1)
        await _run(ctx, dut.control, _op(kind=OpKind.LOAD, quantize=1, count=2))
        ctx.set(dut.load.valid, 1)
        ctx.set(dut.load.payload, beat)
        assert ctx.get(dut.writes.valid) and ctx.get(dut.load.ready)
        await ctx.tick()
        ctx.set(dut.load.valid, 0)
        ctx.set(dut.inputs.valid, 1)
        ctx.set(dut.inputs.payload, [1, 2])
        assert ctx.get(dut.inputs.ready)
        await ctx.tick()
        ctx.set(dut.inputs.valid, 0)
        ctx.set(dut.load.valid, 1)
        for _ in range(3):
            assert not ctx.get(dut.writes.valid) and not ctx.get(dut.load.ready)
            await ctx.tick()

    _simulate(dut, bench)


def test_loader_of_no_words_halts():
    """A ``LOAD`` of zero words never finishes (an empty program memory halts)."""
    dut = Loader(CONFIG)

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=OpKind.LOAD, count=0))
        for _ in range(10):
            assert not ctx.get(dut.done) and not ctx.get(dut.inputs.ready)
            await ctx.tick()

    _simulate(dut, bench)


def test_loader_holds_an_offered_write_while_words_arrive():
    """Stream rules on ``writes`` (found by the ``net_loader`` proof): a memory write once
    offered stays offered, with its payload, until it is taken, though input words arrive
    meanwhile (they are still written), and the ``LOAD`` is done only as it is taken."""
    dut = Loader(CONFIG)
    writes = []

    async def watch(ctx):
        async for _, _, en, addr in ctx.tick().sample(dut.write.en, dut.write.addr):
            if en:
                writes.append(addr)

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=OpKind.LOAD, out_base=3, count=1))
        ctx.set(dut.load.valid, 1)
        ctx.set(dut.load.payload, {"memory": NetworkCore.Memory.PARAMS, "address": 2,
                                   "word": 99})
        assert ctx.get(dut.writes.valid)
        await ctx.tick()                        # offered, not taken (a narrow memory's row)
        ctx.set(dut.inputs.valid, 1)
        ctx.set(dut.inputs.payload, [7, 8])
        for _ in range(3):
            assert ctx.get(dut.writes.valid) and ctx.get(dut.writes.payload.word) == 99
            assert not ctx.get(dut.done)
            await ctx.tick()
            ctx.set(dut.inputs.valid, 0)
        ctx.set(dut.writes.ready, 1)             # taken: the op may end with it
        assert ctx.get(dut.load.ready) and ctx.get(dut.done)
        await ctx.tick()

    _simulate(dut, watch, bench)
    assert writes == [3]


def test_storer_streams_words_with_last_under_stalls():
    """``STORE``: ``count`` words from ``in_base`` to ``outputs``, ``last`` on the final
    one, each held while ``outputs`` stalls; done once the last word has left."""
    dut = Storer(CONFIG)
    contents = [address * 0x10001 for address in range(64)]
    top = _Harness(dut, read=(WORD, contents, "read"))

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=OpKind.STORE, in_base=7, count=4))
        taken = await _take(ctx, dut.outputs, 4)
        assert [list(t.word) for t in taken] == [[a, a] for a in range(7, 11)]
        assert [t.last for t in taken] == [0, 0, 0, 1]
        await ctx.tick()
        assert ctx.get(dut.done)

    _simulate(top, bench)


@pytest.mark.parametrize("store", [1, 0])
def test_store_part_forks_each_result_to_the_outputs_under_stalls(store):
    """A fused ``STORE`` (§15, prefetch): every result vector goes on to the write-back,
    and, in an op with ``store``, also to ``outputs`` as a 16-bit word, ``last`` on the
    op's last result (2 tiles of 3 pixels); both sides stall at random, neither loses or
    repeats a vector. Without ``store`` nothing leaves on ``outputs``."""
    dut = StorePart(PREFETCHING)
    results = [[tile * 10 + pixel - 3, -1 - pixel] for tile in range(2) for pixel in range(3)]
    taken = {}

    async def writes(ctx):
        taken["out"] = await _take(ctx, dut.out, len(results), seed=5)

    async def outputs(ctx):
        taken["outputs"] = await _take(ctx, dut.outputs, len(results) if store else 0, seed=6)
        if not store:
            async for _, _, valid in ctx.tick().sample(dut.outputs.valid):
                assert not valid

    async def bench(ctx):
        await _run(ctx, dut.control, _op(PREFETCHING, kind=OpKind.GEMM, out_words=2,
                                         out_pixels=3, store=store))
        await _send(ctx, dut.results, results)
        await ctx.tick().repeat(20)

    _simulate(dut, outputs, writes, bench)
    assert [list(vector) for vector in taken["out"]] == results
    assert [list(word.word) for word in taken["outputs"]] == (
        [[value & 0xFFFF for value in vector] for vector in results] if store else [])
    assert [word.last for word in taken["outputs"]] == ([0] * 5 + [1] if store else [])


def _beat_walk(in_signed=0, stages=0):
    dut = BeatWalk(dataclasses.replace(CONFIG, walk_stages=stages))
    # slot l of word a holds a + 16·l (and a signed pattern when asked)
    contents = [sum(((a + 16 * l) | (0xFF00 if in_signed else 0)) << (16 * l)
                    for l in range(WIDTH)) for a in range(64)]
    top = _Harness(dut, operand=(WORD, contents, "read"),
                   weights_read=(CONFIG.layouts["weights"], list(range(100, 132)), "read"))
    return dut, top


def _expected_beats(op, gemm):
    """The beats of §15's loop order: tile, (oy, ox), (ky, kx), ci (GEMM only: the tile's
    band, ``band_words`` words from ``tile·band_step``), each as (activation word address
    or None when padded, weight address, last)."""
    beats = []
    for tile in range(op["out_words"]):
        band = range(tile * op["band_step"], tile * op["band_step"] + op["band_words"])
        for oy in range(op["out_h"]):
            for ox in range(op["out_w"]):
                taps = [(ky, kx, ci) for ky in range(op["kernel_h"])
                        for kx in range(op["kernel_w"])
                        for ci in (band if gemm else [None])]
                for index, (ky, kx, ci) in enumerate(taps):
                    iy = oy * op["stride_h"] + ky - op["pad_h"]
                    ix = ox * op["stride_w"] + kx - op["pad_w"]
                    inside = 0 <= iy < op["in_h"] and 0 <= ix < op["in_w"]
                    address = (op["in_base"] + (iy * op["in_w"] + ix) * op["in_words"]
                               + (ci if gemm else tile)) if inside else None
                    beats.append((address, op["weight_base"] + tile * len(taps) + index,
                                  int(index == len(taps) - 1)))
    return beats


_WINDOW = dict(in_base=3, in_h=3, in_w=3, in_words=2, band_words=2, band_step=0, out_h=2,
               out_w=2, out_words=2, kernel_h=2, kernel_w=3, stride_h=2, stride_w=1, pad_h=1,
               pad_w=1, weight_base=4)


@pytest.mark.parametrize("stages", [0, 1, 3])
@pytest.mark.parametrize("band", [(2, 0), (1, 1)], ids=["dense", "band"])
def test_beat_walk_gemm_order_padding_and_weights(band, stages):
    """A GEMM's beats follow §15's loop order; a padded tap's activations are 0; the
    weight pointer steps per beat, returns to the tile's first word after each pixel and
    moves on after the tile's last pixel; ``last`` closes each output. With a band of one
    word a tile stepping one word (a depthwise convolution's) tile ``t`` reads word ``t``
    of each 2-word pixel only. The same beats, none lost or repeated, with the address
    register stages (``walk_stages``) and with the operand port lent away (``granted``
    low) at random while the array stalls at random."""
    window = {**_WINDOW, "band_words": band[0], "band_step": band[1]}
    dut, top = _beat_walk(stages=stages)
    expected = _expected_beats(window, gemm=True)
    if band == (1, 1):  # the band from the loop order above, written out for tile 1
        assert [a for a, _, _ in expected[len(expected) // 2:]][:6] == [
            None, None, None, None, 3 + 1, 3 + 2 + 1]

    async def lend(ctx):
        rng = random.Random(3)
        while True:
            ctx.set(dut.granted, rng.random() >= 0.2)
            await ctx.tick()

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=OpKind.GEMM, **window))
        taken = await _take(ctx, dut.act, len(expected))
        got = [(list(t.data), t.last) for t in taken]
        want = [([0] * WIDTH if a is None else [(a + 16 * l) & 0xF for l in range(WIDTH)],
                 last) for a, _, last in expected]
        assert got == want
        await ctx.tick().repeat(3)
        assert not ctx.get(dut.act.valid)
        assert ctx.get(dut.gemm_beats) == len(expected)

    seen = []

    async def weight_order(ctx):
        async for _, _, valid, ready, weight in ctx.tick().sample(
                dut.weights.valid, dut.act.ready, Value.cast(dut.weights.payload)):
            if valid and ready:
                seen.append(weight)
            if len(seen) == len(expected):
                break

    _simulate(top, lend, weight_order, bench)
    assert seen == [100 + w for _, w, _ in expected]


@pytest.mark.parametrize("in_signed, stages", [(0, 0), (1, 0), (1, 2)])
def test_beat_walk_vector_reads_the_tiles_own_word(in_signed, stages):
    """A SUM/MAX beat reads the input word of its own ``tile`` (no ``ci`` loop), its lanes
    as 16-bit signed or unsigned values by ``in_signed``, zero under padding; nothing goes
    to the array (also with address register stages)."""
    dut, top = _beat_walk(in_signed, stages)
    expected = _expected_beats(_WINDOW, gemm=False)

    async def bench(ctx):
        ctx.set(dut.granted, 1)
        await _run(ctx, dut.control, _op(kind=OpKind.SUM, in_signed=in_signed, **_WINDOW))
        taken = await _take(ctx, dut.vector, len(expected))
        slot = (lambda a, l: (a + 16 * l) - 0x10000 + 0xFF00 if in_signed else a + 16 * l)
        want = [([0] * WIDTH if a is None else [slot(a, l) for l in range(WIDTH)], last)
                for a, _, last in expected]
        assert [(list(t.lanes), t.last) for t in taken] == want
        assert ctx.get(dut.gemm_beats) == 0

    _simulate(top, bench)


@pytest.mark.parametrize("stages", [0, 3])
def test_beat_walk_waits_while_not_granted(stages):
    """While the memories lend the operand port elsewhere, no beat is read."""
    dut, top = _beat_walk(stages=stages)

    async def bench(ctx):
        ctx.set(dut.granted, 0)
        ctx.set(dut.vector.ready, 1)
        await _run(ctx, dut.control, _op(kind=OpKind.SUM, **_WINDOW))
        for _ in range(5):
            assert not ctx.get(dut.vector.valid)
            await ctx.tick()
        ctx.set(dut.granted, 1)
        await ctx.tick().repeat(2 + stages)
        assert ctx.get(dut.vector.valid)

    _simulate(top, bench)


def test_beat_walk_reads_beat_b_once_b_plus_lead_results_are_written():
    """§15, overlap: while ``fenced`` beat ``b`` (padded taps counted) is read only once the
    back has written ``b + lead`` results (``written``), and in the first cycle it may be;
    the beats come in order, unchanged; once the fence drops the rest follow one a cycle."""
    dut, top = _beat_walk()
    expected = _expected_beats(_WINDOW, gemm=False)
    lead, reads = 3, []     # reads: (beat, written and fenced in the cycle it was read)

    async def bench(ctx):
        ctx.set(dut.granted, 1)
        ctx.set(dut.fenced, 1)
        ctx.set(dut.vector.ready, 1)
        await _run(ctx, dut.control, _op(kind=OpKind.SUM, lead=lead, **_WINDOW))
        written, fenced, before, taken = 0, 1, (0, 1), []
        for cycle in range(200):
            if len(taken) == len(expected):
                break
            if len(taken) == len(expected) // 2:
                fenced = 0      # the back has taken this op: no more waiting
            elif fenced and cycle % 3 == 2:
                written += 1    # the op before writes a result every third cycle
            ctx.set(dut.fenced, fenced)
            ctx.set(dut.written, written)
            _, _, valid, payload = await ctx.tick().sample(dut.vector.valid,
                                                           dut.vector.payload)
            if valid:           # read in the cycle before
                reads.append((len(taken), *before))
                taken.append(payload)
            before = (written, fenced)
        want = [([0] * WIDTH if a is None else [a + 16 * l for l in range(WIDTH)], last)
                for a, _, last in expected]
        assert [(list(t.lanes), t.last) for t in taken] == want

    _simulate(top, bench)
    fenced_reads = [(beat, written) for beat, written, fenced in reads if fenced]
    assert fenced_reads and all(written >= beat + lead for beat, written in fenced_reads)
    # not stricter than that: each fenced beat was read as soon as it was allowed
    assert all(written == beat + lead for beat, written in fenced_reads)
    free = [beat for beat, _, fenced in reads if not fenced]
    assert len(free) >= 2 and free == list(range(free[0], len(reads)))


@pytest.mark.parametrize("kind", [OpKind.GEMM, OpKind.SUM])
def test_output_walk_requests_in_output_order(kind):
    """One request per output in the walks' order (tile, then pixel): a GEMM's parameter
    word per output tile, a SUM/MAX's one word for all; the residual word at the same
    pixel and tile of the residual value."""
    dut = OutputWalk(CONFIG)
    op = dict(out_words=3, out_pixels=4, param_base=2, res_base=20, residual=1)

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=kind, **op))
        taken = await _take(ctx, dut.requests, 12)
        want = [(2 + (tile if kind == OpKind.GEMM else 0), 20 + pixel * 3 + tile, 1)
                for tile in range(3) for pixel in range(4)]
        assert [(t.param, t.residual, t.read_residual) for t in taken] == want
        await ctx.tick()
        assert not ctx.get(dut.requests.valid)

    _simulate(dut, bench)


@pytest.mark.parametrize("stage", [False, True], ids=["", "stage"])
@pytest.mark.parametrize("kind", [OpKind.SUM, OpKind.MAX])
def test_reducer_sums_and_maxima_per_window(kind, stage):
    """Lane-wise window sum (SUM) or maximum (MAX) over the beats up to each ``last``,
    also through the reducer's stage (``reducer_stage``)."""
    dut = Reducer(dataclasses.replace(CONFIG, reducer_stage=stage))
    rng = random.Random(5)
    windows = [[[rng.randint(-65536, 65535) for _ in range(WIDTH)]
                for _ in range(rng.randint(1, 4))] for _ in range(6)]
    beats = [{"lanes": lanes, "last": int(i == len(w) - 1)}
             for w in windows for i, lanes in enumerate(w)]
    combine = sum if kind == OpKind.SUM else max

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=kind))
        taken = await _take(ctx, dut.acc, len(windows))
        assert [list(t) for t in taken] == [[combine(b[l] for b in w) for l in range(WIDTH)]
                                            for w in windows]

    async def source(ctx):
        await ctx.tick().repeat(2)
        await _send(ctx, dut.beats, beats)

    _simulate(dut, source, bench)


def test_reducer_stage_reduces_each_beat_as_its_op_says():
    """With ``reducer_stage`` a beat is reduced as the op it came with says, though the
    front has gone on to the next op when the registered beat is added: a MAX window
    whose last beat is in the stage as a SUM starts is still a maximum."""
    dut = Reducer(dataclasses.replace(CONFIG, reducer_stage=True))
    results = []

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=OpKind.MAX))
        await _send(ctx, dut.beats, [{"lanes": [3, -4], "last": 0},
                                     {"lanes": [1, 6], "last": 1}], pause=0)
        ctx.set(dut.control.op, _op(kind=OpKind.SUM))
        await _send(ctx, dut.beats, [{"lanes": [3, -4], "last": 0},
                                     {"lanes": [1, 6], "last": 1}], pause=0)
        await ctx.tick().repeat(4)
        assert results == [[3, 6], [4, 2]]

    async def sink(ctx):
        ctx.set(dut.acc.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(dut.acc.valid, dut.acc.payload):
            if valid:
                results.append(list(payload))

    _simulate(dut, sink, bench)


def test_reducer_passes_the_arrays_accumulators_in_a_gemm():
    """While the back's op is a GEMM (``array_results``) the array's accumulators pass one
    for one; a window the front's SUM closes meanwhile waits, then follows them."""
    dut = Reducer(CONFIG)
    vectors = [[1, -2], [3, 4], [-5, 6]]

    async def bench(ctx):
        ctx.set(dut.array_results, 1)
        await _run(ctx, dut.control, _op(kind=OpKind.SUM))
        taken = await _take(ctx, dut.acc, len(vectors))
        assert [list(t) for t in taken] == vectors
        assert not ctx.get(dut.acc.valid)   # the window waits for the back's SUM
        ctx.set(dut.array_results, 0)
        taken = await _take(ctx, dut.acc, 1)
        assert [list(t) for t in taken] == [[7 + 1, -8 + 2]]

    async def source(ctx):
        await ctx.tick().repeat(2)
        await _send(ctx, dut.beats, [{"lanes": [7, -8], "last": 0},
                                     {"lanes": [1, 2], "last": 1}])
        await _send(ctx, dut.array, vectors)

    _simulate(dut, source, bench)


@pytest.mark.parametrize("residual,res_signed", [(0, 0), (1, 0), (1, 1)])
def test_param_feed_applies_the_ops_formats(residual, res_signed):
    """The parameter beat is the channel words with the op's ReLU flag and range; the
    residual slot is read signed or unsigned by ``res_signed``, and an op without a
    residual has ``r = M_r = t = 0``."""
    dut = ParamFeed(CONFIG)
    channel = {"bias": -7, "multiplier": 12345, "shift": 9, "residual_multiplier": -3,
               "residual_shift": 4}
    words = {"channels": [channel] * WIDTH, "residuals": [0xFFFE, 5]}

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=OpKind.GEMM, relu=1, low=0, high=15,
                                         residual=residual, res_signed=res_signed))
        ctx.set(dut.words.valid, 1)
        ctx.set(dut.words.payload, words)
        ctx.set(dut.params.ready, 1)
        assert ctx.get(dut.params.valid) and ctx.get(dut.words.ready)
        params = ctx.get(dut.params.payload)
        assert (params.relu, params.low, params.high) == (1, 0, 15)
        first = -2 if res_signed else 0xFFFE
        for col, slot in enumerate([first, 5]):
            got = params.channels[col]
            assert (got.bias, got.multiplier, got.shift) == (-7, 12345, 9)
            assert (got.residual, got.residual_multiplier, got.residual_shift) == (
                (slot, -3, 4) if residual else (0, 0, 0))

    _simulate(dut, bench)


def test_write_back_addresses_and_done():
    """Each result is written as one 16-bit-slot word at ``out_base + pixel·out_stride +
    tile``, in tile-then-pixel order (a 2-word output inside a 5-word concatenation); the
    op is done with its last write."""
    dut = WriteBack(CONFIG)
    results = [[tile * 10 + pixel, -1 - pixel] for tile in range(2) for pixel in range(3)]
    writes = []

    async def watch(ctx):
        async for _, _, en, addr, value, done in ctx.tick().sample(
                dut.write.en, dut.write.addr, dut.write.data, dut.done):
            if en:
                writes.append((addr, list(value), done))

    async def bench(ctx):
        await _run(ctx, dut.control, _op(kind=OpKind.SUM, out_base=30, out_words=2,
                                         out_pixels=3, out_stride=5))
        await _send(ctx, dut.results, results)
        await ctx.tick()

    _simulate(dut, watch, bench)
    assert writes == [(30 + pixel * 5 + tile, [(tile * 10 + pixel), (-1 - pixel) & 0xFFFF],
                       int(tile == 1 and pixel == 2))
                      for tile in range(2) for pixel in range(3)]


def _memories(variant, requantizer="parallel"):
    config = NetworkCore.Config(width=WIDTH, act_bits=4, weight_bits=4, max_k=8,
                                data_depth=16, weight_depth=4, param_depth=3,
                                program_depth=3, requantizer=requantizer, memories=variant)
    layouts = config.layouts
    program = [layouts["program"].const({"kind": OpKind.SUM, "in_base": 3 + i, "count": i,
                                         "low": -5, "high": 9}).as_value().value
               for i in range(3)]
    channels = [[{"bias": 100 * p + c, "multiplier": -c - 1, "shift": p, "residual_multiplier":
                  7, "residual_shift": c} for c in range(WIDTH)] for p in range(3)]
    params = [layouts["params"].const(word).as_value().value for word in channels]
    contents = {"program": program, "params": params}
    if variant == "narrow":
        memories = NarrowMemories(config, contents, per_channel=config.per_channel)
    else:
        memories = WideMemories(config, contents)
    return config, memories, program, channels


@pytest.mark.parametrize("variant,requantizer", [("wide", "parallel"), ("narrow", "parallel"),
                                                 ("narrow", "serial")])
def test_memories_variants_answer_alike(variant, requantizer):
    """Both variants: a fetched address answers its descriptor; a ``load`` beat rewrites a
    program or parameter word; a side request answers the parameter word and the residual
    word (per channel: one channel at a time, each with its residual slot); an activation
    write is read back on the operand port. Only the narrow variant lends that port to a
    write or a residual read (``granted`` low)."""
    config, dut, program, channels = _memories(variant, requantizer)
    layouts = config.layouts
    new_op = layouts["program"].const({"kind": OpKind.GEMM, "final": 1, "out_base": 9})
    new_channels = [{"bias": -1, "multiplier": 2, "shift": 3, "residual_multiplier": 4,
                     "residual_shift": 5}] * WIDTH

    async def fetch(ctx, address):
        await _send(ctx, dut.fetch, [address], pause=0)
        (descriptor,) = await _take(ctx, dut.descriptor, 1, pause=0)
        return descriptor

    async def side(ctx, param, residual):
        await _send(ctx, dut.side, [{"param": param, "residual": residual,
                                     "read_residual": 1}], pause=0)
        answers = await _take(ctx, dut.side_words, 1 if not config.per_channel else WIDTH)
        return ([c for a in answers for c in a.channels],
                [r for a in answers for r in a.residuals])

    async def bench(ctx):
        ctx.set(dut.operand.en, 1)
        for address in (2, 0):
            descriptor = await fetch(ctx, address)
            assert descriptor.as_value().value == program[address]
        ctx.set(dut.write.addr, 6)
        ctx.set(dut.write.data, [0x1234, 0xFEDC])
        ctx.set(dut.write.en, 1)
        await ctx.tick()
        ctx.set(dut.write.en, 0)
        got, residuals = await side(ctx, 1, 6)
        assert [{k: getattr(c, k) for k in new_channels[0]} for c in got] == channels[1]
        assert residuals == [0x1234, 0xFEDC]
        ctx.set(dut.operand.addr, 6)
        await ctx.tick().repeat(2)
        assert ctx.get(dut.granted) and list(ctx.get(dut.operand.data)) == [0x1234, 0xFEDC]
        # narrow: each word as its 16-bit rows (config.load_beats)
        await _send(ctx, dut.load, [
            *config.load_beats(NetworkCore.Memory.PROGRAM, 1, new_op.as_value().value),
            *config.load_beats(NetworkCore.Memory.PARAMS, 2,
                               layouts["params"].const(new_channels).as_value().value)],
                    pause=0)
        assert (await fetch(ctx, 1)).as_value().value == new_op.as_value().value
        got, _ = await side(ctx, 2, 6)
        assert [{k: getattr(c, k) for k in new_channels[0]} for c in got] == new_channels

    lent = []

    async def watch(ctx):
        async for _, _, granted in ctx.tick().sample(dut.granted):
            lent.append(not granted)

    _simulate(dut, watch, bench)
    # narrow: the one write and each of the two residual reads take the one activation
    # port for a cycle (per channel: a read for each channel)
    reads = 2 * (WIDTH if config.per_channel else 1)
    assert sum(lent) == (1 + reads if variant == "narrow" else 0)


def test_narrow_memories_let_writes_go_first():
    """The narrow activation memory has one port: writes on consecutive cycles take it
    (``granted`` low) while a residual read and an operand read wait; then each reads the
    word written last at its address, and a word written over answers its new value."""
    config, dut, _program, _channels = _memories("narrow", "serial")
    words = {3: [0x0101, 0x0202], 5: [0x0303, 0x0404]}

    async def bench(ctx):
        for address, value in [(3, [9, 9]), (5, words[5]), (3, words[3])]:
            ctx.set(dut.write.addr, address)
            ctx.set(dut.write.data, value)
            ctx.set(dut.write.en, 1)
            if address == 5:
                # asked while writes go on: waits for the port
                ctx.set(dut.side.valid, 1)
                ctx.set(dut.side.payload, {"param": 0, "residual": 5, "read_residual": 1})
                ctx.set(dut.operand.addr, 3)
                ctx.set(dut.operand.en, 1)
            await ctx.tick()
            assert not ctx.get(dut.granted)
        ctx.set(dut.write.en, 0)
        ctx.set(dut.side.valid, 0)
        answers = await _take(ctx, dut.side_words, config.width, pause=0)
        assert [a.residuals[0] for a in answers] == words[5]
        await ctx.tick().until(dut.granted)
        await ctx.tick().repeat(2)
        assert list(ctx.get(dut.operand.data)) == words[3]

    _simulate(dut, bench)


@pytest.mark.parametrize("option,value,message", [
    ("requantizer", "fast", r"^requantizer must be one of 'parallel', 'serial', not 'fast'$"),
    ("memories", "tiny", r"^memories must be one of 'wide', 'narrow', not 'tiny'$"),
    ("program_depth", 65537, r"^program_depth must be an integer in 1\.\.65536, not 65537$"),
])
def test_config_refuses_bad_options(option, value, message):
    options = dict(width=WIDTH, act_bits=4, weight_bits=4, max_k=8, data_depth=16,
                   weight_depth=4, param_depth=3, program_depth=3)
    options[option] = value
    with pytest.raises(ValueError if option != "program_depth" else TypeError, match=message):
        NetworkCore.Config(**options)


def test_config_derives_layouts_without_hardware():
    """The configuration gives the memories' word layouts: an op descriptor, a weight beat
    of ``width × width`` weights, ``width`` channel words, ``width`` 16-bit slots."""
    config = NetworkCore.Config(width=3, act_bits=4, weight_bits=5, max_k=8, data_depth=16,
                                weight_depth=4, param_depth=3, program_depth=3)
    layouts = config.layouts
    assert layouts["program"] == OpDescriptor(16, 4, 3)
    assert layouts["data"] == data.ArrayLayout(unsigned(16), 3)
    assert layouts["params"].length == 3
    assert Shape.cast(layouts["weights"]).width == 3 * 3 * 5
    assert config.depths == {"data": 16, "weights": 4, "params": 3, "program": 3}
