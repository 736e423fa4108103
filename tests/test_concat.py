"""``torch.cat`` as a layout and grouped convolutions without their zero blocks
(docs/program.md §17, docs/network.md §15): the program's ``concat`` op, the compiler's
containers (each producer writes its channels straight into the concatenation), the
bands of a depthwise convolution, and the core against golden."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from olmac.compiler import compile_program, with_copy_gemms
from olmac.golden import artifact
from olmac.golden.program import (Concat, Gemm, ProgramError, Requantize, check_program,
                                  run_integer, to_pixels)
from olmac.golden.program.lowering import quantize_model
from olmac.hw.network import OpKind
from olmac.models.ordinary import DenseBlocks as Dense
from olmac.models.ordinary import DepthwiseSeparable
from olmac.models.ordinary import InceptionBranches as Inception
from olmac.network import run_rtl
from test_network import _core, _run_core

pytestmark = pytest.mark.filterwarnings("error")


def _program(factory, bits=6):
    torch.manual_seed(0)
    images = torch.rand(64, 1, 8, 8)
    model = factory().eval()
    return model, images, quantize_model(model, images, act_bits=bits, weight_bits=bits,
                                         act_calibration="max")


def _float_macs(model: nn.Module, images: torch.Tensor) -> int:
    """Multiply-accumulates of one image, from the float model's layers and the shapes
    they see: ``H_out·W_out·(C_in/groups)·kh·kw·C_out`` per convolution, ``F_in·F_out``
    per Linear; a concatenation adds none."""
    total = []

    def count(layer, inputs, output):
        if isinstance(layer, nn.Conv2d):
            total.append(output[0].numel() * layer.weight[0].numel())
        else:
            total.append(layer.in_features * layer.out_features)
    hooks = [layer.register_forward_hook(count) for layer in model.modules()
             if isinstance(layer, (nn.Conv2d, nn.Linear))]
    model(images[:1])
    for hook in hooks:
        hook.remove()
    return sum(total)


@pytest.mark.parametrize("factory", [Inception, Dense])
def test_concatenation_is_a_layout(factory):
    """§17: a ``concat`` of parts in its own format and scale, whose integers are the
    parts' side by side; a GEMM operand is written in that format (no op between), a
    max-pool branch enters through one requantize."""
    _, images, program = _program(factory)
    pixels = to_pixels(images[:8])
    kinds = [op.KIND for op in program.ops]
    assert kinds.count("concat") == (1 if factory is Inception else 2)
    producers = {op.output: op for op in program.ops}
    for op in program.ops:
        if not isinstance(op, Concat):
            continue
        out = program.values[op.output]
        for part in op.parts:
            value = program.values[part]
            assert (value.bits, value.signed, value.scale) == (out.bits, out.signed, out.scale)
        cut = [_cut(program, name) for name in (*op.parts, op.output)]
        parts = [run_integer(p, pixels) for p in cut[:-1]]
        assert torch.equal(run_integer(cut[-1], pixels), torch.cat(parts, 1))
    requantized = [op for op in program.ops if isinstance(op, Requantize)]
    if factory is Inception:  # only the pool branch, the GEMM branches are written in place
        assert [type(producers[r.input]).__name__ for r in requantized] == ["MaxPool"]


def _cut(program, name):
    """``program`` up to the op that writes ``name``, with ``name`` as its output."""
    end = next(i for i, op in enumerate(program.ops) if op.output == name) + 1
    ops = program.ops[:end]
    values = {v: program.values[v] for v in program.values
              if any(v == op.output for op in ops)}
    return dataclasses.replace(program, values=values, ops=ops, output=name)


@pytest.mark.parametrize("factory", [Inception, Dense])
@pytest.mark.parametrize("width", [4, 8])
def test_concatenation_emits_no_copy_gemm(factory, width):
    """docs/network.md §15: one GEMM per Conv2d/Linear of the model and exactly the float
    model's MACs (counted by hooks on its layers), so a concatenation costs none; its
    parts are written in place or by a SUM of one beat per word."""
    model, images, program = _program(factory)
    compiled = compile_program(program, width=width)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    gemms = [d for d in compiled.ops if d["kind"] == OpKind.GEMM]
    assert len([op for op in program.ops if isinstance(op, Gemm)]) == len(gemms) == len(layers)
    assert compiled.macs == _float_macs(model, images)


def test_concatenations_run_exactly_on_the_core():
    """The DenseNet-style model on a 4-wide core (parts of 3 and 5 channels: the
    containers leave zero lanes; a concatenation of a concatenation) under backpressure,
    on Amaranth's simulator, against golden."""
    _, images, program = _program(Dense)
    compiled = compile_program(program, width=4)
    pixels = to_pixels(images[:2])
    assert torch.equal(_run_core(_core(compiled), compiled, pixels, pause=0.3),
                       run_integer(program, pixels))


class FlatFeatures(nn.Module):
    """A flattened feature map concatenated with features computed from it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.head = nn.Linear(3 * 4 * 4 + 5, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2).flatten(1)
        return self.head(torch.cat([x, F.relu(self.fc(x))], 1))


class ConcatResidual(nn.Module):
    """A concatenation of 3 + 3 channels added back after a 1×1 convolution."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.branch = nn.Conv2d(3, 3, 3, padding=1)
        self.mix = nn.Conv2d(6, 6, 1)
        self.head = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = torch.cat([x, F.relu(self.branch(x))], 1)
        return self.head(F.avg_pool2d(F.relu(self.mix(y) + y), 2).flatten(1))


def test_a_flattened_part_is_copied_by_an_identity_gemm():
    """docs/network.md §15: a flattened feature map (its slots in image order) enters its
    concatenation through one Linear with identity weights named after the
    concatenation, which computes what the program does; the core (4 wide, under
    backpressure, Amaranth's simulator) runs it exactly against golden on the program
    as the user's model gave it."""
    _, images, program = _program(FlatFeatures)
    pixels = to_pixels(images[:2])
    copied, labels = with_copy_gemms(program, 4)
    added = [op for op in copied.ops if isinstance(op, Gemm) and op not in program.ops]
    assert [(op.KIND, op.in_features, op.out_features) for op in added] == [
        ("gemm", 48, 48)]
    assert torch.equal(added[0].weights.to(torch.int64), torch.eye(48, dtype=torch.int64))
    assert [label for label in labels if "copy" in label] == [
        "op 5 (concat 'cat') copy of 'flatten_1'"]
    assert torch.equal(run_integer(copied, pixels), run_integer(program, pixels))
    compiled = compile_program(program, width=4)
    assert torch.equal(_run_core(_core(compiled), compiled, pixels, pause=0.3),
                       run_integer(program, pixels))


def test_a_concatenation_with_zero_lanes_is_a_residual():
    """docs/network.md §15: the GEMM that adds a concatenation of 3 + 3 channels on a
    4-wide core writes its columns as the concatenation's lanes (zero columns where it
    has zero lanes), so the residual port adds lane for lane; no copy, and the core runs
    it exactly against golden under backpressure."""
    _, images, program = _program(ConcatResidual)
    compiled = compile_program(program, width=4)
    assert with_copy_gemms(program, 4)[0] is program
    mix = next(d for d in compiled.ops if d["label"] == "op 6 (gemm 'mix')")
    assert (mix["residual"], mix["out_words"]) == (1, 2)
    pixels = to_pixels(images[:2])
    assert torch.equal(_run_core(_core(compiled), compiled, pixels, pause=0.3),
                       run_integer(program, pixels))


def test_depthwise_tiles_walk_one_input_word():
    """docs/network.md §15, bands: on a 4-wide core the depthwise 3×3 over 8 channels
    walks one input word per tile and tap (two tiles), the grouped 3×3 (4 groups of 4)
    one of four; the pointwise (dense) all of its words."""
    torch.manual_seed(0)
    model = DepthwiseSeparable().eval()
    program = quantize_model(model, torch.rand(32, 1, 8, 8), act_bits=8, weight_bits=8,
                             act_calibration="max")
    compiled = compile_program(program, width=4)
    ops = {d["label"].split("'")[1]: d for d in compiled.ops if d["kind"] == OpKind.GEMM}
    assert (ops["depthwise"]["band_words"], ops["depthwise"]["band_step"]) == (1, 1)
    assert (ops["grouped"]["band_words"], ops["grouped"]["band_step"]) == (1, 1)
    assert (ops["pointwise"]["band_words"], ops["pointwise"]["band_step"]) == (2, 0)
    # the depthwise weight words: 2 tiles × 9 taps × 1 word (the dense GEMM had 2 words)
    following = min(d["weight_base"] for d in ops.values()
                    if d["weight_base"] > ops["depthwise"]["weight_base"])
    assert following - ops["depthwise"]["weight_base"] == 2 * 9 * 1


@pytest.mark.slow
@pytest.mark.parametrize("factory, width", [(Inception, 4), (Dense, 4),
                                            (DepthwiseSeparable, 4)])
def test_rtl_equals_golden_under_stalls(factory, width):
    """Verilator: concatenations (in place, a requantized pool branch, zero lanes) and a
    depthwise-separable model with bands, random backpressure, bit-exact against golden."""
    _, images, program = _program(factory, bits=8 if factory is DepthwiseSeparable else 6)
    pixels = to_pixels(images[:6])
    result = run_rtl(program, pixels, width=width, stall_sixteenths=5, seed=11)
    assert torch.equal(result.logits, run_integer(program, pixels))


def test_artifact_round_trip_keeps_the_concatenation(tmp_path):
    """§14: a program with ``concat`` ops saves and loads field by field (``parts`` a
    tuple again) and runs to the same logits."""
    _, images, program = _program(Dense)
    artifact.save(program, tmp_path)
    loaded = artifact.load(tmp_path)
    ops = [op for op in loaded.ops if isinstance(op, Concat)]
    assert [op.parts for op in ops] == [op.parts for op in program.ops
                                        if isinstance(op, Concat)]
    assert all(isinstance(op.parts, tuple) for op in ops)
    pixels = to_pixels(images[:4])
    assert torch.equal(run_integer(loaded, pixels), run_integer(program, pixels))


def test_a_part_of_another_format_is_refused():
    """§9: every part of a ``concat`` has its output's format and scale; a part at another
    scale (which would need arithmetic) is refused by name."""
    _, _, program = _program(Inception)
    concat = next(op for op in program.ops if isinstance(op, Concat))
    part = concat.parts[0]
    values = {**program.values, part: dataclasses.replace(program.values[part],
                                                          scale=program.values[part].scale * 2)}
    with pytest.raises(ProgramError, match=rf"^op \d+ \(concat 'cat'\): part '{part}' "
                       rf"\(s6, scale .*\) must have the format and scale of output 'cat'"):
        check_program(dataclasses.replace(program, values=values))
