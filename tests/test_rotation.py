"""Hadamard rotation of a GEMM's input space (docs/program.md §19): the fast transform,
the ``rotate`` op's integer semantics, accuracy at 8 bits, the artifact and the compiler's
refusal."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from olmac.compiler import CompileError, compile_program
from olmac.flow import demo_data
from olmac.golden import artifact
from olmac.golden.program import IntegerProgram, Rotate, quantize_model, run_fake_quant, \
    run_integer, to_pixels
from olmac.golden.program.kernels import walsh_hadamard

pytestmark = pytest.mark.filterwarnings("error")


def _sylvester(n: int) -> torch.Tensor:
    """``H_n`` by Kronecker products of ``[[1, 1], [1, −1]]`` (an independent construction)."""
    h = torch.ones(1, 1, dtype=torch.int64)
    while len(h) < n:
        h = torch.kron(h, torch.tensor([[1, 1], [1, -1]]))
    return h


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 6), st.integers(1, 3), st.integers(0, 2 ** 31 - 1))
def test_fast_transform_is_the_product_with_the_hadamard_matrix(log_n, rows, seed):
    """§19: ``walsh_hadamard`` along the last or first axis equals the product with
    ``H_n``, exactly on 16-bit integers."""
    n = 1 << log_n
    x = torch.randint(-2 ** 15, 2 ** 15, (rows, n), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(walsh_hadamard(x, 1), x @ _sylvester(n))
    assert torch.equal(walsh_hadamard(x.T.contiguous(), 0), (x @ _sylvester(n)).T)


def test_non_power_of_two_is_refused():
    with pytest.raises(ValueError, match=r"^the Walsh–Hadamard transform needs a "
                                         r"power-of-two size, not 6$"):
        walsh_hadamard(torch.zeros(2, 6))


@pytest.fixture(scope="module")
def rotated():
    data = demo_data("mlp")
    program = quantize_model(data.model, data.calibration, act_bits=8, weight_bits=8,
                             rotate=True, act_calibration="max")
    return data, program


def test_rotate_op_by_the_written_formula(rotated):
    """§19: the first ``rotate`` op's output, from its input by ``h = x·H_n`` and
    ``clamp((h·M + 2^(s−1)) >> s, lo, hi)`` in Python integers, is what ``run_integer``
    computes (the program cut after that op)."""
    data, program = rotated
    index = next(i for i, op in enumerate(program.ops) if isinstance(op, Rotate))
    op = program.ops[index]
    pixels = to_pixels(data.images[:16])

    def cut(end, output):
        ops = program.ops[:end]
        values = {op.output: program.values[op.output] for op in ops}
        return IntegerProgram(program.input_shape, program.pixel_max, program.pixel_scale,
                              values, ops, output)
    x = run_integer(cut(index, op.input), pixels)
    y = run_integer(cut(index + 1, op.output), pixels)
    assert program.values[op.input].bits == 16 and program.values[op.output].signed
    h = x @ _sylvester(x.shape[1])
    lo, hi = -(1 << 7), (1 << 7) - 1
    expected = [[min(max((int(v) * op.multiplier + (1 << (op.shift - 1))) >> op.shift, lo),
                     hi) for v in row] for row in h]
    assert y.tolist() == expected


def test_rotated_mlp_keeps_its_accuracy_at_8_bits(rotated, tmp_path):
    """At 8/8 the rotated MLP's integer accuracy is within one point of the float model's,
    integer and float view agree on all but 3 test images, and the artifact round-trips."""
    data, program = rotated
    assert [op.KIND for op in program.ops] == ["quantize_input", "gemm", "rotate", "gemm",
                                               "rotate", "gemm"]
    pixels = to_pixels(data.images)
    integer = run_integer(program, pixels).argmax(1)
    with torch.no_grad():
        float_accuracy = float((data.model(data.images).argmax(1) == data.labels).double()
                               .mean())
    assert float((integer == data.labels).double().mean()) >= float_accuracy - 0.01
    assert int((run_fake_quant(program, data.images).argmax(1) != integer).sum()) <= 3
    artifact.save(program, tmp_path / "rotated")
    assert torch.equal(run_integer(artifact.load(tmp_path / "rotated"), pixels[:8]),
                       run_integer(program, pixels[:8]))


def test_the_core_refuses_the_rotate_op(rotated):
    """The core has no rotation: the compiler names every ``rotate`` op, one line each."""
    with pytest.raises(CompileError, match=r"^op 2 \(rotate 'layers\.0\.rot'\): the network "
                                           r"core has no 'rotate' op\nop 4 \(rotate "
                                           r"'layers\.2\.rot'\): the network core has no "
                                           r"'rotate' op$"):
        compile_program(rotated[1])
