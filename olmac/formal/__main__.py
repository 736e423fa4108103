"""``python -m olmac.formal BUILD_DIR``: every proof and mutant, a line each (``make formal``),
then how many ran, how many did not end as expected, the wall-clock and CPU time of them all
and the longest run; the same per run in ``BUILD_DIR/summary.json``.

The CPU seconds do not depend on what else shares the machine: on ``n`` idle CPUs the whole
run takes about ``max(CPU / n, longest run)``. The next run reads ``summary.json`` to start
the longest runs first.
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from .proofs import run_all


def _previous_cpu_seconds(summary):
    """Run name → CPU seconds from an earlier ``summary.json``, or nothing if there is none
    (a fresh clone) or it cannot be read."""
    try:
        return {name: run["cpu_seconds"]
                for name, run in json.loads(summary.read_text())["runs"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _cpu_seconds(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main(argv):
    parser = argparse.ArgumentParser(
        prog="python -m olmac.formal",
        description="Run every proof and mutant (make formal); exit status 1 if any did not "
                    "end as expected.")
    parser.add_argument("build_dir", metavar="BUILD_DIR", type=Path,
                        help="where the runs and summary.json go (make formal: build/formal)")
    build_dir = parser.parse_args(argv).build_dir
    summary = build_dir / "summary.json"
    jobs = os.cpu_count() or 1
    start = time.monotonic()
    runs = []
    for run in run_all(build_dir, jobs=jobs, cpu_seconds=_previous_cpu_seconds(summary)):
        print(run.line, flush=True)
        runs.append(run)
    wall = time.monotonic() - start
    # This process (imports, elaboration, RTLIL export) and every SymbiYosys run.
    own, children = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    longest = max(runs, key=lambda run: run.result.cpu_seconds)
    unexpected = sum(not run.as_expected for run in runs)
    load = os.getloadavg()
    print(f"{len(runs)} runs, {unexpected} not as expected, {wall:.0f} s wall on {jobs} CPUs "
          f"(5-minute load average {load[1]:.1f}); {own + children:.0f} s CPU "
          f"({children:.0f} s in SymbiYosys, {own:.0f} s in this process); longest run "
          f"{longest.name} {longest.result.cpu_seconds:.0f} s CPU; on {jobs} idle CPUs about "
          f"{max((own + children) / jobs, longest.result.cpu_seconds):.0f} s", flush=True)
    summary.write_text(json.dumps({
        "wall_seconds": round(wall, 1), "cpu_seconds": round(own + children, 1),
        "jobs": jobs, "load_average": load,
        "runs": {run.name: {"status": run.result.status, "as_expected": run.as_expected,
                            "seconds": round(run.result.seconds, 1),
                            "cpu_seconds": round(run.result.cpu_seconds, 1)}
                 for run in runs}}, indent=1) + "\n")
    sys.exit(0 if unexpected == 0 else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
