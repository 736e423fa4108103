"""ONNX models (issue 13): a float model exported with ``torch.onnx.export`` (opset 13)
quantizes with ``olmac quantize --model model.onnx`` like the PyTorch model it came from,
and runs on golden and the RTL with the same logits."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from olmac.cli import main
from olmac.flow import demo_data
from olmac.golden import artifact
from olmac.golden.program import run_integer, to_pixels
from olmac.models.onnx_import import OnnxError, load_onnx

pytestmark = pytest.mark.filterwarnings("error")


def export(model: nn.Module, sample: torch.Tensor, path) -> None:
    """``model`` to ONNX opset 13 with a free batch size: the TorchScript exporter, which
    needs no download (the dynamo exporter needs ``onnxscript``), warns that it is
    deprecated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (sample,), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})


class Ordinary(nn.Module):
    """The layers an exporter turns into the ONNX ops the importer reads: Conv with
    padding, BatchNorm (folded by the exporter), ReLU, max pooling, ReLU6 (Clip),
    ``x.view(x.size(0), -1)`` (Shape/Gather/Concat/Reshape), Gemm, log_softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        x = F.relu6(self.conv2(x))
        return F.log_softmax(self.fc(x.view(x.size(0), -1)), 1)


def test_imported_graph_computes_the_exported_model(tmp_path):
    """The fx graph read back equals the PyTorch model on random inputs (float32), and
    its layers are the PyTorch layers the lowering knows."""
    torch.manual_seed(0)
    model = Ordinary().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2)
    export(model, torch.rand(2, 1, 8, 8), tmp_path / "m.onnx")
    graph = load_onnx(tmp_path / "m.onnx")
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=1e-5, atol=1e-5)
    kinds = {type(m) for m in graph.modules()}
    assert {nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Hardtanh, nn.Flatten, nn.Linear,
            nn.LogSoftmax} <= kinds


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    """The demo residual CNN exported to ONNX, its calibration and test images."""
    folder = tmp_path_factory.mktemp("onnx")
    data = demo_data("cnn")
    export(data.model, data.calibration[:2], folder / "cnn.onnx")
    # a third of the training split calibrates (the clipping search scores 512 at most)
    np.save(folder / "calibration.npy", data.calibration[::3].numpy())
    np.save(folder / "pixels.npy", to_pixels(data.images).numpy())
    return folder, data


def test_onnx_cnn_at_8_bits_is_within_a_point_of_float(cnn_onnx):
    """``olmac quantize --model cnn.onnx`` at 8/8: integer accuracy on the digits test split
    within 1 point of the float model's."""
    folder, data = cnn_onnx
    main(["quantize", "--model", str(folder / "cnn.onnx"), "--calibration",
          str(folder / "calibration.npy"), "--act-bits", "8", "--weight-bits", "8",
          "--out", str(folder / "program")])
    main(["run", "--program", str(folder / "program"), "--inputs", str(folder / "pixels.npy"),
          "--out", str(folder / "golden.npy")])
    integer = (np.load(folder / "golden.npy").argmax(1) == data.labels.numpy()).mean()
    with torch.no_grad():
        float_accuracy = (data.model.eval()(data.images).argmax(1) == data.labels).double().mean()
    assert integer >= float(float_accuracy) - 0.01, (integer, float(float_accuracy))


class Small(nn.Module):
    """Two input channels, so that NHWC and NCHW differ."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class SmallNhwc(Small):
    def forward(self, x):
        return super().forward(x.permute(0, 3, 1, 2))


def test_nhwc_and_nchw_exports_give_the_same_program(tmp_path):
    """The NHWC export (a leading Transpose) takes NHWC inputs: its program is the NCHW
    export's with ``input_order`` (2, 0, 1), and its logits on NHWC pixels are the NCHW
    program's on the same pixels transposed."""
    torch.manual_seed(0)
    nchw = Small().eval()
    nhwc = SmallNhwc().eval()
    nhwc.load_state_dict(nchw.state_dict())
    calibration = torch.rand(64, 2, 6, 6)
    export(nchw, calibration[:2], tmp_path / "nchw.onnx")
    export(nhwc, calibration[:2].permute(0, 2, 3, 1), tmp_path / "nhwc.onnx")
    np.save(tmp_path / "nchw.npy", calibration.numpy())
    np.save(tmp_path / "nhwc.npy", calibration.permute(0, 2, 3, 1).numpy())
    for layout in ("nchw", "nhwc"):
        main(["quantize", "--model", str(tmp_path / f"{layout}.onnx"), "--calibration",
              str(tmp_path / f"{layout}.npy"), "--out", str(tmp_path / layout)])
    a, b = artifact.load(tmp_path / "nchw"), artifact.load(tmp_path / "nhwc")
    assert (a.input_shape, a.input_order) == ((2, 6, 6), ())
    assert (b.input_shape, b.input_order) == ((6, 6, 2), (2, 0, 1))
    pixels = torch.randint(0, 17, (4, 2, 6, 6))
    np.testing.assert_array_equal(run_integer(b, pixels.permute(0, 2, 3, 1)),
                                  run_integer(a, pixels))


def test_onnx_nhwc_model_on_the_rtl_equals_golden(tmp_path):
    """The core takes the NHWC pixels as the host gives them: the input's slots are
    permuted by the compiler, and the RTL logits equal golden's."""
    torch.manual_seed(1)
    model = SmallNhwc().eval()
    calibration = torch.rand(64, 6, 6, 2)
    export(model, calibration[:2], tmp_path / "nhwc.onnx")
    np.save(tmp_path / "calibration.npy", calibration.numpy())
    np.save(tmp_path / "pixels.npy", np.random.default_rng(1).integers(0, 17, (3, 6, 6, 2)))
    main(["quantize", "--model", str(tmp_path / "nhwc.onnx"), "--calibration",
          str(tmp_path / "calibration.npy"), "--out", str(tmp_path / "program")])
    for backend in ("golden", "rtl"):
        main(["run", "--program", str(tmp_path / "program"), "--inputs",
              str(tmp_path / "pixels.npy"), "--backend", backend, "--width", "4",
              "--out", str(tmp_path / f"{backend}.npy")])
    np.testing.assert_array_equal(np.load(tmp_path / "rtl.npy"), np.load(tmp_path / "golden.npy"))


def test_unsupported_onnx_nodes_are_all_named(tmp_path):
    """Every node the importer cannot read is named in one error, with what it reads."""
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1) * 2
    export(Odd(), torch.rand(2, 4), tmp_path / "odd.onnx")
    with pytest.raises(OnnxError) as info:
        load_onnx(tmp_path / "odd.onnx")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{tmp_path / 'odd.onnx'}: unsupported ONNX node '/CumSum' "
                               f"(CumSum): supported ONNX ops: Conv, Gemm, ")
    assert lines[1].startswith("unsupported ONNX node '/Mul' (Mul): supported ONNX ops: ")


def test_not_an_onnx_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx at all")
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", "--model", str(tmp_path / "junk.onnx"), "--calibration", "x.npy",
              "--out", str(tmp_path / "p")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"olmac: error: --model {tmp_path / 'junk.onnx'} is not a valid ONNX "
                          f"model: ") and err.count("\n") == 1
