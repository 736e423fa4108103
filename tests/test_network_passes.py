# amaranth: UnusedElaboratable=no
"""Every weight scheme and per-layer widths on the network core (docs/network.md §15,
passes): the compiler's passes against the layer's own product, and whole networks on
Amaranth's simulator under random stalls against golden.run_integer."""

from dataclasses import replace

import pytest
import torch

from olmac.compiler import CompileError, compile_program, plan_passes
from olmac.golden.program import Gemm, quantize_model, run_integer, to_pixels
from test_network import _core, _run_core

pytestmark = pytest.mark.filterwarnings("error")


def _mlp(data, **options):
    return quantize_model(data.model, data.calibration, act_calibration="max", **options)


def _digits_of(x, k, count):
    """Digits of ``x`` by the docs' definition, with floor division: the lower ones
    ``⌊x / 2^(k·j)⌋ mod 2^k``, the top one ``⌊x / 2^(k·(count−1))⌋``."""
    return [torch.div(x, 2 ** (k * j), rounding_mode="floor") % (2 ** k)
            if j < count - 1 else torch.div(x, 2 ** (k * j), rounding_mode="floor")
            for j in range(count)]


@pytest.mark.parametrize("scheme,bits,array", [
    ("mmse", 8, (4, 4)), ("value_aware", 8, (3, 4)), ("multi_tensor", 4, (4, 4)),
    ("multi_tensor", 5, (3, 8)), ("syq", 6, (3, 3)),
])
def test_passes_add_up_to_the_layers_product(mlp_data, scheme, bits, array):
    """Σ over passes of 2^exponent · (activation digit × pass weights + outliers) equals
    the layer's accumulator (the scheme's own accumulate), and every pass's operands fit
    the array: weights in s<W>, activation digits in u<A>."""
    program = _mlp(mlp_data, scheme=scheme, weight_bits=bits, act_bits=8)
    op = next(op for op in program.ops if isinstance(op, Gemm))
    source = program.values[op.input]
    acts = torch.randint(0, 2 ** source.bits, (5, op.in_features))
    passes = plan_passes(op, source.bits, source.signed, array[1], False, array[0])
    k = array[1]
    count = -(-source.bits // k)
    digits = _digits_of(acts, k, count)
    total = torch.zeros(5, op.out_features, dtype=torch.float64)
    for step in passes:
        dense = torch.from_numpy(step.dense)
        assert dense.min() >= -2 ** (array[0] - 1) and dense.max() < 2 ** (array[0] - 1)
        digit = digits[step.act_shift // k].to(torch.float64)
        assert digit.max() < 2 ** array[1]
        weights = dense + (torch.from_numpy(step.outliers) if step.outliers is not None else 0)
        total += (digit @ weights.to(torch.float64)) * 2.0 ** torch.from_numpy(step.exponent)
    expected = op.weight_scheme.accumulate(acts, source.bits, source.signed)
    assert torch.equal(total.to(torch.int64), expected)
    assert not passes[-1].exponent.any()


@pytest.mark.parametrize("options,array", [
    (dict(scheme={"layers.0": "syq", "layers.2": "multi_tensor", "layers.4": "value_aware"}),
     None),
    (dict(scheme="mmse", weight_bits=8, act_bits=8), (4, 4)),
])
def test_core_runs_every_scheme_and_wide_layers(mlp_data, options, array):
    """The MLP with SYQ, multi-tensor (a pass per plane) and value-aware layers, and with
    layers wider than the array (activation digits × weight planes): every logit equals
    run_integer, under random stalls."""
    program = _mlp(mlp_data, **options)
    pixels = to_pixels(mlp_data.images[:2])
    compiled = compile_program(program, width=4, array_bits=array)
    logits = _run_core(_core(compiled), compiled, pixels, pause=0.3)
    assert torch.equal(logits, run_integer(program, pixels))


def test_core_runs_signed_wide_activations_on_a_narrow_array():
    """A signed (no-ReLU) 8-bit hidden layer on a 3-bit signed array: three digits, the
    lower two non-negative, the top one carrying the sign."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(48, 5))
    program = quantize_model(model, torch.rand(64, 1, 8, 8), act_bits=8, weight_bits=6,
                             scheme="value_aware", act_calibration="max")
    assert any(program.values[op.input].signed for op in program.ops if isinstance(op, Gemm))
    pixels = torch.randint(0, 17, (2, 1, 8, 8))
    compiled = compile_program(program, width=2, array_bits=(3, 3))
    logits = _run_core(_core(compiled), compiled, pixels, pause=0.2)
    assert torch.equal(logits, run_integer(program, pixels))


def test_compiler_lists_every_layer_it_cannot_run(mlp_data):
    """One line per layer that needs more passes than the descriptor holds, naming it and
    the array that runs it in one pass."""
    program = _mlp(mlp_data, scheme="mmse", weight_bits=8, act_bits=8)
    with pytest.raises(CompileError) as error:
        compile_program(program, array_bits=(2, 2))
    lines = str(error.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "op 1 (gemm 'layers.0')", "op 2 (gemm 'layers.2')", "op 3 (gemm 'layers.4')"]
    assert all("needs 28 passes" in line and "an array of 8/8 runs it in one" in line
               for line in lines)


def test_compiler_refuses_multi_tensor_planes_with_activation_digits(mlp_data):
    """Per-column plane exponents and activation digits may have no common order (here
    one column's planes are 1 bit apart, another's 6, against 4-bit activation digits):
    refused with what makes the layer run."""
    program = _mlp(mlp_data, scheme="multi_tensor", act_bits=8)
    op = next(op for op in program.ops if isinstance(op, Gemm))
    exponents = torch.tensor([[1, 6] * (op.out_features // 2)], dtype=torch.uint8)
    op = replace(op, plane_exponents=exponents)
    with pytest.raises(CompileError, match=r"^its 4 passes .* fall in every column; "
                                           r"activations of at most 4 bits \(one digit\) or "
                                           r"an array of 8-bit activations make it run$"):
        plan_passes(op, 8, False, 4, False, 4)


def test_beat_walk_repeats_the_taps_per_pass_with_each_passs_digit():
    """A GEMM of three passes walks its taps three times (``last`` only on the final pass's
    last beat); each beat hands the array the digit its weight word names: the slot
    shifted right by ``act_shift``, ``act_bits`` wide, the top bit cleared by ``act_low``."""
    from test_network_parts import _Harness, _run, _simulate, _take
    from olmac.hw.network import BeatWalk, NetworkCore, OpKind
    config = NetworkCore.Config(width=2, act_bits=4, act_signed=True, weight_bits=4, max_k=64,
                                data_depth=16, weight_depth=8, param_depth=2,
                                program_depth=2, act_shift_bits=3)
    dut = BeatWalk(config)
    word = config.layouts["weights"]
    digits = [(6, 0), (3, 1), (0, 1)]   # (act_shift, act_low) of the three passes, top first
    # two taps per pass (kernel 1×2), the same (act_shift, act_low) on both
    weights = [word.const({"act_shift": s, "act_low": low}).as_value().value
               for s, low in digits for _ in range(2)]
    slots = [0xFF, 0xFFA5]    # u8 255 (lower digits 0b1111: act_low matters) and s16 −91
    data = [slots[0] | slots[1] << 16] * 16
    top = _Harness(dut, operand=(config.layouts["data"], data, "read"),
                   weights_read=(word, weights, "read"))
    op = config.layouts["program"].const(dict(
        kind=OpKind.GEMM, in_h=1, in_w=2, in_words=1, band_words=1, out_h=1, out_w=1, out_words=1,
        out_pixels=1, kernel_h=1, kernel_w=2, stride_h=1, stride_w=1, last_pass=2))

    def digit(slot, shift, low):
        value = (slot >> shift) & 0xF
        return value & 0x7 if low else value - 16 if value & 0x8 else value

    async def bench(ctx):
        ctx.set(dut.granted, 1)
        await _run(ctx, dut.control, op)
        taken = await _take(ctx, dut.act, 6)
        assert [(list(t.data), t.last) for t in taken] == [
            ([digit(s, shift, low) for s in slots], int(index == 5))
            for index, (shift, low) in enumerate(d for d in digits for _ in range(2))]

    _simulate(top, bench)
