# amaranth: UnusedElaboratable=no
"""Fast tier of the board path: the serial requantizer against the golden §11 arithmetic and
the parallel :class:`hw.requant.Requantizer`, and the network application's command
protocol (docs/host_link.md §6) on Amaranth's simulator.

(The first line silences UnusedElaboratable: the validation tests build components that
are never elaborated.)
"""

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from olmac.golden.formats import int_range
from olmac.golden.program import requantize_residual_round_half_up
from olmac.hw.requant import Requantizer
from olmac.hw.serial_requant import SerialRequantizer
from olmac.sim.pysim import StreamSink, StreamSource

pytestmark = pytest.mark.filterwarnings("error")


def _requant_case(rng, rows, cols, acc_width):
    """Random vectors and parameters covering shift 0 and 63, t 0 and 31, M = -2^31."""
    accs = rng.integers(-(1 << (acc_width - 1)), 1 << (acc_width - 1), size=(rows, cols))
    bias = rng.integers(-(1 << 31), 1 << 31, size=(rows, cols))
    multiplier = rng.integers(-(1 << 31), 1 << 31, size=(rows, cols))
    # small multipliers and shifts too, so that outputs land inside the range, not only
    # at its ends
    small = rng.random((rows, cols)) < 0.5
    multiplier = np.where(small, rng.integers(-(1 << 12), 1 << 12, size=(rows, cols)),
                          multiplier)
    shift = np.where(small, rng.integers(20, 40, size=(rows, cols)),
                     rng.integers(0, 64, size=(rows, cols)))
    residual = rng.integers(-(1 << 16), 1 << 16, size=(rows, cols))
    residual_multiplier = np.where(small, rng.integers(-(1 << 10), 1 << 10, size=(rows, cols)),
                                   rng.integers(-(1 << 31), 1 << 31, size=(rows, cols)))
    residual_shift = rng.integers(0, 32, size=(rows, cols))
    shift[0, :3] = [0, 63, 31][:cols]
    residual_shift[0, :2] = [0, 31][:cols]
    multiplier[1, 0] = -(1 << 31)
    residual_multiplier[1, 0] = -(1 << 31)
    relu = rng.integers(0, 2, size=rows)
    formats = [(int(rng.integers(2, 17)), bool(rng.integers(0, 2))) for _ in range(rows)]
    return dict(accs=accs, bias=bias, multiplier=multiplier, shift=shift, residual=residual,
                residual_multiplier=residual_multiplier, residual_shift=residual_shift,
                relu=relu, formats=formats)


def _run_requantizer(dut, case):
    rows, cols = case["accs"].shape
    params_layout = dut.params.payload.shape()
    acc_layout = dut.acc.payload.shape()
    params, accs = [], []
    # per_channel: a beat per channel, in order; otherwise one for all channels
    beats = [[col] for col in range(cols)] if getattr(dut, "per_channel", False) \
        else [list(range(cols))]
    for row in range(rows):
        low, high = int_range(*case["formats"][row])
        for channels in beats:
            params.append(params_layout.const({
                "channels": [{name: int(case[name][row, col]) for name in (
                    "bias", "multiplier", "shift", "residual", "residual_multiplier",
                    "residual_shift")} for col in channels],
                "relu": int(case["relu"][row]), "low": low, "high": high}).as_value().value)
        accs.append(acc_layout.const([int(v) for v in case["accs"][row]]).as_value().value)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(StreamSource(dut.acc, accs, pause_probability=0.3).run, background=True)
    sim.add_testbench(StreamSource(dut.params, params, pause_probability=0.3, seed=5).run,
                      background=True)
    sink = StreamSink(dut.out, rows, pause_probability=0.3)
    sim.add_testbench(sink.run)
    sim.run()
    out_layout = dut.out.payload.shape()
    return np.array([[_slot(word, col, out_layout.elem_shape) for col in range(cols)]
                     for word in sink.received])


def _slot(word, col, shape):
    width = shape.width
    value = (int(word) >> (col * width)) & ((1 << width) - 1)
    return value - (1 << width) if shape.signed and value >> (width - 1) else value


def _golden(case):
    rows, cols = case["accs"].shape
    expected = []
    for row in range(rows):
        bits, signed = case["formats"][row]
        expected.append(requantize_residual_round_half_up(
            torch.tensor(case["accs"][row:row + 1]), torch.tensor(case["bias"][row]),
            torch.tensor(case["multiplier"][row]), torch.tensor(case["shift"][row]),
            torch.tensor(case["residual"][row:row + 1]),
            torch.tensor(case["residual_multiplier"][row]),
            torch.tensor(case["residual_shift"][row]), out_bits=bits, out_signed=signed,
            relu=bool(case["relu"][row])).numpy()[0])
    return np.array(expected)


@pytest.mark.parametrize("cols,acc_width,seed", [(1, 12, 0), (3, 27, 1), (4, 44, 2)])
def test_serial_requantizer_matches_golden_and_parallel(cols, acc_width, seed):
    """Bit-exact: the serial requantizer, the parallel Requantizer and golden
    requantize_residual_round_half_up agree on random vectors with residuals, run-time
    bounds, ReLU, extreme shifts and multipliers, under random stalls on every stream."""
    case = _requant_case(np.random.default_rng(seed), 12, cols, acc_width)
    params = dict(cols=cols, acc_width=acc_width, out_bits=16, residual_bits=17,
                  runtime_bounds=True)
    serial = _run_requantizer(SerialRequantizer(**params), case)
    per_channel = _run_requantizer(SerialRequantizer(**params, per_channel=True), case)
    parallel = _run_requantizer(Requantizer(**params), case)
    expected = _golden(case)
    np.testing.assert_array_equal(serial, expected)
    np.testing.assert_array_equal(per_channel, expected)
    np.testing.assert_array_equal(parallel, expected)


def test_serial_requantizer_without_residual():
    """Without a residual input, the serial requantizer equals the golden §3 rule (the
    residual term zero) at a fixed output format."""
    rng = np.random.default_rng(7)
    case = _requant_case(rng, 10, 2, 20)
    case["residual"][:] = 0
    case["relu"][:] = 0
    case["formats"] = [(8, True)] * 10
    dut = SerialRequantizer(cols=2, acc_width=20, out_bits=8, out_signed=True)
    rows, cols = case["accs"].shape
    params_layout = dut.params.payload.shape()
    got = _run_plain(dut, case, params_layout)
    np.testing.assert_array_equal(got, _golden(case))


def _run_plain(dut, case, params_layout):
    rows, cols = case["accs"].shape
    params = [params_layout.const({
        "channels": [{name: int(case[name][row, col]) for name in ("bias", "multiplier",
                                                                   "shift")}
                     for col in range(cols)], "relu": 0}).as_value().value
        for row in range(rows)]
    accs = [dut.acc.payload.shape().const([int(v) for v in case["accs"][row]]).as_value().value
            for row in range(rows)]
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(StreamSource(dut.acc, accs).run, background=True)
    sim.add_testbench(StreamSource(dut.params, params, seed=4).run, background=True)
    sink = StreamSink(dut.out, rows)
    sim.add_testbench(sink.run)
    sim.run()
    return np.array([[_slot(word, col, dut.out.payload.shape().elem_shape)
                      for col in range(cols)] for word in sink.received])


@pytest.mark.parametrize("kwargs,message", [
    (dict(cols=0), r"^Column count must be an integer in 1\.\.64, not 0$"),
    (dict(acc_width=45), r"^Accumulator width must be an integer in 1\.\.44, not 45$"),
    (dict(out_bits=17), r"^Output width must be an integer in 2\.\.16, not 17$"),
    (dict(out_signed=1), r"^Output signedness must be a bool, not 1$"),
    (dict(residual_bits=18), r"^Residual width must be an integer in 2\.\.17, not 18$"),
    (dict(runtime_bounds="yes"), r"^runtime_bounds must be a bool, not 'yes'$"),
    (dict(per_channel=1), r"^per_channel must be a bool, not 1$"),
])
def test_serial_requantizer_refuses_bad_parameters(kwargs, message):
    params = dict(cols=2, acc_width=20, out_bits=8)
    params.update(kwargs)
    with pytest.raises(TypeError, match=message):
        SerialRequantizer(**params)


# -- the network application (docs/host_link.md §6) ------------------------------------------

from amaranth.hdl import Elaboratable, Module, unsigned
from amaranth.lib import data, wiring

from olmac.hw.network import NetworkCore
from olmac.hw.network_app import NetworkApp
from olmac.spec import PROTOCOL_VERSION, Command, Status
from olmac.board import parse_info

_APP = dict(width=2, depths={"program": 4, "weights": 8, "params": 3, "data": 16},
            word_bits={"program": 20, "weights": 12, "params": 9}, input_words=3,
            output_words=2)


def _app():
    load_layout = data.StructLayout({"memory": NetworkCore.Memory, "address": range(8),
                                     "word": unsigned(20)})
    return NetworkApp(load_layout=load_layout, **_APP)


class _FakeCore:
    """Stands in for a NetworkCore: takes load beats and input words (recording them) and
    answers every ``input_words`` words with ``output_words`` words, the first slot of each
    the sum of the image's slots plus its index. From image ``fault_from`` on (counting
    from 0) it raises ``fault`` before its outputs, as a core whose array saw a beat break
    the outlier rules does, and keeps it high."""

    def __init__(self, app, fault_from=None):
        self.app = app
        self.loads = []
        self.images = []
        self.fault_from = fault_from

    async def run(self, ctx):
        app = self.app
        image = []
        ctx.set(app.load.ready, 1)
        ctx.set(app.inputs.ready, 1)
        while True:
            _, _, load_valid, load, input_valid, word = await ctx.tick().sample(
                app.load.valid, app.load.payload, app.inputs.valid, app.inputs.payload)
            if load_valid:
                self.loads.append((load.memory, load.address, load.word))
            if input_valid:
                image.append(list(word))
                if len(image) == _APP["input_words"]:
                    self.images.append(image)
                    total = sum(sum(word) for word in image)
                    ctx.set(app.inputs.ready, 0)
                    if len(self.images) - 1 == self.fault_from:
                        ctx.set(app.fault, 1)
                        await ctx.tick().repeat(3)
                    for index in range(_APP["output_words"]):
                        ctx.set(app.outputs.valid, 1)
                        ctx.set(app.outputs.payload.word, [(total + index) & 0xFFFF, index])
                        ctx.set(app.outputs.payload.last, index == _APP["output_words"] - 1)
                        await ctx.tick().until(app.outputs.ready)
                    ctx.set(app.outputs.valid, 0)
                    ctx.set(app.inputs.ready, 1)
                    image = []


async def _exchange(ctx, app, payload):
    """Send one request byte by byte (with random-free full speed) and collect its reply."""
    request, reply = app.host.request, app.host.reply
    got = []
    ctx.set(reply.ready, 1)
    for index, value in enumerate(payload):
        ctx.set(request.valid, 1)
        ctx.set(request.payload.data, value)
        ctx.set(request.payload.last, index == len(payload) - 1)
        while True:
            _, _, ready, reply_valid, reply_byte, reply_last = await ctx.tick().sample(
                request.ready, reply.valid, reply.payload.data, reply.payload.last)
            if reply_valid:
                got.append(reply_byte)
            if ready:
                break
    ctx.set(request.valid, 0)
    while not got or not last_seen(got):
        _, _, reply_valid, reply_byte, reply_last = await ctx.tick().sample(
            reply.valid, reply.payload.data, reply.payload.last)
        if reply_valid:
            got.append(reply_byte)
            if reply_last:
                got.append(None)
    return bytes(b for b in got if b is not None)


def last_seen(got):
    return got[-1] is None


def _run_app(requests, fault_from=None):
    app = _app()
    core = _FakeCore(app, fault_from)
    replies = []

    async def host(ctx):
        for payload in requests:
            replies.append(await _exchange(ctx, app, bytes(payload)))

    sim = Simulator(app)
    sim.add_clock(1e-6)
    sim.add_testbench(core.run, background=True)
    sim.add_testbench(host)
    sim.run_until(1e-6 * 20000)
    return replies, core


def _le16(value):
    return [value & 0xFF, value >> 8]


def test_app_commands():
    """INFO reports the generator's configuration; LOAD writes every word of a request to
    consecutive addresses and reports the count; RESTART is a load beat; INFER sends the
    image words and replies the core's output words."""
    image = [1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0]  # three words of two 16-bit slots
    replies, core = _run_app([
        [Command.INFO],
        [Command.LOAD, 0, 1, 0, 0x34, 0x12, 0x05, 0xCD, 0xAB, 0x06],
        [Command.RESTART],
        [Command.INFER, *image],
    ])
    info = parse_info(replies[0])
    assert (info.width, info.input_words, info.output_words) == (2, 3, 2)
    assert info.depths == {**_APP["depths"], "tables": 0}  # a core without tables
    assert info.word_bytes == {"program": 3, "weights": 2, "params": 2,  # 20, 12, 9 bits
                               "tables": 0}
    assert replies[0][:5] == bytes([Status.OK]) + b"OM" + bytes([PROTOCOL_VERSION, 2])
    assert replies[1] == bytes([Status.OK, 2, 0])
    assert core.loads[:2] == [(NetworkCore.Memory.PROGRAM, 1, 0x51234),
                              (NetworkCore.Memory.PROGRAM, 2, 0x6ABCD)]
    assert core.loads[2][0] == NetworkCore.Memory.RESTART
    assert replies[2] == bytes([Status.OK])
    assert core.images == [[[1, 2], [3, 4], [5, 6]]]
    assert replies[3] == bytes([Status.OK, 21, 0, 0, 0, 22, 0, 1, 0])


def test_app_errors_are_reported_and_the_app_recovers():
    """A bad command, a command with extra bytes, a LOAD with a bad memory, an address past
    the memory or a word cut short, and an INFER too short or too long each get an error
    reply that says how much was applied; the next good INFER is answered correctly."""
    image = [1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0]
    replies, core = _run_app([
        [0x7F, 1, 2],                                      # unknown command
        [0x00],                                            # unknown command, one byte
        [Command.RESTART, 0],                              # extra byte
        [Command.INFO, 0],
        [Command.LOAD, 3, 0, 0, 1, 2, 3],                  # memory 3 is not loadable
        [Command.LOAD, 0, 3, 0, 1, 2, 3, 4, 5, 6],         # program depth 4: 2nd is past it
        [Command.LOAD, 1, 0, 0, 1, 2, 3],                  # weights: 2-byte words, 1 left over
        [Command.LOAD, 1, 0],                              # header cut short
        [Command.INFER],                                   # no words
        [Command.INFER, *image[:5]],                       # short: padded and dropped
        [Command.INFER, *image, 9],                        # long: run and dropped
        [Command.INFER, *image],
    ])
    assert replies[0] == bytes([Status.BAD_COMMAND])
    assert replies[1] == bytes([Status.BAD_COMMAND])
    assert replies[2] == bytes([Status.BAD_LENGTH])
    assert replies[3] == bytes([Status.BAD_LENGTH])
    assert replies[4] == bytes([Status.BAD_MEMORY, 0, 0])
    assert replies[5] == bytes([Status.BAD_ADDRESS, 1, 0])
    assert replies[6] == bytes([Status.BAD_LENGTH, 1, 0])
    assert replies[7] == bytes([Status.BAD_LENGTH, 0, 0])
    assert replies[8] == bytes([Status.BAD_LENGTH])
    assert replies[9] == bytes([Status.BAD_LENGTH])
    assert replies[10] == bytes([Status.BAD_LENGTH])
    assert replies[11] == bytes([Status.OK, 21, 0, 0, 0, 22, 0, 1, 0])
    assert core.loads == [(NetworkCore.Memory.PROGRAM, 3, 0x030201),
                          (NetworkCore.Memory.WEIGHTS, 0, 0x0201)]
    assert core.images[0] == [[1, 2], [3 & 0xFF, 0], [0, 0]]
    assert len(core.images) == 3


def test_a_core_fault_turns_infer_replies_into_fault():
    """A core whose array faulted (its ``fault`` rises while an image runs) gets FAULT alone
    for that INFER and every later one, its outputs taken and dropped so it never waits;
    the INFERs before the fault are answered as usual, and other commands still work."""
    image = [1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0]
    replies, core = _run_app([[Command.INFER, *image], [Command.INFER, *image],
                              [Command.INFO], [Command.INFER, *image]], fault_from=1)
    assert replies[0] == bytes([Status.OK, 21, 0, 0, 0, 22, 0, 1, 0])
    assert replies[1] == bytes([Status.FAULT])
    assert replies[2][0] == Status.OK
    assert replies[3] == bytes([Status.FAULT])
    assert len(core.images) == 3


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(width=0), TypeError, r"^Width must be an integer in 1\.\.64, not 0$"),
    (dict(input_words=0), TypeError, r"^Input words must be an integer in 1\.\.65535, not 0$"),
    (dict(output_words=70000), TypeError,
     r"^Output words must be an integer in 1\.\.65535, not 70000$"),
    (dict(depths={"program": 1}), ValueError, r"^depths lacks weights, params, data: "),
    (dict(word_bits=[]), TypeError, r"^word_bits must be a dict, not \[\]$"),
    (dict(load_layout=8), TypeError, r"^Load layout must be a data\.StructLayout, not 8$"),
])
def test_app_refuses_bad_parameters(kwargs, error, message):
    params = dict(_APP, load_layout=data.StructLayout({"memory": NetworkCore.Memory,
                                                       "address": range(8),
                                                       "word": unsigned(20)}))
    params.update(kwargs)
    with pytest.raises(error, match=message):
        NetworkApp(**params)


def test_network_board_refuses_bad_link_buffers():
    from olmac.fpga.board import NetworkBoard
    with pytest.raises(TypeError, match=r"^link_buffers must be a bool, not 1$"):
        NetworkBoard(None, divisor=4, link_buffers=1)


class _AppOnCore(Elaboratable):
    """The board top without its UART: ``app`` in front of ``core``, wired as
    :class:`fpga.board.NetworkBoard` wires them; the test drives ``app.host``."""

    def __init__(self, app, core):
        self.app, self.core = app, core

    def elaborate(self, platform):
        m = Module()
        m.submodules.app, m.submodules.core = app, core = self.app, self.core
        wiring.connect(m, app.inputs, core.inputs)
        wiring.connect(m, core.outputs, app.outputs)
        wiring.connect(m, app.load, core.load)
        m.d.comb += app.fault.eq(core.fault)
        return m


def test_load_writes_the_lookup_tables():
    """LOAD memory 4 (§6) writes the core's lookup tables: a program with a sigmoid and a
    Hardswish on a core preloaded with zero tables gives other logits than golden's; after
    the host's LOAD of every memory image (tables included, ``load_requests``) and
    RESTART, its INFERs are bit-exact against golden ``run_integer``. INFO reports the
    table depth and word size, and a LOAD past the tables' end is BAD_ADDRESS."""
    from torch import nn

    from olmac.board import decode_infer, encode_infer, load_requests
    from olmac.compiler import compile_program
    from olmac.golden.program import quantize_model, run_integer
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sigmoid(), nn.Linear(6, 5), nn.Hardswish(), nn.Linear(5, 3))
    program = quantize_model(model.eval(), torch.rand(64, 6), act_bits=4, weight_bits=4,
                             act_calibration="max")
    compiled = compile_program(program, width=2)
    depth = compiled.config.table_depth
    core = NetworkCore(compiled.config, **{**compiled.contents, "tables": [0] * depth})
    app = NetworkApp.for_core(core, input_words=compiled.input_words,
                              output_words=compiled.output_words)
    pixels = torch.randint(0, 17, (3, 6), generator=torch.Generator().manual_seed(2))
    info = parse_info(app.info())
    assert (info.depths["tables"], info.word_bytes["tables"]) == (depth, 2)
    loads = [request for request, _words in load_requests(compiled, info, app.request_bytes)]
    assert any(request[:2] == bytes([Command.LOAD, 4]) for request in loads)
    requests = ([encode_infer(compiled, pixels[0])] + loads
                + [bytes([Command.LOAD, 4, *_le16(depth), 0, 0])]
                + [encode_infer(compiled, image) for image in pixels])
    replies = []

    async def host(ctx):
        for payload in requests:
            replies.append(await _exchange(ctx, app, payload))

    sim = Simulator(_AppOnCore(app, core))
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.run()
    expected = run_integer(program, pixels)
    assert not torch.equal(decode_infer(compiled, replies[0]), expected[0])
    assert all(reply[0] == Status.OK for reply in replies[1:len(loads) + 1])
    assert replies[len(loads) + 1] == bytes([Status.BAD_ADDRESS, 0, 0])
    logits = torch.stack([decode_infer(compiled, reply) for reply in replies[-3:]])
    assert torch.equal(logits, expected)


# -- the board top on the iCE40UP5K (docs/host_link.md §6) ------------------------------------

@pytest.mark.slow
def test_network_board_fits_the_up5k(tmp_path):
    """The demo CNN's board top at width 2 (serial requantizer fed a channel at a time,
    narrow memories, packed array products and the address multiplies in SB_MAC16s) places
    and routes on the iCEBreaker's iCE40UP5K and meets its 12 MHz clock (a build that does
    not fit raises DoesNotFit)."""
    from olmac.fpga.board import build_network_board, demo_network
    _program, compiled, _data = demo_network("cnn", width=2)
    result = build_network_board("icebreaker", compiled, tmp_path / "board")
    report = result.report
    assert report.logic.used <= report.logic.available
    assert report.brams.used <= report.brams.available
    assert report.dsps.used <= report.dsps.available
    assert result.runs_at_board_clock, f"fmax {report.fmax_mhz:.1f} MHz < 12 MHz"


@pytest.mark.slow
def test_cli_builds_a_users_program_for_the_icebreaker(tmp_path, capsys):
    """``olmac board build --board icebreaker --program DIR`` of an artifact that is not a
    demo (an untrained CNN written the ordinary way, ``network_models.tiny_cnn``, through
    ``olmac quantize``) at the board's default width writes a bitstream, and its report
    (``report.json``) stays within the UP5K's logic cells, block RAMs and DSPs and meets
    the board's 12 MHz clock."""
    import json
    from pathlib import Path

    from olmac.cli import main
    from olmac.flow import demo_data
    models = Path(__file__).resolve().parent / "network_models.py"
    np.save(tmp_path / "calibration.npy", demo_data("cnn").calibration[:64].numpy())
    main(["quantize", "--model", f"{models}:tiny_cnn", "--calibration",
          str(tmp_path / "calibration.npy"), "--out", str(tmp_path / "program")])
    main(["board", "build", "--board", "icebreaker", "--program", str(tmp_path / "program"),
          "--build-dir", str(tmp_path / "build")])
    assert "bitstream: " in capsys.readouterr().out
    assert (tmp_path / "build" / "top.bin").stat().st_size > 0
    report = json.loads((tmp_path / "build" / "report.json").read_text())
    assert report["device"] == "iCE40UP5K-SG48"
    for site in ("logic", "brams", "dsps"):
        assert report[site]["used"] <= report[site]["available"], site
    assert report["fmax_mhz"] >= 12.0
