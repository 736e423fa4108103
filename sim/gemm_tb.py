# amaranth: UnusedElaboratable=no
"""cocotb testbench of :class:`hw.GemmEngine` on Verilator.

(The first line turns off Amaranth's unused-elaboratable warning: the testbench builds
an engine only to read its port layouts.)

driver (act, weights[, params]) → DUT → monitor (out) → in-order scoreboard, whose
expected vectors come from the golden model (docs/semantics.md §2–§4). The job to run
is named by the ``OLMAC_JOB`` environment variable (see :mod:`sim.job`).
"""

import os
import time
from pathlib import Path

import cocotb
import numpy as np
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from olmac import golden
from olmac.golden.mmse import combine_plane_accumulators
from olmac.hw import GemmEngine
from .job import JOB_ENV, Job
from .payloads import output_codec, output_leaves, output_values, stream_payloads
from .streams import StreamDriver, StreamMonitor
from .tiling import assemble_output, output_vectors


def _golden_result(config, case):
    """§2/§3 on the recombined tensors (§6: the reference of a layer with outliers is the
    exact GEMM of dense + sparse), planes combined by §8, split by §7 when the engine
    extracts output outliers: returns ``(dense, outliers or None)``."""
    planes = case.weights if case.weights.ndim == 3 else case.weights[None]
    accs = torch.stack([golden.gemm(
        torch.from_numpy(case.acts), torch.from_numpy(plane),
        act_bits=config.act_bits, act_signed=config.act_signed,
        weight_bits=config.weight_bits,
        act_outlier_bits=config.act_outlier_bits if config.act_outlier_lanes else None,
        weight_outlier_bits=config.weight_outlier_bits if config.weight_outlier_lanes else None)
        for plane in planes])
    acc = accs[0] if case.plane_shifts is None else \
        combine_plane_accumulators(accs, torch.from_numpy(case.plane_shifts))
    if config.out_bits is None:
        return acc.numpy(), None
    y = golden.requantize_round_half_up(
        acc, torch.from_numpy(case.bias), torch.from_numpy(case.multiplier),
        torch.from_numpy(case.shift), out_bits=config.out_outlier_bits or config.out_bits,
        out_signed=config.out_signed, relu=case.relu)
    if config.out_outlier_bits is None:
        return y.numpy(), None
    dense, outliers = golden.split_output_outliers(y, case.outlier_threshold,
                                                   out_bits=config.out_bits,
                                                   out_signed=config.out_signed)
    return dense.numpy(), outliers.numpy()


class GemmTestbench:
    """Streams every case of a job through the DUT and checks each output vector."""

    def __init__(self, dut, job: Job):
        self.dut = dut
        self.job = job
        self._engine = GemmEngine(**vars(job.config))
        self._out_codec = output_codec(self._engine)
        self._received = []
        self._expected = []
        self.mismatches = []

    def _beats(self):
        streams = {}
        for case in self.job.cases:
            for name, payloads in stream_payloads(self._engine, case).items():
                streams.setdefault(name, []).extend(payloads)
            if self.job.check:
                cols = self.job.config.cols
                dense, outliers = _golden_result(self.job.config, case)
                self._expected += list(output_leaves(
                    self._engine, output_vectors(dense, cols),
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
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 1
        await ClockCycles(dut.clk, 2)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

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

        vectors = output_values(self._engine, np.array(self._received, dtype=np.int64))
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
