"""Slow tier: the codebook decoder's generated Verilog on Verilator (cocotb) against golden.

Each configuration is built once and runs a program of several layers, each reloading
codebooks that earlier layers used, with random valid/ready stalls on every stream; the
testbench's in-order scoreboard (:mod:`sim.codebook_tb`) compares every decoded tile with
``golden.syq.decode_to_int`` and fails on any mismatch.
"""

from pathlib import Path

import pytest

from olmac.hw.codebook import CodebookDecoder
from olmac.sim.codebook_tb import config_env
from olmac.sim.runner import run_cocotb

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_ROOT = REPO_ROOT / "build" / "test-codebook"
TOPLEVEL = "olmac_codebook"

#: Binary, ternary and 3-bit codebooks, each at two granularities (all three covered).
CONFIGS = {
    "binary_layer": dict(lanes=4, cols=4, idx_bits=0, zero=False, entry_bits=3, subgroups=3,
                         granularity="layer"),
    "binary_row": dict(lanes=3, cols=5, idx_bits=0, zero=False, entry_bits=1, subgroups=12,
                       granularity="row"),
    "ternary_row": dict(lanes=8, cols=4, idx_bits=1, zero=True, entry_bits=7, subgroups=16,
                        granularity="row"),
    "ternary_pixel": dict(lanes=5, cols=3, idx_bits=1, zero=True, entry_bits=4,
                          subgroups=9, granularity="pixel"),
    "3bit_layer": dict(lanes=4, cols=2, idx_bits=3, zero=False, entry_bits=6, subgroups=2,
                       granularity="layer"),
    "3bit_pixel": dict(lanes=6, cols=4, idx_bits=3, zero=True, entry_bits=5, subgroups=12,
                       granularity="pixel"),
}


def _run(name, params, build_root, *, transform=None, seed=7):
    """Build the decoder for ``params`` and run a program of reloading layers on it;
    returns (tests, failures) from the cocotb results file."""
    env = config_env(params, layers=8, rows=4, pause_probability=0.3, seed=seed)
    return run_cocotb(CodebookDecoder(**params), TOPLEVEL, build_root / name,
                      test_module="olmac.sim.codebook_tb", testcase="run_program", env=env,
                      transform=transform)


@pytest.mark.parametrize("name", CONFIGS)
def test_decoder_bit_exact_under_backpressure(name):
    """Every decoded tile of eight layers with reloads between them equals golden's
    decode_to_int under random stalls on codes, load and weights."""
    tests, failures = _run(name, CONFIGS[name], BUILD_ROOT)
    assert (tests, failures) == (1, 0), f"see {BUILD_ROOT / name / 'test.log'}"


def test_scoreboard_catches_a_wrong_sign(tmp_path):
    """Fault injection: with one weight's negation turned into an inversion (``-m - 1``)
    in the Verilog, the same program fails. (The check above is only worth something if
    it can fail.)"""
    def invert_one_negation(text):
        assert "= - (*" in text
        return text.replace("= - (*", "= ~ (*", 1)

    tests, failures = _run("faulty", CONFIGS["binary_layer"], tmp_path,
                           transform=invert_one_negation)
    assert (tests, failures) == (1, 1)
