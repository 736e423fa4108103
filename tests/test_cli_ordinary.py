"""Issue 13's models written the ordinary way, the way a user runs them: ``olmac quantize
--model module:fn`` at 8/8 with real calibration images, then ``olmac run`` on the
network core's RTL (Verilator) and on golden, logits identical. The accuracy within a
point of float is ``test_lowering_layers``'s; this is the command line end to end."""

import numpy as np
import pytest

from olmac.cli import main
from olmac.golden.program import to_pixels
from olmac.models.digits import as_images, load_digits_split
from olmac.models.ordinary import as_sequences

pytestmark = pytest.mark.filterwarnings("error")


def _through_the_cli(tmp_path, model: str, shape, images: int) -> tuple:
    split = load_digits_split()
    np.save(tmp_path / "calibration.npy", shape(split.x_train[::4]).numpy())
    np.save(tmp_path / "pixels.npy", to_pixels(shape(split.x_test[:images])).numpy())
    main(["quantize", "--model", f"network_models:{model}", "--calibration",
          str(tmp_path / "calibration.npy"), "--weight-bits", "8", "--act-bits", "8",
          "--out", str(tmp_path / "program")])
    for backend in ("golden", "rtl"):
        main(["run", "--program", str(tmp_path / "program"), "--inputs",
              str(tmp_path / "pixels.npy"), "--backend", backend,
              "--out", str(tmp_path / f"{backend}.npy")])
    return np.load(tmp_path / "rtl.npy"), np.load(tmp_path / "golden.npy")


@pytest.mark.slow
def test_conv_bn_stack_runs_on_the_rtl_as_on_golden(tmp_path):
    """Conv+BN+ReLU, padding='same', ReLU6, padded max pooling, Dropout, ``view``, BN1d,
    clamp and log_softmax, through the command line: RTL logits = golden's."""
    rtl, golden = _through_the_cli(tmp_path, "conv_bn_stack", as_images, 3)
    np.testing.assert_array_equal(rtl, golden)


@pytest.mark.slow
@pytest.mark.parametrize("model, shape", [("residual_bn", as_images),
                                          ("depthwise_separable", as_images),
                                          ("sequence_cnn", as_sequences)])
def test_ordinary_models_run_on_the_rtl_as_on_golden(tmp_path, model, shape):
    """The residual block with BatchNorm, the depthwise-separable model and the Conv1d
    model through the command line on 20 test images each: RTL logits = golden's."""
    rtl, golden = _through_the_cli(tmp_path, model, shape, 20)
    np.testing.assert_array_equal(rtl, golden)
