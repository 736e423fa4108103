"""cocotb testbench of :class:`fpga.board.NetworkBoard` on Verilator, at the UART pins.

The host side is played step by step: each step puts raw bytes on ``rx`` bit by bit
(:class:`sim.host_link_tb.UARTDriver`; optionally one byte with a low stop bit,
``bad_stop_at``) and waits for ``answers`` frames (default one) on ``tx``
(:class:`sim.host_link_tb.UARTMonitor`, decoded with the host codec), polling every
``poll`` cycles, then ``settle`` cycles more for any extra frame. The steps come from
the pytest side in ``OLMAC_BOARD_JOB`` (JSON); the answers go back in a JSON file, and the
pytest side checks them against the golden model (docs/host_link.md §6).

:func:`serve` puts the board's UART on a TCP socket instead, so the real host side
(``olmac board run --port socket://127.0.0.1:PORT``, pyserial's socket URL) talks to the
simulated board as it would to the device.
"""

import json
import os
import socket
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from olmac.host_link import FrameDecoder, FrameError
from olmac.sim.host_link_tb import UARTDriver, UARTMonitor

__all__ = ["JOB_ENV", "PUBLIC_PORTS", "exchange", "serve"]

#: The environment variable naming the job's JSON file (a file, not the JSON itself: a soak's
#: thousands of steps exceed the limit on one environment string).
JOB_ENV = "OLMAC_BOARD_JOB"
#: The only signals the testbench touches.
PUBLIC_PORTS = ("clk", "rst", "rx", "tx")


async def _reset(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


@cocotb.test()
async def exchange(dut):
    job = json.loads(Path(os.environ[JOB_ENV]).read_text())
    divisor = job["divisor"]
    decoder = FrameDecoder()
    frames = []

    def on_byte(byte):
        try:
            frames.extend(decoder.feed(bytes([byte])))
        except FrameError:
            frames.append(None)

    driver = UARTDriver(dut.clk, dut.rx, divisor)
    monitor = UARTMonitor(dut.clk, dut.tx, divisor, on_byte)
    await _reset(dut)
    cocotb.start_soon(monitor.run())
    answers = []
    for step in job["steps"]:
        start = len(frames)
        await driver.send(bytes.fromhex(step["send"]), bad_stop_at=step.get("bad_stop_at"))
        waited, poll = 0, step.get("poll", 1000)
        while len(frames) - start < step.get("answers", 1) and waited < step["timeout"]:
            await ClockCycles(dut.clk, poll)
            waited += poll
        # let a late extra frame (there should be none) show up
        await ClockCycles(dut.clk, step.get("settle", 30 * divisor))
        answers.append([None if frame is None else frame.hex() for frame in frames[start:]])
    Path(job["results"]).write_text(json.dumps({"answers": answers,
                                                "uart_errors": monitor.errors}))


@cocotb.test()
async def serve(dut):
    """The UART as a TCP server on 127.0.0.1 (its port written to ``job["port_file"]``):
    bytes from the client go onto ``rx``, bytes from ``tx`` back to the client, for
    ``job["connections"]`` connections one after another, each until the client closes."""
    job = json.loads(Path(os.environ[JOB_ENV]).read_text())
    divisor = job["divisor"]
    peer = {}
    driver = UARTDriver(dut.clk, dut.rx, divisor)
    monitor = UARTMonitor(dut.clk, dut.tx, divisor,
                          lambda byte: peer["socket"].sendall(bytes([byte])))
    await _reset(dut)
    cocotb.start_soon(monitor.run())
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(job["accept_timeout"])
        Path(job["port_file"]).write_text(str(server.getsockname()[1]))
        for _ in range(job["connections"]):
            # simulated time stands still while no client is connected
            peer["socket"], _address = server.accept()
            with peer["socket"]:
                peer["socket"].setblocking(False)
                while True:
                    try:
                        data = peer["socket"].recv(4096)
                    except BlockingIOError:
                        await ClockCycles(dut.clk, 16 * divisor)
                        continue
                    if not data:
                        break
                    await driver.send(data)
    assert monitor.errors == []
