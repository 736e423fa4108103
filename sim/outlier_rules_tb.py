"""cocotb testbench of a :class:`hw.MacArray`'s ``fault`` flag on Verilator.

Drivers (``act``, ``weights``) send packed beats with random stalls, a monitor takes every
result from ``acc`` with random stalls, and a watcher counts the beats taken and records
when ``fault`` is first high. The job comes from the ``OLMAC_OUTLIER_RULES`` environment
variable (JSON, see :func:`job_env`): the payloads, the number of results, and the index of
the beat that breaks docs/semantics.md §6's outlier rules (or none).
"""

import json
import os

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from .streams import StreamDriver, StreamMonitor, start_and_reset

__all__ = ["JOB_ENV", "phase", "job_env"]

#: Environment variable through which the simulator process finds its job.
JOB_ENV = "OLMAC_OUTLIER_RULES"


def phase(acts, weights, *, reductions, violation):
    """One phase of a job: packed ``acts`` and ``weights`` payloads, the ``reductions``
    results they make, and ``violation``, the index of the first beat that breaks the rules
    (None: none does)."""
    return {"acts": acts, "weights": weights, "reductions": reductions,
            "violation": violation}


def job_env(phases, *, pause_probability, seed):
    """The environment that tells :func:`run_beats` to run ``phases`` (from :func:`phase`),
    each after a reset, with random stalls."""
    return {JOB_ENV: json.dumps({"phases": phases, "pause": pause_probability,
                                 "seed": seed})}


async def _reset(dut):
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def _run_phase(dut, job, pause, seed):
    act = StreamDriver(dut, "act", pause_probability=pause, seed=seed)
    weights = StreamDriver(dut, "weights", pause_probability=pause, seed=seed + 1)
    monitor = StreamMonitor(dut, "acc", pause_probability=pause, seed=seed + 2)
    seen = {"taken": 0, "first": None}

    async def watch():
        while True:
            await ReadOnly()
            if dut.fault.value == 1 and seen["first"] is None:
                seen["first"] = seen["taken"]
            seen["taken"] += int(dut.act__valid.value == 1 and dut.act__ready.value == 1)
            await RisingEdge(dut.clk)

    watcher = cocotb.start_soon(watch())
    cocotb.start_soon(act.send(job["acts"]))
    cocotb.start_soon(weights.send(job["weights"]))
    await monitor.receive(job["reductions"], lambda payload: None)
    await ClockCycles(dut.clk, 4)       # the flag lags its beat by two cycles
    await ReadOnly()
    watcher.cancel()
    violation = job["violation"]
    dut._log.info("%d beats taken, fault first seen after %s", seen["taken"], seen["first"])
    if violation is None:
        assert seen["first"] is None, f"fault raised after {seen['first']} valid beats"
    else:
        assert seen["first"] is not None, f"beat {violation} broke a rule, fault stayed low"
        assert seen["first"] > violation, f"fault raised after {seen['first']} beats"
        assert dut.fault.value == 1, "fault dropped"
    await RisingEdge(dut.clk)


@cocotb.test()
async def run_beats(dut):
    """In each phase, after a reset: ``fault`` stays low while every beat taken keeps the
    rules, rises after the first that breaks one, and stays high."""
    job = json.loads(os.environ[JOB_ENV])
    await start_and_reset(dut)
    for number, beats in enumerate(job["phases"]):
        if number:
            await _reset(dut)
        await _run_phase(dut, beats, job["pause"], job["seed"] + 3 * number)
