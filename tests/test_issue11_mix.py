"""The whole path on one artifact that mixes everything the network core runs:
value-aware run-time activation outliers (R = 0.02), SYQ, multi-tensor and MMSE layers
and an 8/8 first layer on a 4/4 array (passes). ``olmac run --backend rtl`` must give
``--backend golden``'s logits exactly: on a subset here, on every test image in the slow
test. The MLP's SYQ layer runs in one pass, its codes through the core's codebook decoder;
the CNN's is the 8/8 first layer, in passes, which the compiler decodes (docs/network.md
§17)."""

import numpy as np
import pytest

from olmac.cli import main
from olmac.compiler import compile_program
from olmac.flow import demo_data
from olmac.golden import artifact
from olmac.golden.program import Gemm, to_pixels

pytestmark = pytest.mark.filterwarnings("error")

SCHEMES = {"mlp": "first=mmse,layers.2=syq,last=multi_tensor",
           "cnn": "first=syq,conv2=multi_tensor,conv3=mmse"}


def _mixed(tmp_path_factory, model):
    directory = tmp_path_factory.mktemp(f"mixed_{model}") / "program"
    main(["quantize", "--model", model, "--act-outlier-ratio", "0.02", "--layer-scheme",
          SCHEMES[model], "--layer-bits", "first=8/8", "--array-bits", "4/4", "--out",
          str(directory)])
    return directory


def _golden_and_rtl(directory, tmp_path, images):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, to_pixels(images).numpy())
    logits = {}
    for backend in ("golden", "rtl"):
        out = tmp_path / f"{backend}.npy"
        main(["run", "--program", str(directory), "--inputs", str(pixels), "--backend",
              backend, "--array-bits", "4/4", "--stall-sixteenths", "4", "--out", str(out)])
        logits[backend] = np.load(out)
    return logits


def _check_mix(directory, model):
    """The artifact really mixes: the schemes, an 8/8 first layer, activation outliers; the
    MLP's SYQ codes go to the codebook decoder, the CNN's 8/8 SYQ layer is decoded."""
    program = artifact.load(directory)
    gemms = [op for op in program.ops if isinstance(op, Gemm)]
    assert {"syq", "multi_tensor", "mmse"} <= {op.scheme for op in gemms}
    assert (gemms[0].weight_bits, program.values[gemms[0].input].bits) == (8, 8)
    assert any(value.outliers is not None for value in program.values.values())
    config = compile_program(program, array_bits=(4, 4)).config
    assert (config.codebook is not None) == (model == "mlp")


def test_mixed_artifact_rtl_equals_golden_on_a_subset(tmp_path_factory, tmp_path):
    """The MLP on 24 test images under random stalls."""
    directory = _mixed(tmp_path_factory, "mlp")
    _check_mix(directory, "mlp")
    logits = _golden_and_rtl(directory, tmp_path, demo_data("mlp").images[:24])
    assert np.array_equal(logits["rtl"], logits["golden"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_mixed_artifact_rtl_equals_golden_on_every_test_image(tmp_path_factory, tmp_path,
                                                              model):
    directory = _mixed(tmp_path_factory, model)
    _check_mix(directory, model)
    logits = _golden_and_rtl(directory, tmp_path, demo_data(model).images)
    mismatching = int((logits["rtl"] != logits["golden"]).any(1).sum())
    assert mismatching == 0, f"{mismatching} of {len(logits['rtl'])} images differ"
