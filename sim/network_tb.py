"""cocotb test of a :class:`sim.network.NetworkBench`: one clock, one trigger, results read
at the end. The job (where to write, how many words) comes in ``OLMAC_NETWORK_RESULTS``;
the caller compares the words with the golden model."""

import json
import os
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge

from olmac.hw.network import STORAGE_BITS
from olmac.sim.network import RESULTS_ENV

PROGRESS_CYCLES = 50_000


@cocotb.test()
async def run_network(dut):
    job = json.loads(os.environ[RESULTS_ENV])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.read_address.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    progress = Path(job["progress"])
    waited = 0
    while not dut.done.value:
        # Python wakes once per chunk only, to report progress; the model runs alone between.
        await First(RisingEdge(dut.done), ClockCycles(dut.clk, PROGRESS_CYCLES))
        waited += PROGRESS_CYCLES
        assert waited < job["timeout_cycles"], f"not done after {job['timeout_cycles']} cycles"
        progress.write_text(str(int(dut.captured.value) // job["output_words"]))
    mask = (1 << STORAGE_BITS) - 1
    slots = np.zeros((job["output_count"], job["width"]), dtype=np.int64)
    for address in range(job["output_count"]):
        dut.read_address.value = address
        await ClockCycles(dut.clk, 2)
        word = int(dut.read_word.value)
        slots[address] = [(word >> (STORAGE_BITS * lane)) & mask for lane in range(job["width"])]
    np.savez(job["results"], slots=slots, cycles=int(dut.cycles.value),
             gemm_beats=int(dut.gemm_beats.value))
