"""Slow tier: the network board top (UART host link + NetworkApp + NetworkCore with the
serial requantizer and narrow memories) on Verilator, driven at its UART pins.

The demo MLP (4-bit value-aware, width 4) is preloaded; the test asks INFO, runs images
on the preloaded memories, corrupts the parameter memory with LOAD (the logits change),
loads every memory image back with LOAD and RESTART (the logits are bit-exact again), and
sends a frame with a bad CRC, a truncated frame and a bad command, each answered with an
error, after which INFER is still bit-exact against golden ``run_integer``.
"""

import json
from pathlib import Path
import time

import torch
from amaranth.back import verilog

from olmac.fpga.board import NetworkBoard, demo_network
from olmac.golden.program import run_integer, to_pixels
from olmac.board import decode_infer, encode_infer, encode_load, load_requests, parse_info
from olmac.host_link import decode_reply, encode_frame
from olmac.spec import Command, ErrorCode, Status
from olmac.sim.board_tb import JOB_ENV, PUBLIC_PORTS
from olmac.sim.runner import build_verilator

BUILD_ROOT = Path(__file__).resolve().parent.parent / "build" / "sim" / "board"
TOPLEVEL = "olmac_board"
DIVISOR = 4


def _build(top, build_dir):
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{TOPLEVEL}.v"
    text = verilog.convert(top, name=TOPLEVEL)
    changed = not source.exists() or source.read_text() != text
    if changed:
        source.write_text(text)
    return build_verilator(source, TOPLEVEL, build_dir, always=changed, ports=PUBLIC_PORTS)


def _exchange(runner, build_dir, steps):
    results = build_dir / "answers.json"
    results.unlink(missing_ok=True)
    job = {"divisor": DIVISOR, "results": str(results), "steps": steps}
    try:
        runner.test(test_module="olmac.sim.board_tb", hdl_toplevel=TOPLEVEL,
                    hdl_toplevel_lang="verilog", build_dir=build_dir, test_dir=build_dir,
                    testcase="exchange",
                    extra_env={JOB_ENV: json.dumps(job)},
                    log_file=build_dir / "test.log", results_xml=str(build_dir / "results.xml"))
    except SystemExit:
        pass
    assert results.exists(), f"the simulation failed; see {build_dir / 'test.log'}"
    return json.loads(results.read_text())


def test_board_at_the_pins():
    """Preloaded and reloaded inference are bit-exact against golden run_integer; LOAD
    changes what the core computes; bad CRC, truncated frames and a bad command get error
    answers and the link recovers."""
    started = time.monotonic()
    program, compiled, data = demo_network("mlp", width=4)
    top = NetworkBoard(compiled, divisor=DIVISOR)
    pixels = to_pixels(data.images[:4])
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
    runner = _build(top, BUILD_ROOT)
    result = _exchange(runner, BUILD_ROOT, steps)
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
