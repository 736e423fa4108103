"""cocotb drivers and monitors for ``amaranth.lib.stream`` ports.

A port named ``x`` of the top level appears in Verilog as ``x__payload``, ``x__valid``
and ``x__ready``. Handshakes are sampled in the read-only phase before a rising edge,
which is when the transfer rule (``valid & ready`` at the edge) applies.
"""

import random

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

__all__ = ["start_and_reset", "StreamDriver", "StreamMonitor"]


async def start_and_reset(dut):
    """Start ``dut.clk`` (10 ns) and hold ``dut.rst`` for two cycles; returns right after
    the first rising edge out of reset, where drivers and monitors start."""
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


class _StreamPort:
    """The signals of stream port ``name`` of ``dut`` and a seeded pause generator."""

    def __init__(self, dut, name, pause_probability, seed):
        self._clk = dut.clk
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._payload = getattr(dut, f"{name}__payload")
        self._pause = pause_probability
        self._random = random.Random(seed)


class StreamDriver(_StreamPort):
    """Sends packed payloads in order; before each one, idles ``valid`` with probability
    ``pause_probability`` per cycle. ``valid`` never depends on ``ready``."""

    def __init__(self, dut, name, *, pause_probability=0.0, seed=0):
        super().__init__(dut, name, pause_probability, seed)
        self._valid.value = 0

    async def send(self, payloads):
        """Call right after a rising edge; returns after the last transfer's edge."""
        for payload in payloads:
            while self._pause and self._random.random() < self._pause:
                self._valid.value = 0
                await RisingEdge(self._clk)
            self._valid.value = 1
            self._payload.value = payload
            while True:
                await ReadOnly()
                transferred = self._ready.value == 1
                await RisingEdge(self._clk)
                if transferred:
                    break
        self._valid.value = 0


class StreamMonitor(_StreamPort):
    """Accepts ``count`` payloads, dropping ``ready`` with probability
    ``pause_probability`` per cycle, and hands each one (an ``int``) to ``on_payload``.
    ``cycles`` counts the rising edges it waited through."""

    def __init__(self, dut, name, *, pause_probability=0.0, seed=1):
        super().__init__(dut, name, pause_probability, seed)
        self._ready.value = 0
        self.cycles = 0

    async def receive(self, count, on_payload):
        """Call right after a rising edge."""
        received = 0
        while received < count:
            ready = not (self._pause and self._random.random() < self._pause)
            self._ready.value = ready
            await ReadOnly()
            if ready and self._valid.value == 1:
                on_payload(self._payload.value.to_unsigned())
                received += 1
            await RisingEdge(self._clk)
            self.cycles += 1
        self._ready.value = 0
