"""The next image's words taken in the background (docs/network.md §15, prefetch): from the
op after the last reader of the quantizing ``LOAD``'s words, a small quantizer of the core
takes the next image and writes it to the packed memory, so that ``LOAD`` ends at once.
Checked bit for bit against golden.run_integer on Amaranth's simulator (several images back
to back under stalls, a reload between images) and on Verilator (the demo CNN's cycles)."""

import dataclasses
import functools
import random

import pytest
import torch
from amaranth.sim import Simulator
from torch import nn
from torch.nn import functional as F

from olmac.compiler import compile_program
from olmac.golden.program import quantize_model, run_integer, to_pixels
from olmac.hw.network import NetworkCore, OpKind
from olmac.network import quantize, run_rtl
from olmac.sim.codec import LayoutCodec
from olmac.sim.pysim import StreamSink, StreamSource
from test_network import _program, _run_core

pytestmark = pytest.mark.filterwarnings("error")


class _LateReader(nn.Module):
    """The input read by a convolution and, two convolutions later, by another one."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(1, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)
        self.late = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        y = F.relu(self.second(F.relu(self.first(x))))
        return self.head(torch.cat([y, F.relu(self.late(x))], 1).flatten(1))


@functools.cache
def _late_reader(calibration_images=64):
    torch.manual_seed(0)
    images = torch.rand(64, 1, 6, 6)
    program = quantize_model(_LateReader().eval(), images[:calibration_images], act_bits=4,
                             weight_bits=4)
    return program, to_pixels(torch.rand(3, 1, 6, 6))


def _label_index(compiled, name):
    return next(index for index, op in enumerate(compiled.ops) if f"'{name}'" in op["label"])


def test_compiler_marks_the_op_after_the_last_reader():
    """``fetch_next`` goes on the op after the last one that reads the pixels' words: the
    late convolution here (the first reads them too, two ops earlier); the ``LOAD`` takes
    the input quantizer's ``M`` and ``s`` from the program's ``quantize_input``."""
    program, _ = _late_reader()
    compiled = compile_program(program, width=4, prefetch=True)
    ops = compiled.ops
    assert compiled.config.prefetch
    assert ops[0]["kind"] == OpKind.LOAD and ops[0]["quantize"] and ops[0]["out_packed"]
    late = _label_index(compiled, "late")
    assert late > _label_index(compiled, "second") > _label_index(compiled, "first")
    assert [index for index, op in enumerate(ops) if op.get("fetch_next")] == [late + 1]
    quantizer = program.ops[0]
    assert (ops[0]["input_multiplier"], ops[0]["input_shift"]) == (quantizer.multiplier,
                                                                   quantizer.shift)


def test_prefetch_defaults_and_boards():
    """On from width 8 (the demo CNN: from conv2, after conv1 read the im2col words), off
    below and where asked; a core without it has no descriptor fields for it."""
    program, _ = _late_reader()
    assert not compile_program(program, width=4).config.prefetch
    assert "fetch_next" not in compile_program(program, width=4).config.layouts["program"].members
    assert compile_program(program, width=8).config.prefetch
    assert not compile_program(program, width=8, prefetch=False).config.prefetch


def test_compiler_fuses_the_store_into_the_last_op(mlp_data):
    """With the prefetch, the demo MLP's ``STORE`` goes: the last GEMM, whose two result
    words the ``STORE`` read in order (``in_base``, ``count`` of the program compiled
    without the prefetch), has ``store`` and ends the program (``final``)."""
    program = _program(mlp_data)
    plain = compile_program(program, prefetch=False).ops
    fused = compile_program(program).ops
    assert [op["kind"] for op in plain] == [OpKind.LOAD] + [OpKind.GEMM] * 3 + [OpKind.STORE]
    assert [op["kind"] for op in fused] == [OpKind.LOAD] + [OpKind.GEMM] * 3
    store, last = plain[-1], fused[-1]
    assert (last["store"], last["final"]) == (1, 1)
    assert (last["out_base"], last["out_words"], last["out_pixels"]) == (store["in_base"],
                                                                         store["count"], 1)
    assert not any(op.get("store") or op.get("final") for op in fused[:-1])


def test_compiler_keeps_a_store_whose_words_come_out_of_order():
    """A network ending in a convolution of 8 channels on 3×3 pixels writes its results
    on a 4-wide core tile by tile (word 0 of every pixel, then word 1), not in the order
    of the memory the ``STORE`` reads, so the ``STORE`` stays an op."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1)).eval()
    program = quantize_model(model, torch.rand(16, 1, 3, 3), act_bits=4, weight_bits=4)
    compiled = compile_program(program, width=4, prefetch=True)
    assert compiled.config.prefetch
    assert compiled.ops[-1]["kind"] == OpKind.STORE and compiled.ops[-1]["final"]
    assert (compiled.ops[-2]["out_words"], compiled.ops[-2]["out_pixels"]) == (2, 9)
    assert not any(op.get("store") for op in compiled.ops)


@pytest.mark.parametrize("value", ["yes", 1])
def test_prefetch_must_be_a_bool(value):
    program, _ = _late_reader()
    with pytest.raises(TypeError, match=rf"^prefetch must be a bool or None, not {value!r}$"):
        compile_program(program, width=4, prefetch=value)
    config = compile_program(program, width=4).config
    with pytest.raises(TypeError, match=rf"^prefetch must be a bool, not {value!r}$"):
        dataclasses.replace(config, prefetch=value)


def test_prefetch_needs_a_packed_memory():
    config = compile_program(_late_reader()[0], width=4, prefetch=True).config
    with pytest.raises(ValueError, match=r"^prefetch needs a packed memory "
                                         r"\(packed_depth > 0\): the background loader "
                                         r"writes there beside the running op$"):
        dataclasses.replace(config, packed_depth=0, copies=False)


def _with_fetch_next_at(compiled, index):
    """``compiled`` with ``fetch_next`` moved to op ``index``."""
    layout = compiled.config.layouts["program"]
    bit = 1 << layout["fetch_next"].offset
    program = [(word & ~bit) | (bit if position == index else 0)
               for position, word in enumerate(compiled.contents["program"])]
    return dataclasses.replace(compiled, contents={**compiled.contents, "program": program})


@pytest.mark.parametrize("memories", ["wide", "narrow"])
def test_core_prefetches_images_behind_the_last_reader(memories):
    """Three images back to back under random stalls on every stream: golden's logits, the
    second and third quantized in the background. The same program with ``fetch_next``
    on the op after the *first* reader (the fence mutant) overwrites the pixels before the
    late convolution reads them and gives other logits, so the fence is what keeps it
    exact. Narrow memories (no op overlaps) prefetch alike."""
    program, pixels = _late_reader()
    compiled = compile_program(program, width=4, prefetch=True)
    compiled = dataclasses.replace(compiled, config=dataclasses.replace(compiled.config,
                                                                        memories=memories))
    expected = run_integer(program, pixels)
    logits = _run_core(NetworkCore(compiled.config, **compiled.contents), compiled, pixels,
                       pause=0.3)
    assert torch.equal(logits, expected)
    if memories == "narrow":
        return
    early = _with_fetch_next_at(compiled, _label_index(compiled, "first") + 1)
    logits = _run_core(NetworkCore(early.config, **early.contents), early, pixels)
    assert not torch.equal(logits, expected)


def _run_with_reload(compiled, before, loads, after):
    """``before`` images, then the ``load`` beats (each ``(memory, address, word)``), then
    ``after`` images, each stream under random stalls; the logits of all."""
    core = NetworkCore(compiled.config, **compiled.contents)
    codec = LayoutCodec(core.word_layout)

    def words(pixels):
        return codec.pack(compiled.pack_inputs(pixels).reshape(-1, compiled.width) & 0xFFFF)
    layout = core.load.payload.shape()
    beats = [layout.const(beat).as_value().value for memory, address, word in loads
             for beat in (compiled.config.load_beats(memory, address, word)
                          if memory != NetworkCore.Memory.RESTART else [{"memory": memory}])]
    sim = Simulator(core)
    sim.add_clock(1e-6)

    async def feed(ctx):
        await StreamSource(core.inputs, words(before), pause_probability=0.2, seed=3).run(ctx)
        await StreamSource(core.load, beats, pause_probability=0.2, seed=5).run(ctx)
        await StreamSource(core.inputs, words(after), pause_probability=0.2, seed=6).run(ctx)
    sim.add_testbench(feed, background=True)
    count = len(before) + len(after)
    sink = StreamSink(core.outputs, count * compiled.output_words, pause_probability=0.2,
                      seed=4)
    sim.add_testbench(sink.run)
    sim.run()
    leaves = LayoutCodec(core.outputs.payload.shape()).unpack(sink.received)
    return compiled.unpack_outputs(leaves[:, :-1].reshape(count, compiled.output_words,
                                                          compiled.width))


def test_core_reloaded_between_prefetched_images():
    """Two images, then another program's parameters and program through ``load`` and a
    RESTART, then two images: the first two (the second taken in the background) give the
    first program's logits, the last two the second's. The loads wait behind the second
    image's words, which are in before them: an image is quantized and run with one
    program."""
    first, pixels = _late_reader()
    second, _ = _late_reader(calibration_images=16)
    compiled = [compile_program(program, width=4, prefetch=True) for program in (first, second)]
    assert compiled[0].config == compiled[1].config
    params = compiled[1].contents["params"]
    assert params != compiled[0].contents["params"]
    program_words = compiled[1].contents["program"]
    loads = ([(NetworkCore.Memory.PARAMS, address, word) for address, word in enumerate(params)]
             + [(NetworkCore.Memory.PROGRAM, address, word)
                for address, word in enumerate(program_words)]
             + [(NetworkCore.Memory.RESTART, 0, 0)])
    more = to_pixels(torch.rand(2, 1, 6, 6))
    logits = _run_with_reload(compiled[0], pixels[:2], loads, more)
    assert torch.equal(logits[:2], run_integer(first, pixels[:2]))
    assert torch.equal(logits[2:], run_integer(second, more))
    assert not torch.equal(run_integer(first, more), run_integer(second, more))


@pytest.mark.slow
def test_rtl_demo_cnn_prefetched_reaches_the_utilization_goal(cnn_data):
    """Verilator: 12 images of ``make demo``'s CNN back to back, without and with random
    stalls: golden's logits; without stalls the background load takes the ``LOAD`` of
    every image but the first (which takes its 128 words at one a cycle, a few cycles
    each after it), so an inference takes at most 1 463 cycles, 85 % of the array's MACs.
    (``test_rtl_residual_cnn_subset_under_stalls`` runs another width-8 CNN, prefetched
    too, in the default set.)"""
    program = quantize(cnn_data.model, cnn_data.calibration, act_bits=4, weight_bits=4,
                       scheme="value_aware", highway=True, outlier_ratio=1 / 64)
    pixels = to_pixels(cnn_data.images[60:72])
    for stalls in (0, 6):
        result = run_rtl(program, pixels, stall_sixteenths=stalls, seed=11, array_bits=(4, 4))
        assert torch.equal(result.logits, run_integer(program, pixels))
        if not stalls:
            load = result.layers[0]
            assert load["kind"] == "LOAD"
            assert 128 <= load["cycles"] * len(pixels) < 128 + 11 * 4
            assert result.cycles_per_image <= 1463
            assert result.macs_per_image / (result.cycles_per_image * 64) >= 0.85


@pytest.mark.slow
def test_rtl_demo_mlp_reaches_the_utilization_goal(mlp_data):
    """Verilator: 40 images of the demo MLP back to back, the ``STORE`` fused into its last
    layer: golden's logits, and each image after the first starts its ``LOAD`` (taken in
    the background) and first layer beside the last layer's back, so an inference takes
    at most 172 cycles, 80 % of the 64 MACs of the 8×8 array (8 832 MACs an image)."""
    program = _program(mlp_data)
    pixels = to_pixels(mlp_data.images[:40])
    result = run_rtl(program, pixels)
    assert torch.equal(result.logits, run_integer(program, pixels))
    assert [layer["kind"] for layer in result.layers] == ["LOAD", "GEMM", "GEMM", "GEMM"]
    assert result.macs_per_image == 64 * 64 + 64 * 64 + 64 * 10
    assert result.cycles_per_image <= 172
    assert result.macs_per_image / (result.cycles_per_image * 64) >= 0.80


@pytest.mark.parametrize("in_signed,multiplier,shift,out_signed", [
    (0, 1_518_500_250, 33, False), (1, 1_518_500_250, 31, True), (1, -3, 0, True)],
    ids=["unsigned", "signed", "shift-0"])
def test_prefetcher_quantizes_the_next_image_behind_the_fence(in_signed, multiplier, shift,
                                                              out_signed):
    """The part alone, at width 8 (two lanes a cycle): after a ``LOAD`` (whose fields it
    keeps) it takes nothing until an op with ``fetch_next`` starts, then takes the
    ``LOAD``'s ``count`` words under random stalls on both sides and writes each once, in
    order from ``out_base``, every lane golden's ``requantize_round_half_up`` with β = 0
    (4-bit output); the next ``LOAD`` is claimed at its start and done in its first
    running cycle."""
    from olmac.golden import requantize_round_half_up
    from olmac.hw.network import Prefetcher
    config = compile_program(_late_reader()[0], width=8).config
    assert config.prefetch and config.prefetch_lanes == 2
    dut = Prefetcher(config)
    layout = config.layouts["program"]
    low, high = (-8, 7) if out_signed else (0, 15)
    load = layout.const({"kind": OpKind.LOAD, "quantize": 1, "out_base": 3, "count": 6,
                         "input_multiplier": multiplier, "input_shift": shift, "low": low,
                         "high": high, "in_signed": in_signed})
    rng = torch.Generator().manual_seed(5)
    words = torch.randint(0, 1 << 16, (6, 8), generator=rng)
    values = torch.where((words >= 1 << 15) & bool(in_signed), words - (1 << 16), words)
    expected = requantize_round_half_up(values.reshape(-1, 1), 0, multiplier, shift,
                                        out_bits=4, out_signed=out_signed).reshape(6, 8)
    writes = []

    async def sink(ctx):
        pause = random.Random(3)
        while True:
            ctx.set(dut.write.ready, pause.random() >= 0.3)
            _, _, valid, ready, payload = await ctx.tick().sample(
                dut.write.valid, dut.write.ready, dut.write.payload)
            if valid and ready:
                writes.append((payload.address, [int(lane) for lane in payload.word]))

    async def bench(ctx):
        ctx.set(dut.control.op, load)
        ctx.set(dut.control.start, 1)
        assert not ctx.get(dut.claimed)
        await ctx.tick()
        ctx.set(dut.control.start, 0)
        ctx.set(dut.control.op, layout.const({"kind": OpKind.GEMM}))
        ctx.set(dut.inputs.valid, 1)
        ctx.set(dut.inputs.payload, words[0].tolist())
        for _ in range(3):  # before the fence every word passes to the loader
            await ctx.tick()
            assert ctx.get(dut.passed.valid)
        ctx.set(dut.control.op, layout.const({"kind": OpKind.GEMM, "fetch_next": 1}))
        ctx.set(dut.control.start, 1)
        await ctx.tick()
        ctx.set(dut.control.start, 0)
        ctx.set(dut.control.running, 1)
        pause = random.Random(2)
        for word in words:
            ctx.set(dut.inputs.payload, word.tolist())
            ctx.set(dut.inputs.valid, 0)
            while pause.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.inputs.valid, 1)
            assert not ctx.get(dut.passed.valid)
            await ctx.tick().until(dut.inputs.ready)
        ctx.set(dut.inputs.valid, 0)
        for _ in range(60):  # the last words leave, and nothing more
            await ctx.tick()
        assert len(writes) == 6
        ctx.set(dut.control.running, 0)
        ctx.set(dut.control.op, load)
        ctx.set(dut.control.start, 1)
        assert ctx.get(dut.claimed) and not ctx.get(dut.done)
        await ctx.tick()
        ctx.set(dut.control.start, 0)
        ctx.set(dut.control.running, 1)
        assert ctx.get(dut.claimed) and ctx.get(dut.done)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(sink, background=True)
    sim.add_testbench(bench)
    sim.run()
    assert [address for address, _ in writes] == list(range(3, 9))
    got = torch.tensor([lanes for _, lanes in writes])
    assert torch.equal(torch.where(got >= 1 << 15, got - (1 << 16), got), expected)
