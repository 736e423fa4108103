"""Formal proofs of the hardware blocks (olmac.formal): each proof passes, each mutant fails."""

import gc
import re
import sys
import time
from pathlib import Path

import pytest
from amaranth.hdl import Fragment

from olmac.formal.mutants import TamperedArray, TamperedLoads
from olmac.formal.properties import output_streams
from olmac.formal import proofs
from olmac.formal.proofs import PROOFS, run_all
from olmac.formal.runner import ProofResult, _run_measured, prove
from olmac.hw.host_link import FrameTransmitter
from olmac.hw.network_app import Dispatcher
from olmac.spec import Command


def _marks(proof):
    return [pytest.mark.slow] if proof.slow else []


@pytest.mark.parametrize("proof", [pytest.param(p, id=p.name, marks=_marks(p)) for p in PROOFS])
def test_proof_holds(proof, tmp_path):
    """The block satisfies its properties (k-induction for ``prove``, bounded for ``bmc``)."""
    result = prove(proof.wrapper(), tmp_path, depth=proof.depth, mode=proof.mode)
    assert result.passed, f"{proof.name}: {result.status}, see {result.log}"


@pytest.mark.parametrize("proof,mutant", [
    pytest.param(p, name, id=f"{p.name}-{name}", marks=_marks(p))
    for p in PROOFS for name in p.mutants])
def test_mutant_fails(proof, mutant, tmp_path):
    """A deliberately broken block fails the same proof: the properties can fail at all."""
    result = prove(proof.mutants[mutant](), tmp_path, depth=proof.depth, mode=proof.mode)
    assert result.status == "FAIL", f"{proof.name}-{mutant}: {result.status}, see {result.log}"


def test_every_proof_has_a_mutant():
    """No proof goes without a broken variant that shows it can fail."""
    assert all(proof.mutants for proof in PROOFS)


def test_prove_rejects_bad_depth(tmp_path):
    with pytest.raises(TypeError, match=r"^Proof depth must be an integer in 1\.\.200, not 0$"):
        prove(Fragment(), tmp_path, depth=0)


def test_prove_rejects_bad_mode(tmp_path):
    with pytest.raises(ValueError, match=re.escape("Proof mode must be 'prove' or 'bmc', "
                                                   "not 'cover'")):
        prove(Fragment(), tmp_path, depth=4, mode="cover")


@pytest.mark.parametrize("mutant,faults", [
    (TamperedArray, "act_outlier, weight_outlier, plane_shift"),
    (TamperedLoads, "misfiled, no_reload")])
# The refused mutant exists (as an Elaboratable) before its __init__ raises.
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_tampered_blocks_reject_an_unknown_fault(mutant, faults):
    with pytest.raises(ValueError, match=rf"^Fault must be one of {faults}, not 'bogus'$"):
        mutant("bogus")
    gc.collect()    # while the warning is ignored


def test_output_streams_finds_the_sending_ports():
    """The ports the stream-rule proofs check are those the blocks' docstrings list as
    sent: a transmitter's ``tx`` (not ``reply`` or ``errors``, which it receives); a
    dispatcher's ``host.reply`` and every handler's ``request``, nested in flipped
    signatures and arrays."""
    transmitter = FrameTransmitter(max_reply=2)
    dispatcher = Dispatcher([Command.LOAD, Command.INFO])
    names = lambda block, **kw: [name for name, _ in output_streams(block, **kw)]
    assert names(transmitter) == ["FrameTransmitter.tx"]
    assert names(transmitter, sending=False) == ["FrameTransmitter.reply",
                                                 "FrameTransmitter.errors"]
    assert names(dispatcher) == ["Dispatcher.host.reply", "Dispatcher.handlers[0].request",
                                 "Dispatcher.handlers[1].request"]
    for block in (transmitter, dispatcher):
        Fragment.get(block, None)   # elaborated, so none is reported unused


# The fake run builds each wrapper and does not elaborate it.
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_make_formal_runs_all_but_the_cross_checks(monkeypatch, tmp_path):
    """``make formal`` (``run_all``) runs every proof and mutant except the bounded
    cross-checks and reports in catalogue order; a proof is as expected when it passes, a
    mutant when it fails. It starts the longest first: by the CPU seconds of an earlier run
    where it has them, slow runs it has none for before them and fast ones after; on a
    fresh clone (no earlier run) the slow ones first."""
    started = []

    def fake_prove(wrapper, build_dir, *, depth, mode):
        name = Path(build_dir).name
        started.append(name)
        return ProofResult("-" not in name, "PASS", 0.0, Path(build_dir) / "log", 1.0)

    monkeypatch.setattr(proofs, "prove", fake_prove)
    expected = [name for proof in PROOFS if not proof.cross_check
                for name in (proof.name, *(f"{proof.name}-{m}" for m in proof.mutants))]
    runs = list(run_all(tmp_path, jobs=1))
    assert [run.name for run in runs] == expected
    assert [run.line.split()[0] for run in runs] == expected
    assert [run.as_expected for run in runs] == [True] * len(expected)
    slow = [name for proof in PROOFS if proof.slow and not proof.cross_check
            for name in (proof.name, *(f"{proof.name}-{m}" for m in proof.mutants))]
    assert set(started[:len(slow)]) == set(slow)
    assert any(proof.cross_check for proof in PROOFS)

    fast = [name for name in expected if name not in slow]
    earlier = {fast[0]: 1.0, fast[1]: 3.0, slow[0]: 2.0}
    started.clear()
    list(run_all(tmp_path, jobs=1, cpu_seconds=earlier))
    gc.collect()    # the unused wrappers in reference cycles, while the warning is ignored
    unknown_slow = len(slow) - 1
    assert set(started[:unknown_slow]) == set(slow[1:])
    assert started[unknown_slow:unknown_slow + 3] == [fast[1], slow[0], fast[0]]
    assert set(started[unknown_slow + 3:]) == set(fast[2:])


def test_run_counts_the_cpu_of_every_descendant(tmp_path):
    """The CPU seconds of a run include the processes SymbiYosys starts (here a grandchild
    that spins for 0.3 s of CPU), though other threads wait on their own runs meanwhile."""
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"
    status, cpu = _run_measured([sys.executable, "-c", parent], tmp_path, None, timeout=60)
    assert status == 0
    assert 0.3 <= cpu < 5


def test_run_past_its_timeout_is_stopped_with_its_descendants(tmp_path):
    """A run past its time is killed with every process it started (no solver left behind):
    the grandchild here would write a file after 2 s."""
    marker = tmp_path / "still_running"
    late = f"import time, pathlib; time.sleep(2); pathlib.Path({str(marker)!r}).touch()"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {late!r}])"
    start = time.monotonic()
    status, _cpu = _run_measured([sys.executable, "-c", parent], tmp_path, None, timeout=0.5)
    assert status is None
    assert time.monotonic() - start < 2
    time.sleep(2.5)
    assert not marker.exists()


def test_runner_help_runs_no_proof(tmp_path):
    """``python -m olmac.formal --help`` prints the usage and starts nothing; a second
    argument is refused in one line (exit status 2), not taken as a build folder."""
    import subprocess
    shown = subprocess.run([sys.executable, "-m", "olmac.formal", "--help"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m olmac.formal")
    refused = subprocess.run([sys.executable, "-m", "olmac.formal", "one", "two"],
                             cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 2 and "unrecognized arguments: two" in refused.stderr
    assert list(tmp_path.iterdir()) == []
