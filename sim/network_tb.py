"""cocotb test of a :class:`sim.network.NetworkBench` (docs/network.md §16): the clock runs
inside the simulator and the memories read and write their own files, so the test only
releases reset and waits for ``done``, waking every :data:`PROGRESS_CYCLES` cycles to
report progress. The job (where to write, the timeout) comes in ``OLMAC_NETWORK_JOB``; the
caller compares the words with the golden model."""

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.triggers import First, RisingEdge, Timer

from olmac.spec import NETWORK_JOB_ENV

PROGRESS_CYCLES = 50_000


@cocotb.test()
async def run_network(dut):
    job = json.loads(os.environ[NETWORK_JOB_ENV])
    period = job["clock_ns"]
    dut.rst.value = 1
    await Timer(2 * period, "ns")
    dut.rst.value = 0
    progress = Path(job["progress"])
    started, cpu = time.monotonic(), time.process_time()
    waited = 0
    while not dut.done.value:
        await First(RisingEdge(dut.done), Timer(PROGRESS_CYCLES * period, "ns"))
        waited += PROGRESS_CYCLES
        assert waited < job["timeout_cycles"], f"not done after {job['timeout_cycles']} cycles"
        progress.write_text(str(int(dut.captured.value) // job["output_words"]))
    seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu
    # The compiler's beats keep §6's outlier rules; a fault means the core broke them.
    assert not dut.fault.value, "the MAC array flagged a beat that breaks the outlier rules"
    await Timer(2 * period, "ns")  # the result memory writes its file on the next edge
    Path(job["results"]).write_text(json.dumps({
        "cycles": int(dut.cycles.value), "gemm_beats": int(dut.gemm_beats.value),
        "seconds": seconds, "cpu_seconds": cpu_seconds}))
