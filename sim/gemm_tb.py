"""cocotb testbench of :class:`hw.GemmEngine` on Verilator.

driver (act, weights[, params]) → DUT → monitor (out) → in-order scoreboard, whose
expected vectors come from the golden model (docs/semantics.md §2–§4). The job to run
is named by the ``OLMAC_JOB`` environment variable (see :mod:`sim.job`).
"""

import os
import time
from pathlib import Path

import cocotb
import numpy as np

from .job import JOB_ENV, Job, golden_result
from .payloads import output_codec, output_leaves, output_values, stream_payloads
from .streams import StreamDriver, StreamMonitor, start_and_reset
from .tiling import assemble_output, output_vectors


class GemmTestbench:
    """Streams every case of a job through the DUT and checks each output vector."""

    def __init__(self, dut, job: Job):
        self.dut = dut
        self.job = job
        self._out_codec = output_codec(job.config)
        self._received = []
        self._expected = []
        self.mismatches = []

    def _beats(self):
        streams = {}
        for case in self.job.cases:
            for name, payloads in stream_payloads(self.job.config, case).items():
                streams.setdefault(name, []).extend(payloads)
            if self.job.check:
                cols = self.job.config.cols
                dense, outliers = golden_result(self.job.config, case)
                self._expected += list(output_leaves(
                    self.job.config, output_vectors(dense, cols),
                    None if outliers is None else output_vectors(outliers, cols)))
        return streams

    def _scoreboard(self, payload):
        vector = self._out_codec.unpack([payload])[0]
        index = len(self._received)
        self._received.append(vector)
        if self.job.check and not np.array_equal(vector, self._expected[index]):
            self.mismatches.append(
                f"output vector {index}: RTL {vector.tolist()} != golden "
                f"{self._expected[index].tolist()}")

    async def run(self):
        dut = self.dut
        await start_and_reset(dut)

        streams = self._beats()
        vector_count = sum(int(np.ceil(case.weights.shape[-1] / self.job.config.cols)) *
                           case.acts.shape[0] for case in self.job.cases)
        pause, seed = self.job.pause_probability, self.job.seed
        drivers = [StreamDriver(dut, name, pause_probability=pause, seed=seed + index)
                   for index, name in enumerate(streams)]
        monitor = StreamMonitor(dut, "out", pause_probability=pause, seed=seed + 10)
        started = time.perf_counter()
        for driver, payloads in zip(drivers, streams.values()):
            cocotb.start_soon(driver.send(payloads))
        await monitor.receive(vector_count, self._scoreboard)
        elapsed = time.perf_counter() - started

        vectors = output_values(self.job.config, np.array(self._received, dtype=np.int64))
        offset = 0
        for case in self.job.cases:
            m, n = case.acts.shape[0], case.weights.shape[-1]
            count = m * -(-n // self.job.config.cols)
            self.job.results.append(assemble_output(vectors[offset:offset + count], m, n))
            offset += count
        self.job.stats = {
            "cycles": monitor.cycles,
            "beats": len(streams["act"]),
            "wall_seconds": elapsed,
            "cycles_per_second": monitor.cycles / elapsed,
            "mismatches": len(self.mismatches),
        }


@cocotb.test()
async def run_job(dut):
    """Run the job named by OLMAC_JOB; with ``check``, every vector must equal golden."""
    path = Path(os.environ[JOB_ENV])
    job = Job.load(path)
    testbench = GemmTestbench(dut, job)
    await testbench.run()
    job.save_results(path)
    assert not testbench.mismatches, (
        f"{len(testbench.mismatches)} mismatching vectors, first: {testbench.mismatches[:3]}")
