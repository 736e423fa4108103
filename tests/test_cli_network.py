"""``olmac quantize``, ``olmac run`` and ``olmac demo``: whole networks from the command line,
with bad models, artifacts and inputs refused by name."""

import json

import numpy as np
import pytest
import torch

from olmac.golden import artifact
from olmac.golden.program import run_integer, to_pixels
from olmac.cli import main
from olmac.flow import demo_data

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlp") / "program"
    main(["quantize", "--model", "mlp", "--out", str(directory)])
    return directory


@pytest.fixture(scope="module")
def test_pixels(tmp_path_factory):
    data = demo_data("mlp")
    path = tmp_path_factory.mktemp("inputs") / "pixels.npy"
    np.save(path, to_pixels(data.images).numpy())
    return path, data.labels


def _refused(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


def test_quantize_then_run_golden_classifies_digits(mlp_artifact, test_pixels, tmp_path):
    """The artifact written by ``olmac quantize`` runs through ``olmac run`` to logits that
    classify the digits test split (the default is value-aware 4-bit W/A)."""
    pixels, labels = test_pixels
    main(["run", "--program", str(mlp_artifact), "--inputs", str(pixels),
          "--out", str(tmp_path / "logits.npy")])
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (len(labels), 10)
    assert (logits.argmax(1) == labels.numpy()).mean() > 0.9
    manifest = json.loads((mlp_artifact / "program.json").read_text())
    assert {op["kind"] for op in manifest["ops"]} == {"quantize_input", "gemm"}


def test_run_rtl_equals_golden(mlp_artifact, test_pixels, tmp_path):
    """``olmac run --backend rtl`` (Verilator, random stalls) gives golden's logits."""
    pixels, _ = test_pixels
    subset = tmp_path / "subset.npy"
    np.save(subset, np.load(pixels)[:12])
    main(["run", "--program", str(mlp_artifact), "--inputs", str(subset), "--backend", "rtl",
          "--stall-sixteenths", "6", "--out", str(tmp_path / "rtl.npy")])
    expected = run_integer(artifact.load(mlp_artifact), torch.from_numpy(np.load(subset)))
    np.testing.assert_array_equal(np.load(tmp_path / "rtl.npy"), expected.numpy())


def test_corrupted_artifact_is_refused(mlp_artifact, test_pixels, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("program.json", "program.npz"):
        (broken / name).write_bytes((mlp_artifact / name).read_bytes())
    manifest = json.loads((broken / "program.json").read_text())
    manifest["values"]["input"]["bits"] = 3  # an edit the checksum must catch
    (broken / "program.json").write_text(json.dumps(manifest))
    message = _refused(capsys, ["run", "--program", str(broken), "--inputs",
                                str(test_pixels[0]), "--out", str(tmp_path / "x.npy")])
    assert message == (f"olmac: error: --program ({broken}): artifact manifest does not "
                       f"match its manifest_sha256 (modified after it was written)")


def test_truncated_tensors_are_refused(mlp_artifact, test_pixels, tmp_path, capsys):
    broken = tmp_path / "truncated"
    broken.mkdir()
    (broken / "program.json").write_bytes((mlp_artifact / "program.json").read_bytes())
    (broken / "program.npz").write_bytes((mlp_artifact / "program.npz").read_bytes()[:500])
    message = _refused(capsys, ["run", "--program", str(broken), "--inputs",
                                str(test_pixels[0]), "--out", str(tmp_path / "x.npy")])
    assert message.startswith("olmac: error: ") and "program.npz" in message


def test_unsupported_layer_is_named(tmp_path, capsys):
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).random((32, 64)))
    message = _refused(capsys, ["quantize", "--model", "network_models:mish_mlp",
                                "--calibration", str(tmp_path / "calibration.npy"),
                                "--out", str(tmp_path / "program")])
    assert message == ("olmac: error: unsupported layer '1' (nn.Mish; supported activations: "
                       "ReLU; ReLU6, Hardtanh(0, m), clamp(0, m); Sigmoid, Tanh, Hardswish, "
                       "SiLU, GELU as tables)")


def test_listing_says_what_was_folded_and_dropped(tmp_path, capsys):
    """docs/program.md §17: the program listing ends with the BatchNorm folded and the
    trailing softmax dropped (the logits are its input)."""
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).random((32, 64)))
    main(["quantize", "--model", "network_models:softmax_mlp", "--calibration",
          str(tmp_path / "calibration.npy"), "--out", str(tmp_path / "program")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == ["# folded BatchNorm '1' into '0'",
                          "# dropped the trailing '4': softmax/log_softmax keep the argmax, "
                          "the program's logits are its input"]


@pytest.mark.parametrize("ratio, warned", [("0.01", 3), ("0.02", 0)])
def test_an_outlier_ratio_that_keeps_no_outlier_is_warned_about(tmp_path, capsys, ratio,
                                                                  warned):
    """The demo MLP's three layers each read 64 values: 1 % of 64 rounds down to no
    weight outlier per output channel (docs/value_aware.md §1), 2 % keeps one."""
    main(["quantize", "--model", "mlp", "--outlier-ratio", ratio, "--out",
          str(tmp_path / "program")])
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith(f"olmac: warning: --outlier-ratio {ratio} keeps no weight")]
    assert len(warnings) == warned
    assert all(line.endswith("⌊ratio·64⌋ = 0 (at least 1/64 keeps one)") for line in warnings)


def test_own_model_needs_calibration(tmp_path, capsys):
    message = _refused(capsys, ["quantize", "--model", "network_models:tiny_mlp",
                                "--out", str(tmp_path / "program")])
    assert message == "olmac: error: --calibration is required for a model of your own"


@pytest.mark.parametrize("pixels,message", [
    (np.full((2, 64), 0.5), " must hold integer pixels 0..16, not torch.float64; a model for "
                            "real inputs is quantized with --real-inputs"),
    (np.full((2, 64), 17), ": pixels must lie in 0..16"),
    (np.full((2, 64), 17, dtype=np.uint16), ": pixels must lie in 0..16"),
    (np.zeros((2, 63), dtype=np.int64), ": pixels must be N ≥ 1 images of shape (64,)"),
])
def test_bad_pixels_are_refused(mlp_artifact, tmp_path, capsys, pixels, message):
    np.save(tmp_path / "bad.npy", pixels)
    error = _refused(capsys, ["run", "--program", str(mlp_artifact), "--inputs",
                              str(tmp_path / "bad.npy"), "--out", str(tmp_path / "x.npy")])
    assert error.startswith(f"olmac: error: --inputs ({tmp_path / 'bad.npy'}){message}")


def test_demo_subset_writes_its_report(tmp_path, monkeypatch):
    """``olmac demo`` on 16 MLP images: zero mismatches and the three report files."""
    monkeypatch.chdir(tmp_path)
    main(["demo", "--model", "mlp", "--images", "16"])
    report = json.loads((tmp_path / "build/demo/report.json").read_text())
    assert report["mismatching_images"] == 0 and report["images"] == 16
    assert report["cycles_per_inference"] > 0 and 0 < report["mac_utilization_percent"] <= 100
    assert (tmp_path / "build/demo/report.png").stat().st_size > 10_000
    assert "| RTL accuracy |" in (tmp_path / "build/demo/report.md").read_text()


def test_board_run_reports_a_port_that_does_not_answer_as_a_board(capsys):
    """A loopback port echoes the request instead of answering: a clear error, status 1."""
    with pytest.raises(SystemExit) as exit_info:
        main(["board", "run", "--port", "loop://", "--images", "1", "--timeout", "0.5"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == \
        "olmac board: Frame kind must be 0x00 or 0xee, not 04"


@pytest.mark.parametrize("board, width, advice", [
    ("icebreaker", "4", "--width 2 (the icebreaker's default, which fits the demo CNN), or a "
                        "program with fewer weights and activations, or --board ulx3s-85f "
                        "(an ECP5-85F)"),
    ("ulx3s-85f", "16", "a program with fewer weights and activations")])
def test_board_build_of_a_program_that_does_not_fit(mlp_artifact, tmp_path, capsys,
                                                     monkeypatch, board, width, advice):
    """A program whose board top nextpnr cannot place: one line naming ``--program`` and
    ``--width``, the sites over the device and what would fit, status 2. The build is stood
    in for (a real one takes minutes); ``test_fpga_build.py::test_does_not_fit`` checks
    that nextpnr's failure becomes ``DoesNotFit``."""
    from olmac.fpga import board as fpga_board
    from olmac.fpga.build import DoesNotFit
    over = "ICESTORM_LC: 8762/ 5280 165%"

    def too_big(*args, **kwargs):
        raise DoesNotFit(f"does not fit ({over}); end of top.tim:\nInfo: ...", [over])

    monkeypatch.setattr(fpga_board, "build_network_board", too_big)
    assert _refused(capsys, ["board", "build", "--board", board, "--program",
                             str(mlp_artifact), "--width", width, "--build-dir",
                             str(tmp_path)]) == \
        f"olmac: error: --program {mlp_artifact} at --width {width} does not fit the " \
        f"{board} ({over}); try {advice}"


def test_board_commands_refuse_bad_programs_and_inputs(mlp_artifact, tmp_path, capsys):
    """``olmac board build|run --program``: a missing artifact, inputs without a program, a
    program without inputs and pixels of the wrong shape are refused by name, with status 2,
    before any build or port is touched."""
    missing = tmp_path / "nothing"
    assert _refused(capsys, ["board", "build", "--board", "icebreaker", "--program",
                             str(missing)]) == \
        f"olmac: error: --program ({missing}): artifact manifest " \
        f"'{missing / 'program.json'}' does not exist"
    run = ["board", "run", "--port", "loop://"]
    assert _refused(capsys, run + ["--program", str(mlp_artifact)]) == \
        "olmac: error: --inputs is required with --program"
    np.save(tmp_path / "bad.npy", np.zeros((2, 63), dtype=np.int64))
    assert _refused(capsys, run + ["--inputs", str(tmp_path / "bad.npy")]) == \
        "olmac: error: --inputs needs --program (the demo takes its test images)"
    assert _refused(capsys, run + ["--program", str(mlp_artifact), "--inputs",
                                   str(tmp_path / "bad.npy")]).startswith(
        f"olmac: error: --inputs ({tmp_path / 'bad.npy'}): pixels must be N ≥ 1 images")
