"""Bad input to the command line (issue 13): every user-facing error is one line naming the
argument and the file, with exit status 2 — never a traceback, never a silently written
wrong result.

The named cases of the issue are checked one by one; hypothesis then feeds ``olmac
quantize``, ``run`` and ``gemm`` and the artifact loader random argument values and
random or corrupted files, calling ``main`` in-process. More examples of each property run
under the slow mark.
"""

import io
import json
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olmac.cli import main
from olmac.golden import artifact
from olmac.golden.program import run_integer

#: The hypothesis settings of the fast tier; the slow tier runs ``SLOW`` times as many.
FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = 20


def invoke(argv) -> tuple[int, str]:
    """``olmac argv`` in-process: its exit status and what it wrote to stderr. Any
    exception other than ``SystemExit`` escapes: that is the traceback a user would see."""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in argv])
            status = 0
        except SystemExit as exit_info:
            status = exit_info.code
    return status, err.getvalue()


def assert_refused(status: int, err: str) -> str:
    """Status 2 and one ``olmac: error:`` line (after any warnings); that line."""
    lines = err.splitlines()
    assert status == 2, err
    assert lines and lines[-1].startswith("olmac: error: "), err
    assert all(line.startswith("olmac: warning: ") for line in lines[:-1]), err
    return lines[-1]


def assert_succeeded_or_refused(status: int, err: str) -> bool:
    """Either status 0, or a one-line refusal; whether it succeeded."""
    if status == 0:
        assert "Traceback" not in err, err
        return True
    assert_refused(status, err)
    return False


# ---------------------------------------------------------------------------------------
# The files a user might give instead of the right one.

def _bad_files(folder: Path) -> dict[str, Path]:
    """One file of each kind that is not a numeric .npy array, by name."""
    files = {}
    files["csv"] = folder / "csv.npy"
    files["csv"].write_text("1,2,3\n4,5,6\n")
    files["empty"] = folder / "empty.npy"
    files["empty"].write_bytes(b"")
    files["object"] = folder / "object.npy"
    np.save(files["object"], np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    files["npz"] = folder / "archive.npy"
    with open(files["npz"], "wb") as handle:
        np.savez(handle, x=np.zeros(3))
    files["complex"] = folder / "complex.npy"
    np.save(files["complex"], np.ones((2, 64), dtype=np.complex64))
    files["strings"] = folder / "strings.npy"
    np.save(files["strings"], np.array([["a"] * 64] * 2))
    files["bool"] = folder / "bool.npy"
    np.save(files["bool"], np.ones((2, 64), dtype=bool))
    files["truncated"] = folder / "truncated.npy"
    np.save(files["truncated"], np.zeros((4, 64)))
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:150])
    files["folder"] = folder / "a_folder.npy"
    files["folder"].mkdir(exist_ok=True)
    files["missing"] = folder / "missing.npy"
    return files


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with calibration data, an artifact of a small model and its pixels."""
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    np.save(folder / "calibration.npy", rng.random((48, 64)))
    np.save(folder / "pixels.npy", rng.integers(0, 17, (5, 64)))
    status, err = invoke(["quantize", "--model", "network_models:tiny_mlp", "--calibration",
                          folder / "calibration.npy", "--scheme", "mmse",
                          "--out", folder / "program"])
    assert status == 0, err
    return folder


# ---------------------------------------------------------------------------------------
# The cases of the issue, one by one.

def test_named_cases_are_one_line_errors(workspace):
    """Each case the issue lists gives status 2 and one line naming the argument (and the
    file where there is one) and what is allowed."""
    w = workspace
    bad = _bad_files(w)
    np.save(w / "wrong_shape.npy", np.random.default_rng(1).random((8, 63)))
    np.save(w / "nan.npy", np.full((8, 64), np.nan))
    np.save(w / "u16.npy", np.full((2, 64), 3, dtype=np.uint16))
    quantize = ["quantize", "--model", "network_models:tiny_mlp", "--out", w / "p"]
    run = ["run", "--program", w / "program", "--inputs", w / "pixels.npy"]
    cases = [
        (quantize + ["--calibration", bad["missing"]], f"--calibration: no file {bad['missing']}"),
        (run[:3] + ["--inputs", bad["missing"], "--out", w / "y.npy"],
         f"--inputs: no file {bad['missing']}"),
        (quantize + ["--calibration", w / "wrong_shape.npy"],
         f"--calibration ({w / 'wrong_shape.npy'}): the model cannot run on samples of "
         f"shape (63,): mat1 and mat2 shapes cannot be multiplied (2x63 and 64x16)"),
        (quantize + ["--calibration", bad["csv"]],
         f"--calibration ({bad['csv']}) is not a .npy file; give one array saved with "
         f"numpy.save"),
        (run[:3] + ["--inputs", bad["object"], "--out", w / "y.npy"],
         f"--inputs ({bad['object']}) is not a readable .npy array of integers or real "
         f"numbers: Object arrays cannot be loaded when allow_pickle=False"),
        (quantize + ["--calibration", w / "calibration.npy", "--pixel-max", "0"],
         "--pixel-max must be an integer in 1..65535, not 0"),
        (quantize + ["--calibration", w / "calibration.npy", "--pixel-scale", "-1"],
         "--pixel-scale must be a positive real number, not -1.0"),
        (run + ["--out", w / "no_such_folder" / "y.npy"],
         f"--out ({w / 'no_such_folder' / 'y.npy'}): the folder {w / 'no_such_folder'} does "
         f"not exist"),
        (run + ["--out", w / "y"], f"--out ({w / 'y'}) must end in .npy"),
        (run + ["--backend", "rtl", "--width", "0", "--out", w / "y.npy"],
         "--width must be an integer in 1..64, not 0"),
        (run + ["--backend", "rtl", "--stall-sixteenths", "16", "--out", w / "y.npy"],
         "--stall-sixteenths must be an integer in 0..15, not 16"),
        (["gemm", "--acts", bad["csv"], "--weights", w / "pixels.npy", "--act-bits", "4",
          "--weight-bits", "4", "--out", w / "y.npy"],
         f"--acts ({bad['csv']}) is not a .npy file; give one array saved with numpy.save"),
        (["run", "--program", w / "program", "--width", "x"],
         "argument --width: invalid int value: 'x' (see olmac run --help)"),
    ]
    for argv, message in cases:
        assert assert_refused(*invoke(argv)) == f"olmac: error: {message}", argv
    # NaN calibration is refused naming the argument, not as an out-of-range bias
    line = assert_refused(*invoke(quantize + ["--calibration", w / "nan.npy"]))
    assert line.startswith("olmac: error: --calibration: 512 of 512 values are NaN"), line
    # uint16 pixels are pixels: they run
    status, err = invoke(run[:3] + ["--inputs", w / "u16.npy", "--out", w / "u16_y.npy"])
    assert status == 0, err


def test_model_resolves_from_the_current_directory(tmp_path, monkeypatch):
    """``--model file.py:fn`` (a relative path) and ``--model module:fn`` resolve from the
    current directory, with no PYTHONPATH; an error in the user's file is one line saying
    where."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.py").write_text(
        "from torch import nn\n\ndef model():\n    return nn.Sequential(nn.Linear(4, 3))\n\n"
        "def broken():\n    raise RuntimeError('no weights here')\n\n"
        "def not_a_model():\n    return 42\n")
    (tmp_path / "mymodels.py").write_text("from sub.mine import model\n")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).random((16, 4)))
    monkeypatch.chdir(tmp_path)
    for spec in ("sub/mine.py:model", "mymodels:model"):
        status, err = invoke(["quantize", "--model", spec, "--calibration", "cal.npy",
                              "--out", f"out_{spec[:3]}"])
        assert status == 0, err
        assert (tmp_path / f"out_{spec[:3]}" / "program.json").is_file()
    line = assert_refused(*invoke(["quantize", "--model", "sub/mine.py:broken",
                                   "--calibration", "cal.npy", "--out", "x"]))
    assert line == (f"olmac: error: --model sub/mine.py:broken: RuntimeError: no weights here "
                    f"(at {tmp_path / 'sub' / 'mine.py'}:7)")
    line = assert_refused(*invoke(["quantize", "--model", "sub/mine.py:not_a_model",
                                   "--calibration", "cal.npy", "--out", "x"]))
    assert line == ("olmac: error: --model sub/mine.py:not_a_model: not_a_model() must return "
                    "an nn.Module, not int")


# ---------------------------------------------------------------------------------------
# Random arguments and files.

_WORDS = st.sampled_from(["", "-1", "0", "1", "3", "8", "16", "17", "65536", "1e9", "nan",
                          "inf", "-inf", "0.5", "x", "--", "'", "é", "1,2"])
_INTS = st.one_of(st.integers(-3, 70).map(str), _WORDS)
_FILE_KINDS = st.sampled_from(["good", "csv", "empty", "object", "npz", "complex", "strings",
                               "bool", "truncated", "folder", "missing", "float", "nan",
                               "uint64", "wrong_shape", "scalar", "int8"])


def _array_file(folder: Path, kind: str, good: np.ndarray) -> Path:
    """A file of ``kind``: ``good`` itself, a corruption of it, or one of ``_bad_files``."""
    path = folder / f"{kind}_{abs(hash(good.tobytes())) % 10**8}.npy"
    arrays = {"good": good, "float": good.astype(np.float64) + 0.5,
              "nan": np.where(np.arange(good.size).reshape(good.shape) == 0, np.nan, good),
              "uint64": np.full(good.shape, 2**64 - 1, dtype=np.uint64),
              "wrong_shape": good.reshape(-1)[:-1] if good.size > 1 else np.zeros((3, 3)),
              "scalar": np.array(3), "int8": good.astype(np.int8)}
    if kind in arrays:
        np.save(path, arrays[kind])
        return path
    return _bad_files(folder)[kind]


def _out(draw, folder: Path) -> Path:
    kind = draw(st.sampled_from(["ok", "ok", "ok", "no_suffix", "missing_folder", "folder"]))
    return {"ok": folder / "out.npy", "no_suffix": folder / "out",
            "missing_folder": folder / "nope" / "out.npy", "folder": folder}[kind]


def check_gemm(data):
    """``olmac gemm`` (golden) on random widths and operand files: refused in one line, or
    ``Y = A·W`` exactly (numpy's int64 product) with both operands within their widths."""
    draw = data.draw
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
        acts = draw(st.lists(st.integers(-20, 20), min_size=m * k, max_size=m * k))
        weights = draw(st.lists(st.integers(-20, 20), min_size=k * n, max_size=k * n))
        a_file = _array_file(folder, draw(_FILE_KINDS), np.array(acts).reshape(m, k))
        w_file = _array_file(folder, draw(_FILE_KINDS), np.array(weights).reshape(k, n))
        act_bits, weight_bits = draw(_INTS), draw(_INTS)
        argv = ["gemm", "--acts", a_file, "--weights", w_file, "--act-bits", act_bits,
                "--weight-bits", weight_bits, "--out", _out(draw, folder)]
        if draw(st.booleans()):
            argv.append("--unsigned-acts")
        if draw(st.booleans()):
            argv += ["--lanes", draw(_INTS)]
        if not assert_succeeded_or_refused(*invoke(argv)):
            return
        a, w = np.load(a_file), np.load(w_file)
        lo = 0 if "--unsigned-acts" in argv else -(1 << (int(act_bits) - 1))
        hi = (1 << int(act_bits)) - 1 if lo == 0 else (1 << (int(act_bits) - 1)) - 1
        assert a.dtype.kind in "iu" and w.dtype.kind in "iu"
        assert lo <= a.min() and a.max() <= hi
        assert -(1 << (int(weight_bits) - 1)) <= w.min() <= w.max() < 1 << (int(weight_bits) - 1)
        np.testing.assert_array_equal(np.load(argv[-1]), a.astype(np.int64) @ w.astype(np.int64))


def check_run(data, workspace):
    """``olmac run`` (golden, or the RTL with a width or stall out of range) on random input
    files and options: refused in one line, or the golden logits of valid pixels."""
    draw = data.draw
    program = artifact.load(workspace / "program")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        pixels = np.array(draw(st.lists(st.integers(-2, 18), min_size=64 * 2, max_size=64 * 2)))
        inputs = _array_file(folder, draw(_FILE_KINDS), pixels.reshape(2, 64))
        argv = ["run", "--program", workspace / "program", "--inputs", inputs,
                "--out", _out(draw, folder)]
        if draw(st.booleans()):
            # the RTL only with an option out of range: a valid one builds for minutes
            option, values = draw(st.sampled_from([("--width", ["-1", "0", "65", "x"]),
                                                    ("--stall-sixteenths", ["-1", "16", "1e3"])]))
            argv += ["--backend", "rtl", option, draw(st.sampled_from(values))]
        if not assert_succeeded_or_refused(*invoke(argv)):
            return
        given_inputs = np.load(inputs)
        assert given_inputs.dtype.kind in "iu" and given_inputs.min() >= 0 \
            and given_inputs.max() <= program.pixel_max
        expected = run_integer(program, torch.from_numpy(given_inputs.astype(np.int64)))
        np.testing.assert_array_equal(np.load(argv[6]), expected.numpy())


def check_quantize(data, workspace):
    """``olmac quantize`` on random calibration files and option values: refused in one
    line, or an artifact that loads."""
    draw = data.draw
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        good = np.load(workspace / "calibration.npy")[:16]
        calibration = _array_file(folder, draw(_FILE_KINDS), good)
        argv = ["quantize", "--model", "network_models:tiny_mlp", "--calibration",
                calibration, "--scheme", "mmse", "--out", folder / "program"]
        for option in draw(st.lists(st.sampled_from(
                ["--act-bits", "--weight-bits", "--pixel-max", "--pixel-scale",
                 "--outlier-ratio", "--real-inputs"]), max_size=2, unique=True)):
            argv += [option] if option == "--real-inputs" else [option, draw(_INTS)]
        if assert_succeeded_or_refused(*invoke(argv)):
            artifact.load(folder / "program")


def check_artifact(data, workspace, logits):
    """``olmac run`` on an artifact with random bytes changed, cut or JSON fields edited:
    refused in one line, or exactly the logits of the intact artifact (an edit of the
    manifest's whitespace changes nothing)."""
    draw = data.draw
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name) / "program"
        folder.mkdir()
        for file_name in ("program.json", "program.npz"):
            (folder / file_name).write_bytes((workspace / "program" / file_name).read_bytes())
        target = folder / draw(st.sampled_from(["program.json", "program.npz"]))
        raw = bytearray(target.read_bytes())
        how = draw(st.sampled_from(["flip", "cut", "edit"]))
        if how == "flip":
            for _ in range(draw(st.integers(1, 4))):
                position = draw(st.integers(0, len(raw) - 1))
                raw[position] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            raw = raw[:draw(st.integers(0, len(raw) - 1))]
        else:
            manifest = json.loads((folder / "program.json").read_text())
            section = draw(st.sampled_from(["input", "values", "ops", "top"]))
            holder = {"input": manifest["input"], "top": manifest,
                      "values": manifest["values"]["input"], "ops": manifest["ops"][1]}[section]
            key = draw(st.sampled_from(sorted(holder)))
            holder[key] = draw(st.one_of(st.none(), st.booleans(), st.integers(-70000, 70000),
                                         st.floats(), st.text(max_size=3),
                                         st.lists(st.integers(-3, 70), max_size=3)))
            target, raw = folder / "program.json", json.dumps(manifest).encode()
        target.write_bytes(bytes(raw))
        out = Path(name) / "y.npy"
        argv = ["run", "--program", folder, "--inputs", workspace / "pixels.npy", "--out", out]
        if assert_succeeded_or_refused(*invoke(argv)):
            np.testing.assert_array_equal(np.load(out), logits)


@pytest.fixture(scope="module")
def logits(workspace):
    program = artifact.load(workspace / "program")
    return run_integer(program, torch.from_numpy(np.load(workspace / "pixels.npy"))).numpy()


@FAST
@given(data=st.data())
def test_gemm_fuzz(data):
    check_gemm(data)


@FAST
@given(data=st.data())
def test_run_fuzz(data, workspace):
    check_run(data, workspace)


@settings(FAST, max_examples=10)
@given(data=st.data())
def test_quantize_fuzz(data, workspace):
    check_quantize(data, workspace)


@FAST
@given(data=st.data())
def test_artifact_fuzz(data, workspace, logits):
    check_artifact(data, workspace, logits)


@pytest.mark.slow
@settings(FAST, max_examples=FAST.max_examples * SLOW, derandomize=False)
@given(data=st.data())
def test_gemm_fuzz_more(data):
    check_gemm(data)


@pytest.mark.slow
@settings(FAST, max_examples=FAST.max_examples * SLOW, derandomize=False)
@given(data=st.data())
def test_run_fuzz_more(data, workspace):
    check_run(data, workspace)


@pytest.mark.slow
@settings(FAST, max_examples=10 * SLOW, derandomize=False)
@given(data=st.data())
def test_quantize_fuzz_more(data, workspace):
    check_quantize(data, workspace)


@pytest.mark.slow
@settings(FAST, max_examples=FAST.max_examples * SLOW, derandomize=False)
@given(data=st.data())
def test_artifact_fuzz_more(data, workspace, logits):
    check_artifact(data, workspace, logits)
