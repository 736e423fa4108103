"""The layers people write (docs/program.md §17): models written the ordinary way, each
quantized at 8/8 on digits within a point of float, one run bit-exactly on the network
core, and every refusal of a model reported at once, by node and source line."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from olmac.compiler import CompileError, compile_program
from olmac.flow import quantize
from olmac.golden.program import ProgramError, run_fake_quant, run_integer, to_pixels
from olmac.golden.program.lowering import lowering_notes, quantize_model, supported_layers
from olmac.golden.program.normalize import normalize
from olmac.models.digits import as_images, load_digits_split
from olmac.models.ordinary import (ConvBNStack, DepthwiseSeparable, ResidualBN, SequenceCNN,
                                   SmoothActivations, as_sequences, trained)
from test_network import _core, _run_core


class SmallNet(nn.Module):
    """The RTL run: ``padding='same'``, Hardtanh(0, 4), ``F.avg_pool2d``, global
    ``F.adaptive_avg_pool2d`` and ``torch.flatten(x, 1)``."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding="same"), nn.BatchNorm2d(4)
        self.cap = nn.Hardtanh(0, 4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.avg_pool2d(self.cap(self.bn(self.conv(x))), 2)
        x = F.adaptive_avg_pool2d(F.relu(self.conv2(x)), 1)
        return self.fc(torch.flatten(x, 1))


class Branches(nn.Module):
    """Two branches joined by ``torch.cat`` on the channels: one after a ReLU (unsigned),
    one without (signed), of different widths."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 6, 3, padding=1)
        self.conv, self.fc = nn.Conv2d(10, 8, 3, padding=1), nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        return self.fc(F.avg_pool2d(F.relu(self.conv(x)), 2).flatten(1))


def _digits(shape):
    split = load_digits_split()
    return shape(split.x_train), split.y_train, shape(split.x_test), split.y_test


@pytest.fixture(scope="module")
def digits():
    return _digits(as_images)


@pytest.fixture(scope="module")
def sequences():
    return _digits(as_sequences)


@pytest.fixture(scope="module")
def models(digits, sequences):
    """Each model class trained once for the module (``olmac.models.ordinary.trained``),
    with its data: a model on sequences (``SequenceCNN``) reads the digits as
    ``as_sequences``, every other as images."""
    cache = {}

    def model(factory):
        data = sequences if factory is SequenceCNN else digits
        if factory not in cache:
            cache[factory] = trained(factory, data[0], data[1])
        return cache[factory], data
    return model


@pytest.mark.parametrize("factory", [ConvBNStack, ResidualBN, DepthwiseSeparable, SequenceCNN,
                                     Branches, SmoothActivations])
def test_ordinary_models_quantize_within_a_point(factory, models):
    """§17: each rewrite keeps the float function, so at 8/8 the integer program's test
    accuracy is within one point of the float model's."""
    model, (x, _, x_test, y_test) = models(factory)
    program = quantize_model(model, x, act_bits=8, weight_bits=8, act_calibration="max")
    with torch.no_grad():
        float_accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    logits = run_integer(program, to_pixels(x_test))
    integer_accuracy = float((logits.argmax(1) == y_test).float().mean())
    assert float_accuracy > 0.9
    assert abs(integer_accuracy - float_accuracy) <= 0.01


def test_notes_say_what_was_folded_and_dropped(digits):
    """§17: the folded BatchNorms and the dropped trailing softmax are listed."""
    notes = lowering_notes(ConvBNStack().eval(), digits[0][:4])
    assert "folded BatchNorm 'bn1' into 'conv1'" in notes
    assert "folded BatchNorm 'bn3' into 'fc1'" in notes
    assert any(note.startswith("dropped the trailing 'log_softmax'") for note in notes)


@pytest.mark.parametrize("groups, channels", [(2, (4, 6)), (3, (3, 3)), (4, (8, 4))])
def test_grouped_convolution_becomes_block_diagonal(groups, channels):
    """§17: the dense convolution with the block-diagonal weight gives the grouped one's
    outputs (compared with torch's own grouped convolution), with its BatchNorm folded."""
    torch.manual_seed(groups)
    model = nn.Sequential(nn.Conv2d(channels[0], channels[1], 3, padding=1, groups=groups),
                          nn.BatchNorm2d(channels[1])).eval()
    model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(3, channels[0], 5, 5)
    normalized = normalize(model, x[:2])
    dense = [m for m in normalized.module.modules() if isinstance(m, nn.Conv2d)]
    assert [m.groups for m in dense] == [1]
    torch.testing.assert_close(normalized.module(x), model(x))
    assert normalized.notes[0] == (f"made the grouped convolution '0' (groups={groups}) "
                                   f"dense, with a block-diagonal weight")


class OneD(nn.Module):
    """Every 1-D form: Conv1d (grouped, ``padding='same'``), BatchNorm1d on a sequence and
    on features, functional max/avg/adaptive pooling, MaxPool1d."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv1d(4, 6, 3, padding="same", groups=2), nn.BatchNorm1d(6)
        self.conv2, self.pool = nn.Conv1d(6, 6, 1), nn.MaxPool1d(2, 1)
        self.fc, self.bn_fc = nn.Linear(12, 5), nn.BatchNorm1d(5)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.bn(self.conv(x))), 2)
        x = F.avg_pool1d(self.pool(F.relu(self.conv2(x))), 2, 1)
        x = F.adaptive_avg_pool1d(x, 2)
        return self.bn_fc(self.fc(torch.flatten(x, 1)))


def test_one_dimensional_layers_become_two_dimensional():
    """§17: on ``(N, C, 1, L)`` the 2-D twins compute the 1-D model's outputs (against
    torch's own 1-D layers), and every 1-D layer on a sequence is gone."""
    torch.manual_seed(1)
    model = OneD().eval()
    for bn in (model.bn, model.bn_fc):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 4, 13)
    normalized = normalize(model, x[:2])
    assert normalized.input_shape == (4, 1, 13)
    torch.testing.assert_close(normalized.module(x.unsqueeze(2)), model(x))
    called = dict(normalized.module.named_modules())
    kinds = [type(called[n.target]).__name__ if n.op == "call_module" else str(n.target)
             for n in normalized.module.graph.nodes]
    assert not [kind for kind in kinds if "1d" in kind]  # the BatchNorms are folded
    program = quantize_model(model, torch.rand(16, 4, 13), act_bits=8, weight_bits=8,
                             act_calibration="max")
    assert program.input_shape == (4, 1, 13)


class TrailingSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x).softmax(1)


@pytest.mark.parametrize("model", [
    TrailingSoftmax(), nn.Sequential(nn.Linear(64, 10), nn.Softmax(dim=1)),
    nn.Sequential(nn.Linear(64, 10), nn.LogSoftmax(-1))])
def test_trailing_softmax_is_dropped(model):
    """§17: a softmax at the end (method or module) is dropped; the logits are the
    Linear's."""
    model = model.eval()
    program = quantize_model(model, torch.rand(16, 64), act_bits=8, weight_bits=8,
                             act_calibration="max")
    assert [op.KIND for op in program.ops] == ["quantize_input", "gemm"]
    assert lowering_notes(model, torch.rand(2, 64))[0].startswith("dropped the trailing")


def test_capped_relu_scale_is_at_most_the_cap(digits):
    """§17: a Hardtanh(0, 4) after a GEMM gives its output a scale with hi·σ ≤ 4."""
    program = quantize_model(SmallNet().eval(), digits[0][:64] * 8, act_bits=8,
                             weight_bits=8, act_calibration="max")
    value = program.values["conv"]
    assert not value.signed and value.scale * 255 <= 4 + 1e-12


@pytest.mark.parametrize("factory, images, width, bits", [
    (SmallNet, 2, 4, 8), (DepthwiseSeparable, 1, 8, 8), (SequenceCNN, 1, 8, 8),
    (Branches, 1, 4, 7),  # u7 and s7 activations: one 8-bit signed array
    (ConvBNStack, 1, 8, 8), (ResidualBN, 1, 8, 8)])
def test_rewritten_models_run_bit_exactly_on_the_core(factory, images, width, bits, models):
    """The rewritten forms compile to the core's ops and run there exactly as golden."""
    model, (x, _, x_test, _) = models(factory)
    program = quantize_model(model, x, act_bits=bits, weight_bits=bits,
                             act_calibration="max")
    pixels = to_pixels(x_test[:images])
    compiled = compile_program(program, width=width)
    logits = _run_core(_core(compiled), compiled, pixels, pause=0.2)
    assert torch.equal(logits, run_integer(program, pixels))


def _values(program, *names):
    """The integer tensors of the values ``names`` of ``program``, by running the program
    cut after the op that writes each."""
    def cut(name):
        end = next(i for i, op in enumerate(program.ops) if op.output == name) + 1
        ops = program.ops[:end]
        values = {op.output: program.values[op.output] for op in ops}
        return dataclasses.replace(program, values=values, ops=ops, output=name)
    return [cut(name) for name in names]


def test_concatenation_writes_each_operand_in_its_format(digits, models):
    """§17: ``torch.cat`` of a ReLU branch and a signed branch is one signed format and
    scale that both GEMMs write (no op between them and the ``concat``), its range
    covering each branch's largest calibration value, and holds their integers side by
    side."""
    model, (x, _, x_test, _) = models(Branches)
    program = quantize_model(model, x, act_bits=8, weight_bits=8, act_calibration="max")
    pixels = to_pixels(x_test[:16])
    a, b, cat = _values(program, "a", "b", "cat")
    va, vb, vcat = (program.values[name] for name in ("a", "b", "cat"))
    assert vcat.signed and vcat.shape == (10, 8, 8)
    assert (va.bits, va.signed, va.scale) == (vb.bits, vb.signed, vb.scale) == (
        vcat.bits, vcat.signed, vcat.scale)
    floats = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda layer, i, o, n=n: floats.__setitem__(n, o)) for n in ("a", "b")]
    model(x)
    for hook in hooks:
        hook.remove()
    peak = max(float(floats["a"].detach().clamp(min=0).max()),
               float(floats["b"].detach().abs().max()))
    assert vcat.scale * 127 >= peak * (1 - 1e-6)
    ya, yb, y = (run_integer(p, pixels) for p in (a, b, cat))
    assert torch.equal(y, torch.cat((ya, yb), 1)) and ya.min() >= 0 and yb.min() < 0


def test_concatenation_of_one_scale_is_exact():
    """§17: operands that share the output's format and scale are copied exactly (a
    ``torch.cat`` of one tensor with itself, on features)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 6), nn.ReLU())

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = model, nn.Linear(12, 3)

        def forward(self, x):
            h = self.body(x)
            return self.head(torch.cat((h, h), 1))
    program = quantize_model(Twice().eval(), torch.rand(32, 16), act_bits=6, weight_bits=6,
                             act_calibration="max")
    h, cat = _values(program, "body.0", "cat")
    pixels = torch.randint(0, 17, (8, 16))
    yh, y = run_integer(h, pixels), run_integer(cat, pixels)
    assert torch.equal(y, torch.cat((yh, yh), 1))


class ManyRefusals(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act, self.bn = nn.Linear(64, 16), nn.Mish(), nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        x = self.bn(self.act(self.fc(x)))
        return F.softplus(self.out(x)).view(-1, 2, 5)


def test_every_refusal_is_reported_at_once():
    """§17: all refusals of a model in one error, one line each, naming the node and the
    line of ``forward`` that made it."""
    with pytest.raises(ProgramError) as info:
        quantize_model(ManyRefusals().eval(), torch.rand(8, 64))
    lines = str(info.value).splitlines()
    line = r" at test_lowering_layers\.py:\d+$"
    assert len(lines) == 4
    assert re.match(r"^unsupported layer 'act' \(nn\.Mish; supported activations: ReLU; "
                    r"ReLU6, Hardtanh\(0, m\), clamp\(0, m\); Sigmoid, Tanh, Hardswish, SiLU, "
                    r"GELU as tables\)" + line, lines[0])
    assert re.match(r"^cannot fold BatchNorm 'bn' into 'act': it must directly follow an "
                    r"nn\.Linear" + line, lines[1])
    assert re.match(r"^unsupported layer 'softplus' \(torch\.softplus; supported activations"
                    + r".*\)" + line, lines[2])
    assert re.match(r"^unsupported layer 'view' \(Tensor\.view to shape \[2, 5\] per sample; "
                    r"only flattening to \(N, features\).*\)" + line, lines[3])


def test_batchnorm_refusal_names_the_conv1d_the_user_wrote():
    """§17: a BatchNorm1d that cannot fold in a Conv1d model (a ReLU between) names
    ``nn.Conv1d``, not the 2-D layer the model runs as; in a Linear model ``nn.Linear``."""
    conv = nn.Sequential(nn.Conv1d(4, 6, 3), nn.ReLU(), nn.BatchNorm1d(6), nn.Flatten(),
                         nn.Linear(36, 3)).eval()
    with pytest.raises(ProgramError, match=r"^cannot fold BatchNorm '2' into '_1': it must "
                                           r"directly follow an nn\.Conv1d( at .*)?$"):
        quantize_model(conv, torch.rand(8, 4, 8))
    linear = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3)).eval()
    with pytest.raises(ProgramError, match=r"^cannot fold BatchNorm '2' into '_1': it must "
                                           r"directly follow an nn\.Linear( at .*)?$"):
        quantize_model(linear, torch.rand(8, 8))


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(8, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(torch.flatten(self.bn(y) + y, 1))


def test_batchnorm_whose_input_is_used_elsewhere_is_refused():
    """§17: folding would change the other user's input, so the error names both layers."""
    with pytest.raises(ProgramError, match=r"(?m)^cannot fold BatchNorm 'bn' into 'conv': its "
                       r"input is used elsewhere at test_lowering_layers\.py:\d+$"):
        quantize_model(SharedConv().eval(), torch.rand(4, 1, 4, 4))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("layer, message", [
    (nn.Hardtanh(), r"Hardtanh with bounds \[-1\.0, 1\.0\]; only \[0, m\]"),
    (nn.Conv2d(2, 2, 2, padding="same"), r"padding='same' and an even kernel"),
    (nn.AdaptiveAvgPool2d(3), r"adaptive average pooling \(4, 4\) → \(3, 3\)"),
])
def test_forms_that_cannot_be_lowered_are_refused(layer, message):
    """§17: a form outside the rewrites is refused by name, saying what is supported."""
    model = nn.Sequential(nn.Conv2d(2, 2, 1), layer, nn.Flatten(), nn.LazyLinear(3))
    model(torch.rand(2, 2, 4, 4))
    with pytest.raises(ProgramError, match=message):
        quantize_model(model.eval(), torch.rand(4, 2, 4, 4))


@pytest.mark.parametrize("document", ["docs/program.md", "README.md"])
def test_docs_list_the_supported_layers(document):
    """The tables of docs/program.md §17 and of the README are ``supported_layers()``,
    generated from the code."""
    assert supported_layers() in Path(document).read_text()


@pytest.mark.parametrize("activation, function", [
    (nn.Sigmoid(), torch.sigmoid), (nn.Tanh(), torch.tanh), (nn.Hardswish(), F.hardswish),
    (nn.SiLU(), F.silu), (nn.GELU(), F.gelu),
    (nn.GELU("tanh"), lambda x: F.gelu(x, approximate="tanh"))],
    # ids from the modules only: a function's repr holds its address, which differs between
    # xdist workers, and workers must collect the same test names
    ids=["Sigmoid", "Tanh", "Hardswish", "SiLU", "GELU", "GELU-tanh"])
def test_table_activations(activation, function):
    """§12: the table holds ``f`` of every input code, rounded half even to the output
    grid (checked against torch's own ``f`` and ``torch.round``); the integer program and
    its float view agree; the network core runs it with a table part and refuses it
    without one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), activation, nn.Linear(8, 3)).eval()
    program = quantize_model(model, torch.rand(64, 16), act_bits=5, weight_bits=5,
                             act_calibration="max")
    op = program.ops[2]
    x, y = program.values[op.input], program.values[op.output]
    assert op.KIND == "lookup" and (x.bits, x.signed) == (5, True) and len(op.table) == 32
    real = function(torch.arange(-16, 16, dtype=torch.float64) * x.scale)
    low, high = (-16, 15) if y.signed else (0, 31)
    assert torch.equal(op.table, torch.round(real / y.scale).clamp(low, high).long())
    pixels = torch.randint(0, 17, (32, 16))
    assert torch.equal(run_integer(program, pixels).argmax(1),
                       run_fake_quant(program, pixels / 16).argmax(1))
    assert compile_program(program, width=4).config.table_depth == 32
    with pytest.raises(CompileError, match=r"^op 2 \(lookup '1'\): this network core has no "
                       r"lookup-table part"):
        compile_program(program, width=4, tables=False)


class Joined(nn.Module):
    """Two Linear branches on features joined by ``torch.cat``."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(16, 6), nn.Linear(16, 4), nn.Linear(10, 3)

    def forward(self, x):
        return self.head(torch.cat([F.relu(self.a(x)), self.b(x)], 1))


def test_concatenation_fine_tunes_around_it():
    """Quantization-aware training keeps a concatenation (a layout, no float layer) and
    trains the layers around it, which write into it; the result is lowered again."""
    torch.manual_seed(0)
    images = torch.randint(0, 17, (64, 16)) / 16
    program = quantize(Joined().eval(), images, act_bits=4, weight_bits=4, scheme="mmse",
                       train_images=images, train_labels=torch.randint(0, 3, (64,)), epochs=1)
    kinds = [(op.KIND, op.name) for op in program.ops]
    assert kinds[1:] == [("gemm", "a"), ("gemm", "b"), ("concat", "cat"), ("gemm", "head")]


def test_refusal_of_an_unknown_layer_points_to_the_table():
    """§17: a layer outside every form is refused by name, pointing to ``olmac layers``."""
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)).eval()
    with pytest.raises(ProgramError, match=r"^unsupported layer '1' \(nn\.LayerNorm; supported "
                       r"layers: olmac layers lists them\)$"):
        quantize_model(model, torch.rand(8, 4))
