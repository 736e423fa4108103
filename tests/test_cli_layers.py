"""``olmac quantize --layer-scheme/--layer-bits/--array-bits``: single layers' schemes and
widths recorded in the artifact, the program checked against the core before it is
written, and the layers run through ``olmac run --backend rtl`` bit for bit."""

import json

import numpy as np
import pytest
import torch

from olmac.cli import main
from olmac.flow import demo_data
from olmac.golden import artifact
from olmac.golden.program import run_integer, to_pixels
from test_cli_network import _refused

pytestmark = pytest.mark.filterwarnings("error")

MIXED = ["--layer-bits", "first=8/8,last=8/8", "--layer-scheme",
         "first=syq,layers.2=multi_tensor", "--array-bits", "4/4"]


@pytest.fixture(scope="module")
def mixed_artifact(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mixed") / "program"
    main(["quantize", "--model", "mlp", *MIXED, "--out", str(directory)])
    return directory


def test_layer_options_are_recorded_and_listed(mixed_artifact, capsys):
    """Each layer's scheme and widths (W, and A as the width of the value it reads) are
    the ones asked for, in the artifact and in the listing."""
    manifest = json.loads((mixed_artifact / "program.json").read_text())
    gemms = [op for op in manifest["ops"] if op["kind"] == "gemm"]
    values = manifest["values"]
    assert [(op["name"], op["scheme"], op["weight_bits"], values[op["input"]]["bits"])
            for op in gemms] == [("layers.0", "syq", 8, 8), ("layers.2", "multi_tensor", 4, 4),
                                 ("layers.4", "value_aware", 8, 8)]
    listing = artifact.load(mixed_artifact).describe()
    assert "syq w8/a8" in listing and "multi_tensor w4/a4" in listing


def test_mixed_layers_run_on_a_4_bit_array_in_verilator(mixed_artifact, tmp_path):
    """SYQ, multi-tensor and value-aware layers, the first and last at 8/8 on a 4/4 array
    (passes), under random stalls on Verilator: every logit equals golden."""
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, to_pixels(demo_data("mlp").images[:10]).numpy())
    main(["run", "--program", str(mixed_artifact), "--inputs", str(pixels), "--backend",
          "rtl", "--array-bits", "4/4", "--stall-sixteenths", "6",
          "--out", str(tmp_path / "rtl.npy")])
    expected = run_integer(artifact.load(mixed_artifact), torch.from_numpy(np.load(pixels)))
    assert np.array_equal(np.load(tmp_path / "rtl.npy"), expected.numpy())


def test_quantize_refuses_every_layer_the_core_cannot_run(capsys, tmp_path):
    """On a 2/2 array the two 8/8 layers need 28 passes each: both refused, one line each
    naming the layer and the array that runs it, exit 2, nothing written."""
    out = tmp_path / "program"
    message = _refused(capsys, ["quantize", "--model", "mlp", "--layer-bits",
                                "first=8/8,last=8/8", "--array-bits", "2/2", "--out", str(out)])
    lines = message.splitlines()
    assert lines[0] == ("olmac: error: the network core (8x8, 2/2 array) cannot run 2 op(s); "
                        "nothing written")
    assert lines[1:] == [f"olmac: error: op {i} (gemm '{name}'): it needs 28 passes "
                         f"(activation digits × weight planes), more than 16; an array of "
                         f"8/8 runs it in one" for i, name in ((1, "layers.0"), (3, "layers.4"))]
    assert not out.exists()


@pytest.mark.parametrize("options,message", [
    (["--layer-bits", "first=9/8"], "--layer-bits '9/8': widths must be W/A, each an "
                                    "integer in 2..8 (e.g. 8/8)"),
    (["--layer-bits", "first"], "--layer-bits 'first': expected NAME=VALUE[,NAME=VALUE...] "
                                "with NAME a layer of the program listing, first or last"),
    (["--layer-bits", "first=8/8,first=4/4"], "--layer-bits: layer 'first' is given twice"),
    (["--layer-bits", "conv9=8/8"], "--layer-bits: no GEMM layer 'conv9'; the layers are "
                                    "layers.0, layers.2, layers.4 (or first, last)"),
    (["--layer-scheme", "last=ternary"], "--layer-scheme: scheme 'ternary' is not one of "
                                         "mmse, value_aware, multi_tensor, syq"),
    (["--layer-scheme", "fc=syq"], "--layer-scheme: no GEMM layer 'fc'; the layers are "
                                   "layers.0, layers.2, layers.4 (or first, last)"),
    (["--array-bits", "4"], "--array-bits '4': widths must be W/A, each an integer in 2..8 "
                            "(e.g. 8/8)"),
])
def test_layer_options_refuse_bad_values(capsys, tmp_path, options, message):
    assert _refused(capsys, ["quantize", "--model", "mlp", *options, "--out",
                             str(tmp_path / "p")]) == f"olmac: error: {message}"
