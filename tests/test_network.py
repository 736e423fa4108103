# amaranth: UnusedElaboratable=no
# (Amaranth reads that only on line 1.) The tests of refused arguments leave unused objects.
"""The network core (hw/network/), its compiler (olmac/compiler.py) and whole networks on
Verilator (sim/network.py), all checked bit for bit against golden.run_integer.

Fast tier: Amaranth's simulator with random stalls driven from Python. Verilator tier: the
preloaded bench, a subset of the digits test split here, the whole split in test-full.
"""

import dataclasses
import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from olmac.golden import requantize_round_half_up
from olmac.golden.program import (quantize_model, requantize_residual_round_half_up, run_integer,
                            to_pixels)
from olmac.hw.network import NetworkCore, OpKind
from olmac.hw.requant import Requantizer
from olmac.compiler import CompileError, compile_program
from olmac.network import demo_data, run_rtl
from olmac.sim.codec import LayoutCodec
from olmac.sim.pysim import StreamSink, StreamSource

pytestmark = pytest.mark.filterwarnings("error")


def _program(data, **options):
    return quantize_model(data.model, data.calibration, **{"scheme": "value_aware", **options})


def _core(compiled):
    return NetworkCore(compiled.config, **compiled.contents)


def _run_core(core, compiled, pixels, *, pause=0.0, loads=()):
    """Feed ``pixels`` through ``core`` (after the ``load`` beats), return the logits."""
    words = compiled.pack_inputs(pixels)
    word_codec = LayoutCodec(core.word_layout)
    inputs = word_codec.pack(words.reshape(-1, compiled.width) & 0xFFFF)
    sim = Simulator(core)
    sim.add_clock(1e-6)
    layout = core.load.payload.shape()
    beats = [layout.const(beat).as_value().value for memory, address, word in loads
             for beat in (core.config.load_beats(memory, address, word)
                          if memory != NetworkCore.Memory.RESTART else [{"memory": memory}])]

    async def feed(ctx):
        # inputs wait until the loads (and a restart) are taken, as a board's host does
        await StreamSource(core.load, beats, pause_probability=pause, seed=7).run(ctx)
        await StreamSource(core.inputs, inputs, pause_probability=pause, seed=3).run(ctx)
    sim.add_testbench(feed, background=True)
    sink = StreamSink(core.outputs, len(pixels) * compiled.output_words,
                      pause_probability=pause, seed=4)
    sim.add_testbench(sink.run)
    sim.run()
    out_codec = LayoutCodec(core.outputs.payload.shape())
    leaves = out_codec.unpack(sink.received)
    last = leaves[:, -1].reshape(len(pixels), compiled.output_words)
    assert (last[:, -1] == 1).all() and (last[:, :-1] == 0).all(), "last marks each image's end"
    slots = leaves[:, :-1].reshape(len(pixels), compiled.output_words, compiled.width)
    return compiled.unpack_outputs(slots)


@pytest.mark.parametrize("pause", [0.0, 0.4])
def test_core_runs_the_mlp_bit_exactly(mlp_data, pause):
    """Three linear layers with weight outliers: every logit equals run_integer, with and
    without random stalls on both streams."""
    program = _program(mlp_data)
    pixels = to_pixels(mlp_data.images[:3])
    compiled = compile_program(program)
    logits = _run_core(_core(compiled), compiled, pixels, pause=pause)
    assert torch.equal(logits, run_integer(program, pixels))


@pytest.mark.parametrize("options", [
    {}, {"walk_stages": 3, "requant_stages": 2, "fetch_ahead": True, "reducer_stage": True},
    pytest.param({"walk_stages": 2, "memories": "narrow"}, marks=pytest.mark.slow)],
    ids=["plain", "stages", "narrow-stages"])
def test_core_runs_the_residual_cnn_bit_exactly(cnn_data, options):
    """Padded 3×3 convolutions, the 16-bit highway add (§11), average pooling, flatten and
    the linear head, under random stalls, on a 4×4 array (two words per 8-channel pixel);
    also with the beat walk's address register stages, the requantizer's, the
    descriptors read ahead and the reducer's stage (the ECP5 board's), and with
    the walk's behind narrow memories that lend the operand port to writes and residual
    reads."""
    program = _program(cnn_data)
    pixels = to_pixels(cnn_data.images[:2])
    compiled = compile_program(program, width=4)
    core = NetworkCore(dataclasses.replace(compiled.config, **options), **compiled.contents)
    logits = _run_core(core, compiled, pixels, pause=0.3)
    assert torch.equal(logits, run_integer(program, pixels))


@pytest.mark.parametrize("memories,fetch_ahead", [("wide", False), ("narrow", False),
                                                  ("wide", True)],
                         ids=["wide", "narrow", "wide-fetch-ahead"])
def test_core_loads_its_program_through_the_load_port(mlp_data, memories, fetch_ahead):
    """A core built without memories halts; program, weights and parameters written through
    ``load`` (narrow memories: a 16-bit row a beat, ``Config.load_beats``) and a RESTART
    make it compute the same logits as golden; also when the sequencer reads each
    descriptor ahead (the halting op's next one is read before the program is written)."""
    program = _program(mlp_data, scheme="mmse", act_bits=3, weight_bits=3)
    pixels = to_pixels(mlp_data.images[:2])
    compiled = compile_program(program)
    compiled = dataclasses.replace(compiled, config=dataclasses.replace(
        compiled.config, memories=memories, fetch_ahead=fetch_ahead))
    images = compiled.contents
    core = NetworkCore(compiled.config)
    memories = {"program": NetworkCore.Memory.PROGRAM, "weights": NetworkCore.Memory.WEIGHTS,
                "params": NetworkCore.Memory.PARAMS}
    loads = [(memories[name], address, word) for name, words in images.items()
             for address, word in enumerate(words)]
    loads.append((NetworkCore.Memory.RESTART, 0, 0))
    logits = _run_core(core, compiled, pixels, loads=loads)
    assert torch.equal(logits, run_integer(program, pixels))


@pytest.mark.parametrize("restart,memories", [(False, "wide"), (True, "wide"),
                                              (True, "narrow")],
                         ids=["params", "params-restart", "narrow-params-restart"])
def test_core_reloaded_while_its_quantizing_load_waits(restart, memories):
    """The board's reload (tests/test_board_verilator.py): a core preloaded with a zero
    parameter word ``param_base`` waits in its first op, a LOAD that quantizes the pixels
    with that word; the word written through ``load``
    meanwhile (and, with ``restart``, a RESTART) give golden's logits from the first
    image on. A parameter read before the loads would quantize the first word with a zero
    multiplier, and after a RESTART stay in the memories' answer as one word too many; so
    would one asked for between the RESTART and op 0's start again (narrow memories take
    several cycles to fetch a descriptor)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 4)).eval()
    images = torch.randint(0, 17, (32, 16)) / 16  # digits-like pixels, 0..16 sixteenths
    program = _program(SimpleNamespace(model=model, calibration=images))
    pixels = to_pixels(images[:1])
    compiled = compile_program(program, width=4)
    compiled = dataclasses.replace(compiled, config=dataclasses.replace(compiled.config,
                                                                        memories=memories))
    first = compiled.ops[0]
    assert first["kind"] == OpKind.LOAD and first["quantize"] == 1
    params, base = compiled.contents["params"], first["param_base"]
    assert params[base] != 0
    zeroed = [0 if address == base else word for address, word in enumerate(params)]
    core = NetworkCore(compiled.config, **{**compiled.contents, "params": zeroed})
    loads = [(NetworkCore.Memory.PARAMS, base, params[base])]
    if restart:
        loads.append((NetworkCore.Memory.RESTART, 0, 0))
    logits = _run_core(core, compiled, pixels, loads=loads)
    assert torch.equal(logits, run_integer(program, pixels))


@pytest.mark.parametrize("pool", [torch.nn.MaxPool2d(2), torch.nn.MaxPool2d(3, 2, padding=1),
                                  torch.nn.AvgPool2d(3, 2, padding=1)],
                         ids=["max2", "max3-stride2-pad1", "avg3-stride2-pad1"])
def test_core_pooling_and_signed_requantize(pool):
    """A pooling model with a signed (no-ReLU) hidden layer: MAX/SUM ops (padded: a MAX
    window's padding never wins, even over negative values) and signed 16-bit reads, on
    the smallest array."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), pool,
                                torch.nn.Flatten(), torch.nn.Linear(48, 5))
    calibration = torch.rand(64, 1, 8, 8)
    program = quantize_model(model, calibration, act_bits=3, weight_bits=3)
    assert program.values[program.ops[1].output].signed
    assert [op.KIND for op in program.ops][2] == type(pool).__name__[:7].lower()
    pixels = torch.randint(0, 17, (2, 1, 8, 8))
    compiled = compile_program(program, width=2)
    logits = _run_core(_core(compiled), compiled, pixels, pause=0.2)
    assert torch.equal(logits, run_integer(program, pixels))


def test_requantizer_with_residual_and_runtime_bounds():
    """(acc + β)·M + r·M_r·2^t, one rounding, clamp to a per-beat range: equal to golden's
    requantize_residual_round_half_up for random parameters, signed and unsigned formats."""
    requantizer = Requantizer(cols=3, acc_width=24, out_bits=16, residual_bits=17,
                              runtime_bounds=True)
    _check_residual_requantizer(requantizer, np.random.default_rng(11), rows=30)


@pytest.mark.parametrize("split_stages", [1, 2])
def test_split_requantizer_with_residual_and_runtime_bounds(split_stages):
    """With its added register stages (the rounding addition apart from the shift; the
    18×18 partial products registered) the requantizer still equals golden's
    requantize_residual_round_half_up, with 44-bit accumulators so the biased
    accumulator's high part is itself wider than 18 bits, a cycle later per stage."""
    requantizer = Requantizer(cols=2, acc_width=44, out_bits=16, residual_bits=17,
                              runtime_bounds=True, split_stages=split_stages)
    assert requantizer.latency == 5 + split_stages
    _check_residual_requantizer(requantizer, np.random.default_rng(17 + split_stages), rows=24)


def _random_formats(rng, rows):
    """A random output format per row, ``(bits, signed)`` with 2..16 bits, and its
    ``(low, high)`` bounds."""
    formats = [(int(rng.integers(2, 17)), bool(rng.integers(0, 2))) for _ in range(rows)]
    bounds = np.array([(-(1 << (b - 1)), (1 << (b - 1)) - 1) if s else (0, (1 << b) - 1)
                       for b, s in formats])
    return formats, bounds


def _run_requantizer(requantizer, accs, leaves):
    """The requantizer's output rows for accumulator rows ``accs`` and parameter beats
    ``leaves``, every stream paused at random."""
    sim = Simulator(requantizer)
    sim.add_clock(1e-6)
    acc_codec = LayoutCodec(requantizer.acc.payload.shape())
    params_codec = LayoutCodec(requantizer.params.payload.shape())
    sim.add_testbench(StreamSource(requantizer.acc, acc_codec.pack(accs),
                                   pause_probability=0.3).run, background=True)
    sim.add_testbench(StreamSource(requantizer.params, params_codec.pack(leaves),
                                   pause_probability=0.3, seed=5).run, background=True)
    sink = StreamSink(requantizer.out, len(accs), pause_probability=0.3)
    sim.add_testbench(sink.run)
    sim.run()
    return LayoutCodec(requantizer.out.payload.shape()).unpack(sink.received)


def _check_residual_requantizer(requantizer, rng, rows):
    """Random beats (shifts 0 and 63 among them) through ``requantizer`` under random
    stalls, each output row against golden."""
    cols, acc_width = requantizer.cols, requantizer.config.acc_width
    accs = rng.integers(-(1 << (acc_width - 1)), 1 << (acc_width - 1), size=(rows, cols))
    bias = rng.integers(-(1 << 31), 1 << 31, size=(rows, cols))
    multiplier = rng.integers(-(1 << 31), 1 << 31, size=(rows, cols))
    shift = rng.integers(0, 64, size=(rows, cols))
    residual = rng.integers(-(1 << 16), 1 << 16, size=(rows, cols))
    residual_multiplier = rng.integers(-(1 << 31), 1 << 31, size=(rows, cols))
    residual_shift = rng.integers(0, 32, size=(rows, cols))
    shift[0], residual_shift[0] = [0, 63, 40][:cols], [0, 31, 5][:cols]
    relu = rng.integers(0, 2, size=rows)
    formats, bounds = _random_formats(rng, rows)
    channels = np.stack([bias, multiplier, shift, residual, residual_multiplier,
                         residual_shift], axis=2).reshape(rows, -1)
    leaves = np.concatenate([channels, relu[:, None], bounds], axis=1)
    result = _run_requantizer(requantizer, accs, leaves)
    for row, (bits, signed) in enumerate(formats):
        expected = requantize_residual_round_half_up(
            torch.tensor(accs[row:row + 1]), bias[row], multiplier[row], shift[row],
            torch.tensor(residual[row:row + 1]), residual_multiplier[row], residual_shift[row],
            out_bits=bits, out_signed=signed, relu=bool(relu[row]))
        np.testing.assert_array_equal(result[row], expected.numpy()[0])


@pytest.mark.parametrize("split_stages", [0, 2])
def test_per_tensor_requantizer(split_stages):
    """One multiplier and shift for the whole vector and no bias (the core's copy
    requantizer, 17-bit values): each row equal to golden's requantize_round_half_up with
    scalar parameters and zero bias, clamped to the beat's range, under random stalls."""
    requantizer = Requantizer(cols=3, acc_width=17, out_bits=16, runtime_bounds=True,
                              per_tensor=True, split_stages=split_stages)
    rng = np.random.default_rng(23 + split_stages)
    rows = 30
    accs = rng.integers(-(1 << 16), 1 << 16, size=(rows, 3))
    multiplier = rng.integers(-(1 << 31), 1 << 31, size=rows)
    shift = rng.integers(0, 64, size=rows)
    shift[:3] = [0, 63, 48]  # none, the largest, and one just below the product's width
    accs[1] = [-(1 << 16), (1 << 16) - 1, 0]
    relu = rng.integers(0, 2, size=rows)
    formats, bounds = _random_formats(rng, rows)
    leaves = np.concatenate([multiplier[:, None], shift[:, None], relu[:, None], bounds],
                            axis=1)
    result = _run_requantizer(requantizer, accs, leaves)
    for row, (bits, signed) in enumerate(formats):
        expected = requantize_round_half_up(
            torch.tensor(accs[row:row + 1]), 0, int(multiplier[row]), int(shift[row]),
            out_bits=bits, out_signed=signed, relu=bool(relu[row]))
        np.testing.assert_array_equal(result[row], expected.numpy()[0])


def test_per_tensor_requantizer_options_are_checked():
    with pytest.raises(TypeError, match=r"^per_tensor must be a bool, not 1$"):
        Requantizer(cols=2, acc_width=17, out_bits=16, per_tensor=1)
    with pytest.raises(ValueError, match=r"^A per-tensor requantizer \(per_tensor=True\) has "
                                         r"no residual \(residual_bits=17\)$"):
        Requantizer(cols=2, acc_width=17, out_bits=16, residual_bits=17, per_tensor=True)


def test_requantizer_stage_options_are_checked():
    with pytest.raises(TypeError, match=r"^split_stages must be an integer in 0\.\.2, not 3$"):
        Requantizer(cols=2, acc_width=20, out_bits=8, split_stages=3)
    params = dict(width=2, act_bits=4, weight_bits=4, max_k=8, data_depth=16, weight_depth=4,
                  param_depth=2, program_depth=4)
    with pytest.raises(TypeError, match=r"^requant_stages must be an integer in 0\.\.2, "
                                        r"not -1$"):
        NetworkCore.Config(**params, requant_stages=-1)
    with pytest.raises(ValueError, match=r"^requant_stages must be 0 with the serial "
                                         r"requantizer, not 1$"):
        NetworkCore.Config(**params, requantizer="serial", requant_stages=1)


def test_board_stage_options_are_checked():
    params = dict(width=2, act_bits=4, weight_bits=4, max_k=8, data_depth=16, weight_depth=4,
                  param_depth=2, program_depth=4)
    with pytest.raises(TypeError, match=r"^fetch_ahead must be a bool, not 1$"):
        NetworkCore.Config(**params, fetch_ahead=1)
    with pytest.raises(TypeError, match=r"^reducer_stage must be a bool, not 1$"):
        NetworkCore.Config(**params, reducer_stage=1)
    with pytest.raises(ValueError, match=r"^fetch_ahead needs wide memories \(they answer a "
                                         r"fetch in one cycle\), not memories='narrow'$"):
        NetworkCore.Config(**params, memories="narrow", fetch_ahead=True)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(width=0), TypeError, r"^Width must be an integer in 1\.\.64, not 0$"),
    (dict(data_depth=0), TypeError, r"^data_depth must be an integer in 1\.\.65536, not 0$"),
    (dict(program=[0] * 5), ValueError,
     r"^5 program words do not fit program memory of depth 4$"),
    (dict(weights=[-1]), ValueError, r"^Every weights word must be an integer in 0\.\.\d+$"),
])
def test_core_refuses_bad_parameters(kwargs, error, message):
    params = dict(width=2, act_bits=4, weight_bits=4, max_k=8, data_depth=16, weight_depth=4,
                  param_depth=2, program_depth=4)
    contents = {name: kwargs[name] for name in ("program", "weights") if name in kwargs}
    params.update({name: value for name, value in kwargs.items() if name not in contents})
    with pytest.raises(error, match=message):
        NetworkCore(NetworkCore.Config(**params), **contents)


def test_core_refuses_a_config_of_another_type():
    with pytest.raises(TypeError, match=r"^config must be a NetworkCore\.Config, not "
                                        r"\{'width': 2\}$"):
        NetworkCore({"width": 2})


def test_requantizer_refuses_bad_residual_options():
    with pytest.raises(TypeError, match=r"^Residual width must be an integer in 2\.\.17, "
                                        r"not 18$"):
        Requantizer(cols=2, acc_width=20, out_bits=8, residual_bits=18)
    with pytest.raises(ValueError, match=r"^Run-time bounds \(runtime_bounds=True\) cannot be "
                                         r"combined with output outliers"):
        Requantizer(cols=2, acc_width=20, out_bits=8, outlier_bits=12, runtime_bounds=True)


def test_compiler_refuses_too_few_outlier_slots(mlp_data):
    program = _program(mlp_data)
    needed = compile_program(program).config.weight_outlier_slots
    assert needed >= 2
    with pytest.raises(CompileError, match=rf"^a weight beat holds {needed} outliers, more "
                                           rf"than weight_outlier_slots = {needed - 1}$"):
        compile_program(program, weight_outlier_slots=needed - 1)


@pytest.mark.parametrize("width,lanes,expected", [(8, None, 3), (4, None, 1), (8, 1, 1),
                                                   (16, None, 9), (32, None, 16),
                                                   (8, 16, "slots")])
def test_compiler_weight_outlier_lanes(mlp_data, width, lanes, expected):
    """Weight-outlier lanes: ``width²/32 + 1`` by default (twice the mean of a beat at one
    outlier per 64 weights, plus one; one at width 4), or as asked, never more than 16 or the slots a
    beat has (the MLP's fullest beat holds at least three)."""
    config = compile_program(_program(mlp_data), width=width,
                             weight_outlier_lanes=lanes).config
    assert config.weight_outlier_slots >= 3
    assert config.weight_outlier_lanes == (config.weight_outlier_slots if expected == "slots"
                                           else expected)


@pytest.mark.parametrize("lanes", [0, 17, True, 2.0])
def test_compiler_refuses_bad_weight_outlier_lanes(mlp_data, lanes):
    with pytest.raises(TypeError, match=rf"^weight_outlier_lanes must be an integer in "
                                        rf"1\.\.16, not {lanes!r}$"):
        compile_program(_program(mlp_data), weight_outlier_lanes=lanes)


def test_compiler_program_shape(cnn_data):
    """The CNN compiles to a LOAD that quantizes the input, one op per further arithmetic
    op (flatten is free; without ``fuse_copies``, which folds the ``requantize`` copies
    into their producers: tests/test_network_copies.py), STORE (without ``prefetch``,
    which fuses it into the last GEMM: tests/test_network_prefetch.py); the pixels take
    no memory."""
    program = _program(cnn_data)
    compiled = compile_program(program, fuse_copies=False, prefetch=False)
    kinds = [d["kind"] for d in compiled.ops]
    assert kinds == [OpKind.LOAD, OpKind.GEMM, OpKind.SUM, OpKind.GEMM,
                     OpKind.GEMM, OpKind.SUM, OpKind.SUM, OpKind.GEMM, OpKind.STORE]
    load = compiled.ops[0]
    assert (load["quantize"], load["count"], load["out_pixels"], load["out_packed"]) == (
        1, compiled.input_words, compiled.input_words, 1)
    # 16-bit words: the highway outputs of conv1 and conv3 (64 each), the pooled map (16),
    # the logits (2)
    assert compiled.config.data_depth == 64 + 64 + 16 + 2


def test_compiler_packs_the_first_convolutions_taps_across_lanes(cnn_data):
    """The CNN's one-channel 3×3 first convolution runs as a 1×1 GEMM over its im2col
    columns: two words a pixel (9 taps on 8 lanes) instead of nine beats of one lane."""
    compiled = compile_program(_program(cnn_data))
    conv1 = compiled.ops[1]
    assert (conv1["kind"], conv1["kernel_h"], conv1["kernel_w"], conv1["in_words"]) == (
        OpKind.GEMM, 1, 1, 2)
    assert compiled.input_words == 64 * 2
    pixels = torch.arange(64).reshape(1, 1, 8, 8)
    words = compiled.pack_inputs(pixels)[0]
    # pixel (0, 0): taps (ky, kx) row-major; those above or left of the image are padding
    assert words[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 8]
    assert words[1].tolist() == [9, 0, 0, 0, 0, 0, 0, 0]
    # pixel (3, 4): the 3×3 window around input pixel 3·8 + 4 = 28
    assert words[2 * 28: 2 * 28 + 2].ravel()[:9].tolist() == [19, 20, 21, 27, 28, 29, 35, 36, 37]


def test_rtl_residual_cnn_subset_under_stalls(cnn_data, tmp_path_factory):
    """Verilator: 40 test images of the demo CNN with random stalls on both streams."""
    program = _program(cnn_data)
    pixels = to_pixels(cnn_data.images[:40])
    result = run_rtl(program, pixels, stall_sixteenths=5, seed=77)
    mismatches = int((result.logits != run_integer(program, pixels)).any(1).sum())
    assert mismatches == 0, f"{mismatches} of 40 images differ"
    # the stalls really happened: the same images without them take fewer cycles
    assert result.cycles > run_rtl(program, pixels).cycles


@pytest.mark.slow
def test_rtl_with_the_icebreaker_core_options(mlp_data):
    """Verilator: the core of the iCEBreaker's board top (serial requantizer, narrow
    memories, whose ``load`` beats are 16-bit rows: the bench loads every row of every
    word) runs the MLP bit-exact."""
    program = _program(mlp_data)
    pixels = to_pixels(mlp_data.images[:4])
    result = run_rtl(program, pixels, width=2,
                     core_options={"requantizer": "serial", "memories": "narrow"})
    assert torch.equal(result.logits, run_integer(program, pixels))


def test_rtl_second_artifact_reuses_the_model(cnn_data):
    """Verilator: an artifact calibrated on other images has the same core configuration
    but other parameters; it runs bit-exact on the model the first one built (or found),
    without a build, as do other images, stalls and seed."""
    first = _program(cnn_data)
    second = quantize_model(cnn_data.model, cnn_data.calibration[:64], scheme="value_aware")
    assert compile_program(first).config == compile_program(second).config
    assert compile_program(first).contents != compile_program(second).contents
    pixels = to_pixels(cnn_data.images[40:52])
    runs = [run_rtl(first, pixels), run_rtl(second, pixels[:5], stall_sixteenths=9, seed=3)]
    for program, run, images in zip((first, second), runs, (pixels, pixels[:5])):
        assert torch.equal(run.logits, run_integer(program, images))
    assert runs[1].build_seconds == 0
    # every cycle belongs to one op, and no GEMM beats its MACs over the array's
    layers = runs[0].layers
    # (the requantize copies conv1.low and flatten.low run in conv1's and the pooling's
    # backs: tests/test_network_copies.py; the STORE in fc's: tests/test_network_prefetch.py)
    assert [layer["kind"] for layer in layers] == [
        "LOAD", "GEMM", "GEMM", "GEMM", "SUM", "GEMM"]
    # (per-image figures are fractions; their counts over the images are whole)
    assert sum(round(layer["cycles"] * len(pixels)) for layer in layers) == runs[0].cycles
    assert all(layer["cycles"] >= layer["ideal"] for layer in layers)
    # the first image's LOAD takes its 128 words (the im2col columns) at one a cycle; the
    # others come in the background (prefetch, tests/test_network_prefetch.py)
    assert 128 <= layers[0]["cycles"] * len(pixels) < 128 + 4 * (len(pixels) - 1)
    assert sum(layer["ideal"] for layer in layers) * 64 == runs[0].macs_per_image
    # a GEMM's array beats are its walk's (tiles, pixels, taps, band words), once each
    beats = [op["out_words"] * op["out_pixels"] * op["kernel_h"] * op["kernel_w"]
             * op["band_words"] if op["kind"] == OpKind.GEMM else 0
             for op in compile_program(first).ops]
    assert [layer["beats"] for layer in layers] == beats


def test_rtl_progress_and_a_run_cut_short(cnn_data, monkeypatch):
    """Verilator: the simulator reports the images finished every ``PROGRESS_CYCLES``
    cycles (never going back, never past the run's images), and a run whose cycle budget
    ends before its last output word raises instead of returning a partial result."""
    from olmac.sim import network
    compiled = compile_program(_program(cnn_data))
    inputs = compiled.pack_inputs(to_pixels(cnn_data.images[:12]))
    run = functools.partial(network.run_network, compiled.config, compiled.contents, inputs,
                            output_words=compiled.output_words)
    monkeypatch.setattr(network, "PROGRESS_CYCLES", 2000)
    seen = []
    result = run(timeout_cycles=1_000_000, progress=seen.append)
    # every 2000 cycles from reset: the inference cycles alone give at least this many
    assert len(seen) >= result.cycles // 2000 and seen == sorted(seen) and seen[-1] <= 12
    with pytest.raises(RuntimeError, match=r"^the network simulation was not done after "
                                           r"3000 cycles$"):
        run(timeout_cycles=3000)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_rtl_whole_test_split(name):
    """Verilator: every image of the digits test split, both demo networks, no mismatch."""
    data = demo_data(name)
    program = _program(data)
    pixels = to_pixels(data.images)
    result = run_rtl(program, pixels, stall_sixteenths=3)
    mismatches = int((result.logits != run_integer(program, pixels)).any(1).sum())
    assert mismatches == 0, f"{mismatches} of {len(pixels)} images differ"


def test_compiler_layouts_are_the_cores(cnn_data):
    """The compiler packs words through the layouts the core declares."""
    compiled = compile_program(_program(cnn_data))
    core = _core(compiled)
    layouts = compiled.config.layouts
    assert layouts == {"program": core.descriptor_layout, "weights": core.weight_layout,
                       "params": core.param_layout, "data": core.word_layout}
    from amaranth.back import rtlil
    rtlil.convert(core)
