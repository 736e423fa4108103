"""Real-valued inputs (docs/program.md §13): a standardized tabular MLP (negative features)
quantized with ``olmac quantize --real-inputs`` from a model file of the user's own, run
by ``olmac run`` on float features, golden and RTL."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn

from olmac.cli import main
from olmac.golden import artifact
from olmac.golden.program import quantize_inputs, run_fake_quant, run_integer
from olmac.models.training import train

pytestmark = pytest.mark.filterwarnings("error")

MODEL_FILE = '''\
from pathlib import Path
import torch
from torch import nn

def model():
    net = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                        nn.Linear(16, 2))
    net.load_state_dict(torch.load(Path(__file__).with_name("tabular.pt")))
    return net.eval()
'''


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """The breast-cancer data standardized on its training split (every feature has negative
    values), a trained float MLP saved as the user's ``tabular.py:model``, and its float
    test accuracy."""
    folder = tmp_path_factory.mktemp("tabular")
    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.3, random_state=0, stratify=data.target)
    mean, std = x_train.mean(0), x_train.std(0)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                        nn.Linear(16, 2))
    train(net, torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train),
          epochs=200, lr=1e-2)
    torch.save(net.state_dict(), folder / "tabular.pt")
    (folder / "tabular.py").write_text(MODEL_FILE)
    np.save(folder / "calibration.npy", x_train)
    np.save(folder / "test.npy", x_test)
    with torch.no_grad():
        logits = net(torch.tensor(x_test, dtype=torch.float32))
    float_accuracy = float((logits.argmax(1).numpy() == y_test).mean())
    return folder, y_test, float_accuracy


def _quantize(folder, monkeypatch, bits):
    monkeypatch.chdir(folder)  # the model file resolves from the current directory
    main(["quantize", "--model", "tabular.py:model", "--real-inputs", "--calibration",
          "calibration.npy", "--act-bits", str(bits), "--weight-bits", str(bits),
          "--out", f"program{bits}"])
    return folder / f"program{bits}"


def test_host_quantizer_is_round_half_up_to_the_input_format(tabular, monkeypatch):
    """The program's pixels are the input format itself (signed: the features go
    negative), and ``quantize_inputs`` is ``clamp(floor(x/σ + 1/2), lo, hi)``, computed
    here independently with numpy's ``floor``."""
    folder, _, _ = tabular
    program = artifact.load(_quantize(folder, monkeypatch, 8))
    first = program.values["input"]
    assert program.real_inputs and first.signed and first.bits == 8
    assert (program.pixel_min, program.pixel_max) == (-128, 127)
    assert program.pixel_scale == first.scale
    x = np.load(folder / "test.npy")
    expected = np.clip(np.floor(x / program.pixel_scale + 0.5), -128, 127)
    np.testing.assert_array_equal(quantize_inputs(program, torch.tensor(x)).numpy(),
                                  expected)


def test_tabular_mlp_runs_end_to_end_within_a_point_of_float(tabular, monkeypatch, capsys):
    """At 8/8 the integer accuracy on the standardized test split is within 1 point of the
    float model's; ``olmac run`` on float features writes exactly the golden logits of
    the host-quantized inputs, and the float view agrees on the classes."""
    folder, labels, float_accuracy = tabular
    program_dir = _quantize(folder, monkeypatch, 8)
    main(["run", "--program", str(program_dir), "--inputs", "test.npy", "--out", "y.npy"])
    logits = np.load(folder / "y.npy")
    program = artifact.load(program_dir)
    x = torch.tensor(np.load(folder / "test.npy"))
    np.testing.assert_array_equal(logits, run_integer(program, quantize_inputs(program, x)))
    accuracy = float((logits.argmax(1) == labels).mean())
    assert accuracy >= float_accuracy - 0.01, (accuracy, float_accuracy)
    fake = run_fake_quant(program, x).argmax(1).numpy()
    assert (fake == logits.argmax(1)).mean() >= 0.98


def test_tabular_mlp_on_the_rtl_equals_golden(tabular, monkeypatch):
    """The core reads the signed input pixels (s4 here) and its logits equal golden's."""
    folder, _, _ = tabular
    program_dir = _quantize(folder, monkeypatch, 4)
    np.save(folder / "few.npy", np.load(folder / "test.npy")[:6].astype(np.float32))
    for backend in ("golden", "rtl"):
        main(["run", "--program", str(program_dir), "--inputs", "few.npy", "--backend",
              backend, "--out", f"{backend}.npy"])
    np.testing.assert_array_equal(np.load(folder / "rtl.npy"), np.load(folder / "golden.npy"))


def _refused(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("inputs,message", [
    (np.full((2, 30), np.nan), "inputs[0, 0] = nan: every input must be a finite real number"),
    (np.zeros((2, 29)), "inputs must be N images of shape (30,) (or flat), not (2, 29)"),
])
def test_bad_real_inputs_are_refused(tabular, monkeypatch, capsys, inputs, message):
    folder, _, _ = tabular
    program_dir = _quantize(folder, monkeypatch, 8)
    capsys.readouterr()
    np.save(folder / "bad.npy", inputs)
    assert _refused(capsys, ["run", "--program", str(program_dir), "--inputs", "bad.npy",
                             "--out", "y.npy"]) == f"olmac: error: --inputs (bad.npy): {message}\n"


def test_pixel_options_with_real_inputs_are_refused(tabular, monkeypatch, capsys):
    folder, _, _ = tabular
    monkeypatch.chdir(folder)
    assert _refused(capsys, ["quantize", "--model", "tabular.py:model", "--real-inputs",
                             "--calibration", "calibration.npy", "--pixel-max", "255",
                             "--out", "p"]) == (
        "olmac: error: --pixel-max and --pixel-scale describe pixel inputs; with "
        "--real-inputs the scale is calibrated\n")


def test_training_keeps_the_clipped_input_scale(tabular):
    """§13: with real inputs the "output" search clips the input's scale like an
    activation's, and training keeps the input's grid, so the program lowered again after
    ``--epochs`` has the post-training program's input scale, clip factor included (an
    outlier feature makes max-abs a poor 3-bit input scale, so the search clips it)."""
    from olmac.flow import quantize
    from olmac.golden.program import quantize_model
    folder, _, _ = tabular
    model = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 2))
    model.load_state_dict(torch.load(folder / "tabular.pt"))
    x = torch.tensor(np.load(folder / "calibration.npy"), dtype=torch.float32)
    labels = (model(x).argmax(1)).detach()
    post = quantize_model(model, x, act_bits=3, weight_bits=3, real_inputs=True)
    maximum = float(x.abs().max()) / 3  # s3: hi = 3
    assert post.values["input"].scale < 0.95 * maximum  # clipped
    trained = quantize(model, x, act_bits=3, weight_bits=3, scheme="mmse",
                       real_inputs=True, train_images=x, train_labels=labels, epochs=1)
    assert trained.values["input"].scale == post.values["input"].scale
