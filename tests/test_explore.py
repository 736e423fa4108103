"""``olmac explore``: sweeps on a ``LocalCluster`` and on a scheduler and a worker started
as separate processes, the cache, failed points, the spec's one-line errors and the Pareto
front; expected values are computed here (by hand, or by the flow's own functions), not read
from the code under test.

The model is :func:`tiny_model`, a linear classifier fitted in closed form, so each point
quantizes in a fraction of a second.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from olmac.cli import main
from olmac.explore import (SpecError, expand, explore, load_spec, pareto_front, parse_spec,
                           write_report)

HERE = Path(__file__).parent

#: The test split the sweeps score, and the calibration images.
TEST_IMAGES = 120
CALIBRATION_IMAGES = 32


def tiny_model() -> torch.nn.Module:
    """64 → 10 fitted by ridge regression to one-hot digits labels: about 90 % on the test
    split, no training loop."""
    from olmac.models.digits import load_digits_split
    split = load_digits_split()
    x = torch.cat([split.x_train, torch.ones(len(split.x_train), 1)], 1).double()
    targets = torch.nn.functional.one_hot(split.y_train, 10).double()
    # ridge: the pixels that are always 0 would otherwise leave the system singular
    solution = torch.linalg.solve(x.T @ x + torch.eye(65, dtype=torch.float64), x.T @ targets)
    layer = torch.nn.Linear(64, 10)
    with torch.no_grad():
        layer.weight.copy_(solution[:64].T)
        layer.bias.copy_(solution[64])
    return torch.nn.Sequential(layer)


def wide_kernel_model() -> torch.nn.Module:
    """A convolution of 17×17 kernels (padding 8 on the 8×8 images) before a linear head:
    golden runs it; the network core's compiler refuses it, the kernel being beyond its
    descriptors' kernel fields (``MAX_KERNEL`` = 15)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 17, padding=8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(128, 10))
    model.takes_images = True
    return model


def _spec(tmp_path, text, name="sweep", model="tiny_model"):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'model = "test_explore:{model}"\ncalibration_images = '
                    f'{CALIBRATION_IMAGES}\ntest_images = {TEST_IMAGES}\n{text}')
    return load_spec(path)


def _golden_accuracy(act_bits, weight_bits, scheme):
    """A point's accuracy through the flow's functions, as a user would compute it."""
    from olmac.flow import quantize
    from olmac.golden.program import run_integer, to_pixels
    from olmac.models.digits import load_digits_split
    split = load_digits_split()
    program = quantize(tiny_model(), split.x_train[:CALIBRATION_IMAGES], act_bits=act_bits,
                       weight_bits=weight_bits, scheme=scheme)
    logits = run_integer(program, to_pixels(split.x_test[:TEST_IMAGES]))
    return float((logits.argmax(1) == split.y_test[:TEST_IMAGES]).double().mean() * 100)


def test_pareto_front_of_a_hand_written_set():
    """The front keeps exactly the points no other is at least as cheap and as good as,
    ordered by cost; ties stay."""
    costs = [10, 20, 30, 20, 40, 5, 30]
    gains = [70, 80, 85, 75, 84, 60, 85]
    # 5/60 cheapest; 10/70 and 20/80 better; 20/75 dominated by 20/80; 30/85 twice (tie,
    # both kept); 40/84 dominated by 30/85.
    assert pareto_front(costs, gains) == [5, 0, 1, 2, 6]


def test_expand_drops_what_no_measurement_reads(tmp_path):
    """Points are the product of the axes; the outlier ratio only multiplies value-aware
    points, and golden-only points ignore the hardware axes."""
    spec = _spec(tmp_path, '[axes]\nact_bits = [2, 4, 8]\nscheme = ["mmse", "value_aware"]\n'
                           'outlier_ratio = [0.01, 0.05]\nwidth = [2, 4]\n'
                           'board = ["icebreaker", "ulx3s-85f"]\n')
    points = expand(spec)
    assert len(points) == 3 * (1 + 2)
    assert all("width" not in point and "board" not in point for point in points)
    spec = _spec(tmp_path, 'measure = ["memory"]\n[axes]\nwidth = [2, 4]\n'
                           'board = ["icebreaker", "ulx3s-85f"]\n')
    assert [point["width"] for point in expand(spec)] == [2, 4]


@pytest.mark.parametrize("text, message", [
    ('[axes]\nact_bits = [4, 9]', r"axes\.act_bits must be an integer 2\.\.8, not 9"),
    ('[axes]\nscheme = "best"', r"axes\.scheme must be one of 'mmse', .*, not 'best'"),
    ('[axes]\nboard = ["de10"]', r"axes\.board must be one of 'icebreaker', .*, not 'de10'"),
    ('[axes]\noutlier_lanes = [1, 2]', r"axes\.outlier_lanes is not supported: .*"),
    ('[axes]\nclock = [12]', r"axes\.clock is not an axis; the axes are act_bits, .*"),
    ('[axes]\nhighway = ["yes"]', r"axes\.highway must be true or false, not 'yes'"),
    ('[axes]\noutlier_ratio = [1.5]', r"axes\.outlier_ratio must be a number in \(0, 1\), "
                                      r"not 1\.5"),
    ('measure = ["golden", "timing"]', r"measure must be one of 'golden', .*, not 'timing'"),
    ('rtl_images = 0', r"rtl_images must be an integer ≥ 1, not 0"),
    ('images = 3', r"images is not a spec field; the fields are axes, .*"),
])
def test_spec_errors_name_the_field(tmp_path, text, message):
    """Every wrong field is refused with one line naming it and its allowed values."""
    with pytest.raises(SpecError, match=f"^{message}$") as error:
        _spec(tmp_path, text + "\n")
    assert "\n" not in str(error.value)


def test_spec_without_model_or_not_toml(tmp_path):
    """A spec must name its model and be TOML; the message says which."""
    with pytest.raises(SpecError, match=r"^model is required: cnn, mlp, cnn28 or "
                                        r"'module:callable'$"):
        parse_spec({"axes": {}})
    with pytest.raises(SpecError, match=r"^model must be one of cnn, mlp, cnn28 or "
                                        r"'module:callable', not 'resnet'$"):
        parse_spec({"model": "resnet"})
    path = tmp_path / "broken.toml"
    path.write_text("model = \n")
    with pytest.raises(SpecError, match=r"^spec .*broken\.toml is not TOML: "):
        load_spec(path)


def _usage_error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(["explore", *map(str, argv)])
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


def test_cli_reports_a_bad_spec_or_scheduler_in_one_line(tmp_path, capsys):
    """``olmac explore`` turns a bad spec, a missing file or an unreachable scheduler into
    one ``olmac: error:`` line with exit status 2."""
    import dask
    import distributed  # noqa: F401 (its config defaults, which dask.config.set restores)
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "mlp"\n[axes]\nwidth = [0]\n')
    assert _usage_error(capsys, bad) == \
        "olmac: error: axes.width must be an integer 1..64, not 0"
    assert _usage_error(capsys, tmp_path / "missing.toml") == \
        f"olmac: error: spec {tmp_path / 'missing.toml'}: No such file or directory"
    good = tmp_path / "good.toml"
    good.write_text('model = "mlp"\n')
    address = f"tcp://127.0.0.1:{_free_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        error = _usage_error(capsys, good, "--scheduler", address, "--out", tmp_path / "out")
    assert error.startswith(f"olmac: error: --scheduler {address}: ") and "\n" not in error


def test_sweep_on_a_local_cluster_then_from_the_cache(tmp_path):
    """Eight golden-only points on a LocalCluster: every row measured, with the accuracy
    the flow's own functions give, and the table written; run again, nothing is computed
    and the rows are the same."""
    spec = _spec(tmp_path, '[axes]\nact_bits = [2, 3, 4, 8]\nscheme = ["mmse", "value_aware"]\n')
    out = tmp_path / "out"
    first = explore(spec, workers=2, out_dir=out, progress=False)
    assert (first.computed, first.cached, first.failed) == (8, 0, 0)
    assert all(row["status"] == "ok" for row in first.rows)
    by_point = {(row["act_bits"], row["scheme"]): row for row in first.rows}
    assert len(by_point) == 8
    for act_bits, scheme in ((2, "mmse"), (8, "value_aware")):
        assert by_point[act_bits, scheme]["accuracy_percent"] == pytest.approx(
            _golden_accuracy(act_bits, 4, scheme))
    lines = (out / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(
        row["id"] for row in first.rows)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("id,label,status,act_bits,") and len(csv_lines) == 9
    assert "8 points: 8 measured, 0 failed" in (out / "report.md").read_text()

    second = explore(spec, workers=2, out_dir=out, progress=False)
    assert (second.computed, second.cached, second.failed) == (0, 8, 0)
    assert all(row["cached"] for row in second.rows)
    measured = {row["id"]: {**row, "cached": True} for row in first.rows}
    assert {row["id"]: row for row in second.rows} == measured
    assert len((out / "results.jsonl").read_text().splitlines()) == 8


def test_ctrl_c_leaves_whole_rows_and_a_report(tmp_path, monkeypatch):
    """Interrupted after its third row, a sweep raises KeyboardInterrupt with a table of
    three whole rows and a report of them; the next run measures only the rest."""
    from olmac.explore import driver
    append = driver._Table.append
    written = []

    def append_then_interrupt(table, row):
        append(table, row)
        written.append(row["id"])
        if len(written) == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(driver._Table, "append", append_then_interrupt)
    spec = _spec(tmp_path, '[axes]\nact_bits = [3, 4, 8]\nscheme = ["mmse", "value_aware"]\n')
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        explore(spec, workers=1, out_dir=out, progress=False)
    assert [json.loads(line)["id"] for line in
            (out / "results.jsonl").read_text().splitlines()] == written
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 3
    assert "3 points: 3 measured, 0 failed" in (out / "report.md").read_text()
    monkeypatch.setattr(driver._Table, "append", append)
    again = explore(spec, workers=1, out_dir=out, progress=False)
    assert (again.computed, again.cached, again.failed) == (3, 3, 0)


def test_report_draws_each_front_per_board(tmp_path):
    """From hand-written rows: one accuracy-vs-LUT front per board, one accuracy-vs-memory
    front, images/s only where measured; the page links each PNG and lists each front."""
    def row(label, board, luts, memory, accuracy, rate=None):
        return {"label": label, "status": "ok", "board": board, "luts": luts,
                "memory_bits": memory, "accuracy_percent": accuracy,
                "images_per_second": rate}
    rows = [row("p", "icebreaker", 3000, 9000, 90.0, 500.0),
            row("q", "icebreaker", 4000, 8000, 95.0, 400.0),
            row("r", "icebreaker", 5000, 7000, 93.0, 300.0),
            row("s", "ulx3s-85f", 2000, 6000, 80.0),
            {"label": "t", "status": "failed", "error": "CompileError: no core\nmore"}]
    page = write_report(tmp_path, "hand", rows).read_text()
    pngs = sorted(path.name for path in tmp_path.glob("*.png"))
    assert pngs == ["pareto_accuracy_luts_icebreaker.png", "pareto_accuracy_luts_ulx3s-85f.png",
                    "pareto_accuracy_memory.png", "pareto_throughput_luts_icebreaker.png"]
    for name in pngs:
        assert f"]({name})" in page
    # accuracy vs LUT4 on the iCE40: r (5000, 93) is dominated by q (4000, 95)
    luts_front = page.split("pareto_accuracy_luts_icebreaker.png)")[1].split("##")[0]
    assert "| p |" in luts_front and "| q |" in luts_front and "| r |" not in luts_front
    # accuracy vs memory: every point is on the front but p (9000 bits, 90 %), which q and
    # r beat with less memory and more accuracy
    memory_front = page.split("pareto_accuracy_memory.png)")[1].split("##")[0]
    assert [line.split("|")[1].strip() for line in memory_front.splitlines()
            if line.startswith("| ") and "point" not in line] == ["s", "r", "q"]
    assert "- t: CompileError: no core" in page


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def scheduler_and_worker(tmp_path):
    """A ``dask scheduler`` and a ``dask worker`` as separate processes on 127.0.0.1, as a
    user starts them; the worker finds this file's model on its PYTHONPATH."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    logs = tmp_path / "dask"
    logs.mkdir()
    with open(logs / "scheduler.log", "w") as scheduler_log, \
            open(logs / "worker.log", "w") as worker_log:
        processes = [subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=scheduler_log, env=env)]
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
             "--no-dashboard", "--local-directory", str(logs)],
            stdout=subprocess.DEVNULL, stderr=worker_log, env=env, cwd=tmp_path))
    try:
        from dask.distributed import Client
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_sweep_on_a_separate_scheduler_records_a_failed_point(tmp_path,
                                                               scheduler_and_worker):
    """The same kind of spec runs unchanged on a separately started scheduler and worker; a
    point the compiler refuses (a 17×17 kernel, beyond the core's descriptor fields) is a
    failed row with its error, and is tried again on a re-run."""
    axes = 'measure = ["golden", "memory"]\n[axes]\nact_bits = [4, 8]\nwidth = 2\n'
    good = explore(_spec(tmp_path, axes, name="good"), scheduler=scheduler_and_worker,
                   out_dir=tmp_path / "good", progress=False)
    assert (good.computed, good.failed) == (2, 0)
    assert all(row["status"] == "ok" and row["memory_bits"] > 0 for row in good.rows)
    spec = _spec(tmp_path, axes, model="wide_kernel_model")
    result = explore(spec, scheduler=scheduler_and_worker, out_dir=tmp_path / "out",
                     progress=False)
    assert (result.computed, result.failed) == (2, 2)
    for row in result.rows:
        assert row["status"] == "failed" and row["error"].startswith("CompileError: ")
        assert "kernel_h = 17 exceeds 15" in row["error"]
    assert "## Failed points" in (tmp_path / "out" / "report.md").read_text()
    # failed points are not cached: a re-run tries them again
    again = explore(spec, scheduler=scheduler_and_worker, out_dir=tmp_path / "out",
                    progress=False)
    assert (again.computed, again.cached, again.failed) == (2, 0, 2)
