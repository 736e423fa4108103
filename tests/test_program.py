"""Integer programs (golden/program/, golden/artifact.py) against docs/program.md §9–§14.

The reference here is a second reading of the page, written with Python integers and
explicit loops over output positions, kernel taps and windows: it shares no code with
the implementation beyond reading the program's fields. Each property test's docstring
says which property it checks.
"""

import dataclasses
import functools
import json
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.nn import functional as F

from olmac.golden import artifact
from olmac.golden.program import (CLIP_FACTORS, SCHEMES, SEARCH_IMAGES, ProgramError, im2col,
                            pool_windows, quantize_model, requantize_residual_round_half_up,
                            run_fake_quant, run_integer, to_pixels)
from olmac.models.demo import ResidualCNN, cnn, mlp
from olmac.models.digits import DigitsMLP, as_images, load_digits_split
from olmac.models.training import cached

pytestmark = pytest.mark.filterwarnings("error")


# -- the reference: docs/program.md read with Python integers ------------------------------

def rq(x, multiplier, shift, lo, hi, extra=0):
    """§3/§11: ``clamp((x·M + extra + 2^(s−1)) >> s, lo, hi)`` with Python integers."""
    p = x * multiplier + extra + ((1 << (shift - 1)) if shift > 0 else 0)
    return min(max(p >> shift, lo), hi)


def value_range(value, relu=False):
    lo, hi = (-(1 << (value.bits - 1)), (1 << (value.bits - 1)) - 1) if value.signed \
        else (0, (1 << value.bits) - 1)
    return (max(lo, 0) if relu else lo), hi


def ref_weight(op):
    """The effective ``K×N`` weight of §10 as lists (multi-tensor handled in ref_gemm)."""
    if op.scheme == "mmse":
        return op.weights.tolist()
    if op.scheme == "value_aware":
        return (op.weights + op.weight_outliers).tolist()
    # syq, codebooks §4: code = sign << idx | index; D = ±T[g][index]; g broadcasts.
    codes, tables = op.codes, op.tables.tolist()
    n = codes.shape[0]
    flat = codes.reshape(n, -1).tolist()
    tap_shape = tuple(codes.shape[1:])
    weight = [[0] * n for _ in range(op.in_features)]
    for o in range(n):
        for k in range(op.in_features):
            code = flat[o][k]
            sign, index = code >> op.idx_bits, code & ((1 << op.idx_bits) - 1)
            position = (o,) + tuple(np.unravel_index(k, tap_shape))
            table = tables
            for axis, i in enumerate(position):
                table = table[i if op.tables.shape[axis] > 1 else 0]
            weight[k][o] = -table[index] if sign else table[index]
    return weight


def ref_rows(op, x, in_value):
    """The GEMM's activation rows: the sample itself, or im2col patches by §10's loops."""
    if op.layer == "linear":
        return [sample for sample in x]
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    rows = []
    for sample in x:
        c_in, h, w = in_value.shape
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        for oy in range(ho):
            for ox in range(wo):
                row = []
                for c in range(c_in):
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = oy * sh + ky - ph, ox * sw + kx - pw
                            inside = 0 <= iy < h and 0 <= ix < w
                            row.append(sample[c][iy][ix] if inside else 0)
                rows.append(row)
    return rows


def ref_gemm(op, values, env):
    x, in_value, out = env[op.input], values[op.input], values[op.output]
    rows = ref_rows(op, x, in_value)
    n = op.out_features
    if op.scheme == "multi_tensor":
        planes = [plane.tolist() for plane in op.weights]
        exponents = op.plane_exponents.tolist()
    else:
        planes, exponents = [ref_weight(op)], []
    lo, hi = value_range(out, op.relu)
    bias, mult, shift = op.bias.tolist(), op.multiplier.tolist(), op.shift.tolist()
    residual = None
    if op.residual is not None:
        residual = [flatten_nchw(sample) for sample in env[op.residual]]
        residual_mult = op.residual_multiplier.tolist()
        residual_shift = op.residual_shift.tolist()
    outputs = []
    per_sample = len(rows) // len(x)
    for m, row in enumerate(rows):
        out_row = []
        for o in range(n):
            acc = 0
            for p, plane in enumerate(planes):
                plane_acc = sum(a * plane[k][o] for k, a in enumerate(row))
                acc = (acc << exponents[p - 1][o]) + plane_acc if p else plane_acc
            extra = 0
            if residual is not None:
                extra = (residual[m // per_sample][(m % per_sample) * n + o]
                         * residual_mult[o]) << residual_shift[o]
            out_row.append(rq(acc + bias[o], mult[o], shift[o], lo, hi, extra))
        outputs.append(out_row)
    if op.layer == "linear":
        return outputs
    _, ho, wo = out.shape
    return [[[[outputs[s * per_sample + oy * wo + ox][c] for ox in range(wo)]
              for oy in range(ho)] for c in range(n)] for s in range(len(x))]


def flatten_nchw(sample):
    """A ``C×H×W`` sample as ``(y, x, c)``-ordered GEMM rows, or a flat sample as is."""
    if not isinstance(sample[0], list):
        return sample
    c, h, w = len(sample), len(sample[0]), len(sample[0][0])
    return [sample[ci][y][x] for y in range(h) for x in range(w) for ci in range(c)]


def ref_pool(op, x, values):
    """§12 window by window: the taps inside the input (a padded tap adds 0 to a sum and
    never wins a maximum)."""
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    out = values[op.output]
    lo, hi = value_range(out)
    result = []
    for sample in x:
        planes = []
        for plane in sample:
            h, w = len(plane), len(plane[0])
            rows = []
            for oy in range((h + 2 * ph - kh) // sh + 1):
                row = []
                for ox in range((w + 2 * pw - kw) // sw + 1):
                    taps = [(oy * sh + ky - ph, ox * sw + kx - pw)
                            for ky in range(kh) for kx in range(kw)]
                    window = [plane[iy][ix] for iy, ix in taps if 0 <= iy < h and 0 <= ix < w]
                    row.append(max(window) if op.KIND == "maxpool"
                               else rq(sum(window), op.multiplier, op.shift, lo, hi))
                rows.append(row)
            planes.append(rows)
        result.append(planes)
    return result


def map_nested(f, x):
    return [map_nested(f, item) for item in x] if isinstance(x, list) else f(x)


def reference_run(program, pixels):
    """§9–§13 with Python integers, op by op."""
    env = {}
    for op in program.ops:
        out = program.values[op.output]
        if op.KIND == "quantize_input":
            lo, hi = value_range(out)
            images = pixels.reshape(len(pixels), *program.input_shape).tolist()
            env[op.output] = map_nested(lambda p: rq(p, op.multiplier, op.shift, lo, hi),
                                        images)
        elif op.KIND == "requantize":
            lo, hi = value_range(out)
            env[op.output] = map_nested(lambda v: rq(v, op.multiplier, op.shift, lo, hi),
                                        env[op.input])
        elif op.KIND == "flatten":
            env[op.output] = [torch.tensor(s).reshape(-1).tolist() for s in env[op.input]]
        elif op.KIND in ("avgpool", "maxpool"):
            env[op.output] = ref_pool(op, env[op.input], program.values)
        else:
            env[op.output] = ref_gemm(op, program.values, env)
    return env[program.output]


# -- small random models --------------------------------------------------------------------

class TwoLayer(nn.Module):
    def __init__(self, features, hidden, classes):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(features, hidden), nn.ReLU(), \
            nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvResidual(nn.Module):
    def __init__(self, c_in, channels, kernel, stride, padding, pool, classes, size):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, channels, kernel, stride=stride, padding=padding)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.pool = pool
        with torch.no_grad():
            h = self.pool(self.conv1(torch.zeros(1, c_in, *size)))
        self.fc = nn.Linear(h.numel(), classes)

    def forward(self, x):
        skip = torch.relu(self.conv1(x))
        h = F.relu(skip + self.conv2(skip))  # the add's first operand is the skip
        return self.fc(torch.flatten(self.pool(h), 1))


@st.composite
def configs(draw):
    return dict(act_bits=draw(st.integers(2, 8)), weight_bits=draw(st.integers(2, 8)),
                scheme=draw(st.sampled_from(tuple(SCHEMES))), highway=draw(st.booleans()),
                act_calibration=draw(st.sampled_from(["mmse", "max"])),
                bias_correction=draw(st.booleans()))


def random_pixels(seed, shape, count=6):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (count, *shape), generator=generator)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 16), features=st.integers(1, 6), hidden=st.integers(1, 5),
       classes=st.integers(1, 4), config=configs())
def test_mlp_program_equals_reference(seed, features, hidden, classes, config):
    """§9–§13: a Linear-ReLU-Linear program run by ``run_integer`` equals the Python-integer
    reading of the page, element for element, for every scheme, width and highway mode."""
    torch.manual_seed(seed)
    model = TwoLayer(features, hidden, classes)
    pixels = random_pixels(seed, (features,))
    program = quantize_model(model, pixels / 16, **config)
    assert run_integer(program, pixels).tolist() == reference_run(program, pixels)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 16), c_in=st.integers(1, 2), channels=st.integers(1, 3),
       kernel=st.sampled_from([1, 2, 3]), stride=st.integers(1, 2), padding=st.integers(0, 1),
       size=st.tuples(st.integers(3, 5), st.integers(3, 5)),
       pool=st.sampled_from(["avg", "max"]), config=configs())
def test_conv_residual_program_equals_reference(seed, c_in, channels, kernel, stride,
                                                padding, size, pool, config):
    """§10–§12: a conv-ReLU, conv + skip (highway add), ReLU, pool, flatten, Linear program
    equals the loop-based reading of im2col, the highway requantization and pooling."""
    torch.manual_seed(seed)
    pool_module = nn.AvgPool2d(2, stride=1) if pool == "avg" else nn.MaxPool2d(2)
    pre = ((size[0] + 2 * padding - kernel) // stride + 1,
           (size[1] + 2 * padding - kernel) // stride + 1)
    if min(pre) < 2:
        pool_module = nn.AvgPool2d(1) if pool == "avg" else nn.MaxPool2d(1)
    model = ConvResidual(c_in, channels, kernel, stride, padding, pool_module, 3, size)
    pixels = random_pixels(seed, (c_in, *size), count=3)
    program = quantize_model(model, pixels / 16, **config)
    assert any(op.KIND == "gemm" and op.residual for op in program.ops)
    assert run_integer(program, pixels).tolist() == reference_run(program, pixels)


# -- kernels -------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 16), n=st.integers(1, 2), c=st.integers(1, 3),
       o=st.integers(1, 3), kh=st.integers(1, 3), kw=st.integers(1, 3),
       h=st.integers(3, 6), w=st.integers(3, 6), sh=st.integers(1, 2), sw=st.integers(1, 2),
       ph=st.integers(0, 2), pw=st.integers(0, 2))
def test_im2col_gemm_equals_conv2d(seed, n, c, o, kh, kw, h, w, sh, sw, ph, pw):
    """§10: ``im2col(X)·W`` laid out ``N×O×Ho×Wo`` is ``conv2d(X, weight)`` on integers
    (exact in float64 for these small values), for any kernel, stride and padding."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(-8, 8, (n, c, h, w), generator=generator)
    weight = torch.randint(-8, 8, (o, c, kh, kw), generator=generator)
    rows = im2col(x, (kh, kw), (sh, sw), (ph, pw)) @ weight.reshape(o, -1).T
    expected = F.conv2d(x.double(), weight.double(), stride=(sh, sw), padding=(ph, pw))
    got = rows.reshape(n, *expected.shape[2:], o).permute(0, 3, 1, 2)
    assert torch.equal(got.double(), expected)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 16), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 1), pw=st.integers(0, 1))
def test_pool_windows_equal_torch_pooling(seed, kh, kw, sh, sw, ph, pw):
    """§12: window sums over the zero-padded input are ``kh·kw·avg_pool2d`` (with
    ``count_include_pad``) and maxima over the input padded with the format's minimum
    ``max_pool2d`` (which pads with −∞), exactly."""
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    x = torch.randint(-100, 100, (2, 3, 6, 7), generator=torch.Generator().manual_seed(seed))
    sums = pool_windows(x, (kh, kw), (sh, sw), (ph, pw)).sum(-1)
    avg = F.avg_pool2d(x.double(), (kh, kw), (sh, sw), (ph, pw), count_include_pad=True)
    assert torch.equal(sums.double(), avg * (kh * kw))
    maxima = pool_windows(x, (kh, kw), (sh, sw), (ph, pw), -128).amax(-1)
    assert torch.equal(maxima.double(), F.max_pool2d(x.double(), (kh, kw), (sh, sw), (ph, pw)))


@settings(max_examples=200, deadline=None)
@given(acc=st.integers(-(1 << 44), (1 << 44) - 1), bias=st.integers(-(1 << 31), (1 << 31) - 1),
       multiplier=st.integers(-(1 << 31), (1 << 31) - 1), shift=st.integers(0, 63),
       residual=st.integers(-(1 << 15), (1 << 16) - 1),
       residual_multiplier=st.integers(-(1 << 31), (1 << 31) - 1),
       residual_shift=st.integers(0, 31), out_bits=st.integers(2, 16),
       out_signed=st.booleans(), relu=st.booleans())
def test_highway_requantization_is_exact(acc, bias, multiplier, shift, residual,
                                         residual_multiplier, residual_shift, out_bits,
                                         out_signed, relu):
    """§11: ``clamp(((acc + β)·M + r·M_r·2^t + 2^(s−1)) >> s)`` equals the Python-integer
    formula over the whole parameter ranges (77-bit products, every shift)."""
    got = requantize_residual_round_half_up(
        torch.tensor([[acc]]), bias, multiplier, shift, torch.tensor([[residual]]),
        residual_multiplier, residual_shift, out_bits=out_bits, out_signed=out_signed,
        relu=relu)
    lo, hi = (-(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1) if out_signed \
        else (0, (1 << out_bits) - 1)
    expected = rq(acc + bias, multiplier, shift, max(lo, 0) if relu else lo, hi,
                  (residual * residual_multiplier) << residual_shift)
    assert int(got) == expected


def test_highway_requantization_doc_example():
    """§11 by hand: (5·2 + 1·1 + 2) >> 2 = 3 and (−5·2 + 1 + 2) >> 2 = −2 (floor)."""
    got = requantize_residual_round_half_up(torch.tensor([[5, -5]]), 0, 2, 2,
                                            torch.tensor([[1, 1]]), 1, out_bits=8,
                                            out_signed=True)
    assert got.tolist() == [[3, -2]]


def test_average_of_four_rounds_half_up():
    """§12: with ``σ_out = σ_in`` a 2×2 average is ``(S + 2) >> 2``: 1.5 → 2, 2.5 → 3,
    −0.5 → 0, −1.5 → −1."""
    sums = torch.tensor([6, 10, -2, -6])
    lo, hi = -128, 127
    assert [rq(int(s), 1 << 30, 32, lo, hi) for s in sums] == [2, 3, 0, -1]


# -- digits --------------------------------------------------------------------------------

#: Most test images on which run_integer and run_fake_quant may predict differently (§13:
#: they differ only by the 31-bit multipliers and by ties); 0 observed.
MAX_DISAGREEMENTS = 3


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def _row(label, model, program, x_test, y_test):
    with torch.no_grad():
        float_acc = (model(x_test).argmax(1) == y_test).double().mean().item()
    pixels = to_pixels(x_test)
    integer = run_integer(program, pixels).argmax(1)
    fake = run_fake_quant(program, x_test).argmax(1)
    row = (label, float_acc, (fake == y_test).double().mean().item(),
           (integer == y_test).double().mean().item(), int((integer != fake).sum()))
    print(f"| {row[0]} | {row[1]:.2%} | {row[2]:.2%} | {row[3]:.2%} | {row[4]} |")
    return row


def test_digits_accuracy_table(digits, capsys):
    """§13 on digits: float / fake-quant / integer test accuracy of the MLP and the residual
    CNN at 4-bit W/A, and of the CNN at 3-bit W/A with and without the highway (printed).
    Integer and fake-quant agree on all but ``MAX_DISAGREEMENTS`` images and every
    quantized model scores above 80 %."""
    start = time.time()
    x_train, x_test, y_test = digits.x_train, digits.x_test, digits.y_test
    rows = []
    with capsys.disabled():
        print("\n| model | float | fake-quant | integer | disagreeing |")
        print("|---|---:|---:|---:|---:|")
        model = mlp(digits)
        rows.append(_row("MLP 4/4", model, quantize_model(model, x_train), x_test, y_test))
        model = cnn(digits)
        images, test_images = as_images(x_train), as_images(x_test)
        for label, bits, highway in (("CNN 4/4 highway", 4, True),
                                     ("CNN 3/3 highway", 3, True),
                                     ("CNN 3/3 no highway", 3, False)):
            program = quantize_model(model, images, act_bits=bits, weight_bits=bits,
                                     highway=highway)
            rows.append(_row(label, model, program, test_images, y_test))
        print(f"({time.time() - start:.1f} s)")
    for label, _, fake, integer, disagreements in rows:
        assert integer > 0.8 and fake > 0.8, label
        assert disagreements <= MAX_DISAGREEMENTS, label


def _kl(program, images, logits):
    """Mean KL divergence of the program's float-view logits from the float ``logits``."""
    target = logits.to(torch.float64).log_softmax(1)
    out = run_fake_quant(program, images).log_softmax(1)
    return float((target.exp() * (target - out)).sum(1).mean())


def test_output_calibration_clips_max_abs_scales(digits):
    """§13, ``act_calibration="output"``: every low-width scale is a factor of
    ``CLIP_FACTORS`` times its max-abs scale (the input and 16-bit values unchanged), the
    op list is that of ``"max"``, and the KL divergence from the float logits on the
    searched images is no larger than max-abs's (strictly smaller on the 3-bit MLP)."""
    model = mlp(digits)
    searched = quantize_model(model, digits.x_train, act_bits=3, weight_bits=3)
    plain = quantize_model(model, digits.x_train, act_bits=3, weight_bits=3,
                           act_calibration="max")
    assert [(op.KIND, op.inputs, op.output) for op in searched.ops] == \
        [(op.KIND, op.inputs, op.output) for op in plain.ops]
    factors = {}
    for name, value in searched.values.items():
        reference = plain.values[name]
        assert (value.bits, value.signed, value.shape) == \
            (reference.bits, reference.signed, reference.shape)
        factors[name] = value.scale / reference.scale
        if name == "input" or value.bits > 8:
            assert factors[name] == 1.0, name
        else:
            assert min(abs(factors[name] - f) for f in CLIP_FACTORS) < 1e-12, name
    stride = -(-len(digits.x_train) // SEARCH_IMAGES)
    images = digits.x_train[::stride]
    with torch.no_grad():
        logits = model(images)
    assert _kl(searched, images, logits) < _kl(plain, images, logits)
    assert any(f < 1 for f in factors.values())


def test_bad_act_calibration_is_refused():
    """An unknown ``act_calibration`` is a ValueError listing the choices."""
    with pytest.raises(ValueError, match=r"^act_calibration must be one of 'output', 'max', "
                                         r"'mmse', not 'median'$"):
        quantize_model(DigitsMLP(), torch.rand(8, 64), act_calibration="median")


def test_residual_cnn_lowers_to_the_documented_program():
    """§11's example: the residual CNN's op list, formats and highway widths, and the
    ablation without the highway (every activation low-width, no requantize op)."""
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    calibration = random_pixels(0, (1, 8, 8), count=8) / 16
    program = quantize_model(model, calibration, act_bits=3, weight_bits=3)
    listing = [(op.KIND, op.name, op.inputs, program.values[op.output].format)
               for op in program.ops]
    assert listing == [
        ("quantize_input", "input", (), "u3"),
        ("gemm", "conv1", ("input",), "u16"),
        ("requantize", "conv1.low", ("conv1",), "u3"),
        ("gemm", "conv2", ("conv1.low",), "u3"),
        ("gemm", "conv3", ("conv2", "conv1"), "u16"),
        ("avgpool", "pool", ("conv3",), "u16"),
        ("flatten", "flatten", ("pool",), "u16"),
        ("requantize", "flatten.low", ("flatten",), "u3"),
        ("gemm", "fc", ("flatten.low",), "s16"),
    ]
    ablation = quantize_model(model, calibration, act_bits=3, weight_bits=3, highway=False)
    assert [(op.KIND, op.inputs) for op in ablation.ops if op.KIND != "quantize_input"] == [
        ("gemm", ("input",)), ("gemm", ("conv1",)), ("gemm", ("conv2", "conv1")),
        ("avgpool", ("conv3",)), ("flatten", ("pool",)), ("gemm", ("flatten",))]
    assert {v.bits for name, v in ablation.values.items() if name != "fc"} == {3}


def test_cached_trains_once(tmp_path):
    """``cached`` builds and saves on the first call and loads the same weights after."""
    calls = []

    def build(model):
        calls.append(1)
        nn.init.constant_(model.weight, 0.5)
        return model

    first = cached("tiny", lambda: nn.Linear(2, 2), build, tmp_path)
    second = cached("tiny", lambda: nn.Linear(2, 2), build, tmp_path)
    assert calls == [1] and torch.equal(first.weight, second.weight)
    assert not second.training


# -- unsupported layers --------------------------------------------------------------------

class Softplus(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return F.softplus(self.fc(x))


class ReluAfterPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.relu = nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU()

    def forward(self, x):
        return self.relu(self.pool(self.conv(x)))


class AddOfInputs(nn.Module):
    def forward(self, x):
        return x + x


@pytest.mark.parametrize("model, shape, message", [
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Mish(), nn.Linear(4, 2)),
     (4,), r"^unsupported layer '3' \(nn\.Mish; supported activations: ReLU; ReLU6, "
     r"Hardtanh\(0, m\), clamp\(0, m\); Sigmoid, Tanh, Hardswish, SiLU, GELU as tables\)$"),
    (Softplus(), (4,), r"^unsupported layer 'softplus' \(torch\.softplus; supported activations: "
     r".*\) at test_program\.py:\d+$"),
    (nn.Sequential(nn.Conv2d(2, 2, 3, dilation=2)), (2, 5, 5),
     r"^unsupported layer '0' \(nn\.Conv2d with dilation=\(2, 2\), padding_mode='zeros'; "
     r"only dilation=1, zeros padding\)$"),
    (nn.Sequential(nn.AvgPool2d(2, padding=1, count_include_pad=False)), (1, 4, 4),
     r"^unsupported layer '0' \(nn\.AvgPool2d with ceil_mode, dilation, return_indices, a "
     r"divisor override or count_include_pad=False; only ceil_mode=False and averages over "
     r"the whole \(zero-padded\) window\)$"),
    (ReluAfterPool(), (1, 6, 6),
     r"^unsupported layer 'relu' \(nn\.ReLU — a ReLU must directly follow a Linear, Conv2d "
     r"or residual add that has no other user\) at test_program\.py:\d+$"),
    (AddOfInputs(), (4,), r"^unsupported layer 'add' \(operator\.add — a residual add needs "
     r"one operand that is a Linear or Conv2d with no other user, into whose requantization "
     r"it is fused\) at test_program\.py:\d+$"),
])
def test_unsupported_layers_are_named(model, shape, message):
    """§9: anything outside the supported set raises, naming the node and its type."""
    with pytest.raises(ProgramError, match=message):
        quantize_model(model, torch.rand(4, *shape))


def test_unsupported_layer_in_digits_mlp():
    """As in the issue's example: a Mish in the MLP's ``layers`` is
    ``'layers.3' (nn.Mish)``."""
    model = DigitsMLP()
    model.layers[3] = nn.Mish()
    with pytest.raises(ProgramError, match=r"^unsupported layer 'layers\.3' \(nn\.Mish; "
                       r"supported activations: ReLU; ReLU6, Hardtanh\(0, m\), clamp\(0, m\); "
                       r".* at digits\.py:\d+$"):
        quantize_model(model, torch.rand(8, 64))


def test_bad_widths_are_refused():
    """A width outside 2..8 is a TypeError naming the argument (as golden's checks do)."""
    with pytest.raises(TypeError, match=r"^act_bits must be an integer in 2\.\.8, not 9$"):
        quantize_model(DigitsMLP(), torch.rand(8, 64), act_bits=9)


# -- artifacts -----------------------------------------------------------------------------

@functools.cache
def small_program(scheme="mmse"):
    """An untrained DigitsMLP (seeded), ops: 0 input, 1 layers.0, 2 layers.2, 3 layers.4."""
    torch.manual_seed(0)
    pixels = random_pixels(0, (64,), count=16)
    return quantize_model(DigitsMLP(), pixels / 16, scheme=scheme), pixels


def assert_same_program(a, b):
    assert (a.input_shape, a.pixel_min, a.pixel_max, a.pixel_scale, a.real_inputs,
            a.output) == (b.input_shape, b.pixel_min, b.pixel_max, b.pixel_scale,
                          b.real_inputs, b.output)
    assert dict(a.values) == dict(b.values)
    assert len(a.ops) == len(b.ops)
    for x, y in zip(a.ops, b.ops):
        assert type(x) is type(y) and x.attributes() == y.attributes()
        assert x.tensors().keys() == y.tensors().keys()
        for name, tensor in x.tensors().items():
            assert tensor.dtype == y.tensors()[name].dtype, name
            assert torch.equal(tensor, y.tensors()[name]), name


@pytest.mark.parametrize("scheme", SCHEMES)
def test_artifact_round_trip_is_exact(tmp_path, scheme):
    """§14: ``load(save(p))`` equals ``p`` field by field and runs to the same logits."""
    program, pixels = small_program(scheme)
    artifact.save(program, tmp_path)
    loaded = artifact.load(tmp_path)
    assert_same_program(program, loaded)
    assert torch.equal(run_integer(program, pixels), run_integer(loaded, pixels))


def test_artifact_round_trip_residual_cnn(tmp_path):
    """§14 with conv geometry, a residual, requantize, pooling and flatten ops."""
    torch.manual_seed(1)
    model = ConvResidual(1, 2, 3, 1, 1, nn.AvgPool2d(2), 3, (4, 4))
    pixels = random_pixels(1, (1, 4, 4), count=4)
    program = quantize_model(model, pixels / 16, act_bits=3, weight_bits=3)
    artifact.save(program, tmp_path)
    loaded = artifact.load(tmp_path)
    assert_same_program(program, loaded)
    assert torch.equal(run_integer(program, pixels), run_integer(loaded, pixels))


def edit_manifest(path, change):
    manifest = json.loads((path / "program.json").read_text())
    change(manifest)
    (path / "program.json").write_text(json.dumps(manifest))


def edit_tensors(path, change):
    with np.load(path / "program.npz") as archive:
        arrays = {key: archive[key].copy() for key in archive.files}
    change(arrays)
    np.savez(path / "program.npz", **arrays)


def _set(path, value):
    """A manifest edit ``path`` (keys and indexes) := value."""
    def change(manifest):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _delete(path):
    def change(manifest):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


def _bump(key, delta):
    def change(arrays):
        arrays[key][(0,) * arrays[key].ndim] += delta
    return change


def _truncate(path):
    data = (path / "program.npz").read_bytes()
    (path / "program.npz").write_bytes(data[:len(data) // 2])


def _bad_json(path):
    text = (path / "program.json").read_text()
    (path / "program.json").write_text(text[:len(text) // 3])


def _flip_weight(arrays):
    """An in-range edit: one weight moved by one step toward zero."""
    weights = arrays["op1.weights"]
    index = tuple(int(i) for i in np.argwhere(weights != 0)[0])
    weights[index] -= np.sign(weights[index])


OP2 = r"^artifact op 2 \(gemm 'layers\.2'\): "

CORRUPTIONS = [
    ("bad json", _bad_json, None,
     r"^artifact manifest 'program\.json' is not valid JSON: .+$"),
    ("no manifest", lambda p: (p / "program.json").unlink(), None,
     r"^artifact manifest '.+program\.json' does not exist$"),
    ("format", None, _set(["format"], "onnx"),
     r"^artifact format must be 'olmac-integer-program', not 'onnx'$"),
    ("newer version", None, _set(["version"], 5),
     r"^artifact version 5 is newer than this reader \(version 4\); update olmac to load it$"),
    ("older version", None, _set(["version"], 3),
     r"^artifact version 3 is not supported; this reader reads version 4 only$"),
    ("missing top field", None, _delete(["output"]),
     r"^artifact manifest: missing field 'output'$"),
    ("unknown top field", None, _set(["comment"], "hi"),
     r"^artifact manifest: unknown field 'comment'$"),
    ("missing input field", None, _delete(["input", "real_inputs"]),
     r"^artifact manifest: field 'input': missing field 'real_inputs'$"),
    ("positive pixel_min", None, _set(["input", "pixel_min"], 1),
     r"^artifact program: field 'pixel_min' must be int in -32768\.\.0, not 1$"),
    ("signed pixels beyond s16", None,
     lambda m: (_set(["input", "pixel_min"], -1)(m), _set(["input", "pixel_max"], 40000)(m)),
     r"^artifact program: field 'pixel_max' must be int in 1\.\.32767, not 40000$"),
    ("real_inputs not a bool", None, _set(["input", "real_inputs"], 1),
     r"^artifact program: field 'real_inputs' must be bool, not 1$"),
    ("missing op field", None, _delete(["ops", 2, "weight_bits"]),
     OP2 + r"missing field 'weight_bits'$"),
    ("unknown op field", None, _set(["ops", 2, "colour"], "red"),
     OP2 + r"unknown field 'colour'$"),
    ("unknown kind", None, _set(["ops", 2, "kind"], "softmax"),
     r"^artifact op 2: field 'kind' must be one of quantize_input, gemm, avgpool, maxpool, "
     r"requantize, rotate, flatten, concat, lookup, not 'softmax'$"),
    ("bad attribute", None, _set(["ops", 2, "weight_bits"], 9),
     OP2 + r"field 'weight_bits' must be int in 2\.\.8, not 9$"),
    ("bad value width", None, _set(["values", "input", "bits"], 17),
     r"^artifact value 'input': field 'bits' must be int in 2\.\.16, not 17$"),
    ("undeclared value", None, _delete(["values", "layers.0"]),
     r"^artifact op 1 \(gemm 'layers\.0'\): writes value 'layers\.0', which is not "
     r"declared$"),
    ("missing tensor ref field", None, _delete(["ops", 2, "tensors", "weights", "sha256"]),
     OP2 + r"tensor 'weights': missing field 'sha256'$"),
    ("truncated npz", _truncate, None,
     r"^artifact tensors 'program\.npz' is not a complete \.npz \(zip\) archive$"),
    ("missing tensor", lambda p: edit_tensors(p, lambda a: a.pop("op2.weights")), None,
     OP2 + r"tensor 'weights' \(key 'op2\.weights'\) is missing from program\.npz$"),
    ("extra tensor", lambda p: edit_tensors(p, lambda a: a.update(junk=np.zeros(2))), None,
     r"^artifact tensors: program\.npz holds 'junk', which no op references$"),
    ("wrong shape in npz",
     lambda p: edit_tensors(p, lambda a: a.update({"op2.weights": a["op2.weights"][:, :10]})),
     None, OP2 + r"tensor 'weights' has shape \(64, 10\), expected \(64, 64\)$"),
    ("wrong shape in both",
     lambda p: edit_tensors(p, lambda a: a.update({"op2.weights": a["op2.weights"][:, :10]})),
     _set(["ops", 2, "tensors", "weights", "shape"], [64, 10]),
     OP2 + r"tensor 'weights' has shape \(64, 10\), expected \(64, 64\)$"),
    ("dtype differs from manifest",
     lambda p: edit_tensors(p, lambda a: a.update(
         {"op2.weights": a["op2.weights"].astype(np.int16)})), None,
     OP2 + r"tensor 'weights' is stored as int16, but the manifest declares int8$"),
    ("dtype not the format's",
     lambda p: edit_tensors(p, lambda a: a.update(
         {"op2.weights": a["op2.weights"].astype(np.int16)})),
     _set(["ops", 2, "tensors", "weights", "dtype"], "int16"),
     OP2 + r"tensor 'weights' is stored as int16, expected int8$"),
    ("value out of range", lambda p: edit_tensors(p, lambda a: a["op2.weights"].__setitem__(
        (0, 0), 100)), None,
     OP2 + r"tensor 'weights'\[0, 0\] = 100 is outside s4 \(-8\.\.7\)$"),
    ("shift out of range", lambda p: edit_tensors(p, lambda a: a["op2.shift"].__setitem__(
        0, 64)), None, OP2 + r"tensor 'shift'\[0\] = 64 is outside u6 \(0\.\.63\)$"),
    ("in-range tensor edit", lambda p: edit_tensors(p, _flip_weight), None,
     r"^artifact op 1 \(gemm 'layers\.0'\): tensor 'weights' does not match its sha256 "
     r"\(modified after it was written\)$"),
    ("in-range bias edit", lambda p: edit_tensors(p, _bump("op3.bias", 1)), None,
     r"^artifact op 3 \(gemm 'layers\.4'\): tensor 'bias' does not match its sha256 "
     r"\(modified after it was written\)$"),
    ("in-range attribute edit", None,
     lambda manifest: manifest["ops"][0].__setitem__("multiplier",
                                                      manifest["ops"][0]["multiplier"] + 1),
     r"^artifact manifest does not match its manifest_sha256 \(modified after it was "
     r"written\)$"),
    ("in-range scale edit", None, _set(["values", "input", "scale"], 0.5),
     r"^artifact manifest does not match its manifest_sha256 \(modified after it was "
     r"written\)$"),
]


@pytest.mark.parametrize("files, manifest, message", [c[1:] for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_artifact_corruption_is_refused(tmp_path, files, manifest, message):
    """§14: every corruption gives an ``ArtifactError`` naming what is wrong, never a
    program: syntax, format, version, fields, archive, references, shapes, dtypes, ranges
    and (for edits that keep every value in range) the checksums."""
    program, _ = small_program()
    artifact.save(program, tmp_path)
    if manifest is not None:
        edit_manifest(tmp_path, manifest)
    if files is not None:
        files(tmp_path)
    with pytest.raises(artifact.ArtifactError, match=message):
        artifact.load(tmp_path)


def test_value_aware_dense_zero_rule_is_checked(tmp_path):
    """§10/§14: a dense weight under an outlier is refused (semantics §6)."""
    program, _ = small_program("value_aware")
    artifact.save(program, tmp_path)

    def clash(arrays):
        outliers = arrays["op1.weight_outliers"]
        k, n = (int(i) for i in np.argwhere(outliers != 0)[0])
        arrays["op1.weights"][k, n] = 1

    edit_tensors(tmp_path, clash)
    with pytest.raises(artifact.ArtifactError,
                       match=r"^artifact op 1 \(gemm 'layers\.0'\): tensor 'weights'\[\d+, \d+\] "
                             r"is nonzero under an outlier \(semantics §6: the dense slot of "
                             r"an outlier is 0\)$"):
        artifact.load(tmp_path)


def test_not_an_npz_is_refused(tmp_path):
    """§14: a tensor file that is not a zip archive at all is refused."""
    program, _ = small_program()
    artifact.save(program, tmp_path)
    (tmp_path / "program.npz").write_bytes(b"not a zip file")
    with pytest.raises(artifact.ArtifactError, match=r"^artifact tensors 'program\.npz' is "
                                                      r"not a complete \.npz \(zip\) "
                                                      r"archive$"):
        artifact.load(tmp_path)


def test_pixels_outside_range_are_refused():
    """§13: ``run_integer`` refuses a pixel above ``pixel_max`` instead of clamping it."""
    program, pixels = small_program()
    with pytest.raises(ValueError, match=r"^pixels must lie in 0\.\.16$"):
        run_integer(program, pixels + 1)


def test_pool_padding_beyond_half_the_kernel_is_refused():
    """§12: a side's padding is at most half the kernel, so every window holds an input
    tap (the maximum never comes from the padding)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(3, 2, padding=1), nn.Flatten(),
                          nn.Linear(2 * 3 * 3, 3)).eval()
    program = quantize_model(model, torch.rand(8, 1, 8, 8), act_calibration="max")
    ops = list(program.ops)
    assert ops[2].padding == (1, 1)
    ops[2] = dataclasses.replace(ops[2], padding=(2, 1))
    with pytest.raises(ProgramError, match=r"^op 2 \(maxpool '1'\): field 'padding' must be at "
                       r"most half the kernel \(3, 3\), not \(2, 1\)$"):
        dataclasses.replace(program, ops=tuple(ops))
