"""cocotb testbench of :class:`hw.host_link.SerialHostLink` on Verilator, at the pins.

The top (:func:`loopback_top`) is a UART host link with :class:`hw.host_link.LoopbackApp`
behind it. A UART driver plays the host on ``rx`` bit by bit, a UART monitor samples
``tx`` in the middle of each bit, and an in-order scoreboard compares every byte with
the frames the host-side codec (:mod:`olmac.host_link`, not the hardware) says the link
must answer with. The configuration is named by the ``OLMAC_HOST_LINK`` environment
variable (JSON, see :func:`config_env`).
"""

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge

from olmac.host_link import encode_error, encode_frame, encode_reply
from olmac.spec import SYNC, ErrorCode

__all__ = ["CONFIG_ENV", "config_env", "loopback_top", "UARTDriver", "UARTMonitor",
           "HostLinkTestbench", "scenario"]

#: Environment variable through which the simulator process finds its configuration.
CONFIG_ENV = "OLMAC_HOST_LINK"


def config_env(*, divisor: int, max_payload: int, timeout: int, seed: int) -> dict[str, str]:
    """The environment that tells :func:`exchange_frames` what the top was built with."""
    return {CONFIG_ENV: json.dumps({"divisor": divisor, "max_payload": max_payload,
                                    "timeout": timeout, "seed": seed})}


def loopback_top(*, divisor: int, max_payload: int, timeout: int, **_):
    """The device under test: a :class:`SerialHostLink` answering with a loopback
    application. Ports ``rx`` and ``tx`` (plus ``clk``, ``rst``)."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from olmac.hw.host_link import LoopbackApp, SerialHostLink

    class LoopbackTop(wiring.Component):
        rx: In(1, init=1)
        tx: Out(1, init=1)

        def elaborate(self, platform):
            m = Module()
            m.submodules.link = link = SerialHostLink(divisor=divisor,
                                                      max_payload=max_payload,
                                                      timeout=timeout)
            m.submodules.app = app = LoopbackApp()
            wiring.connect(m, link.app, app.host)
            m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]
            return m

    return LoopbackTop()


class UARTDriver:
    """Sends bytes on an 8N1 line, ``divisor`` clock cycles per bit."""

    def __init__(self, clk, pin, divisor):
        self._clk = clk
        self._pin = pin
        self._divisor = divisor
        self._pin.value = 1

    async def send(self, data: bytes, *, bad_stop_at: int | None = None):
        """Send ``data``; the byte at index ``bad_stop_at`` gets a low stop bit (the line
        then returns high for a bit)."""
        for index, byte in enumerate(data):
            stop = 0 if index == bad_stop_at else 1
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [stop]:
                self._pin.value = bit
                await ClockCycles(self._clk, self._divisor)
            if not stop:
                self._pin.value = 1
                await ClockCycles(self._clk, self._divisor)


class UARTMonitor:
    """Receives 8N1 bytes from a line, sampling each bit in its middle, and hands each
    byte to ``on_byte``; a bad start or stop bit is recorded in ``errors``."""

    def __init__(self, clk, pin, divisor, on_byte):
        self._clk = clk
        self._pin = pin
        self._divisor = divisor
        self._on_byte = on_byte
        self.errors = []

    async def run(self):
        while True:
            await FallingEdge(self._pin)
            await ClockCycles(self._clk, self._divisor // 2)
            if int(self._pin.value) != 0:
                self.errors.append("start bit")
                continue
            byte = 0
            for bit in range(8):
                await ClockCycles(self._clk, self._divisor)
                byte |= int(self._pin.value) << bit
            await ClockCycles(self._clk, self._divisor)
            if int(self._pin.value) != 1:
                self.errors.append(f"stop bit of 0x{byte:02x}")
            self._on_byte(byte)


def _flip(frame, index, bit):
    frame = bytearray(frame)
    frame[index] ^= 1 << bit
    return bytes(frame)


def scenario(max_payload: int, seed: int):
    """Steps of (name, what the host sends, the answer the link owes), from the host-side
    codec. What is sent is a list of ``bytes`` or ``(bytes, index)``: the byte at
    ``index`` has a low stop bit."""
    rng = random.Random(seed)

    def payload(length):
        return bytes(rng.randrange(256) for _ in range(length))

    def good(length):
        data = payload(length)
        return encode_frame(data), encode_reply(data)

    steps = []
    for length in (1, 7, max_payload):
        frame, reply = good(length)
        steps.append((f"good {length}", [frame], reply))
    frame, reply = good(9)
    steps += [
        ("flipped CRC bit", [_flip(frame, -2, 5)], encode_error(ErrorCode.CRC)),
        ("flipped payload bit", [_flip(frame, 6, 0)], encode_error(ErrorCode.CRC)),
        ("truncated payload", [frame[:8]], encode_error(ErrorCode.TRUNCATED)),
        ("truncated CRC", [frame[:-1]], encode_error(ErrorCode.TRUNCATED)),
        ("oversized length", [encode_frame(payload(max_payload + 1))],
         encode_error(ErrorCode.LENGTH)),
        ("zero length", [bytes([SYNC, 0, 0]) + payload(2)], encode_error(ErrorCode.LENGTH)),
        ("bad stop bit", [(frame, 5)], encode_error(ErrorCode.FRAMING)),
        ("garbage", [b"\x00\xff\x13"], encode_error(ErrorCode.GARBAGE)),
        ("garbage before a frame", [b"\x5a" + frame], encode_error(ErrorCode.GARBAGE) + reply),
    ]
    first, first_reply = good(5)
    second, second_reply = good(max_payload)
    steps.append(("back to back", [first + second], first_reply + second_reply))
    for index in range(6):
        frame, reply = good(rng.randint(1, max_payload))
        steps.append((f"good again {index}", [frame], reply))
    return steps


class HostLinkTestbench:
    """Plays :func:`scenario` into the DUT step by step and compares every byte that
    comes back, in order, with the step's expected answer."""

    def __init__(self, dut, config):
        self.dut = dut
        self._divisor = config["divisor"]
        self._timeout = config["timeout"]
        self._steps = scenario(config["max_payload"], config["seed"])
        self.received = bytearray()
        self.mismatches = []

    async def run(self):
        dut = self.dut
        Clock(dut.clk, 10, unit="ns").start()
        driver = UARTDriver(dut.clk, dut.rx, self._divisor)
        monitor = UARTMonitor(dut.clk, dut.tx, self._divisor, self.received.append)
        dut.rst.value = 1
        await ClockCycles(dut.clk, 2)
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        cocotb.start_soon(monitor.run())
        byte_time = 10 * self._divisor
        for name, sends, expected in self._steps:
            start = len(self.received)
            for send in sends:
                data, bad_stop_at = send if isinstance(send, tuple) else (send, None)
                await driver.send(data, bad_stop_at=bad_stop_at)
            # Wait for the whole answer (error frames come after a quiet timeout), then a
            # while longer: anything extra would show up.
            limit = 2 * self._timeout + (len(expected) + 4) * byte_time
            waited = 0
            while len(self.received) < start + len(expected) and waited < limit:
                await ClockCycles(dut.clk, byte_time)
                waited += byte_time
            await ClockCycles(dut.clk, self._timeout + 2 * byte_time)
            answer = bytes(self.received[start:])
            if answer != expected:
                self.mismatches.append(f"{name}: got {answer.hex(' ')}, "
                                       f"expected {expected.hex(' ')}")
        self.mismatches += [f"UART monitor: {error}" for error in monitor.errors]


@cocotb.test()
async def exchange_frames(dut):
    """Every answer of the link to good, damaged, truncated, oversized, framing-error and
    garbage input equals the host-side codec's frames, byte for byte."""
    config = json.loads(os.environ[CONFIG_ENV])
    testbench = HostLinkTestbench(dut, config)
    await testbench.run()
    assert not testbench.mismatches, "\n".join(testbench.mismatches)
