"""cocotb testbench of :class:`fpga.board.NetworkBoard` on Verilator, at the UART pins.

The host side is played step by step: each step puts raw bytes on ``rx`` bit by bit
(:class:`sim.host_link_tb.UARTDriver`) and waits for one answer frame on ``tx``
(:class:`sim.host_link_tb.UARTMonitor`, decoded with the host codec). The steps come from
the pytest side in ``OLMAC_BOARD_JOB`` (JSON); the answers go back in a JSON file, and the
pytest side checks them against the golden model (docs/host_link.md §6).
"""

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from olmac.host_link import FrameDecoder, FrameError
from olmac.sim.host_link_tb import UARTDriver, UARTMonitor

__all__ = ["JOB_ENV", "PUBLIC_PORTS", "exchange"]

JOB_ENV = "OLMAC_BOARD_JOB"
#: The only signals the testbench touches.
PUBLIC_PORTS = ("clk", "rst", "rx", "tx")


@cocotb.test()
async def exchange(dut):
    job = json.loads(os.environ[JOB_ENV])
    divisor = job["divisor"]
    Clock(dut.clk, 10, unit="ns").start()
    decoder = FrameDecoder()
    frames = []

    def on_byte(byte):
        try:
            frames.extend(decoder.feed(bytes([byte])))
        except FrameError:
            frames.append(None)

    driver = UARTDriver(dut.clk, dut.rx, divisor)
    monitor = UARTMonitor(dut.clk, dut.tx, divisor, on_byte)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    cocotb.start_soon(monitor.run())
    answers = []
    for step in job["steps"]:
        start = len(frames)
        await driver.send(bytes.fromhex(step["send"]))
        waited = 0
        while len(frames) == start and waited < step["timeout"]:
            await ClockCycles(dut.clk, 1000)
            waited += 1000
        # let a late second frame (there should be none) show up
        await ClockCycles(dut.clk, 30 * divisor)
        answers.append([None if frame is None else frame.hex() for frame in frames[start:]])
    Path(job["results"]).write_text(json.dumps({"answers": answers,
                                                "uart_errors": monitor.errors}))
