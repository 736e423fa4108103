"""Stream helpers for the fast tier: Amaranth's own simulator, async testbenches."""

import random

from amaranth.hdl import Value
from amaranth.sim import Simulator

__all__ = ["run_testbench", "run_streams", "StreamSource", "StreamSink"]


def run_testbench(dut, testbench):
    """Simulate ``dut`` with a 1 MHz clock until the async ``testbench(ctx)`` returns."""
    simulator = Simulator(dut)
    simulator.add_clock(1e-6)
    simulator.add_testbench(testbench)
    simulator.run()


def run_streams(dut, sources, sink):
    """Simulate ``dut`` with a 1 MHz clock, every :class:`StreamSource` of ``sources``
    sending in the background, until the :class:`StreamSink` ``sink`` has all its
    payloads; returns them."""
    simulator = Simulator(dut)
    simulator.add_clock(1e-6)
    for source in sources:
        simulator.add_testbench(source.run, background=True)
    simulator.add_testbench(sink.run)
    simulator.run()
    return sink.received


class StreamSource:
    """Sends packed payloads on an ``amaranth.lib.stream`` interface, idling at random.

    ``pause_probability`` is the chance, before each payload, of one cycle with ``valid``
    low; ``valid`` never waits on ``ready``.
    """

    def __init__(self, stream, payloads, *, pause_probability=0.0, seed=0):
        self._stream = stream
        self._payloads = payloads
        self._pause = pause_probability
        self._random = random.Random(seed)

    async def run(self, ctx):
        for payload in self._payloads:
            while self._random.random() < self._pause:
                await ctx.tick()
            ctx.set(self._stream.valid, 1)
            ctx.set(Value.cast(self._stream.payload), payload)
            await ctx.tick().until(self._stream.ready)
            ctx.set(self._stream.valid, 0)


class StreamSink:
    """Receives ``count`` packed payloads, dropping ``ready`` at random; ``received`` holds
    them in arrival order and ``cycles`` the cycle count when the last one arrived."""

    def __init__(self, stream, count, *, pause_probability=0.0, seed=1):
        self._stream = stream
        self._count = count
        self._pause = pause_probability
        self._random = random.Random(seed)
        self.received = []
        self.cycles = 0

    async def run(self, ctx):
        while len(self.received) < self._count:
            ready = self._random.random() >= self._pause
            ctx.set(self._stream.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(
                self._stream.valid, Value.cast(self._stream.payload))
            self.cycles += 1
            if ready and valid:
                self.received.append(payload)
        ctx.set(self._stream.ready, 0)
