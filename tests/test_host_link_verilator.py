"""Slow tier: the UART host link's generated Verilog on Verilator (cocotb), at the pins.

The testbench (:mod:`sim.host_link_tb`) sends good, damaged, truncated, oversized,
framing-error and garbage input bit by bit and compares every answer byte with the frames
the host-side codec builds; a fault-injection run checks that the comparison can fail.
"""

from pathlib import Path

import pytest

from olmac.sim.host_link_tb import config_env, loopback_top
from olmac.sim.runner import run_cocotb

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_ROOT = REPO_ROOT / "build" / "sim" / "host_link"
TOPLEVEL = "olmac_host_link"

#: A small divisor keeps the run short: 40 clock cycles a byte.
CONFIG = dict(divisor=4, max_payload=24, timeout=160)


def _run(build_dir, *, transform=None, seed=3):
    """Build the loopback top and run the exchange; returns (tests, failures)."""
    return run_cocotb(loopback_top(**CONFIG), TOPLEVEL, build_dir,
                      test_module="olmac.sim.host_link_tb", testcase="exchange_frames",
                      env=config_env(**CONFIG, seed=seed), transform=transform)


def test_host_link_at_the_pins():
    """Every answer byte of the UART link equals the host-side codec's frames: replies
    to good frames before and after CRC, TRUNCATED, LENGTH, FRAMING and GARBAGE errors,
    and two frames sent back to back."""
    assert _run(BUILD_ROOT) == (1, 0), f"see {BUILD_ROOT / 'test.log'}"


@pytest.mark.slow
def test_scoreboard_catches_a_wrong_error_code(tmp_path):
    """Fault injection: with the GARBAGE report turned into BUSY in the Verilog, the same
    exchange fails. (The check above is only worth something if it can fail.)"""
    def garbage_as_busy(text):
        assert " error = 8'h05;" in text
        return text.replace(" error = 8'h05;", " error = 8'h06;")

    assert _run(tmp_path, transform=garbage_as_busy) == (1, 1)
