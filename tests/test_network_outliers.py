# amaranth: UnusedElaboratable=no
# (Amaranth reads that only on line 1.) The tests of refused arguments leave unused objects.
"""Run-time activation outliers in the network core (docs/program.md §18, docs/network.md
§15): the outlier store alone, whole programs in Amaranth's simulator with random stalls
(adversarial placements included) and on Verilator, and what the compiler refuses.

Every expectation is either written by hand from §18 or golden's ``run_integer``."""

import dataclasses

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from olmac.compiler import CompileError, compile_program
from olmac.golden.program import (ActOutliers, Flatten, Gemm, IntegerProgram, QuantizeInput,
                                  Requantize, Value, quantize_model, run_integer, to_pixels)
from olmac.hw.network import ActOutlierStore, NetworkCore, OpKind, PackedMemory
from olmac.network import demo_data, run_rtl
from olmac.sim.codec import LayoutCodec
from olmac.sim.pysim import StreamSink, StreamSource
from test_network import _core, _run_core

pytestmark = pytest.mark.filterwarnings("error")

ONE = 1 << 30  # with shift 30: the identity requantization


# -- the store alone ------------------------------------------------------------------------

def test_store_saturates_and_keeps_the_best_outlier_of_each_block():
    """Width 2, blocks of 2 words, 1 slot, dense range 0..3, three words (5, 1), (0, 9),
    (2, 7): block 0 holds 5 (e = 2, position 0) and 9 (e = 6, position 3) and keeps 9;
    block 1 keeps 7 (position 1). The dense words are (3, 1), (0, 3), (2, 3)."""
    config = NetworkCore.Config(width=2, act_bits=2, weight_bits=2, max_k=2, data_depth=8,
                                weight_depth=1, param_depth=1, program_depth=1,
                                act_outlier_lanes=1, act_outlier_block_words=2,
                                act_outlier_slots=1, outlier_depth=4)
    store = ActOutlierStore(config)
    descriptor = config.layouts["program"].const({
        "kind": OpKind.SUM, "out_base": 2, "out_words": 1, "out_pixels": 3,
        "out_outliers": 1, "out_obase": 1, "dense_low": 0, "dense_high": 3})
    sim = Simulator(store)
    sim.add_clock(1e-6)
    vector = LayoutCodec(store.results.payload.shape())
    sink = StreamSink(store.dense, 3, pause_probability=0.5, seed=2)
    read_blocks = []

    async def control(ctx):
        ctx.set(store.control.op, descriptor)
        ctx.set(store.image_start, 1)
        ctx.set(store.control.start, 1)
        await ctx.tick()
        ctx.set(store.image_start, 0)
        ctx.set(store.control.start, 0)
        ctx.set(store.control.running, 1)
        await StreamSource(store.results, vector.pack(np.array([[5, 1], [0, 9], [2, 7]])),
                           pause_probability=0.5).run(ctx)

    async def reader(ctx):
        await sink.run(ctx)
        await ctx.tick().repeat(3)
        ctx.set(store.read.en, 1)
        for block in (1, 2):
            ctx.set(store.read.addr, block)
            await ctx.tick()
            read_blocks.append(ctx.get(store.read.data))

    sim.add_testbench(control, background=True)
    sim.add_testbench(reader)
    sim.run()
    assert vector.unpack(sink.received).tolist() == [[3, 1], [0, 3], [2, 3]]
    assert [(block.parity, block.slots[0].position, block.slots[0].value)
            for block in read_blocks] == [(1, 3, 9), (1, 1, 7)]


# -- the packed memory alone ---------------------------------------------------------------

def test_packed_memory_routes_by_the_op_and_extends_the_sign():
    """Writes of a packed output (the back's op's) keep the low act_bits of each slot and
    never reach the 16-bit memory; reads of a packed input (the front's op's) come back as
    16-bit slots, sign-extended for a signed input; other accesses pass through to the
    16-bit memory's ports."""
    config = NetworkCore.Config(width=2, act_bits=3, weight_bits=2, max_k=2, data_depth=4,
                                weight_depth=1, param_depth=1, program_depth=1,
                                packed_depth=8)
    packed = PackedMemory(config)
    layout = config.layouts["program"]
    read = []

    async def bench(ctx):
        # the write's op is the back's, the read's the front's
        ctx.set(packed.back.op, layout.const({"kind": OpKind.SUM, "out_packed": 1}))
        ctx.set(packed.write.addr, 6)
        ctx.set(packed.write.data, [0xFFFD, 2])  # −3 and 2 in 16-bit slots
        ctx.set(packed.write.en, 1)
        assert ctx.get(packed.wide_write.en) == 0
        await ctx.tick()
        ctx.set(packed.write.en, 0)
        for signed in (1, 0):
            ctx.set(packed.control.op, layout.const({"kind": OpKind.SUM, "in_packed": 1,
                                                      "in_signed": signed}))
            ctx.set(packed.operand.addr, 6)
            ctx.set(packed.operand.en, 1)
            assert ctx.get(packed.wide_operand.en) == 0
            await ctx.tick()
            read.append(list(ctx.get(packed.operand.data)))
        ctx.set(packed.back.op, layout.const({"kind": OpKind.SUM}))
        ctx.set(packed.control.op, layout.const({"kind": OpKind.SUM}))
        ctx.set(packed.write.en, 1)
        assert (ctx.get(packed.wide_write.en), ctx.get(packed.wide_operand.en)) == (1, 1)
        ctx.set(packed.wide_operand.data, [7, 9])
        assert list(ctx.get(packed.operand.data)) == [7, 9]

    sim = Simulator(packed)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert read == [[0xFFFD, 2], [0b101, 2]]  # −3 as s3 sign-extended; as u3 it reads 5


# -- whole programs -------------------------------------------------------------------------

def placement_program(slots, block_words=1, width=4):
    """pixels (4 channels × 2×2) → input u5 (identity) → low u2 with outliers (identity),
    flattened → a linear layer with distinct weights per feature (so every lane's value
    shows in the sums)."""
    generator = torch.Generator().manual_seed(3)
    weights = torch.randint(-8, 8, (16, 3), generator=generator)
    gemm = Gemm(name="fc", input="flat", output="fc", layer="linear", in_features=16,
                out_features=3, scheme="mmse", weight_bits=4, relu=False,
                bias=torch.zeros(3, dtype=torch.int64), multiplier=torch.full((3,), ONE),
                shift=torch.full((3,), 30), weight_scale=torch.ones(3, dtype=torch.float64),
                weights=weights)
    outliers = ActOutliers(bits=15, word_values=width, block_words=block_words, slots=slots)
    values = {"input": Value((4, 2, 2), 5, False, 1.0),
              "low": Value((4, 2, 2), 2, False, 1.0, outliers),
              "flat": Value((16,), 2, False, 1.0, outliers),
              "fc": Value((3,), 16, True, 1.0)}
    ops = (QuantizeInput("input", "input", ONE, 30),
           Requantize("low", "input", "low", ONE, 30), Flatten("flat", "low", "flat"), gemm)
    return IntegerProgram((4, 2, 2), 16, 1.0, values, ops, "fc"), weights


#: Image 0: every outlier in pixel 0 (one block with 1-word blocks): channels 16, 9, 12, 5.
#: Image 1: one outlier per pixel. Image 2: none.
PLACEMENTS = torch.tensor([
    [[[16, 0], [1, 2]], [[9, 3], [0, 1]], [[12, 2], [3, 0]], [[5, 1], [2, 3]]],
    [[[7, 0], [1, 2]], [[1, 8], [0, 1]], [[2, 2], [10, 0]], [[0, 1], [2, 16]]],
    [[[0, 1], [2, 3]], [[3, 2], [1, 0]], [[1, 1], [1, 1]], [[2, 3], [0, 2]]],
])


def _kept_by_hand(slots):
    """§18 by hand for PLACEMENTS, u2 (0..3), one-word blocks (one pixel each)."""
    kept = PLACEMENTS.clone().clamp(max=3)
    # image 0, pixel 0: corrections 13, 6, 9, 2 → kept in that order of size
    for channel in (0, 2, 1, 3)[:slots]:
        kept[0, channel, 0, 0] = PLACEMENTS[0, channel, 0, 0]
    # image 1: one outlier in each pixel's block: all kept
    kept[1] = PLACEMENTS[1]
    return kept


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_core_runs_adversarial_outlier_placements(slots):
    """Every outlier of an image in one block (over its budget for 1 and 2 slots; 4 slots
    take four cycles on one lane), one per block, none: the core's logits are the sums
    of §18's ŷ (worked out by hand) times the weights, under random stalls."""
    program, weights = placement_program(slots)
    expected = _kept_by_hand(slots).reshape(3, -1) @ weights
    assert torch.equal(run_integer(program, PLACEMENTS), expected)
    compiled = compile_program(program, width=4)
    assert compiled.config.act_outlier_slots == slots
    logits = _run_core(_core(compiled), compiled, PLACEMENTS, pause=0.3)
    assert torch.equal(logits, expected)


@pytest.mark.parametrize("requantizer, stages", [("parallel", 0), ("serial", 0),
                                                  ("parallel", 3)])
def test_narrow_core_runs_outliers_and_packed_values(requantizer, stages):
    """The narrow memories (one activation port, lent to writes and residual reads) with the
    packed memory and the outlier store, under random stalls; also with the beat walk's
    address register stages, which carry the outlier block's address too."""
    program, weights = placement_program(slots=2)
    compiled = compile_program(program, width=4)
    config = dataclasses.replace(compiled.config, memories="narrow", requantizer=requantizer,
                                 walk_stages=stages)
    assert config.packed_depth and config.act_outlier_lanes
    core = NetworkCore(config, **compiled.contents)
    logits = _run_core(core, compiled, PLACEMENTS, pause=0.3)
    assert torch.equal(logits, _kept_by_hand(2).reshape(3, -1) @ weights)


def test_core_runs_outliers_across_tiles_of_a_block():
    """Blocks of 2 words on a 2-wide core: a pixel's 4 channels are 2 words (tiles), so a
    block is filled by vectors written far apart (tile by tile) and still keeps the best."""
    program, _ = placement_program(slots=2, block_words=2, width=2)
    compiled = compile_program(program, width=2)
    logits = _run_core(_core(compiled), compiled, PLACEMENTS, pause=0.3)
    assert torch.equal(logits, run_integer(program, PLACEMENTS))


def test_core_runs_the_mlp_with_activation_outliers(mlp_data):
    """The demo MLP with 5 % activation outliers and value-aware weights (an activation
    outlier meets weight outliers at its lane), under random stalls; the kept outliers
    change the logits, so a core that lost them would fail."""
    program = quantize_model(mlp_data.model, mlp_data.calibration, scheme="value_aware",
                             act_outlier_ratio=0.05, act_calibration="max")
    pixels = to_pixels(mlp_data.images[:3])
    compiled = compile_program(program)
    logits = _run_core(_core(compiled), compiled, pixels, pause=0.3)
    assert torch.equal(logits, run_integer(program, pixels))
    saturated = dataclasses.replace(program, values={
        name: dataclasses.replace(value, outliers=None) for name, value in program.values.items()})
    assert not torch.equal(logits, run_integer(saturated, pixels))


def test_compiler_refuses_outliers_of_another_word_width():
    """Every op that writes or reads such a value is named, one line each."""
    program, _ = placement_program(slots=1, width=4)
    words = r"keeps activation outliers in words of 4 values; this core's words hold 8 " \
            r"\(quantize for width 8\)"
    with pytest.raises(CompileError, match=rf"^op 1 \(requantize 'low'\): value 'low' {words}\n"
                       rf"op 3 \(gemm 'fc'\): value 'flat' {words}$"):
        compile_program(program, width=8)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(act_outlier_block_words=3), ValueError,
     r"^act_outlier_block_words must be a power of two, not 3$"),
    (dict(act_outlier_slots=9), TypeError,
     r"^act_outlier_slots must be an integer in 1\.\.8, not 9$"),
    (dict(act_outlier_lanes=17), TypeError,
     r"^act_outlier_lanes must be an integer in 0\.\.16, not 17$"),
])
def test_core_config_refuses_bad_outlier_options(kwargs, error, message):
    params = dict(width=2, act_bits=4, weight_bits=4, max_k=8, data_depth=16, weight_depth=4,
                  param_depth=2, program_depth=4, act_outlier_lanes=1,
                  act_outlier_block_words=4)
    with pytest.raises(error, match=message):
        NetworkCore.Config(**{**params, **kwargs})


def test_rtl_adversarial_placements_under_stalls():
    """Verilator: the adversarial placements with two slots per block, random stalls."""
    program, weights = placement_program(slots=2)
    pixels = PLACEMENTS.repeat(4, 1, 1, 1)
    result = run_rtl(program, pixels, width=4, stall_sixteenths=6, seed=5)
    assert torch.equal(result.logits, (_kept_by_hand(2).reshape(3, -1) @ weights).repeat(4, 1))


@pytest.mark.slow
def test_rtl_cnn_with_activation_outliers_under_stalls():
    """Verilator: 60 test images of the demo CNN at 3 bits with 2 % activation outliers and
    packed activations, random stalls on both streams: no logit differs from golden."""
    data = demo_data("cnn")
    program = quantize_model(data.model, data.calibration, scheme="value_aware", act_bits=3,
                             weight_bits=3, act_outlier_ratio=0.02)
    assert any(value.outliers for value in program.values.values())
    pixels = to_pixels(data.images[:60])
    result = run_rtl(program, pixels, stall_sixteenths=5, seed=9)
    assert result.activation_memory["bits_per_low_value"] < 3.5
    mismatches = int((result.logits != run_integer(program, pixels)).any(1).sum())
    assert mismatches == 0, f"{mismatches} of 60 images differ"
