"""Slow tier: the network board top (UART host link + NetworkApp + NetworkCore with the
serial requantizer and narrow memories) on Verilator, driven at its UART pins.

The board is built, as ``olmac board build --program`` builds it, from an integer program
artifact that is not a demo: an untrained CNN of the user's (``network_models.tiny_cnn``)
through ``olmac quantize``. One test asks INFO, runs images on the preloaded memories,
corrupts the parameter memory with LOAD (the logits change), loads every memory image back
with LOAD and RESTART (the logits are bit-exact again), and sends a frame with a bad CRC, a
truncated frame and a bad command, each answered with an error, after which INFER is still
bit-exact against golden ``run_integer``. Another puts the simulated UART on a TCP socket
and runs ``olmac board run --program DIR --inputs X.npy --port socket://... --check``
against it, preloaded and with ``--load``. The slow one runs the demo CNN on the ULX3S-85F's
board top (width 16, parallel requantizer, wide memories).

The link soak (150 frames after the first test; ``test_link_soak``, slow: 10⁴ frames) sends
INFO frames, 30 % of them damaged (bit flips, a damaged sync byte, truncation, a dropped
byte, stray bytes before a frame, a low stop bit) and some back to back, checks that every
whole frame gets the right reply and every damaged one its error, and ends with a bit-exact
INFER.
"""

import dataclasses
import json
import random
from pathlib import Path
import threading
import time

import numpy as np
import pytest
import torch
from amaranth.back import verilog

from olmac.cli import main
from olmac.compiler import compile_program
from olmac.flow import demo_data
from olmac.fpga.board import (NetworkBoard, board_defaults, default_array_multipliers,
                               default_dsp_lane_pairs, default_link_buffers, demo_network)
from olmac.golden import artifact
from olmac.golden.program import quantize_model, run_integer, to_pixels
from olmac.board import decode_infer, encode_infer, encode_load, load_requests, parse_info
from olmac.host_link import decode_reply, encode_frame
from olmac.spec import SYNC, Command, ErrorCode, Status
from olmac.sim.board_tb import JOB_ENV, PUBLIC_PORTS
from olmac.sim.cache import cached_model
from olmac.sim.runner import LeanVerilator, build_verilator

MODELS = Path(__file__).resolve().parent / "network_models.py"
TOPLEVEL = "olmac_board"
DIVISOR = 4
WIDTH = 4
#: The board link's inter-byte timeout: SerialHostLink's default of four byte times.
LINK_TIMEOUT = 40 * DIVISOR


def _build(top):
    """The compiled Verilator model of ``top``, from the build cache (sim/cache.py): tests
    that run in other pytest-xdist workers wait for one build of it, and each test runs it
    in a folder of its own, so they never write into one folder at once."""
    def build(folder, paths):
        build_verilator(paths, TOPLEVEL, folder, always=True, ports=PUBLIC_PORTS)
    model, _seconds = cached_model({f"{TOPLEVEL}.v": verilog.convert(top, name=TOPLEVEL)},
                                   TOPLEVEL, build, ports=PUBLIC_PORTS)
    return model


def _simulate(model, run_dir, testcase, job):
    job_file = run_dir / f"{testcase}.job.json"
    job_file.write_text(json.dumps(job))
    LeanVerilator().test(test_module="olmac.sim.board_tb", hdl_toplevel=TOPLEVEL,
                         hdl_toplevel_lang="verilog", build_dir=model, test_dir=run_dir,
                         testcase=testcase, extra_env={JOB_ENV: str(job_file)},
                         log_file=run_dir / f"{testcase}.log",
                         results_xml=str(run_dir / f"{testcase}.xml"))


def _exchange(model, run_dir, steps):
    results = run_dir / "answers.json"
    results.unlink(missing_ok=True)
    try:
        _simulate(model, run_dir, "exchange",
                  {"divisor": DIVISOR, "results": str(results), "steps": steps})
    except SystemExit:
        pass
    assert results.exists(), f"the simulation failed; see {run_dir / 'exchange.log'}"
    return json.loads(results.read_text())


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """The artifact directory, its program, some test pixels (``.npy`` too), the compiled
    network and the Verilator model of its board top."""
    work = tmp_path_factory.mktemp("board")
    data = demo_data("cnn")
    np.save(work / "calibration.npy", data.calibration[:64].numpy())
    main(["quantize", "--model", f"{MODELS}:tiny_cnn", "--calibration",
          str(work / "calibration.npy"), "--out", str(work / "program")])
    program = artifact.load(work / "program")
    pixels = to_pixels(data.images[:4])
    np.save(work / "pixels.npy", pixels.numpy())
    compiled = compile_program(program, width=WIDTH)
    # with the ECP5 boards' link buffers, so the fast suite runs them at the pins
    top = NetworkBoard(compiled, divisor=DIVISOR, link_buffers=True)
    return dict(work=work, program=program, pixels=pixels, compiled=compiled, top=top,
                model=_build(top))


def test_board_at_the_pins(board, tmp_path):
    """Preloaded and reloaded inference are bit-exact against golden run_integer; LOAD
    changes what the core computes; bad CRC, truncated frames and a bad command get error
    answers and the link recovers."""
    started = time.monotonic()
    program, compiled, top, pixels = (board[key] for key in
                                      ("program", "compiled", "top", "pixels"))
    expected = run_integer(program, pixels)
    info = parse_info(top.app.info())
    max_payload = top.app.request_bytes
    long = 400_000  # cycles to wait for an answer

    def step(payload):
        return {"send": encode_frame(payload).hex(), "timeout": long}

    infer = [encode_infer(compiled, pixels[i]) for i in range(4)]
    size = info.word_bytes["params"]
    per_frame = (max_payload - 4) // size
    zero_params = [encode_load("params", start, [0] * len(range(start, min(
        start + per_frame, len(compiled.contents["params"])))), size)
        for start in range(0, len(compiled.contents["params"]), per_frame)]
    reload = [request for request, _ in load_requests(compiled, info, max_payload)]
    bad_crc = bytearray(encode_frame(infer[3]))
    bad_crc[-1] ^= 0x40
    steps = ([step(bytes([Command.INFO])), step(infer[0]), step(infer[1])]
             + [step(request) for request in zero_params] + [step(infer[2])]
             + [step(request) for request in reload]
             + [step(infer[2]),
                {"send": bytes(bad_crc).hex(), "timeout": long},
                {"send": encode_frame(infer[3])[:40].hex(), "timeout": long},
                step(bytes([0x55, 1, 2])),
                step(infer[3])])
    result = _exchange(board["model"], tmp_path, steps)
    answers = result["answers"]
    assert result["uart_errors"] == []
    assert all(len(frames) == 1 and frames[0] is not None for frames in answers), answers
    replies = [bytes.fromhex(frames[0]) for frames in answers]

    def app_reply(index):
        return decode_reply(replies[index])

    parse_info(app_reply(0)).check(compiled)  # raises unless it describes this board
    assert torch.equal(decode_infer(compiled, app_reply(1)), expected[0])
    assert torch.equal(decode_infer(compiled, app_reply(2)), expected[1])
    for index in range(3, 3 + len(zero_params)):
        assert app_reply(index)[0] == Status.OK
    corrupted = 3 + len(zero_params)
    assert not torch.equal(decode_infer(compiled, app_reply(corrupted)), expected[2])
    for index in range(corrupted + 1, corrupted + 1 + len(reload)):
        assert app_reply(index)[0] == Status.OK
    base = corrupted + 1 + len(reload)
    assert torch.equal(decode_infer(compiled, app_reply(base)), expected[2])
    assert replies[base + 1] == bytes([0xEE, ErrorCode.CRC])
    assert replies[base + 2] == bytes([0xEE, ErrorCode.TRUNCATED])
    assert app_reply(base + 3) == bytes([Status.BAD_COMMAND])
    assert torch.equal(decode_infer(compiled, app_reply(base + 4)), expected[3])
    print(f"board test: {time.monotonic() - started:.0f} s wall")
    # A short soak of the link on the same top; test_link_soak (slow) is the long one.
    _soak(board, tmp_path, 150, seed=1)


def test_board_run_cli_over_a_socket(board, capsys, tmp_path):
    """``olmac board run --program DIR --inputs X.npy --check`` against the simulated board
    (UART bridged to a TCP socket): zero mismatches on the preloaded memories and again
    after ``--load``, and the logits it writes equal golden run_integer."""
    work = board["work"]
    port_file = work / "port"
    port_file.unlink(missing_ok=True)
    job = {"divisor": DIVISOR, "port_file": str(port_file), "connections": 2,
           "accept_timeout": 600}
    failure = []

    def simulate():
        try:
            _simulate(board["model"], tmp_path, "serve", job)
        except SystemExit as error:
            failure.append(error)

    simulation = threading.Thread(target=simulate)
    simulation.start()
    deadline = time.monotonic() + 120
    while not port_file.exists() and time.monotonic() < deadline and simulation.is_alive():
        time.sleep(0.2)
    assert port_file.exists(), f"the simulation did not start; see {tmp_path / 'serve.log'}"
    port = f"socket://127.0.0.1:{port_file.read_text()}"
    common = ["board", "run", "--program", str(work / "program"), "--inputs",
              str(work / "pixels.npy"), "--port", port, "--timeout", "120", "--check"]
    main(common)
    main(common + ["--load", "--out", str(work / "logits.npy")])
    simulation.join()
    assert not failure, f"the simulation failed; see {tmp_path / 'serve.log'}"
    output = capsys.readouterr().out
    assert output.count("4 images: 0 mismatches against the golden integer model") == 2
    assert torch.equal(torch.from_numpy(np.load(work / "logits.npy")),
                       run_integer(board["program"], board["pixels"]))


def _runs_bit_exact(top, compiled, program, pixels, run_dir):
    """``top`` answers INFO for ``compiled`` and runs ``pixels`` bit-exact against golden
    run_integer, at its UART pins."""
    steps = [{"send": encode_frame(payload).hex(), "timeout": 400_000}
             for payload in [bytes([Command.INFO])]
             + [encode_infer(compiled, image) for image in pixels]]
    result = _exchange(_build(top), run_dir, steps)
    assert result["uart_errors"] == []
    assert all(len(frames) == 1 and frames[0] for frames in result["answers"]), result
    replies = [decode_reply(bytes.fromhex(frames[0])) for frames in result["answers"]]
    parse_info(replies[0]).check(compiled)
    logits = torch.stack([decode_infer(compiled, reply) for reply in replies[1:]])
    assert torch.equal(logits, run_integer(program, pixels))


@pytest.mark.slow
def test_board_loads_a_program_with_lookup_tables(tmp_path):
    """At the UART pins of a board top preloaded with zero tables, a program with a
    sigmoid and a Hardswish gives other logits than golden's; after the host's LOAD of
    every memory image, tables included (``load_requests``, memory 4), and RESTART, its
    images run bit-exact against golden run_integer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Sigmoid(), torch.nn.Linear(6, 5),
                                torch.nn.Hardswish(), torch.nn.Linear(5, 3))
    program = quantize_model(model.eval(), torch.rand(64, 6), act_bits=4, weight_bits=4,
                             act_calibration="max")
    compiled = compile_program(program, width=WIDTH)
    zero_tables = dataclasses.replace(compiled, contents={
        **compiled.contents, "tables": [0] * compiled.config.table_depth})
    top = NetworkBoard(zero_tables, divisor=DIVISOR)
    pixels = torch.randint(0, 17, (3, 6), generator=torch.Generator().manual_seed(2))
    info = parse_info(top.app.info())
    loads = [request for request, _ in load_requests(compiled, info, top.app.request_bytes)]
    steps = [{"send": encode_frame(payload).hex(), "timeout": 400_000}
             for payload in [encode_infer(compiled, pixels[0]), *loads]
             + [encode_infer(compiled, image) for image in pixels]]
    result = _exchange(_build(top), tmp_path, steps)
    assert result["uart_errors"] == []
    replies = [decode_reply(bytes.fromhex(frames[0])) for frames in result["answers"]]
    expected = run_integer(program, pixels)
    assert not torch.equal(decode_infer(compiled, replies[0]), expected[0])
    assert all(reply[0] == Status.OK for reply in replies[1:1 + len(loads)])
    logits = torch.stack([decode_infer(compiled, reply) for reply in replies[1 + len(loads):]])
    assert torch.equal(logits, expected)


@pytest.mark.slow
def test_ecp5_board_runs_the_demo_cnn(tmp_path):
    """The ULX3S-85F's board top as ``olmac board build --board ulx3s-85f`` builds it
    (``board_defaults``: width 16, parallel requantizer, wide memories) answers INFO for the
    demo CNN and runs its images bit-exact against golden run_integer."""
    options = board_defaults("ulx3s-85f")
    program, compiled, data = demo_network("cnn", width=options.pop("width"))
    top = NetworkBoard(compiled, divisor=DIVISOR, link_buffers=default_link_buffers("ulx3s-85f"),
                       **options)
    _runs_bit_exact(top, compiled, program, to_pixels(data.images[:6]), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name, width", [("icebreaker", 2), ("icebreaker", 4),
                                         ("ulx3s-85f", 8)])
def test_users_program_on_the_board_tops_that_are_built(board, tmp_path, name, width):
    """The artifact's board tops as ``olmac board build --program`` builds them for the
    iCEBreaker (its default width 2: serial requantizer, narrow memories, packed
    products, address stages; width 4, issue 14's target: LUT products but lanes 0 and 1
    of each column in DSP blocks) and for the ULX3S-85F at width 8 (parallel requantizer,
    wide memories) run its images bit-exact against golden run_integer."""
    options = board_defaults(name)
    options.pop("width")
    compiled = compile_program(board["program"], width=width)
    multipliers = default_array_multipliers(name, width)
    top = NetworkBoard(compiled, divisor=DIVISOR, multipliers=multipliers,
                       dsp_lane_pairs=(default_dsp_lane_pairs(name, width)
                                       if multipliers != "packed" else 0),
                       link_buffers=default_link_buffers(name), **options)
    _runs_bit_exact(top, compiled, board["program"], board["pixels"], tmp_path)


#: Kinds of soak step and their weights; all but "good" and "pair" are damaged (30 %).
_SOAK_KINDS = {"good": 60, "pair": 10, "flip": 8, "sync": 4, "truncate": 5, "drop": 5,
               "garbage": 5, "framing": 3}


def _soak_steps(rng, frames, request, timeout):
    """At least ``frames`` frames of ``request`` (whose answer is known), most of them whole,
    the rest damaged as _SOAK_KINDS says. Returns ``(steps, expected)``: per step the
    answers it must get, each ``("reply", None)`` (the request's reply) or ``("error",
    codes)`` (an error frame with one of ``codes``)."""
    frame = encode_frame(request)
    reply, crc = ("reply", None), lambda *codes: ("error", set(codes))
    steps, expected, sent = [], [], 0
    kinds, weights = zip(*_SOAK_KINDS.items())
    while sent < frames:
        kind = rng.choices(kinds, weights)[0]
        data, bad_stop_at = frame, None
        if kind == "good":
            answers = [reply]
        elif kind == "pair":  # two frames back to back, answered in order
            data, answers = frame + frame, [reply, reply]
        elif kind == "flip":  # a bit of the payload or the CRC
            data = bytearray(frame)
            data[rng.randrange(3, len(frame))] ^= 1 << rng.randrange(8)
            answers = [crc(ErrorCode.CRC)]
        elif kind == "sync":  # the sync byte damaged: the rest is garbage
            data = bytes([SYNC ^ (1 << rng.randrange(8))]) + frame[1:]
            answers = [crc(ErrorCode.GARBAGE)]
        elif kind == "truncate":
            data, answers = frame[:rng.randrange(1, len(frame))], [crc(ErrorCode.TRUNCATED)]
        elif kind == "drop":  # a length byte lost: a wrong length; a later one: a short frame
            index = rng.randrange(1, len(frame))
            data = frame[:index] + frame[index + 1:]
            answers = [crc(ErrorCode.LENGTH, ErrorCode.TRUNCATED, ErrorCode.CRC)]
        elif kind == "garbage":  # stray bytes before a whole frame
            stray = bytes(rng.choice([b for b in range(256) if b != SYNC])
                          for _ in range(rng.randrange(1, 8)))
            data, answers = stray + frame, [crc(ErrorCode.GARBAGE), reply]
        else:  # a byte with a low stop bit
            bad_stop_at = rng.randrange(len(frame))
            answers = [crc(ErrorCode.FRAMING)]
        sent += 2 if kind == "pair" else 1
        steps.append({"send": bytes(data).hex(), "timeout": 50_000, "poll": 50,
                      "answers": len(answers), "settle": 2 * timeout,
                      **({"bad_stop_at": bad_stop_at} if bad_stop_at is not None else {})})
        expected.append(answers)
    return steps, expected


def _check_soak(answers, expected, app_reply):
    """Every step got exactly its answers: whole frames the request's reply, damaged ones an
    error frame of an allowed code (never a reply). Returns the damaged frames counted."""
    damaged = 0
    for index, (got, wanted) in enumerate(zip(answers, expected)):
        assert len(got) == len(wanted) and None not in got, (index, got, wanted)
        for frame, (kind, codes) in zip(got, wanted):
            payload = bytes.fromhex(frame)
            if kind == "reply":
                assert decode_reply(payload) == app_reply, (index, got)
            else:
                assert payload[0] == 0xEE and payload[1] in codes, (index, got, codes)
        damaged += any(kind == "error" for kind, _ in wanted)
    return damaged


def _soak(board, run_dir, frames, seed):
    """``frames`` INFO frames (30 % damaged) to the board top, then one INFER: every answer
    as expected and the inference bit-exact against golden ``run_integer``."""
    program, compiled, top, pixels = (board[key] for key in
                                      ("program", "compiled", "top", "pixels"))
    steps, expected = _soak_steps(random.Random(seed), frames, bytes([Command.INFO]),
                                  LINK_TIMEOUT)
    steps.append({"send": encode_frame(encode_infer(compiled, pixels[0])).hex(),
                  "timeout": 400_000})
    started = time.monotonic()
    result = _exchange(board["model"], run_dir, steps)
    assert result["uart_errors"] == []
    damaged = _check_soak(result["answers"][:-1], expected, top.app.info())
    assert 10 * damaged >= len(expected)
    final = result["answers"][-1]
    assert len(final) == 1
    assert torch.equal(decode_infer(compiled, decode_reply(bytes.fromhex(final[0]))),
                       run_integer(program, pixels[:1])[0])
    print(f"link soak: {frames} frames, {damaged} damaged, "
          f"{time.monotonic() - started:.0f} s wall")


@pytest.mark.slow
def test_link_soak(board, tmp_path):
    """10⁴ frames, 30 % damaged, on the board top at its pins: the link never wedges, every
    whole frame gets its reply, every damaged one an error, and inference stays bit-exact."""
    _soak(board, tmp_path, 10_000, seed=2)
