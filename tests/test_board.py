# amaranth: UnusedElaboratable=no
"""Fast tier of the board path: the serial requantizer against the golden §11 arithmetic and
the parallel :class:`hw.requant.Requantizer`, and the network application's command
protocol (docs/host_link.md §6) on Amaranth's simulator.

(The first line silences UnusedElaboratable: the validation tests build components that
are never elaborated.)
"""

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from golden.formats import int_range
from golden.program import requantize_residual_round_half_up
from hw.requant import Requantizer
from hw.serial_requant import SerialRequantizer
from sim.pysim import StreamSink, StreamSource

pytestmark = pytest.mark.filterwarnings("error")


def _requant_case(rng, rows, cols, acc_width):
    """Random vectors and parameters covering shift 0 and 63, t 0 and 31, M = -2^31."""
    accs = rng.integers(-(1 << (acc_width - 1)), 1 << (acc_width - 1), size=(rows, cols))
    bias = rng.integers(-(1 << 31), 1 << 31, size=(rows, cols))
    multiplier = rng.integers(-(1 << 31), 1 << 31, size=(rows, cols))
    # small multipliers and shifts too, so that outputs land inside the range, not only
    # at its ends
    small = rng.random((rows, cols)) < 0.5
    multiplier = np.where(small, rng.integers(-(1 << 12), 1 << 12, size=(rows, cols)),
                          multiplier)
    shift = np.where(small, rng.integers(20, 40, size=(rows, cols)),
                     rng.integers(0, 64, size=(rows, cols)))
    residual = rng.integers(-(1 << 16), 1 << 16, size=(rows, cols))
    residual_multiplier = np.where(small, rng.integers(-(1 << 10), 1 << 10, size=(rows, cols)),
                                   rng.integers(-(1 << 31), 1 << 31, size=(rows, cols)))
    residual_shift = rng.integers(0, 32, size=(rows, cols))
    shift[0, :3] = [0, 63, 31][:cols]
    residual_shift[0, :2] = [0, 31][:cols]
    multiplier[1, 0] = -(1 << 31)
    residual_multiplier[1, 0] = -(1 << 31)
    relu = rng.integers(0, 2, size=rows)
    formats = [(int(rng.integers(2, 17)), bool(rng.integers(0, 2))) for _ in range(rows)]
    return dict(accs=accs, bias=bias, multiplier=multiplier, shift=shift, residual=residual,
                residual_multiplier=residual_multiplier, residual_shift=residual_shift,
                relu=relu, formats=formats)


def _run_requantizer(dut, case):
    rows, cols = case["accs"].shape
    params_layout = dut.params.payload.shape()
    acc_layout = dut.acc.payload.shape()
    params, accs = [], []
    for row in range(rows):
        low, high = int_range(*case["formats"][row])
        params.append(params_layout.const({
            "channels": [{name: int(case[name][row, col]) for name in (
                "bias", "multiplier", "shift", "residual", "residual_multiplier",
                "residual_shift")} for col in range(cols)],
            "relu": int(case["relu"][row]), "low": low, "high": high}).as_value().value)
        accs.append(acc_layout.const([int(v) for v in case["accs"][row]]).as_value().value)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(StreamSource(dut.acc, accs, pause_probability=0.3).run, background=True)
    sim.add_testbench(StreamSource(dut.params, params, pause_probability=0.3, seed=5).run,
                      background=True)
    sink = StreamSink(dut.out, rows, pause_probability=0.3)
    sim.add_testbench(sink.run)
    sim.run()
    out_layout = dut.out.payload.shape()
    return np.array([[_slot(word, col, out_layout.elem_shape) for col in range(cols)]
                     for word in sink.received])


def _slot(word, col, shape):
    width = shape.width
    value = (int(word) >> (col * width)) & ((1 << width) - 1)
    return value - (1 << width) if shape.signed and value >> (width - 1) else value


def _golden(case):
    rows, cols = case["accs"].shape
    expected = []
    for row in range(rows):
        bits, signed = case["formats"][row]
        expected.append(requantize_residual_round_half_up(
            torch.tensor(case["accs"][row:row + 1]), torch.tensor(case["bias"][row]),
            torch.tensor(case["multiplier"][row]), torch.tensor(case["shift"][row]),
            torch.tensor(case["residual"][row:row + 1]),
            torch.tensor(case["residual_multiplier"][row]),
            torch.tensor(case["residual_shift"][row]), out_bits=bits, out_signed=signed,
            relu=bool(case["relu"][row])).numpy()[0])
    return np.array(expected)


@pytest.mark.parametrize("cols,acc_width,seed", [(1, 12, 0), (3, 27, 1), (4, 44, 2)])
def test_serial_requantizer_matches_golden_and_parallel(cols, acc_width, seed):
    """Bit-exact: the serial requantizer, the parallel Requantizer and golden
    requantize_residual_round_half_up agree on random vectors with residuals, run-time
    bounds, ReLU, extreme shifts and multipliers, under random stalls on every stream."""
    case = _requant_case(np.random.default_rng(seed), 12, cols, acc_width)
    params = dict(cols=cols, acc_width=acc_width, out_bits=16, residual_bits=17,
                  runtime_bounds=True)
    serial = _run_requantizer(SerialRequantizer(**params), case)
    parallel = _run_requantizer(Requantizer(**params), case)
    expected = _golden(case)
    np.testing.assert_array_equal(serial, expected)
    np.testing.assert_array_equal(parallel, expected)


def test_serial_requantizer_without_residual():
    """Without a residual input, the serial requantizer equals the golden §3 rule (the
    residual term zero) at a fixed output format."""
    rng = np.random.default_rng(7)
    case = _requant_case(rng, 10, 2, 20)
    case["residual"][:] = 0
    case["relu"][:] = 0
    case["formats"] = [(8, True)] * 10
    dut = SerialRequantizer(cols=2, acc_width=20, out_bits=8, out_signed=True)
    rows, cols = case["accs"].shape
    params_layout = dut.params.payload.shape()
    got = _run_plain(dut, case, params_layout)
    np.testing.assert_array_equal(got, _golden(case))


def _run_plain(dut, case, params_layout):
    rows, cols = case["accs"].shape
    params = [params_layout.const({
        "channels": [{name: int(case[name][row, col]) for name in ("bias", "multiplier",
                                                                   "shift")}
                     for col in range(cols)], "relu": 0}).as_value().value
        for row in range(rows)]
    accs = [dut.acc.payload.shape().const([int(v) for v in case["accs"][row]]).as_value().value
            for row in range(rows)]
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(StreamSource(dut.acc, accs).run, background=True)
    sim.add_testbench(StreamSource(dut.params, params, seed=4).run, background=True)
    sink = StreamSink(dut.out, rows)
    sim.add_testbench(sink.run)
    sim.run()
    return np.array([[_slot(word, col, dut.out.payload.shape().elem_shape)
                      for col in range(cols)] for word in sink.received])


@pytest.mark.parametrize("kwargs,message", [
    (dict(cols=0), r"^Column count must be an integer in 1\.\.64, not 0$"),
    (dict(acc_width=45), r"^Accumulator width must be an integer in 1\.\.44, not 45$"),
    (dict(out_bits=17), r"^Output width must be an integer in 2\.\.16, not 17$"),
    (dict(out_signed=1), r"^Output signedness must be a bool, not 1$"),
    (dict(residual_bits=18), r"^Residual width must be an integer in 2\.\.17, not 18$"),
    (dict(runtime_bounds="yes"), r"^runtime_bounds must be a bool, not 'yes'$"),
])
def test_serial_requantizer_refuses_bad_parameters(kwargs, message):
    params = dict(cols=2, acc_width=20, out_bits=8)
    params.update(kwargs)
    with pytest.raises(TypeError, match=message):
        SerialRequantizer(**params)
