# amaranth: UnusedElaboratable=no
"""Fast tier: each part of the network application (docs/host_link.md §6) on Amaranth's
simulator, on its own: the dispatcher, the LOAD and INFER handlers and the one-byte
commands. The expected replies are read off the protocol tables of §6; every stream idles
or stalls at random.

(The first line silences UnusedElaboratable: the validation tests build components that
are never elaborated.)
"""

import random

import pytest
from amaranth.hdl import unsigned
from amaranth.lib import data
from amaranth.sim import Simulator

from olmac.formal.mutants import EagerDispatcher
from olmac.hw.network import NetworkCore
from olmac.hw.network_app import Dispatcher, FixedCommand, InferHandler, LoadHandler
from olmac.spec import Command, Status

pytestmark = pytest.mark.filterwarnings("error")

#: Cycles after which a part that has not answered every request counts as hung.
DEADLINE = 20000


class _Host:
    """Plays the host link: sends each request byte by byte (``valid`` idling at random),
    then takes its reply up to ``last`` (``ready`` dropping at random); ``replies`` holds them
    and ``events`` a ``"reply"`` entry as each one completes."""

    def __init__(self, port, requests, events, *, seed=0):
        self._port = port
        self._requests = [bytes(request) for request in requests]
        self._events = events
        self._random = random.Random(seed)
        self.requests = len(self._requests)
        self.replies = []

    async def run(self, ctx):
        request, reply = self._port.request, self._port.reply
        for payload in self._requests:
            for index, byte in enumerate(payload):
                while self._random.random() < 0.3:
                    await ctx.tick()
                ctx.set(request.valid, 1)
                ctx.set(request.payload.data, byte)
                ctx.set(request.payload.last, index == len(payload) - 1)
                await ctx.tick().until(request.ready)
                ctx.set(request.valid, 0)
            got = bytearray()
            done = False
            while not done:
                ready = self._random.random() >= 0.3
                ctx.set(reply.ready, ready)
                _, _, valid, byte, last = await ctx.tick().sample(
                    reply.valid, reply.payload.data, reply.payload.last)
                if ready and valid:
                    got.append(byte)
                    done = bool(last)
            ctx.set(reply.ready, 0)
            self.replies.append(bytes(got))
            self._events.append("reply")


def _simulate(dut, host, *background):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in background:
        sim.add_testbench(testbench, background=True)
    sim.add_testbench(host.run)
    sim.run_until(1e-6 * DEADLINE)
    assert len(host.replies) == host.requests, f"no reply after {host.replies}"


class _Beats:
    """Takes beats from ``stream`` (``ready`` dropping at random); ``received`` holds the
    ``fields`` of each and ``events`` a ``"beat"`` entry as each one is taken."""

    def __init__(self, stream, fields, events, *, seed):
        self._stream = stream
        self._fields = fields
        self._events = events
        self._random = random.Random(seed)
        self.received = []

    async def run(self, ctx):
        payload = self._stream.payload
        while True:
            ready = self._random.random() >= 0.4
            ctx.set(self._stream.ready, ready)
            _, _, valid, *values = await ctx.tick().sample(
                self._stream.valid, *(getattr(payload, name) for name in self._fields))
            if ready and valid:
                self.received.append(tuple(values))
                self._events.append("beat")


# -- Dispatcher -------------------------------------------------------------------------------

def test_dispatcher_routes_requests_and_refuses_unknown_commands():
    """A request goes, command byte included, to the handler of its command and the
    handler's reply comes back; an unknown command byte is taken whole and answered
    BAD_COMMAND without reaching a handler."""
    dut = Dispatcher([Command.LOAD, Command.INFO])
    seen = {0: [], 1: []}

    def handler(index):
        async def run(ctx):
            # answers every request with its handler index and its length
            port = dut.handlers[index]
            ctx.set(port.request.ready, 1)
            while True:
                got = bytearray()
                while True:
                    _, _, valid, byte, last = await ctx.tick().sample(
                        port.request.valid, port.request.payload.data,
                        port.request.payload.last)
                    if valid:
                        got.append(byte)
                        if last:
                            break
                seen[index].append(bytes(got))
                ctx.set(port.request.ready, 0)
                for position, value in enumerate((index, len(got))):
                    ctx.set(port.reply.valid, 1)
                    ctx.set(port.reply.payload.data, value)
                    ctx.set(port.reply.payload.last, position == 1)
                    await ctx.tick().until(port.reply.ready)
                ctx.set(port.reply.valid, 0)
                ctx.set(port.request.ready, 1)
        return run

    requests = [[Command.INFO], [Command.LOAD, 0, 1, 0, 9], [0x7F, 1, 2], [0x00],
                [Command.INFO, 5]]
    host = _Host(dut.host, requests, [])
    _simulate(dut, host, handler(0), handler(1))
    assert host.replies == [bytes([1, 1]), bytes([0, 5]), bytes([Status.BAD_COMMAND]),
                            bytes([Status.BAD_COMMAND]), bytes([1, 2])]
    assert seen == {0: [bytes([Command.LOAD, 0, 1, 0, 9])],
                    1: [bytes([Command.INFO]), bytes([Command.INFO, 5])]}


def _early_replies(dut, requests):
    """Drives ``dut`` (a dispatcher of LOAD and INFO) with handlers that reply first: each
    sends its index as a one-byte reply as soon as a request is offered, before it takes any
    of it, then takes the request with ``ready`` dropping at random. The host sends the
    requests back to back and takes replies meanwhile. Returns the requests each handler
    took, the replies and every handler request beat withdrawn or changed while held."""
    taken = {0: [], 1: []}
    replies, broken = [], []

    def handler(index):
        async def run(ctx):
            port, rng = dut.handlers[index], random.Random(index)
            # (sampling loops, not `until`, which cannot be left when the simulation ends)
            while True:
                while not (await ctx.tick().sample(port.request.valid))[2]:
                    pass
                ctx.set(port.reply.valid, 1)
                ctx.set(port.reply.payload.data, index)
                ctx.set(port.reply.payload.last, 1)
                while not (await ctx.tick().sample(port.reply.ready))[2]:
                    pass
                ctx.set(port.reply.valid, 0)
                got = bytearray()
                while not got or not last:
                    ready = rng.random() >= 0.5
                    ctx.set(port.request.ready, ready)
                    _, _, valid, byte, last = await ctx.tick().sample(
                        port.request.valid, port.request.payload.data,
                        port.request.payload.last)
                    if ready and valid:
                        got.append(byte)
                    else:
                        last = False
                ctx.set(port.request.ready, 0)
                taken[index].append(bytes(got))
        return run

    async def watch(ctx):
        # the stream rules on every handler's request: a beat offered and not taken is
        # offered again, unchanged, in the next cycle
        ports = [port.request for port in dut.handlers]
        signals = [value for port in ports
                   for value in (port.valid, port.ready, port.payload.data, port.payload.last)]
        held = [None] * len(ports)
        while True:
            _, _, *values = await ctx.tick().sample(*signals)
            for index in range(len(ports)):
                valid, ready, *payload = values[4 * index:4 * index + 4]
                if held[index] is not None and (not valid or payload != held[index]):
                    broken.append((index, held[index], valid, payload))
                held[index] = payload if valid and not ready else None

    async def collect(ctx):
        reply = dut.host.reply
        ctx.set(reply.ready, 1)
        while True:
            _, _, valid, byte = await ctx.tick().sample(reply.valid, reply.payload.data)
            if valid:
                replies.append(byte)

    async def send(ctx):
        request, rng = dut.host.request, random.Random(2)
        for payload in requests:
            for index, byte in enumerate(payload):
                while rng.random() < 0.3:
                    await ctx.tick()
                ctx.set(request.valid, 1)
                ctx.set(request.payload.data, byte)
                ctx.set(request.payload.last, index == len(payload) - 1)
                while not (await ctx.tick().sample(request.ready))[2]:
                    pass
                ctx.set(request.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in (handler(0), handler(1), watch, collect):
        sim.add_testbench(testbench, background=True)
    sim.add_testbench(send)
    sim.run_until(1e-6 * 2000)
    return taken, replies, broken


_EARLY_REQUESTS = [[Command.INFO, 1, 2, 3], [Command.LOAD, 4], [Command.INFO],
                   [Command.LOAD, 5, 6, 7, 8], [Command.INFO, 9]]


def test_dispatcher_keeps_a_request_whose_reply_ended_first():
    """Issue 15: a handler may end its reply before it has taken its whole request
    (AppSignature). The dispatcher keeps offering the rest of that request to the same
    handler, no byte withdrawn or changed before it is taken, and reads the next command only
    after both have ended: every handler takes exactly its requests, each gets one reply."""
    taken, replies, broken = _early_replies(Dispatcher([Command.LOAD, Command.INFO]),
                                            _EARLY_REQUESTS)
    assert broken == []
    assert taken == {0: [bytes([Command.LOAD, 4]), bytes([Command.LOAD, 5, 6, 7, 8])],
                     1: [bytes([Command.INFO, 1, 2, 3]), bytes([Command.INFO]),
                         bytes([Command.INFO, 9])]}
    assert replies == [1, 0, 1, 0, 1]


def test_early_replies_catch_the_dispatcher_before_the_fix():
    """The same drive finds the fault of the dispatcher before issue 15's fix (back to
    COMMAND as soon as the reply ends: the held byte withdrawn, the rest of the request
    read as new commands), so the test above can fail."""
    taken, replies, broken = _early_replies(EagerDispatcher([Command.LOAD, Command.INFO]),
                                            _EARLY_REQUESTS)
    assert broken
    assert len(replies) != len(_EARLY_REQUESTS) or taken[1][0] != bytes([Command.INFO, 1, 2, 3])


@pytest.mark.parametrize("commands,error,message", [
    ([], TypeError, r"^Commands must be a non-empty sequence of Command, not \[\]$"),
    ([1], TypeError, r"^Commands must be a non-empty sequence of Command, not \[1\]$"),
    ([Command.LOAD, Command.LOAD], ValueError, r"^Commands must differ, not \["),
])
def test_dispatcher_refuses_bad_parameters(commands, error, message):
    with pytest.raises(error, match=message):
        Dispatcher(commands)


# -- RESTART and INFO -------------------------------------------------------------------------

def test_fixed_command_with_an_action():
    """RESTART (§6): a one-byte request is applied (one action beat, before the reply) and
    answered OK; with an extra byte it is answered BAD_LENGTH and not applied."""
    dut = FixedCommand(bytes([Status.OK]), action=True)
    events = []
    host = _Host(dut.host, [[Command.RESTART], [Command.RESTART, 0], [Command.RESTART]],
                 events, seed=3)
    _simulate(dut, host, _Beats(dut.action, (), events, seed=4).run)
    assert host.replies == [bytes([Status.OK]), bytes([Status.BAD_LENGTH]),
                            bytes([Status.OK])]
    assert events == ["beat", "reply", "reply", "beat", "reply"]


def test_fixed_command_reply():
    """INFO (§6): a one-byte request gets the whole fixed reply, OK first; with more bytes it
    is answered BAD_LENGTH."""
    info = bytes([Status.OK]) + b"OM" + bytes(range(1, 18))
    dut = FixedCommand(info)
    host = _Host(dut.host, [[Command.INFO], [Command.INFO, 1, 2], [Command.INFO]], [], seed=5)
    _simulate(dut, host)
    assert host.replies == [info, bytes([Status.BAD_LENGTH]), info]


@pytest.mark.parametrize("args,kwargs,message", [
    ((b"",), {}, r"^Reply must be 1\.\.65534 bytes, not b''$"),
    (([0],), {}, r"^Reply must be 1\.\.65534 bytes, not \[0\]$"),
    ((b"\x00",), dict(action=1), r"^action must be a bool, not 1$"),
])
def test_fixed_command_refuses_bad_parameters(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        FixedCommand(*args, **kwargs)


# -- LOAD -------------------------------------------------------------------------------------

_LOAD_LAYOUT = data.StructLayout({"memory": NetworkCore.Memory, "address": range(8),
                                  "word": unsigned(24)})
_DEPTHS = {"program": 4, "weights": 8, "params": 3}
_WORD_BYTES = {"program": 3, "weights": 2, "params": 1}


def test_load_handler_writes_words_and_reports_the_count():
    """LOAD (§6): ``01, memory, address (2), word…`` writes consecutive addresses and replies
    ``status, count (2)``; count says how many words were written also when a request fails:
    BAD_ADDRESS at a word past the end of its memory, BAD_MEMORY for a memory other than 0..2
    (nothing written; 4, the tables, on a core without them), BAD_LENGTH for a header or a
    last word cut short."""
    dut = LoadHandler(load_layout=_LOAD_LAYOUT, depths=_DEPTHS, word_bytes=_WORD_BYTES)
    requests = [
        [Command.LOAD, 1, 2, 0, 0x34, 0x12, 0x78, 0x56],  # two weight words from 2
        [Command.LOAD, 2, 2, 0, 7, 8],                    # params depth 3: the 2nd is past it
        [Command.LOAD, 2, 3, 0, 5, 6],                    # past the end at once: none written
        [Command.LOAD, 3, 0, 0, 1],                       # memory 3 is not loadable
        [Command.LOAD, 4, 0, 0, 1],                       # no tables here
        [Command.LOAD, 0, 0, 0, 1, 2, 3, 4],              # program: 3-byte words, 1 left over
        [Command.LOAD, 0, 1, 0],                          # a header and no word
        [Command.LOAD, 0],                                # header cut short
        [Command.LOAD],
        [Command.LOAD, 0, 3, 0, 0xAA, 0xBB, 0xCC],        # the last program word
    ]
    writes = _Beats(dut.load, ("memory", "address", "word"), [], seed=7)
    host = _Host(dut.host, requests, [], seed=6)
    _simulate(dut, host, writes.run)
    assert host.replies == [bytes([Status.OK, 2, 0]), bytes([Status.BAD_ADDRESS, 1, 0]),
                            bytes([Status.BAD_ADDRESS, 0, 0]), bytes([Status.BAD_MEMORY, 0, 0]),
                            bytes([Status.BAD_MEMORY, 0, 0]), bytes([Status.BAD_LENGTH, 1, 0]), bytes([Status.BAD_LENGTH, 0, 0]),
                            bytes([Status.BAD_LENGTH, 0, 0]), bytes([Status.BAD_LENGTH, 0, 0]),
                            bytes([Status.OK, 1, 0])]
    assert writes.received == [(NetworkCore.Memory.WEIGHTS, 2, 0x1234),
                      (NetworkCore.Memory.WEIGHTS, 3, 0x5678),
                      (NetworkCore.Memory.PARAMS, 2, 7),
                      (NetworkCore.Memory.PROGRAM, 0, 0x030201),
                      (NetworkCore.Memory.PROGRAM, 3, 0xCCBBAA)]


def test_load_handler_writes_the_tables_of_a_core_with_them():
    """LOAD memory 4 (§6) writes table entries (``word_bytes["tables"]`` bytes each) where
    the core has tables; past their depth it is BAD_ADDRESS."""
    dut = LoadHandler(load_layout=_LOAD_LAYOUT, depths={**_DEPTHS, "tables": 3},
                      word_bytes={**_WORD_BYTES, "tables": 2})
    requests = [[Command.LOAD, 4, 1, 0, 0x05, 0x01, 0xFF, 0x00],  # entries 1 and 2
                [Command.LOAD, 4, 3, 0, 0x01, 0x00],              # past the end
                [Command.LOAD, 3, 0, 0, 1]]                       # still not loadable
    writes = _Beats(dut.load, ("memory", "address", "word"), [], seed=2)
    host = _Host(dut.host, requests, [], seed=3)
    _simulate(dut, host, writes.run)
    assert host.replies == [bytes([Status.OK, 2, 0]), bytes([Status.BAD_ADDRESS, 0, 0]),
                            bytes([Status.BAD_MEMORY, 0, 0])]
    assert writes.received == [(NetworkCore.Memory.TABLES, 1, 0x105),
                               (NetworkCore.Memory.TABLES, 2, 0xFF)]


_ROW_LAYOUT = data.StructLayout({"memory": NetworkCore.Memory, "address": range(8),
                                 "row": range(2), "word": unsigned(16)})
#: program: one 20-bit field (rows of 16 and 4 bits); weights: one 16-bit row; params: two
#: 11-bit fields, each a row of its own
_ROWS = {"program": (1, 20), "weights": (1, 16), "params": (2, 11)}


def test_load_handler_cuts_words_into_rows():
    """LOAD (§6) to a core with narrow memories: each word reaches ``load`` as 16-bit rows
    (``row``, bits of the word from the row's first on), each field of a word starting a
    row, the padding bits of its last byte dropped; replies and refusals as with a beat a
    word, except that the complete rows of a word cut short are written."""
    dut = LoadHandler(load_layout=_ROW_LAYOUT, depths=_DEPTHS,
                      word_bytes={"program": 3, "weights": 2, "params": 3}, rows=_ROWS)
    params, program = 0xFABCDE, 0xF54321     # their top bits are padding
    requests = [
        [Command.LOAD, 2, 1, 0, *params.to_bytes(3, "little")],
        [Command.LOAD, 0, 3, 0, *program.to_bytes(3, "little")],
        [Command.LOAD, 0, 0, 0, 1, 2, 3, 4, 5],  # the second word cut short after a row
        [Command.LOAD, 2, 3, 0, 1, 2, 3],        # past the end: nothing written
        [Command.LOAD, 1, 7, 0, 0x34, 0x12, 0x78],  # a weight word, then one cut short
    ]
    writes = _Beats(dut.load, ("memory", "address", "row", "word"), [], seed=5)
    host = _Host(dut.host, requests, [], seed=9)
    _simulate(dut, host, writes.run)
    assert host.replies == [bytes([Status.OK, 1, 0]), bytes([Status.OK, 1, 0]),
                            bytes([Status.BAD_LENGTH, 1, 0]), bytes([Status.BAD_ADDRESS, 0, 0]),
                            bytes([Status.BAD_LENGTH, 1, 0])]
    PARAMS, PROGRAM, WEIGHTS = (NetworkCore.Memory.PARAMS, NetworkCore.Memory.PROGRAM,
                                NetworkCore.Memory.WEIGHTS)
    assert writes.received == [(PARAMS, 1, 0, params % 2**11), (PARAMS, 1, 1, params >> 11 & 0x7FF),
                               (PROGRAM, 3, 0, 0x4321), (PROGRAM, 3, 1, 0x5),
                               (PROGRAM, 0, 0, 0x0201), (PROGRAM, 0, 1, 0x3),
                               (PROGRAM, 1, 0, 0x0504),
                               (WEIGHTS, 7, 0, 0x1234)]


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(load_layout=unsigned(8)), TypeError,
     r"^Load layout must be a data\.StructLayout, not unsigned\(8\)$"),
    (dict(rows={**_ROWS, "params": (2, 0)}), TypeError,
     r"^rows must be None or a dict of \(items, item_bits\) pairs of positive integers, "),
    (dict(rows={"program": (1, 24), "weights": (1, 16)}), ValueError,
     r"^rows lacks params: "),
    (dict(rows={**_ROWS, "program": (1, 16)}), ValueError,
     r"^rows\['program'\] = \(1, 16\) is not a word of word_bytes\['program'\] = 3 bytes$"),
    (dict(depths={"program": 4}), ValueError, r"^depths lacks weights, params: "),
    (dict(word_bytes={**_WORD_BYTES, "params": 0}), TypeError,
     r"^word_bytes\['params'\] must be an integer in 1\.\.67108864, not 0$"),
])
def test_load_handler_refuses_bad_parameters(kwargs, error, message):
    params = dict(load_layout=_LOAD_LAYOUT, depths=_DEPTHS, word_bytes=_WORD_BYTES)
    params.update(kwargs)
    with pytest.raises(error, match=message):
        LoadHandler(**params)


# -- INFER ------------------------------------------------------------------------------------

def test_infer_handler_runs_images_and_refuses_other_lengths():
    """INFER (§6): exactly ``input_words`` words of ``width`` 16-bit slots (slot 0 first) go
    to the core and the reply is ``00`` and the core's output words; an INFER of the wrong
    length is still completed (a short image with zero words, a long request's extra bytes
    dropped) and run, its outputs dropped and the answer BAD_LENGTH. (An INFER with no
    words runs nothing.)"""
    width, input_words, output_words = 2, 3, 2
    dut = InferHandler(width=width, input_words=input_words)
    image = [1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 0x06, 0x80]   # [1, 2], [3, 4], [5, 0x8006]
    requests = [[Command.INFER, *image], [Command.INFER], [Command.INFER, *image[:5]],
                [Command.INFER, *image, 9], [Command.INFER, *image]]
    images, words = [], []
    rng = random.Random(8)

    async def core(ctx):
        # answers each image with `output_words` words: [sum of the image + i, i]
        while True:
            ready = rng.random() >= 0.4
            ctx.set(dut.inputs.ready, ready)
            _, _, valid, word = await ctx.tick().sample(dut.inputs.valid, dut.inputs.payload)
            if not (valid and ready):
                continue
            words.append(list(word))
            if len(words) < input_words:
                continue
            images.append(words[:])
            ctx.set(dut.inputs.ready, 0)
            total = sum(map(sum, words))
            words.clear()
            for index in range(output_words):
                while rng.random() < 0.3:
                    await ctx.tick()
                ctx.set(dut.outputs.valid, 1)
                ctx.set(dut.outputs.payload.word, [(total + index) & 0xFFFF, index])
                ctx.set(dut.outputs.payload.last, index == output_words - 1)
                await ctx.tick().until(dut.outputs.ready)
                ctx.set(dut.outputs.valid, 0)

    host = _Host(dut.host, requests, [], seed=9)
    _simulate(dut, host, core)
    total = 1 + 2 + 3 + 4 + 5 + 0x8006
    answer = bytes([Status.OK, total & 0xFF, total >> 8, 0, 0,
                    (total + 1) & 0xFF, (total + 1) >> 8, 1, 0])
    assert host.replies == [answer, bytes([Status.BAD_LENGTH]), bytes([Status.BAD_LENGTH]),
                            bytes([Status.BAD_LENGTH]), answer]
    full = [[1, 2], [3, 4], [5, 0x8006]]
    assert images == [full, [[1, 2], [3, 0], [0, 0]], full, full]


@pytest.mark.parametrize("kwargs,message", [
    (dict(width=65), r"^Width must be an integer in 1\.\.64, not 65$"),
    (dict(input_words=0), r"^Input words must be an integer in 1\.\.65535, not 0$"),
])
def test_infer_handler_refuses_bad_parameters(kwargs, message):
    params = dict(width=2, input_words=3)
    params.update(kwargs)
    with pytest.raises(TypeError, match=message):
        InferHandler(**params)
