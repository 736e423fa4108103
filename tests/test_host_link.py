# amaranth: UnusedElaboratable=no
"""The framed host link (docs/host_link.md): the host-side codec against catalogue values
and the standard library, then the hardware on Amaranth's simulator against that codec.

(The first line silences UnusedElaboratable: the validation tests build components that
are never elaborated.)
"""

import binascii
import doctest
import os
import random
import threading

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

import olmac.host_link
from olmac.hw.host_link import (FrameReceiver, FrameTransmitter, HostLink, LoopbackApp,
                                RequestSlots, SerialHostLink)
from olmac.hw.uart import UARTReceiver, UARTTransmitter
from olmac.host_link import (FrameDecoder, FrameError, LinkError, SerialLink, crc16_ccitt,
                             decode_frame, decode_reply, encode_error, encode_frame, encode_reply)
from olmac.spec import ERROR_KIND, SYNC, ErrorCode

pytestmark = pytest.mark.filterwarnings("error")


# Host-side codec ---------------------------------------------------------------------------

def test_doctests():
    """The examples in olmac.host_link hold."""
    assert doctest.testmod(olmac.host_link).failed == 0


@pytest.mark.parametrize("data,crc", [
    (b"123456789", 0x29B1),     # the catalogue's check value for CRC-16/CCITT-FALSE
    (b"", 0xFFFF),              # nothing processed: the initial value
    (b"A", 0xB915),             # the value most CRC calculators list for "A"
])
def test_crc_check_values(data, crc):
    """CRC-16/CCITT-FALSE of known inputs."""
    assert crc16_ccitt(data) == crc


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc_matches_stdlib_and_continues(head, tail):
    """The CRC equals binascii.crc_hqx from 0xFFFF (an independent implementation of the
    same polynomial), and continuing from a partial result equals one pass."""
    assert crc16_ccitt(head + tail) == binascii.crc_hqx(head + tail, 0xFFFF)
    assert crc16_ccitt(tail, crc16_ccitt(head)) == crc16_ccitt(head + tail)


def test_frame_layout():
    """Sync, little-endian length, payload, little-endian CRC over length and payload."""
    payload = bytes(i & 0xFF for i in range(0x104))
    frame = encode_frame(payload)
    assert frame[:3] == bytes([0xA5, 0x04, 0x01])
    assert frame[3:-2] == payload
    assert frame[-2:] == crc16_ccitt(frame[1:-2]).to_bytes(2, "little")
    assert encode_reply(b"ok") == encode_frame(b"\x00ok")
    assert encode_error(ErrorCode.CRC) == encode_frame(bytes([0xEE, 0x01]))


@given(st.lists(st.binary(min_size=1, max_size=70), max_size=6), st.binary(max_size=20),
       st.integers(1, 9))
@settings(max_examples=60)
def test_decoder_round_trip_in_any_pieces(payloads, garbage, piece):
    """Frames fed in pieces of any size, after bytes without a sync byte, come back whole
    and in order; the skipped bytes are counted."""
    garbage = garbage.replace(bytes([SYNC]), b"")
    stream = garbage + b"".join(encode_frame(payload) for payload in payloads)
    decoder = FrameDecoder()
    decoded = []
    for start in range(0, len(stream), piece):
        decoded += decoder.feed(stream[start:start + piece])
    assert decoded == payloads
    assert decoder.skipped == len(garbage)
    assert decoder.pending == 0
    assert [decode_frame(encode_frame(payload)) for payload in payloads] == payloads


def test_decoder_damaged_frames():
    """A damaged frame raises FrameError; the decoder then finds the good frames after it
    and the one completed before it."""
    good, other = encode_frame(b"good"), encode_frame(b"other")
    bad_crc = bytearray(encode_frame(b"payload"))
    bad_crc[-1] ^= 0x10
    decoder = FrameDecoder(max_payload=8)
    with pytest.raises(FrameError, match=r"^Frame CRC must be 0x[0-9a-f]{4}, not 0x[0-9a-f]{4}$"):
        decoder.feed(good + bad_crc + other)
    assert decoder.feed(b"") == [b"good", b"other"]
    with pytest.raises(FrameError, match=r"^Frame length must be in 1\.\.8, not 9$"):
        decoder.feed(encode_frame(b"123456789"))
    with pytest.raises(FrameError, match=r"^Frame length must be in 1\.\.8, not 0$"):
        decoder.feed(bytes([SYNC, 0, 0]))
    # The tail of the refused frames holds no sync byte; the next frame is found.
    assert decoder.feed(other) == [b"other"]


def test_decode_frame_errors():
    frame = encode_frame(b"abc")
    with pytest.raises(FrameError, match=r"^Not a frame: 00 03 00"):
        decode_frame(b"\x00" + frame[1:])
    with pytest.raises(FrameError, match=r"^Frame of length 3 must be 8 bytes, not 7$"):
        decode_frame(frame[:-1])
    with pytest.raises(FrameError, match=r"^Frame length must be in 1\.\.2, not 3$"):
        decode_frame(frame, max_payload=2)


def test_decode_reply_and_errors():
    """Kind 0x00 is a reply, kind 0xEE an error frame that raises LinkError."""
    assert decode_reply(b"\x00\x01\x02") == b"\x01\x02"
    for code in ErrorCode:
        with pytest.raises(LinkError, match=rf"^device reported {code.name}: ") as info:
            decode_reply(decode_frame(encode_error(code)))
        assert info.value.code is code
    with pytest.raises(LinkError, match=r"^device reported 0x42: unknown error$") as info:
        decode_reply(bytes([ERROR_KIND, 0x42]))
    assert info.value.code == 0x42
    with pytest.raises(FrameError, match=r"^Frame kind must be 0x00 or 0xee, not 07$"):
        decode_reply(b"\x07")
    with pytest.raises(FrameError, match=r"^Error frame payload must be 2 bytes, not ee$"):
        decode_reply(b"\xee")


def test_host_codec_validation():
    with pytest.raises(ValueError, match=r"^Payload length must be in 1\.\.65535, not 0$"):
        encode_frame(b"")
    with pytest.raises(ValueError, match=r"^Payload length must be in 1\.\.65535, not 65536$"):
        encode_frame(bytes(65536))
    with pytest.raises(TypeError, match=r"^Maximum payload length must be an integer in "
                                        r"1\.\.65535, not 0$"):
        FrameDecoder(0)


# SerialLink over pyserial ------------------------------------------------------------------

def test_serial_link_loop():
    """Over pyserial's loopback URL the request frame comes back as the answer: a payload
    of kind 0x00 reads as a reply, kind 0xEE as an error."""
    pytest.importorskip("serial")
    with SerialLink("loop://", timeout=0.5) as link:
        assert link.request(b"\x00hello") == b"hello"
        with pytest.raises(LinkError, match=r"^device reported CRC: ") as info:
            link.request(bytes([ERROR_KIND, ErrorCode.CRC]))
        assert info.value.code is ErrorCode.CRC
        # A GARBAGE report is not the answer: it is raised only if nothing else comes.
        with pytest.raises(LinkError, match=r"^device reported GARBAGE: "):
            link.request(bytes([ERROR_KIND, ErrorCode.GARBAGE]))


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_serial_link_device_and_timeout():
    """On a real (pseudo-)terminal: a device thread answers one request; a second one
    times out with a TimeoutError that names the port."""
    pytest.importorskip("serial")
    device, terminal = os.openpty()
    name = os.ttyname(terminal)

    def answer():
        decoder, frames = FrameDecoder(), []
        while not frames:
            frames = decoder.feed(os.read(device, 64))
        os.write(device, b"\x5a" + encode_reply(frames[0][::-1]))  # with a stray byte first

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with SerialLink(name, 115200, timeout=0.3) as link:
            assert link.request(b"abc") == b"cba"
            thread.join()
            with pytest.raises(TimeoutError, match=rf"^No reply from {name} within 0\.3 s "
                                                   r"\(3 attempts: timeout, timeout, timeout\)$"):
                link.request(b"abc")
    finally:
        os.close(device)
        os.close(terminal)


# Parameter validation of the hardware ------------------------------------------------------

@pytest.mark.parametrize("factory,params,error,message", [
    (UARTReceiver, dict(divisor=3), TypeError,
     r"^UART divisor must be an integer in 4\.\.16777216, not 3$"),
    (UARTTransmitter, dict(divisor=4.0), TypeError,
     r"^UART divisor must be an integer in 4\.\.16777216, not 4\.0$"),
    (HostLink, dict(max_payload=0, timeout=10), TypeError,
     r"^Maximum payload length must be an integer in 1\.\.65535, not 0$"),
    (HostLink, dict(max_payload=65536, timeout=10), TypeError,
     r"^Maximum payload length must be an integer in 1\.\.65535, not 65536$"),
    (HostLink, dict(max_payload=8, max_reply=65535, timeout=10), TypeError,
     r"^Maximum reply length must be an integer in 1\.\.65534, not 65535$"),
    (HostLink, dict(max_payload=8, timeout=1), TypeError,
     r"^Inter-byte timeout must be an integer in 2\.\.4294967295, not 1$"),
    (HostLink, dict(max_payload=8, timeout=True), TypeError,
     r"^Inter-byte timeout must be an integer in 2\.\.4294967295, not True$"),
    (SerialHostLink, dict(divisor=2, max_payload=8), TypeError,
     r"^UART divisor must be an integer in 4\.\.16777216, not 2$"),
    (SerialHostLink, dict(divisor=8, max_payload=8, timeout=80), ValueError,
     r"^Inter-byte timeout must exceed one byte time of 80 cycles, not 80$"),
])
def test_parameter_validation(factory, params, error, message):
    with pytest.raises(error, match=message):
        factory(**params)


@pytest.mark.parametrize("part,params", [
    (FrameReceiver, dict(max_payload=0, timeout=10)),
    (RequestSlots, dict(max_payload=0)),
    (FrameTransmitter, dict(max_reply=0)),
])
def test_link_parts_refuse_an_empty_memory(part, params):
    """The parts of a HostLink check their memory capacities as the link does."""
    with pytest.raises(TypeError, match=r"^Maximum (payload|reply) length must be an integer "
                                        r"in 1\.\.6553[45], not 0$"):
        part(**params)


def test_properties():
    link = HostLink(max_payload=65535, timeout=100)
    assert (link.max_payload, link.max_reply, link.timeout) == (65535, 65534, 100)
    serial_link = SerialHostLink(divisor=5, max_payload=10, max_reply=3)
    assert (serial_link.divisor, serial_link.max_payload, serial_link.max_reply,
            serial_link.timeout) == (5, 10, 3, 200)
    assert UARTReceiver(divisor=7).divisor == UARTTransmitter(divisor=7).divisor == 7


# UART on the simulator ---------------------------------------------------------------------

async def _drive_pin(ctx, pin, byte, divisor, *, stop=1):
    for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [stop]:
        ctx.set(pin, bit)
        await ctx.tick().repeat(divisor)


@pytest.mark.parametrize("divisor", [4, 7])
def test_uart_loopback_under_stalls(divisor):
    """Bytes sent by the transmitter with random gaps arrive unchanged at a receiver on
    the same wire, which re-synchronizes on each start bit."""
    m = Module()
    m.submodules.tx = tx = UARTTransmitter(divisor=divisor)
    m.submodules.rx = rx = UARTReceiver(divisor=divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    sent = [random.Random(divisor).randrange(256) for _ in range(24)] + [0x00, 0xFF, 0x55]
    received = []
    rng = random.Random(3)

    async def source(ctx):
        for byte in sent:
            await ctx.tick().repeat(rng.choice([1, 1, 2, 13]))
            ctx.set(tx.data.valid, 1)
            ctx.set(tx.data.payload, byte)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)

    async def sink(ctx):
        # The receiver has no flow control: take each byte within the byte time.
        while len(received) < len(sent):
            ctx.set(rx.data.ready, rng.random() < 0.3)
            _, _, valid, ready, payload, error, overrun = await ctx.tick().sample(
                rx.data.valid, rx.data.ready, rx.data.payload, rx.framing_error, rx.overrun)
            assert not error and not overrun
            if valid and ready:
                received.append(payload)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    assert received == sent


def _run_receiver(divisor, drive, *, ready=True):
    """Run ``drive(ctx, dut)`` against a receiver; returns the bytes taken and the error
    strobes seen, in order."""
    dut = UARTReceiver(divisor=divisor)
    events = []

    async def monitor(ctx):
        ctx.set(dut.data.ready, ready)
        async for _, _, valid, payload, error, overrun in ctx.tick().sample(
                dut.data.valid, dut.data.payload, dut.framing_error, dut.overrun):
            if valid and ready:
                events.append(payload)
            if error:
                events.append("framing")
            if overrun:
                events.append("overrun")

    async def driver(ctx):
        await ctx.tick().repeat(5)
        await drive(ctx, dut)
        await ctx.tick().repeat(3 * divisor)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(driver)
    sim.run()
    return events


def test_uart_receiver_errors_and_resync():
    """A low stop bit drops the byte with a framing-error strobe and a break gives one
    error; a glitch shorter than half a bit is ignored; bytes sent 3 % slow (bit period
    33 for divisor 32) or 3 % fast (31) still arrive."""
    divisor = 32

    async def drive(ctx, dut):
        await _drive_pin(ctx, dut.rx, 0x3C, divisor)
        await _drive_pin(ctx, dut.rx, 0x81, divisor, stop=0)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3)
        await _drive_pin(ctx, dut.rx, 0x42, divisor)
        ctx.set(dut.rx, 0)                            # a break: one error only
        await ctx.tick().repeat(40 * divisor)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(2 * divisor)
        ctx.set(dut.rx, 0)                            # a glitch
        await ctx.tick().repeat(divisor // 2 - 2)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(2 * divisor)
        for period in (33, 31):
            await _drive_pin(ctx, dut.rx, 0xA5, period)
            await _drive_pin(ctx, dut.rx, 0x5A, period)

    assert _run_receiver(divisor, drive) == [0x3C, "framing", 0x42, "framing",
                                             0xA5, 0x5A, 0xA5, 0x5A]


def test_uart_receiver_overrun():
    """A byte that completes while the previous one is still untaken is dropped with an
    overrun strobe; the first one stays offered."""
    async def drive(ctx, dut):
        await _drive_pin(ctx, dut.rx, 0x11, 4)
        await _drive_pin(ctx, dut.rx, 0x22, 4)
        assert ctx.get(dut.data.valid) and ctx.get(dut.data.payload) == 0x11

    assert _run_receiver(4, drive, ready=False) == ["overrun"]


# HostLink on the simulator, at the byte-stream level ----------------------------------------

MAX_PAYLOAD, MAX_REPLY, TIMEOUT = 16, 16, 40


def _transform(request):
    """The test application's answer: the request reversed with every byte inverted, so
    a reply can never pass for its request; a request starting 0xFF asks for a reply one
    byte too long for the link."""
    if request[0] == 0xFF:
        return bytes(MAX_REPLY + 1)
    return bytes(0xFF ^ byte for byte in reversed(request))


def _flip(frame, index, bit=0):
    frame = bytearray(frame)
    frame[index] ^= 1 << bit
    return bytes(frame)


def _scenario():
    """(what the host does, the frames the link must answer with), step by step, and the
    good payloads. Each
    step is a list of byte strings to send, ``"error"`` (a UART framing-error strobe),
    ``"hold"``/``"release"`` (the application stops/starts taking requests)."""
    rng = random.Random(11)
    good = [bytes(rng.randrange(256) for _ in range(n)) for n in (1, 5, MAX_PAYLOAD, 2, 9)]
    reply = lambda payload: encode_reply(_transform(payload))
    frame = encode_frame(good[1])
    assert frame[-1] != SYNC
    oversized = encode_frame(bytes(MAX_PAYLOAD + 1))
    return [
        ([encode_frame(good[0])], [reply(good[0])]),
        ([encode_frame(good[2])], [reply(good[2])]),
        ([_flip(frame, -1, 7)], [encode_error(ErrorCode.CRC)]),
        ([_flip(frame, 4, 3)], [encode_error(ErrorCode.CRC)]),
        # length 5 read as 4: the CRC fails and the last byte is left over as garbage
        ([_flip(frame, 1, 0)], [encode_error(ErrorCode.CRC), encode_error(ErrorCode.GARBAGE)]),
        ([_flip(frame, 1, 1)], [encode_error(ErrorCode.TRUNCATED)]),  # read as 7: cut short
        ([oversized], [encode_error(ErrorCode.LENGTH)]),
        ([bytes([SYNC, 0, 0, 0xFF, 0xFF])], [encode_error(ErrorCode.LENGTH)]),
        ([frame[:6]], [encode_error(ErrorCode.TRUNCATED)]),
        ([frame[:1]], [encode_error(ErrorCode.TRUNCATED)]),
        ([b"\x00\x13\x37"], [encode_error(ErrorCode.GARBAGE)]),
        ([b"\x42" + frame], [encode_error(ErrorCode.GARBAGE), reply(good[1])]),
        ([frame[:4], "error", frame[4:]], [encode_error(ErrorCode.FRAMING)]),
        (["error"], [encode_error(ErrorCode.FRAMING)]),
        # Two frames wait for the application; a third one finds no room.
        (["hold", encode_frame(good[3]), encode_frame(good[4]), encode_frame(good[0])],
         [encode_error(ErrorCode.BUSY)]),
        (["release"], [reply(good[3]), reply(good[4])]),
        ([encode_frame(b"\xff\x01")], [encode_error(ErrorCode.REPLY_OVERFLOW)]),
        ([encode_frame(good[4])], [reply(good[4])]),
        ([encode_frame(good[0]), encode_frame(good[2])], [reply(good[0]), reply(good[2])]),
    ], good


def _run_host_link(pause, seed, scenario):
    """Play ``scenario`` into a HostLink with random stalls (gaps below the timeout on
    ``rx``, ``pause`` on the application's and the transmitter's side); returns the
    bytes sent on ``tx`` after each step and the requests the application saw."""
    dut = HostLink(max_payload=MAX_PAYLOAD, max_reply=MAX_REPLY, timeout=TIMEOUT)
    rng = random.Random(seed)
    received = bytearray()
    requests = []
    answers = []
    hold = [False]

    async def host(ctx):
        for actions, expected in scenario:
            start = len(received)
            for action in actions:
                if action == "error":
                    ctx.set(dut.rx_error, 1)
                    await ctx.tick()
                    ctx.set(dut.rx_error, 0)
                elif action in ("hold", "release"):
                    hold[0] = action == "hold"
                else:
                    for byte in action:
                        if pause:
                            await ctx.tick().repeat(rng.randrange(1, TIMEOUT // 4))
                        ctx.set(dut.rx.valid, 1)
                        ctx.set(dut.rx.payload, byte)
                        await ctx.tick()
                        assert ctx.get(dut.rx.ready)
                        ctx.set(dut.rx.valid, 0)
            want = sum(map(len, expected))
            for _ in range(100 * want + 20 * TIMEOUT):
                if len(received) >= start + want:
                    break
                await ctx.tick()
            await ctx.tick().repeat(3 * TIMEOUT)    # anything more would show up here
            answers.append(bytes(received[start:]))

    async def application(ctx):
        while True:
            request = bytearray()
            while not request or not last:
                ready = not hold[0] and rng.random() >= pause
                ctx.set(dut.app.request.ready, ready)
                _, _, valid, byte, last = await ctx.tick().sample(
                    dut.app.request.valid, dut.app.request.payload.data,
                    dut.app.request.payload.last)
                if not (valid and ready):
                    last = False
                    continue
                request.append(byte)
            ctx.set(dut.app.request.ready, 0)
            requests.append(bytes(request))
            reply = _transform(request)
            for index, byte in enumerate(reply):
                while rng.random() < pause:
                    await ctx.tick()
                ctx.set(dut.app.reply.valid, 1)
                ctx.set(dut.app.reply.payload.data, byte)
                ctx.set(dut.app.reply.payload.last, index == len(reply) - 1)
                await ctx.tick().until(dut.app.reply.ready)
                ctx.set(dut.app.reply.valid, 0)

    async def serial_out(ctx):
        while True:
            ready = rng.random() >= pause
            ctx.set(dut.tx.ready, ready)
            _, _, valid, byte = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
            if valid and ready:
                received.append(byte)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(application, background=True)
    sim.add_testbench(serial_out, background=True)
    sim.add_testbench(host)
    sim.run()
    return answers, requests


def test_request_slots_hold_two_frames_in_order():
    """RequestSlots (docs/host_link.md §3): two checked frames wait for the application and
    come out whole, oldest first; while both wait, no slot is free (``busy``); a frame that
    was written but never committed (one that failed its CRC) never comes out."""
    dut = RequestSlots(max_payload=4)
    frames = [b"\x01\x02\x03", b"\x04", b"\x05\x06\x07\x08"]
    received, busy, release = [], [], []

    async def receiver(ctx):
        async def write(frame, *, commit=True):
            for offset, byte in enumerate(frame):
                ctx.set(dut.write.en, 1)
                ctx.set(dut.write.offset, offset)
                ctx.set(dut.write.data, byte)
                await ctx.tick()
            ctx.set(dut.write.en, 0)
            if commit:
                ctx.set(dut.write.commit, 1)
                ctx.set(dut.write.length, len(frame))
                await ctx.tick()
                ctx.set(dut.write.commit, 0)

        await write(b"\xaa\xbb", commit=False)
        await write(frames[0])
        await write(frames[1])
        busy.append(ctx.get(dut.write.busy))
        release.append(True)
        await ctx.tick().until(~dut.write.busy)
        await write(frames[2])

    async def application(ctx):
        await ctx.tick().repeat(20)
        assert release, "the receiver has not written both frames"
        request = dut.request
        ctx.set(request.ready, 1)
        frame = bytearray()
        while len(received) < len(frames):
            _, _, valid, byte, last = await ctx.tick().sample(
                request.valid, request.payload.data, request.payload.last)
            if valid:
                frame.append(byte)
                if last:
                    received.append(bytes(frame))
                    frame.clear()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(receiver)
    sim.add_testbench(application)
    sim.run_until(1e-6 * 200)
    assert busy == [1]
    assert received == frames


def test_transmitter_frames_a_queued_overflow_code_alone():
    """An error code on ``errors`` gets its own frame and leaves a collected reply to its
    own, whatever the code: a queued ``REPLY_OVERFLOW`` code too (the formal proof of the
    transmitter's frame counts found the reply dropped with it: a frame's end cleared the
    reply when its code read ``REPLY_OVERFLOW``)."""
    dut = FrameTransmitter(max_reply=4)
    expected = encode_error(ErrorCode.REPLY_OVERFLOW) + encode_reply(b"\x01\x02")
    sent = bytearray()

    async def producers(ctx):
        # The code first, then the reply, which completes while the error frame goes out.
        ctx.set(dut.errors.valid, 1)
        ctx.set(dut.errors.payload, ErrorCode.REPLY_OVERFLOW)
        await ctx.tick().until(dut.errors.ready)
        ctx.set(dut.errors.valid, 0)
        for index, byte in enumerate(b"\x01\x02"):
            ctx.set(dut.reply.valid, 1)
            ctx.set(dut.reply.payload.data, byte)
            ctx.set(dut.reply.payload.last, index == 1)
            await ctx.tick().until(dut.reply.ready)
        ctx.set(dut.reply.valid, 0)

    async def host(ctx):
        ctx.set(dut.tx.ready, 1)
        for _ in range(60):
            _, _, valid, byte = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
            if valid:
                sent.append(byte)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producers)
    sim.add_testbench(host)
    sim.run()
    assert bytes(sent) == expected


@pytest.mark.parametrize("pause", [0.0, 0.5])
def test_host_link_answers_every_frame(pause):
    """Every step's answer equals the frames the host-side codec builds: replies to good
    frames; CRC, LENGTH, TRUNCATED, GARBAGE, FRAMING, BUSY and REPLY_OVERFLOW error frames
    for bad ones; good frames after bad ones still get through. The application sees each
    good frame once, whole, and never a byte of a bad one."""
    scenario, good = _scenario()
    answers, requests = _run_host_link(pause, int(pause * 10), scenario)
    for step, ((actions, expected), answer) in enumerate(zip(scenario, answers)):
        assert answer == b"".join(expected), f"step {step}: {actions}"
    assert requests == [good[0], good[2], good[1], good[3], good[4], b"\xff\x01", good[4],
                        good[0], good[2]]


async def _send_serial(ctx, pin, data, divisor):
    for byte in data:
        await _drive_pin(ctx, pin, byte, divisor)


async def _receive_serial(ctx, pin, divisor, count):
    """``count`` bytes from an 8N1 line, sampled in the middle of each bit."""
    received = bytearray()
    while len(received) < count:
        await ctx.tick().until(~pin)
        await ctx.tick().repeat(divisor // 2)
        assert not ctx.get(pin), "start bit"
        byte = 0
        for bit in range(8):
            await ctx.tick().repeat(divisor)
            byte |= ctx.get(pin) << bit
        await ctx.tick().repeat(divisor)
        assert ctx.get(pin), "stop bit"
        received.append(byte)
    return bytes(received)


def test_serial_host_link_loopback():
    """At the pins: a UART-level SerialHostLink with the LoopbackApp echoes a good frame,
    answers a damaged one with a CRC error frame and a stop bit held low with a FRAMING
    error frame, then echoes again."""
    divisor = 4
    m = Module()
    m.submodules.link = link = SerialHostLink(divisor=divisor, max_payload=8)
    m.submodules.app = app = LoopbackApp()
    wiring.connect(m, link.app, app.host)
    frame = encode_frame(b"\x01\x02\xa5")
    steps = [
        (frame, encode_reply(b"\x01\x02\xa5")),
        (_flip(frame, 3), encode_error(ErrorCode.CRC)),
        (frame[:2], encode_error(ErrorCode.FRAMING)),
        (frame, encode_reply(b"\x01\x02\xa5")),
    ]
    answers = []

    async def host(ctx):
        for index, (request, expected) in enumerate(steps):
            await _send_serial(ctx, link.rx, request, divisor)
            if index == 2:
                await _drive_pin(ctx, link.rx, 0x55, divisor, stop=0)
                ctx.set(link.rx, 1)
            answers.append(await _receive_serial(ctx, link.tx, divisor, len(expected)))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.run()
    assert answers == [expected for _, expected in steps]


# Retries ------------------------------------------------------------------------------------

class _FakeSerial:
    """A serial port whose device answers each request frame from a script: ``None`` (no
    answer: the host times out), an error code (an error frame), ``b"..."`` (garbled bytes
    in place of the answer) or ``"echo"`` (the reply is the request's payload reversed)."""

    def __init__(self, script):
        self._script = list(script)
        self._decoder = FrameDecoder()
        self._pending = b""
        self.requests = 0

    def write(self, data):
        for payload in self._decoder.feed(data):
            self.requests += 1
            answer = self._script.pop(0)
            if answer == "echo":
                self._pending += encode_reply(payload[::-1])
            elif isinstance(answer, bytes):
                self._pending += answer
            elif answer is not None:
                self._pending += encode_error(answer)

    def read(self, size):
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    @property
    def in_waiting(self):
        return len(self._pending)

    def flush(self):
        pass

    def reset_input_buffer(self):
        self._pending = b""

    def close(self):
        pass


def _fake_link(monkeypatch, script, **options):
    serial = pytest.importorskip("serial")
    port = _FakeSerial(script)
    monkeypatch.setattr(serial, "serial_for_url", lambda *args, **kwargs: port)
    return SerialLink("fake://", timeout=0.05, **options), port


def test_request_retries_after_damage_and_timeouts(monkeypatch):
    """A CRC report, a lost answer and a garbled answer are each followed by a resend; the
    fourth attempt's reply is returned and every attempt is reported."""
    garbled = bytearray(encode_reply(b"xy"))
    garbled[-1] ^= 0x01
    link, port = _fake_link(monkeypatch, [ErrorCode.CRC, None, bytes(garbled), "echo"],
                            attempts=4)
    assert link.request(b"abc") == b"cba"
    assert link.last_attempts == ["CRC", "timeout", "timeout", "ok"]
    assert port.requests == 4


def test_request_gives_up_after_its_attempts(monkeypatch):
    """Attempts are bounded: after three BUSY reports the third one is raised, naming every
    attempt, and no fourth frame is sent."""
    link, port = _fake_link(monkeypatch, [ErrorCode.BUSY] * 3 + ["echo"])
    with pytest.raises(LinkError, match=r"^device reported BUSY: .* \(3 attempts: BUSY, BUSY, "
                                        r"BUSY\)$"):
        link.request(b"abc")
    assert port.requests == 3


def test_request_does_not_retry_an_overflow(monkeypatch):
    """REPLY_OVERFLOW would recur: it is raised after one attempt."""
    link, port = _fake_link(monkeypatch, [ErrorCode.REPLY_OVERFLOW, "echo"])
    with pytest.raises(LinkError, match=r"\(1 attempt: REPLY_OVERFLOW\)$"):
        link.request(b"abc")
    assert port.requests == 1


def test_request_timeout_names_its_attempts(monkeypatch):
    link, _ = _fake_link(monkeypatch, [None, None], attempts=2)
    with pytest.raises(TimeoutError, match=r"^No reply from fake:// within 0\.05 s "
                                           r"\(2 attempts: timeout, timeout\)$"):
        link.request(b"abc")


@pytest.mark.parametrize("attempts", [0, 17, 2.0])
def test_serial_link_refuses_bad_attempts(monkeypatch, attempts):
    with pytest.raises(TypeError, match=rf"^Attempts must be an integer in 1\.\.16, "
                                        rf"not {attempts}$"):
        _fake_link(monkeypatch, [], attempts=attempts)
