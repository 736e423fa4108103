"""SYQ codebook weights (``golden/syq.py``) against docs/codebooks.md §3–§5.

Expected values come from Python readings of the page (element by element, in loops) and
from hand-worked cases. Weights and magnitudes in the property tests are multiples of 1/64,
so every distance the nearest-magnitude rule compares is exact in float32 and a tie means
the same thing to the reading and to the implementation. Each property test's docstring
says which property it checks.
"""

import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from olmac.golden.syq import (ActivationQuantizer, SyqLinear, codebook_size, decode_to_int, encode,
                        freeze, init_codebook, pack_codes, subgroup_shape,
                        syq_gemm, syq_model, syq_quantize, ternary_threshold, unpack_codes)
from olmac.models.digits import DigitsMLP, accuracy, load_digits_split
from olmac.models.training import train

pytestmark = pytest.mark.filterwarnings("error")

#: (idx_bits, zero): binary, ternary and wider symmetric codebooks with and without 0.
CODEBOOKS = [(0, False), (1, True), (1, False), (2, True), (2, False), (3, True)]
GRANULARITIES = ["layer", "row", "pixel"]


@st.composite
def weights(draw):
    """A 2-D (``out×in``) or 4-D (``out×in×kh×kw``) weight of multiples of 1/64."""
    shape = draw(st.sampled_from([
        (draw(st.integers(1, 4)), draw(st.integers(1, 6))),
        (draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 3)),
         draw(st.integers(1, 3)))]))
    count = 1
    for size in shape:
        count *= size
    values = draw(st.lists(st.integers(-128, 128), min_size=count, max_size=count))
    return torch.tensor(values, dtype=torch.float32).reshape(shape) / 64


@st.composite
def layers(draw):
    """``(weight, magnitudes, zero, granularity)`` with magnitudes in 1/64..2."""
    weight = draw(weights())
    idx_bits, zero = draw(st.sampled_from(CODEBOOKS))
    granularity = draw(st.sampled_from(GRANULARITIES))
    shape = subgroup_shape(tuple(weight.shape), granularity)
    size = codebook_size(idx_bits, zero)
    count = size
    for extent in shape:
        count *= extent
    values = draw(st.lists(st.integers(1, 128), min_size=count, max_size=count))
    magnitudes = torch.tensor(values, dtype=torch.float32).reshape(shape + (size,)) / 64
    return weight, magnitudes, zero, granularity


def group_of(position, shape):
    """§3: the subgroup of an element is its position with every shared axis set to 0."""
    return tuple(i if extent != 1 else 0 for i, extent in zip(position, shape))


def spec_code(weight, magnitudes, zero, delta):
    """§3–§4 element by element: ``{position: code}``, nearest magnitude, ties low."""
    shape = tuple(magnitudes.shape[:-1])
    idx_bits = (magnitudes.shape[-1] + int(zero)).bit_length() - 1
    codes = {}
    for position in itertools.product(*map(range, weight.shape)):
        w = weight[position].item()
        book = magnitudes[group_of(position, shape)].tolist()
        if zero and abs(w) <= delta:
            codes[position] = 0
            continue
        j = min(range(len(book)), key=lambda k: (abs(abs(w) - book[k]), k))
        codes[position] = (int(w < 0) << idx_bits) | (j + int(zero))
    return codes


def spec_decode(code, row, idx_bits):
    """§4: ``(-1)^sign · table[index]``, ``sign = code >> k``, ``index = code & (2^k-1)``."""
    value = row[code & ((1 << idx_bits) - 1)]
    return -value if code >> idx_bits else value


# -- §3 subgroups and the quantizer ---------------------------------------------------------

@pytest.mark.parametrize("shape, granularity, expected", [
    ((8, 16), "layer", (1, 1)), ((8, 16), "row", (8, 1)), ((8, 16), "pixel", (8, 1)),
    ((8, 3, 5, 5), "layer", (1, 1, 1, 1)), ((8, 3, 5, 5), "row", (8, 1, 1, 1)),
    ((8, 3, 5, 5), "pixel", (1, 1, 5, 5)),
])
def test_subgroup_shapes_are_section_3(shape, granularity, expected):
    """§3: one codebook per layer, per output channel, or per kernel tap (a linear layer's
    "pixel" is row-wise)."""
    assert subgroup_shape(shape, granularity) == expected


@settings(max_examples=80, deadline=None)
@given(layer=layers(), eta=st.floats(0, 0.9))
def test_encode_is_the_python_reading_of_sections_3_and_4(layer, eta):
    """§3–§4: each code is ``(sign << idx_bits) | index`` of the nearest magnitude of the
    element's subgroup (ties to the lower index), or 0 where a zero code exists and
    ``|w| ≤ Δ``."""
    weight, magnitudes, zero, _ = layer
    got = encode(weight, magnitudes, zero=zero, eta=eta, entry_bits=7).codes
    expected = spec_code(weight, magnitudes, zero, ternary_threshold(weight, eta).item())
    assert {p: got[p].item() for p in expected} == expected


@settings(max_examples=80, deadline=None)
@given(layer=layers(), eta=st.floats(0, 0.9))
def test_ternary_threshold_rule(layer, eta):
    """§3: with a zero code a weight is 0 exactly when ``|w| ≤ η·max|W|``; otherwise (and
    always without a zero code) it keeps the sign of ``w``, with 0 counted as positive."""
    weight, magnitudes, zero, _ = layer
    q = syq_quantize(weight, magnitudes, zero=zero, eta=eta)
    delta = eta * weight.abs().max()
    assert ternary_threshold(weight, eta) == delta
    small = weight.abs() <= delta
    if zero:
        assert torch.equal(q == 0, small)
        assert torch.equal(q < 0, (weight < 0) & ~small)
    else:
        assert (q != 0).all()
        assert torch.equal(q < 0, weight < 0)


@settings(max_examples=60, deadline=None)
@given(layer=layers(), eta=st.floats(0, 0.5), data=st.data())
def test_gradients_pass_straight_through(layer, eta, data):
    """§5: ``∂Q/∂w = 1`` (the upstream gradient reaches every weight unchanged) and each
    magnitude gets the signed sum of the upstream gradient over the weights coded with it."""
    weight, magnitudes, zero, _ = layer
    weight, magnitudes = weight.requires_grad_(), magnitudes.requires_grad_()
    upstream = torch.tensor(data.draw(st.lists(
        st.integers(-8, 8), min_size=weight.numel(), max_size=weight.numel())),
        dtype=torch.float32).reshape(weight.shape)
    (syq_quantize(weight, magnitudes, zero=zero, eta=eta) * upstream).sum().backward()
    assert torch.equal(weight.grad, upstream)
    idx_bits = (magnitudes.shape[-1] + int(zero)).bit_length() - 1
    codes = spec_code(weight.detach(), magnitudes.detach(), zero,
                      ternary_threshold(weight, eta).item())
    expected = torch.zeros_like(magnitudes)
    for position, code in codes.items():
        index = (code & ((1 << idx_bits) - 1)) - int(zero)
        if index >= 0:  # not the zero code
            sign = -1 if code >> idx_bits else 1
            expected[group_of(position, magnitudes.shape[:-1]) + (index,)] += (
                sign * upstream[position])
    assert torch.equal(magnitudes.grad, expected)


# -- §4 codes, tables and decoding -----------------------------------------------------------

@pytest.mark.parametrize("idx_bits", range(5))
def test_code_format_round_trips(idx_bits):
    """§4: ``code = (sign << idx_bits) | index`` is a bijection between (sign, index) and
    ``u<idx_bits + 1>``, and ``unpack_codes`` inverts it."""
    signs, indexes = zip(*itertools.product((0, 1), range(1 << idx_bits)))
    sign, index = torch.tensor(signs), torch.tensor(indexes)
    codes = pack_codes(sign, index, idx_bits)
    assert codes.tolist() == [(s << idx_bits) | i for s, i in zip(signs, indexes)]
    assert sorted(codes.tolist()) == list(range(2 << idx_bits))
    again = unpack_codes(codes, idx_bits)
    assert torch.equal(again[0], sign) and torch.equal(again[1], index)


# Magnitudes reach 2, which u1 cannot hold at frac_bits >= 0: entry_bits starts at 2.
@settings(max_examples=60, deadline=None)
@given(layer=layers(), entry_bits=st.integers(2, 7), eta=st.floats(0, 0.5))
def test_decode_of_encode_is_the_rounded_quantized_weight(layer, entry_bits, eta):
    """§4: decoding the codes through the fixed-point tables gives
    ``round_half_even(Q(w)·2^frac_bits)`` exactly, where ``Q`` is the quantizer of §3 and
    ``frac_bits`` the largest that fits the largest magnitude."""
    weight, magnitudes, zero, _ = layer
    codes = encode(weight, magnitudes, zero=zero, eta=eta, entry_bits=entry_bits)
    q = syq_quantize(weight, magnitudes, zero=zero, eta=eta)
    decoded = decode_to_int(codes.codes, codes.tables, idx_bits=codes.idx_bits,
                            entry_bits=entry_bits)
    assert decoded.dtype == torch.int64
    assert torch.equal(decoded, torch.round(q.double() * 2.0 ** codes.frac_bits).long())
    top = (1 << entry_bits) - 1
    assert codes.tables.max() <= top
    assert codes.frac_bits == 31 or torch.round(magnitudes.max().double()
                                                * 2.0 ** (codes.frac_bits + 1)) > top


@settings(max_examples=60, deadline=None)
@given(layer=layers(), entry_bits=st.integers(1, 7), data=st.data())
def test_decode_is_the_python_reading_of_section_4(layer, entry_bits, data):
    """§4: ``decode_to_int`` is ``(-1)^sign · tables[g][index]`` for every code, with ``g``
    the code's subgroup, for any codes and any tables in ``u<entry_bits>``."""
    weight, magnitudes, zero, _ = layer
    idx_bits = (magnitudes.shape[-1] + int(zero)).bit_length() - 1
    shape = tuple(magnitudes.shape[:-1]) + (1 << idx_bits,)
    count = weight.numel()
    codes = torch.tensor(data.draw(st.lists(st.integers(0, (2 << idx_bits) - 1),
                                            min_size=count, max_size=count)))
    codes = codes.reshape(weight.shape)
    entries = 1
    for extent in shape:
        entries *= extent
    tables = torch.tensor(data.draw(st.lists(st.integers(0, (1 << entry_bits) - 1),
                                             min_size=entries, max_size=entries)))
    tables = tables.reshape(shape)
    got = decode_to_int(codes, tables, idx_bits=idx_bits, entry_bits=entry_bits)
    for position in itertools.product(*map(range, weight.shape)):
        row = tables[group_of(position, shape[:-1])].tolist()
        assert got[position].item() == spec_decode(codes[position].item(), row, idx_bits)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), idx_bits=st.integers(0, 3), entry_bits=st.integers(1, 7),
       act_bits=st.integers(2, 8), act_signed=st.booleans(), rows=st.booleans())
def test_syq_gemm_is_the_sum_of_products_of_decoded_weights(data, idx_bits, entry_bits,
                                                             act_bits, act_signed, rows):
    """§4 with docs/semantics.md §2: ``acc[m, n] = Σ_k A[m, k]·decode(codes)[n, k]``."""
    m, k, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5)), data.draw(
        st.integers(1, 3))
    lo, hi = (-2 ** (act_bits - 1), 2 ** (act_bits - 1) - 1) if act_signed else (
        0, 2 ** act_bits - 1)
    acts = [[data.draw(st.integers(lo, hi)) for _ in range(k)] for _ in range(m)]
    codes = [[data.draw(st.integers(0, (2 << idx_bits) - 1)) for _ in range(k)]
             for _ in range(n)]
    tables = [[data.draw(st.integers(0, (1 << entry_bits) - 1)) for _ in range(1 << idx_bits)]
              for _ in range(n if rows else 1)]
    got = syq_gemm(torch.tensor(acts), torch.tensor(codes), torch.tensor(tables)[:, None, :],
                   idx_bits=idx_bits, entry_bits=entry_bits, act_bits=act_bits,
                   act_signed=act_signed)
    decoded = [[spec_decode(codes[j][i], tables[j if rows else 0], idx_bits) for i in range(k)]
               for j in range(n)]
    assert got.tolist() == [[sum(acts[r][i] * decoded[j][i] for i in range(k))
                             for j in range(n)] for r in range(m)]


def test_worked_ternary_example():
    """§4 by hand: ``[0.5, -0.01, -0.3]`` with ``α = 0.4``, ``Δ = 0.025``, ``u4`` entries:
    ``frac_bits = 5`` (``0.4·32 = 12.8 → 13 ≤ 15``; ``0.4·64 = 25.6`` does not fit), the
    table is ``[0, 13]`` and the codes ``+α, 0, -α`` are ``0b01, 0b00, 0b11``."""
    codes = encode(torch.tensor([[0.5, -0.01, -0.3]]), torch.tensor([[[0.4]]]), zero=True,
                   entry_bits=4)
    assert (codes.codes.tolist(), codes.tables.tolist(), codes.frac_bits) == (
        [[1, 0, 3]], [[[0, 13]]], 5)
    assert decode_to_int(codes.codes, codes.tables, idx_bits=1,
                         entry_bits=4).tolist() == [[13, 0, -13]]
    explicit = encode(torch.tensor([[0.5]]), torch.tensor([[[0.4]]]), zero=True, entry_bits=4,
                      frac_bits=6)
    assert explicit.tables.tolist() == [[[0, 15]]]  # 25.6 saturates at the top of u4


# -- §5 codebook initialization and training ------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(weight=weights(), granularity=st.sampled_from(["row", "pixel"]),
       codebook=st.sampled_from([(0, False), (1, False), (2, False)]))
def test_codebooks_are_initialized_per_subgroup(weight, granularity, codebook):
    """§5: k-means runs on each subgroup's weights alone (without a zero code, whose
    threshold is layer-wide, the subgroups do not interact)."""
    idx_bits, zero = codebook
    whole = init_codebook(weight, granularity=granularity, idx_bits=idx_bits, zero=zero)
    shape = subgroup_shape(tuple(weight.shape), granularity)
    for group in itertools.product(*map(range, shape)):
        part = weight[tuple(slice(i, i + 1) if extent != 1 else slice(None)
                            for i, extent in zip(group, shape))]
        alone = init_codebook(part, granularity="layer", idx_bits=idx_bits, zero=zero)
        assert torch.allclose(whole[group], alone.flatten(), rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(weight=weights(), eta=st.floats(0, 0.5))
def test_one_magnitude_initializes_to_the_mean_of_the_coded_weights(weight, eta):
    """§5: with one magnitude (binary, ternary) the k-means centre is ``mean |w|`` over
    the weights that code nonzero: all for binary, ``|w| > Δ`` for ternary."""
    binary = init_codebook(weight, granularity="layer", idx_bits=0, zero=False)
    assert binary.item() == pytest.approx(weight.abs().mean().item(), rel=1e-6)
    kept = weight.abs()[weight.abs() > ternary_threshold(weight, eta)]
    ternary = init_codebook(weight, granularity="layer", idx_bits=1, zero=True, eta=eta)
    assert ternary.item() == pytest.approx(kept.mean().item() if kept.numel() else 0.0,
                                           rel=1e-6)


@pytest.fixture(scope="module")
def digits():
    """A small float digits MLP (32 hidden units, 150 epochs) and its data."""
    split = load_digits_split()
    model = train(DigitsMLP(hidden=32), split.x_train, split.y_train, epochs=150)
    return split, model


@pytest.mark.parametrize("keep_first_last, expected", [(True, 1), (False, 3)])
def test_first_and_last_layers_stay_float_with_the_flag(digits, keep_first_last, expected):
    """§5: SYQ keeps the first and last layers full precision; the flag turns that off.
    Every linear layer's input is fake-quantized either way."""
    _, model = digits
    qat = syq_model(model.layers, idx_bits=1, zero=True, keep_first_last=keep_first_last)
    kinds = [type(module) for module in qat]
    assert kinds.count(SyqLinear) == expected
    assert kinds.count(ActivationQuantizer) == 3
    assert kinds.count(nn.Linear) == 3 - expected


@pytest.mark.parametrize("idx_bits, zero", [(0, False), (1, True)])
def test_qat_trains_and_freezes_to_the_decoded_weights(digits, idx_bits, zero):
    """§4–§5: a short QAT run keeps the float model's accuracy within a few points, and
    ``freeze`` holds exactly ``decode_to_int(encode(...))·2^(-frac_bits)``, whose
    accuracy matches the QAT model's."""
    split, model = digits
    qat = syq_model(model.layers, idx_bits=idx_bits, zero=zero, granularity="row",
                    keep_first_last=False)
    train(qat, split.x_train, split.y_train, epochs=60, lr=3e-3, initialize=False)
    trained = accuracy(qat, split.x_test, split.y_test)
    assert trained > accuracy(model, split.x_test, split.y_test) - 0.05
    frozen = freeze(qat, entry_bits=7)
    for layer, linear in zip(qat, frozen):
        if isinstance(layer, SyqLinear):
            codes = layer.encode(7)
            decoded = decode_to_int(codes.codes, codes.tables, idx_bits=codes.idx_bits,
                                    entry_bits=7)
            assert torch.equal(linear.weight * 2.0 ** codes.frac_bits, decoded.float())
    assert accuracy(frozen, split.x_test, split.y_test) == pytest.approx(trained, abs=0.01)


def test_activation_quantizer_keeps_its_training_scale():
    """§5: in training the scale is ``max x / (2^8 - 1)`` of the batch; in evaluation the
    kept scale is used and values above it saturate; the round passes gradients through."""
    quantizer = ActivationQuantizer(8)
    x = torch.tensor([0.0, 0.3, 2.55], requires_grad=True)
    y = quantizer(x)
    assert quantizer.scale.item() == pytest.approx(0.01)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    quantizer.eval()
    assert quantizer(torch.tensor([5.1, 0.014])).tolist() == pytest.approx([2.55, 0.01])


# -- errors ------------------------------------------------------------------------------------

W = torch.ones(2, 3)
ALPHA = torch.ones(1, 1, 1)


@pytest.mark.parametrize("call, error, message", [
    (lambda: subgroup_shape((2, 3), "kernel"), ValueError,
     r"^granularity must be one of 'layer', 'row', 'pixel', not 'kernel'$"),
    (lambda: subgroup_shape((2, 3, 4), "row"), ValueError,
     r"^weight must be 2-D \(out×in\) or 4-D \(out×in×kh×kw\), not 3-D$"),
    (lambda: ternary_threshold(W, 1.0), ValueError, r"^eta must be in \[0, 1\), not 1\.0$"),
    (lambda: ternary_threshold(W, -0.05), ValueError, r"^eta must be in \[0, 1\), not -0\.05$"),
    (lambda: ternary_threshold(W, "0.05"), TypeError,
     r"^eta must be a real number in \[0, 1\), not '0\.05'$"),
    (lambda: codebook_size(5, False), TypeError,
     r"^idx_bits must be an integer in 0\.\.4, not 5$"),
    (lambda: codebook_size(0, True), ValueError, r"^A zero code needs idx_bits >= 1, not 0$"),
    (lambda: init_codebook(W, granularity="row", idx_bits=-1, zero=False), TypeError,
     r"^idx_bits must be an integer in 0\.\.4, not -1$"),
    (lambda: syq_quantize(W, torch.ones(1, 1, 2), zero=True), ValueError,
     r"^magnitudes has 2 entries per subgroup; with zero=True it must have 2\^idx_bits - 1 "
     r"for idx_bits in 1\.\.4$"),
    (lambda: encode(W, torch.ones(1, 1, 3), zero=False, entry_bits=4), ValueError,
     r"^magnitudes has 3 entries per subgroup; with zero=False it must have 2\^idx_bits "
     r"for idx_bits in 0\.\.4$"),
    (lambda: syq_quantize(W, torch.ones(3, 1, 1), zero=True), ValueError,
     r"^magnitudes must have shape \(\*subgroup_shape, m\) for a weight of shape \(2, 3\), "
     r"not \(3, 1, 1\)$"),
    (lambda: encode(W, ALPHA, zero=True, entry_bits=8), TypeError,
     r"^entry_bits must be an integer in 1\.\.7, not 8$"),
    (lambda: encode(W, ALPHA, zero=True, entry_bits=0), TypeError,
     r"^entry_bits must be an integer in 1\.\.7, not 0$"),
    (lambda: encode(W, ALPHA, zero=True, entry_bits=4, frac_bits=32), TypeError,
     r"^frac_bits must be an integer in 0\.\.31, not 32$"),
    (lambda: encode(W, ALPHA * 15.6, zero=True, entry_bits=4), ValueError,
     r"^A codebook entry 15\.6\d* does not fit u4 with frac_bits >= 0$"),
    (lambda: encode(W, ALPHA, zero=True, eta=2, entry_bits=4), ValueError,
     r"^eta must be in \[0, 1\), not 2$"),
    (lambda: decode_to_int(torch.tensor([[4]]), torch.zeros(1, 1, 2, dtype=torch.int64),
                           idx_bits=1, entry_bits=4), ValueError,
     r"^codes\[0, 0\] = 4 is outside u2 \(0\.\.3\)$"),
    (lambda: decode_to_int(torch.tensor([[1]]), torch.tensor([[[0, 16]]]), idx_bits=1,
                           entry_bits=4), ValueError,
     r"^tables\[0, 0, 1\] = 16 is outside u4 \(0\.\.15\)$"),
    (lambda: decode_to_int(torch.tensor([[1]]), torch.zeros(1, 1, 3, dtype=torch.int64),
                           idx_bits=1, entry_bits=4), ValueError,
     r"^tables must have shape \(\*subgroup_shape, 2\) for codes of shape \(1, 1\), "
     r"not \(1, 1, 3\)$"),
    (lambda: decode_to_int(torch.tensor([[1.0]]), torch.zeros(1, 1, 2, dtype=torch.int64),
                           idx_bits=1, entry_bits=4), TypeError,
     r"^codes must be an integer tensor, not torch\.float32$"),
    (lambda: pack_codes(torch.tensor([2]), torch.tensor([0]), 1), ValueError,
     r"^sign\[0\] = 2 is outside u1 \(0\.\.1\)$"),
    (lambda: pack_codes(torch.tensor([1]), torch.tensor([2]), 1), ValueError,
     r"^index\[0\] = 2 is outside u1 \(0\.\.1\)$"),
    (lambda: ActivationQuantizer(9), TypeError, r"^bits must be an integer in 2\.\.8, not 9$"),
])
def test_errors_name_the_parameter_and_the_allowed_range(call, error, message):
    """§3–§5: granularities, η, index and entry widths, codes and tables are checked, and
    each refusal names the parameter, the allowed range and the value."""
    with pytest.raises(error, match=message):
        call()
