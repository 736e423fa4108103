"""Value-aware quantization (``golden/value_aware.py``) against docs/value_aware.md.

Expected values come from direct Python readings of the page (floats for §1–§2, which
Python rounds half to even like torch; unbounded ints for §3–§5) or from the hand-worked
numbers printed on it, never from the implementation. Each property test's docstring says
which property it checks.
"""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from olmac.golden import gemm
from olmac.golden.value_aware import (ClampCounts, ValueAwareInt, block_bits_per_value,
                                block_word_bits, fake_quantize_value_aware,
                                list_bits_per_value, outlier_threshold, pack_blocks,
                                to_value_aware_round_half_even, unpack_blocks,
                                value_aware_scale)

pytestmark = pytest.mark.filterwarnings("error")


# -- Direct readings of docs/value_aware.md ---------------------------------------------------

def spec_range(bits, signed):
    if signed:
        return -2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def spec_threshold(values, ratio):
    """§1 for one group: the (k+1)-th largest magnitude, k = min(floor(r·n), n - 1)."""
    magnitudes = sorted((abs(v) for v in values), reverse=True)
    k = min(math.floor(ratio * len(values)), len(values) - 1)
    if magnitudes[k] > 0:
        return magnitudes[k]
    return magnitudes[0] if magnitudes[0] > 0 else 1.0


def spec_round_half_even(ratio):
    """Python's ``round`` rounds floats half to even; ±inf (a tiny σ) stays infinite."""
    return round(ratio) if math.isfinite(ratio) else ratio


def spec_quantize(x, threshold, bits, signed, outlier_bits=16):
    """§2 for one value: ``(dense, outlier value or None, saturated)``."""
    lo, hi = spec_range(bits, signed)
    lo16, hi16 = spec_range(outlier_bits, signed)
    sigma = threshold / hi
    grid = spec_round_half_even(x / sigma)
    if (abs(x) if signed else x) > threshold:
        value = min(max(grid, lo16), hi16)
        return 0, value, value != grid
    return min(max(grid, lo), hi), None, False


def spec_gemm(acts, weights):
    """Semantics §2: ``acc[m][n] = Σ_k A[m][k]·W[k][n]`` in Python ints."""
    return [[sum(a * w for a, w in zip(row, column)) for column in zip(*weights)]
            for row in acts]


def spec_word(dense, outliers, bits, block, quota, outlier_bits):
    """§4: one block word as a Python int; ``outliers`` are (offset, value) in order."""
    position_bits = math.ceil(math.log2(block))
    word = 0
    for j, value in enumerate(dense):
        word |= (value % 2 ** bits) << (j * bits)
    for s, (offset, value) in enumerate(outliers):
        base = block * bits + s * (position_bits + outlier_bits)
        word |= offset << base | (value % 2 ** outlier_bits) << (base + position_bits)
    return word


# -- Strategies -------------------------------------------------------------------------------

# Ties, zeros and a wide spread of magnitudes (so outliers can saturate 16 bits).
REAL = st.one_of(st.floats(-1e6, 1e6, allow_subnormal=False),
                 st.floats(-10, 10, allow_subnormal=False),
                 st.sampled_from([0.0, 1.0, -1.0, 2.5, -3.0, 7.0]))
RATIO = st.one_of(st.sampled_from([0.0, 0.01, 0.03, 0.25]),
                  st.floats(0, 1, exclude_max=True))


@st.composite
def real_matrix(draw, max_rows=6, max_cols=12, unique=False):
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    if unique:  # distinct magnitudes: no ties at the threshold
        magnitudes = draw(st.lists(st.floats(0, 1e4, allow_subnormal=False), unique=True,
                                   min_size=rows * cols, max_size=rows * cols))
        signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=rows * cols,
                              max_size=rows * cols))
        flat = [m * s for m, s in zip(magnitudes, signs)]
    else:
        flat = draw(st.lists(REAL, min_size=rows * cols, max_size=rows * cols))
    return [flat[r * cols:(r + 1) * cols] for r in range(rows)]


def as_tensor(rows):
    return torch.tensor(rows, dtype=torch.float64)


def groups_of(rows, channel_dim):
    """§1 groups as lists: the whole tensor, the rows (0) or the columns (1)."""
    if channel_dim is None:
        return [[v for row in rows for v in row]]
    return [list(g) for g in (rows if channel_dim == 0 else zip(*rows))]


@st.composite
def quantizer_case(draw, with_quota=False):
    """A matrix, its §1 thresholds (or arbitrary ones) and quantizer arguments."""
    rows = draw(real_matrix())
    channel_dim = draw(st.sampled_from([None, 0, 1]))
    groups = groups_of(rows, channel_dim)
    if draw(st.booleans()):
        ratio = draw(RATIO)
        thresholds = [spec_threshold(g, ratio) for g in groups]
    else:
        thresholds = draw(st.lists(st.floats(1e-3, 1e3), min_size=len(groups),
                                   max_size=len(groups)))
    bits, signed = draw(st.integers(2, 8)), draw(st.booleans())
    outlier_bits = draw(st.integers(bits + 1, 16))
    kwargs = dict(signed=signed, channel_dim=channel_dim, outlier_bits=outlier_bits)
    if with_quota:
        block = draw(st.integers(2, 20))
        kwargs.update(block=block, quota=draw(st.integers(0, min(3, block))))
    threshold = (torch.tensor(thresholds[0], dtype=torch.float64) if channel_dim is None
                 else torch.tensor(thresholds, dtype=torch.float64))
    return rows, threshold, bits, kwargs


def element_thresholds(rows, threshold, channel_dim):
    """The threshold that applies to each element, as nested lists."""
    t = threshold.tolist()
    return [[t if channel_dim is None else t[r if channel_dim == 0 else c]
             for c in range(len(rows[0]))] for r in range(len(rows))]


# -- §1 thresholds ----------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(rows=real_matrix(), ratio=RATIO, channel_dim=st.sampled_from([None, 0, 1]))
def test_threshold_is_the_k_plus_first_magnitude(rows, ratio, channel_dim):
    """§1: per tensor and per channel (rows for ``out×in``, columns for ``K×N``), ``T`` is
    the ``(k+1)``-th largest magnitude with ``k = min(floor(r·n), n - 1)``, or the
    fallbacks when that is 0."""
    got = outlier_threshold(as_tensor(rows), ratio, channel_dim=channel_dim)
    expected = [spec_threshold(g, ratio) for g in groups_of(rows, channel_dim)]
    assert got.tolist() == (expected[0] if channel_dim is None else expected)


@settings(max_examples=50, deadline=None)
@given(rows=real_matrix(), ratio=RATIO)
def test_threshold_layouts_agree(rows, ratio):
    """§1: the output channel of a ``K×N`` weight (``channel_dim=1``) and of its torch
    ``Linear`` layout ``N×K`` (``channel_dim=0``) get the same thresholds."""
    x = as_tensor(rows)
    assert torch.equal(outlier_threshold(x, ratio, channel_dim=1),
                       outlier_threshold(x.T.contiguous(), ratio, channel_dim=0))


@settings(max_examples=100, deadline=None)
@given(rows=real_matrix(unique=True), ratio=RATIO, channel_dim=st.sampled_from([None, 0, 1]))
def test_outlier_count_matches_the_ratio(rows, ratio, channel_dim):
    """§1/§2: with distinct magnitudes each group (tensor or channel) has exactly
    ``k = min(floor(r·n), n - 1)`` outliers (or none when the fallback applies)."""
    x = as_tensor(rows)
    threshold = outlier_threshold(x, ratio, channel_dim=channel_dim)
    q, _ = to_value_aware_round_half_even(x, threshold, 4, channel_dim=channel_dim)
    mask = (q.sparse != 0).tolist()
    for group, flags in zip(groups_of(rows, channel_dim), groups_of(mask, channel_dim)):
        k = min(math.floor(ratio * len(group)), len(group) - 1)
        nonzero = sum(v != 0 for v in group)
        assert sum(flags) == (k if nonzero > k else 0)


@pytest.mark.parametrize("values, ratio, threshold, outliers", [
    # k = 2, but the 2nd and 3rd magnitudes tie at T = 3: only the one above T is an outlier.
    ([5.0, 3.0, -3.0, 1.0], 0.5, 3.0, 1),
    # k = 2, three values tie at the top: T = 3 and none is above it.
    ([3.0, -3.0, 3.0, 1.0], 0.5, 3.0, 0),
    # k = 1, a_2 = 0: T falls back to the largest magnitude, no outlier.
    ([0.0, -6.0, 0.0, 0.0], 0.25, 6.0, 0),
    # All zero: T = 1.
    ([0.0, 0.0], 0.0, 1.0, 0),
    # r = 0: the max-abs threshold.
    ([0.5, -9.0, 2.0], 0.0, 9.0, 0),
    # r = 3 %, n = 100: 0.03·100 = 3.0 in float64, k = 3.
    ([float(v) for v in range(100)], 0.03, 96.0, 3),
])
def test_threshold_ties_and_fallbacks(values, ratio, threshold, outliers):
    """§1 at hand-worked cases: ties at ``T`` stay dense, and the fallbacks of ``T``."""
    x = torch.tensor(values, dtype=torch.float64)
    got = outlier_threshold(x, ratio)
    assert got.item() == threshold
    q, _ = to_value_aware_round_half_even(x, got, 4)
    assert len(q.positions) == outliers


# -- §2 quantizer ----------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(case=quantizer_case())
def test_quantizer_matches_section_2(case):
    """§2: dense values in ``s<b>``/``u<b>`` and zero under outliers, outliers exactly the
    values above ``T`` with their grid value clamped to the outlier format, saturations
    counted, positions ascending, ``recombined = dense + sparse``."""
    rows, threshold, bits, kwargs = case
    q, counts = to_value_aware_round_half_even(as_tensor(rows), threshold, bits, **kwargs)
    signed, outlier_bits = kwargs["signed"], kwargs["outlier_bits"]
    flat = [v for row in rows for v in row]
    flat_t = [t for row in element_thresholds(rows, threshold, kwargs["channel_dim"])
              for t in row]
    spec = [spec_quantize(x, t, bits, signed, outlier_bits) for x, t in zip(flat, flat_t)]
    assert q.dense.dtype == torch.int64 and q.dense.shape == (len(rows), len(rows[0]))
    assert q.dense.reshape(-1).tolist() == [d for d, _, _ in spec]
    assert q.positions.tolist() == [i for i, (_, v, _) in enumerate(spec) if v is not None]
    assert q.values.tolist() == [v for _, v, _ in spec if v is not None]
    assert counts == ClampCounts(saturated=sum(s for _, _, s in spec), over_quota=0)
    lo, hi = spec_range(bits, signed)
    lo16, hi16 = spec_range(outlier_bits, signed)
    assert all(lo <= d <= hi for d in q.dense.reshape(-1).tolist())
    assert all(lo16 <= v <= hi16 and v != 0 for v in q.values.tolist())
    expected = [d if v is None else v for d, v, _ in spec]
    assert q.recombined.reshape(-1).tolist() == expected
    assert torch.equal(q.recombined, q.dense + q.sparse)


@settings(max_examples=150, deadline=None)
@given(case=quantizer_case(with_quota=True))
def test_quota_keeps_the_largest_outliers_of_each_block(case):
    """§4 overflow policy: each block of the row-major flattening keeps its ``Q`` largest
    outliers in grid units (ties to the lower position); the others are quantized into the
    dense range, and their number is reported as ``over_quota``."""
    rows, threshold, bits, kwargs = case
    block, quota, signed = kwargs["block"], kwargs["quota"], kwargs["signed"]
    q, counts = to_value_aware_round_half_even(as_tensor(rows), threshold, bits, **kwargs)
    flat = [v for row in rows for v in row]
    flat_t = [t for row in element_thresholds(rows, threshold, kwargs["channel_dim"])
              for t in row]
    hi = spec_range(bits, signed)[1]
    candidates = [i for i, (x, t) in enumerate(zip(flat, flat_t))
                  if (abs(x) if signed else x) > t]
    kept = []
    for start in range(0, len(flat), block):
        in_block = [i for i in candidates if start <= i < start + block]
        in_block.sort(key=lambda i: (-abs(flat[i] / (flat_t[i] / hi)), i))
        kept += sorted(in_block[:quota])
    assert q.positions.tolist() == sorted(kept)
    assert counts.over_quota == len(candidates) - len(kept)
    lo = spec_range(bits, signed)[0]
    for i in set(candidates) - set(kept):
        grid = spec_round_half_even(flat[i] / (flat_t[i] / hi))
        assert q.dense.reshape(-1)[i].item() == min(max(grid, lo), hi)


@settings(max_examples=100, deadline=None)
@given(case=quantizer_case())
def test_fake_quantize_is_scale_times_recombined(case):
    """§6: the float view is ``σ · (dense + sparse)``; away from saturation each value is
    within ``σ/2`` of ``x`` (dense values and outliers alike; unsigned: for ``x >= 0``)."""
    rows, threshold, bits, kwargs = case
    x = as_tensor(rows)
    got = fake_quantize_value_aware(x, threshold, bits, **kwargs)
    q, _ = to_value_aware_round_half_even(x, threshold, bits, **kwargs)
    hi = spec_range(bits, kwargs["signed"])[1]
    sigma = [[t / hi for t in row]
             for row in element_thresholds(rows, threshold, kwargs["channel_dim"])]
    lo16, hi16 = spec_range(kwargs["outlier_bits"], kwargs["signed"])
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            integer = q.recombined[r, c].item()
            assert got[r, c].item() == integer * sigma[r][c]
            if lo16 < integer < hi16 and (kwargs["signed"] or value >= 0):
                assert abs(got[r, c].item() - value) <= sigma[r][c] / 2 * (1 + 1e-9)


# -- §3 integer reference ---------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(acts=real_matrix(max_rows=4, max_cols=8), data=st.data(),
       act_bits=st.integers(2, 8), weight_bits=st.integers(2, 8), act_signed=st.booleans(),
       ratio=st.sampled_from([0.1, 0.25, 0.4]))
def test_gemm_of_recombined_splits_into_dense_and_sparse_parts(acts, data, act_bits,
                                                               weight_bits, act_signed,
                                                               ratio):
    """§3: the exact GEMM of the recombined tensors equals ``golden.gemm`` of the dense
    parts plus the outlier contributions computed separately from the sparse lists
    (``sparse_A·dense_W`` and ``(dense_A + sparse_A)·sparse_W``)."""
    k = len(acts[0])
    n = data.draw(st.integers(1, 5))
    weights = data.draw(st.lists(st.lists(REAL, min_size=n, max_size=n), min_size=k,
                                 max_size=k))
    a, w = as_tensor(acts), as_tensor(weights)
    qa, _ = to_value_aware_round_half_even(a, outlier_threshold(a, ratio), act_bits,
                                           signed=act_signed)
    qw, _ = to_value_aware_round_half_even(w, outlier_threshold(w, ratio, channel_dim=1),
                                           weight_bits, channel_dim=1)
    full_a, full_w = qa.recombined.tolist(), qw.recombined.tolist()
    expected = spec_gemm(full_a, full_w)
    acc = gemm(qa.dense, qw.dense, act_bits=act_bits, act_signed=act_signed,
               weight_bits=weight_bits).tolist()
    dense_w = qw.dense.tolist()
    for position, value in zip(qa.positions.tolist(), qa.values.tolist()):
        m, kk = divmod(position, k)
        for col in range(n):
            acc[m][col] += value * dense_w[kk][col]
    for position, value in zip(qw.positions.tolist(), qw.values.tolist()):
        kk, col = divmod(position, n)
        for m in range(len(acts)):
            acc[m][col] += full_a[m][kk] * value
    assert acc == expected
    assert (qa.recombined @ qw.recombined).tolist() == expected


# -- §4 block storage -------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(case=quantizer_case(with_quota=True))
def test_pack_unpack_round_trip(case):
    """§4: ``unpack_blocks(pack_blocks(q))`` gives back the dense values, positions and
    outlier values exactly; the words are one row of 32-bit limbs per block."""
    rows, threshold, bits, kwargs = case
    q, _ = to_value_aware_round_half_even(as_tensor(rows), threshold, bits, **kwargs)
    block, quota = kwargs["block"], kwargs["quota"]
    words = pack_blocks(q, block=block, quota=quota)
    numel = len(rows) * len(rows[0])
    word_bits = block_word_bits(bits, block=block, quota=quota,
                                outlier_bits=kwargs["outlier_bits"])
    assert words.shape == (-(-numel // block), -(-word_bits // 32))
    assert ((words >= 0) & (words < 2 ** 32)).all()
    back = unpack_blocks(words, q.dense.shape, bits, kwargs["signed"], block=block,
                         quota=quota, outlier_bits=kwargs["outlier_bits"])
    assert torch.equal(back.dense, q.dense)
    assert torch.equal(back.positions, q.positions)
    assert torch.equal(back.values, q.values)


@settings(max_examples=150, deadline=None)
@given(case=quantizer_case(with_quota=True))
def test_pack_layout_matches_section_4(case):
    """§4: each block word is the little-endian bit string of the table (dense fields,
    then ``Q`` slots of offset and value in position order, unused slots zero)."""
    rows, threshold, bits, kwargs = case
    q, _ = to_value_aware_round_half_even(as_tensor(rows), threshold, bits, **kwargs)
    block, quota, outlier_bits = kwargs["block"], kwargs["quota"], kwargs["outlier_bits"]
    words = pack_blocks(q, block=block, quota=quota).tolist()
    dense = q.dense.reshape(-1).tolist()
    outliers = list(zip(q.positions.tolist(), q.values.tolist()))
    for index, limbs in enumerate(words):
        start = index * block
        in_block = [(p - start, v) for p, v in outliers if start <= p < start + block]
        padded = dense[start:start + block] + [0] * (start + block - len(dense))
        expected = spec_word(padded, in_block, bits, block, quota, outlier_bits)
        assert sum(limb << (32 * i) for i, limb in enumerate(limbs)) == expected


def test_pack_worked_example():
    """§4: the worked example of the page, ``1, -2, 9, 3`` in one 4-value block."""
    q, _ = to_value_aware_round_half_even(torch.tensor([1.0, -2.0, 9.0, 3.0]),
                                          torch.tensor(7.0), 4, quota=1, block=4)
    assert pack_blocks(q, block=4, quota=1).tolist() == [[2502881, 0]]
    assert 0x30E1 + 2 * 2 ** 16 + 9 * 2 ** 18 == 2502881


# -- §5 effective bits ------------------------------------------------------------------------

@pytest.mark.parametrize("call, expected", [
    # (B·b + Q·(6 + 16)) / B with B = 64: (256 + 22)/64 and (256 + 44)/64.
    (lambda: block_bits_per_value(4, block=64, quota=1), 4.34375),
    (lambda: block_bits_per_value(4, block=64, quota=2), 4.6875),
    (lambda: block_bits_per_value(2, block=64, quota=1), 150 / 64),
    (lambda: block_bits_per_value(4, block=64, quota=0), 4.0),
    (lambda: block_word_bits(4, block=64, quota=2), 300),
    # b + p·(16 + 16).
    (lambda: list_bits_per_value(4, 0.01), 4.32),
    (lambda: list_bits_per_value(4, 1 / 64), 4.5),
    (lambda: list_bits_per_value(4, 0.03), 4.96),
])
def test_effective_bits_hand_numbers(call, expected):
    """§5: the hand-computed figures of the page (4.34 and 4.69 for the block format,
    4.32 for the list at 1 %)."""
    assert call() == pytest.approx(expected, rel=1e-12)


def test_four_bit_one_percent_meets_the_goal():
    """§5: 4-bit + 1 % outliers stays at or under 4.5 bits per value in both formats."""
    assert block_bits_per_value(4, block=64, quota=1) <= 4.5
    assert list_bits_per_value(4, 0.01) <= 4.5


@settings(max_examples=100, deadline=None)
@given(bits=st.integers(2, 8), block=st.integers(2, 4096), data=st.data())
def test_block_bits_formula(bits, block, data):
    """§5: ``(B·b + Q·(ceil(log2 B) + o)) / B`` for every width, block size and quota."""
    quota = data.draw(st.integers(0, block))
    outlier_bits = data.draw(st.integers(bits + 1, 16))
    expected = block * bits + quota * (math.ceil(math.log2(block)) + outlier_bits)
    assert block_word_bits(bits, block=block, quota=quota,
                           outlier_bits=outlier_bits) == expected
    assert block_bits_per_value(bits, block=block, quota=quota,
                                outlier_bits=outlier_bits) == expected / block


# -- Errors -----------------------------------------------------------------------------------

X = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
T = torch.tensor(2.0)


@pytest.mark.parametrize("call, error, message", [
    (lambda: to_value_aware_round_half_even(X, T, 9), TypeError,
     r"^Dense width must be an integer in 2\.\.8, not 9$"),
    (lambda: to_value_aware_round_half_even(X, T, 1), TypeError,
     r"^Dense width must be an integer in 2\.\.8, not 1$"),
    (lambda: to_value_aware_round_half_even(X, T, True), TypeError,
     r"^Dense width must be an integer in 2\.\.8, not True$"),
    (lambda: value_aware_scale(T, 4.0, True), TypeError,
     r"^Dense width must be an integer in 2\.\.8, not 4\.0$"),
    (lambda: block_bits_per_value(9), TypeError,
     r"^Dense width must be an integer in 2\.\.8, not 9$"),
    (lambda: outlier_threshold(X, 1.0), ValueError,
     r"^Outlier ratio must be in \[0, 1\), not 1\.0$"),
    (lambda: outlier_threshold(X, -0.01), ValueError,
     r"^Outlier ratio must be in \[0, 1\), not -0\.01$"),
    (lambda: outlier_threshold(X, float("nan")), ValueError,
     r"^Outlier ratio must be in \[0, 1\), not nan$"),
    (lambda: outlier_threshold(X, "0.01"), TypeError,
     r"^Outlier ratio must be a number in \[0, 1\), not '0\.01'$"),
    (lambda: outlier_threshold(X, 0.01, channel_dim=2), TypeError,
     r"^channel_dim must be an integer in 0\.\.1, not 2$"),
    (lambda: outlier_threshold(X.to(torch.int64), 0.01), TypeError,
     r"^x must be a floating-point tensor, not torch\.int64$"),
    (lambda: outlier_threshold(torch.zeros(0), 0.01), ValueError,
     r"^x must hold at least one value, not shape \(0,\)$"),
    (lambda: outlier_threshold(torch.tensor([1.0, float("inf")]), 0.01), ValueError,
     r"^x must be finite$"),
    (lambda: to_value_aware_round_half_even(X, torch.tensor([1.0, 2.0, 3.0]), 4,
                                            channel_dim=1), ValueError,
     r"^threshold must have shape \(2,\) \(one entry per channel\), not \(3,\)$"),
    (lambda: to_value_aware_round_half_even(X, torch.tensor([1.0, 2.0]), 4), ValueError,
     r"^threshold must have shape \(\) \(one entry per tensor\), not \(2,\)$"),
    (lambda: to_value_aware_round_half_even(X, torch.tensor(0.0), 4), ValueError,
     r"^threshold must be positive and finite, not 0\.0$"),
    # 2^-149, the least float32 subnormal: T/127 rounds to 0.
    (lambda: to_value_aware_round_half_even(X, torch.tensor(2.0 ** -149), 8), ValueError,
     r"^threshold \[1\.401298464324817e-45\] is too small: the scale underflows to 0 in "
     r"torch\.float32$"),
    (lambda: to_value_aware_round_half_even(X, T, 4, outlier_bits=4), ValueError,
     r"^Outlier width 4 must exceed the dense width 4$"),
    (lambda: to_value_aware_round_half_even(X, T, 4, outlier_bits=17), TypeError,
     r"^Outlier width must be an integer in 3\.\.16, not 17$"),
    (lambda: to_value_aware_round_half_even(X, T, 4, quota=1, block=1), TypeError,
     r"^Block size must be an integer in 2\.\.4096, not 1$"),
    (lambda: to_value_aware_round_half_even(X, T, 4, quota=65), TypeError,
     r"^Outlier quota must be an integer in 0\.\.64, not 65$"),
    (lambda: list_bits_per_value(4, 1.5), ValueError,
     r"^Outlier fraction must be in \[0, 1\], not 1\.5$"),
    (lambda: unpack_blocks(torch.zeros(2, 2, dtype=torch.int64), (4,), 4, True, block=4),
     ValueError, r"^words must have shape \(1, 2\) for 4 values, not \(2, 2\)$"),
    (lambda: unpack_blocks(torch.tensor([[-1, 0]]), (4,), 4, True, block=4), ValueError,
     r"^words\[0, 0\] = -1 is outside u32 \(0\.\.4294967295\)$"),
])
def test_errors_name_the_parameter_and_value(call, error, message):
    """Widths 2..8 (outliers 3..16 and wider than the dense width), ratios in ``[0, 1)``,
    block sizes, quotas, thresholds and word shapes: each refusal names the parameter and
    shows the value and the allowed range."""
    with pytest.raises(error, match=message):
        call()


def test_pack_refuses_a_block_over_its_quota():
    """§4: a block with more outliers than slots is refused, never truncated."""
    q, _ = to_value_aware_round_half_even(torch.tensor([9.0, 1.0, 9.0, -9.0]),
                                          torch.tensor(7.0), 4)
    assert q.positions.tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match=r"^Block 1 holds 2 outliers, more than the "
                                         r"quota 1$"):
        pack_blocks(q, block=2, quota=1)


@pytest.mark.parametrize("dense, positions, values, message", [
    ([1, 0], [0], [9], r"^The dense value under an outlier must be 0$"),
    ([0, 0], [0], [0], r"^An outlier value must not be 0 \(0 marks an empty slot\)$"),
    ([0, 0], [1, 0], [9, 9], r"^positions must be ascending indices into 2 values$"),
    ([8, 0], [1], [9], r"^dense\[0\] = 8 is outside s4 \(-8\.\.7\)$"),
    ([0, 0], [1], [40000], r"^outlier values\[0\] = 40000 is outside s16 "
                           r"\(-32768\.\.32767\)$"),
])
def test_pack_refuses_broken_invariants(dense, positions, values, message):
    """§2/§4: ``pack_blocks`` checks the invariants of the split before storing it."""
    q = ValueAwareInt(torch.tensor(dense), torch.tensor(positions), torch.tensor(values),
                      bits=4, signed=True)
    with pytest.raises(ValueError, match=message):
        pack_blocks(q, block=2, quota=2)
