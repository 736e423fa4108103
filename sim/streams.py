"""cocotb drivers and monitors for ``amaranth.lib.stream`` ports.

A port named ``x`` of the top level appears in Verilog as ``x__payload``, ``x__valid``
and ``x__ready``. Handshakes are sampled in the read-only phase before a rising edge,
which is when the transfer rule (``valid & ready`` at the edge) applies.
"""

import random

from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["StreamDriver", "StreamMonitor"]


class StreamDriver:
    """Sends packed payloads in order; before each one, idles ``valid`` with probability
    ``pause_probability`` per cycle. ``valid`` never depends on ``ready``."""

    def __init__(self, dut, name, *, pause_probability=0.0, seed=0):
        self._clk = dut.clk
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._payload = getattr(dut, f"{name}__payload")
        self._pause = pause_probability
        self._random = random.Random(seed)
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


class StreamMonitor:
    """Accepts ``count`` payloads, dropping ``ready`` with probability
    ``pause_probability`` per cycle, and hands each one (an ``int``) to ``on_payload``.
    ``cycles`` counts the rising edges it waited through."""

    def __init__(self, dut, name, *, pause_probability=0.0, seed=1):
        self._clk = dut.clk
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._payload = getattr(dut, f"{name}__payload")
        self._pause = pause_probability
        self._random = random.Random(seed)
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
