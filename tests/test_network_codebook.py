# amaranth: UnusedElaboratable=no
# (Amaranth reads that only on line 1.) The tests of refused arguments leave unused objects.
"""SYQ codes in the network core's weight memory and its codebook decoder
(docs/network.md §17): Amaranth's simulator under random stalls against
golden.run_integer, the weight image's size from the code format, and the refusals."""

import copy
import math
import random

import numpy as np
import pytest
import torch

from olmac.cli import main
from olmac.compiler import CompileError, compile_program
from olmac.golden.program import Gemm, quantize_model, run_integer, to_pixels
from olmac.golden.syq import decode_to_int
from olmac.hw.network import CodebookMode, CodebookPath, NetworkCore, OpKind
from test_cli_network import _refused
from test_network import _core, _run_core
from test_network_parts import _run, _send, _simulate

pytestmark = pytest.mark.filterwarnings("error")


def _syq(data, **options):
    return quantize_model(data.model, data.calibration, scheme="syq", **options)


@pytest.fixture(scope="module")
def mlp_syq(mlp_data):
    """The MLP with ternary row-wise SYQ layers (quantize's default)."""
    return _syq(mlp_data)


def _gemms(program):
    return [op for op in program.ops if isinstance(op, Gemm)]


@pytest.mark.parametrize("model,granularity,idx_bits,images", [
    ("mlp", "row", 1, 2), ("mlp", "layer", 3, 1), ("cnn", "pixel", 2, 1)])
def test_core_decodes_syq_codes_bit_exactly(mlp_data, cnn_data, model, granularity, idx_bits,
                                            images):
    """Every SYQ layer's codes go through the decoder (tables loaded at each SYQ op's
    start: one codebook for the layer, one per output channel, one per kernel tap), and
    every logit equals run_integer under random stalls on both streams."""
    data = {"mlp": mlp_data, "cnn": cnn_data}[model]
    program = _syq(data, syq_granularity=granularity, syq_idx_bits=idx_bits)
    compiled = compile_program(program, width=4)
    coded = [d for d in compiled.ops if d["kind"].name == "GEMM"]
    mode = {"row": CodebookMode.ROW, "layer": CodebookMode.LAYER, "pixel": CodebookMode.PIXEL}
    # a linear layer's "pixel" codebooks are per row (docs/codebooks.md §3)
    expected = [mode[granularity] if op.layer == "conv2d" or granularity == "layer"
                else CodebookMode.ROW for op in _gemms(program)]
    assert [d["codebook"] for d in coded] == expected
    assert compiled.config.codebook_idx_bits == idx_bits
    pixels = to_pixels(data.images[:images])
    logits = _run_core(_core(compiled), compiled, pixels, pause=0.3)
    assert torch.equal(logits, run_integer(program, pixels))


@pytest.mark.parametrize("width", [4, 8])
def test_syq_weight_image_holds_codes(mlp_syq, width):
    """With the decoder, each SYQ layer of the MLP takes ``⌈K·N·(1 + idx_bits) / b⌉``
    words of codes (K, N padded to the array, ``b = width²·W`` bits of weights a word)
    plus ``⌈G·(2^idx_bits − 1) / ⌊b / (W − 1)⌋⌉`` words of tables (whole entries to a word);
    the dense image takes ``K·N / width²`` words: far more."""
    program = mlp_syq
    coded = compile_program(program, width=width)
    dense = compile_program(program, width=width, codebook=False)
    assert dense.config.codebook is None
    bits = coded.config.weight_bits
    word = width * width * bits
    expected_codes = expected_tables = expected_dense = 0
    for op in _gemms(program):
        k, n = (math.ceil(size / width) * width for size in (op.in_features, op.out_features))
        expected_codes += math.ceil(k * n * (1 + op.idx_bits) / word)
        expected_tables += math.ceil(math.prod(op.tables.shape[:-1])
                                     * (2 ** op.idx_bits - 1) / (word // (bits - 1)))
        expected_dense += k * n // (width * width)
    assert len(coded.contents["weights"]) == expected_codes + expected_tables
    assert len(dense.contents["weights"]) == expected_dense
    assert expected_codes + expected_tables < expected_dense / 1.5


def test_syq_layer_in_passes_is_decoded_by_the_compiler(mlp_data):
    """An 8-bit SYQ layer on a 4-bit array runs as weight digits, which codes cannot be
    cut into: the compiler decodes it, and the core has no decoder for it."""
    program = _syq(mlp_data, weight_bits=8, act_bits=4)
    compiled = compile_program(program, width=4, array_bits=(4, 4))
    assert compiled.config.codebook is None
    assert all(d.get("codebook", CodebookMode.DENSE) == CodebookMode.DENSE
               for d in compiled.ops)


def test_compiler_refuses_codes_the_decoder_cannot_decode(mlp_data, mlp_syq):
    """4-bit indexes are past the decoder; a codebook without a zero code is refused too;
    each line names its layer."""
    program = _syq(mlp_data, weight_bits=8, syq_idx_bits=4)
    with pytest.raises(CompileError, match=r"^op 1 \(gemm 'layers\.0'\): its SYQ codes have "
                                           r"idx_bits = 4; the core's codebook decoder takes "
                                           r"1\.\.3 with a zero code"):
        compile_program(program, width=4)
    program = copy.deepcopy(mlp_syq)
    _gemms(program)[1].tables[..., 0] = 1
    with pytest.raises(CompileError, match=r"^op \d+ \(gemm 'layers\.2'\): its SYQ codebooks "
                                           r"have no zero code"):
        compile_program(program, width=4)


def test_binary_syq_codes_decode_to_one_magnitude_per_row_and_are_refused_by_the_core(
        mlp_data):
    """``syq_idx_bits = 0`` is binary SYQ (docs/program.md §9): one sign bit per weight,
    every weight of a row ``±c`` with no zero code, so each row's decoded weights have
    one magnitude; the core's decoder (zero code built in) refuses it in one line per
    layer, naming the widths that would run."""
    program = _syq(mlp_data, weight_bits=4, syq_idx_bits=0)
    for op in _gemms(program):
        assert op.idx_bits == 0 and int(op.codes.max()) <= 1  # the sign bit alone
        rows = decode_to_int(op.codes.to(torch.int64), op.tables.to(torch.int64),
                             idx_bits=0, entry_bits=op.weight_bits - 1).reshape(
                                 op.out_features, -1)
        assert (rows.abs() == rows.abs()[:, :1]).all()
        assert (rows != 0).all()
    with pytest.raises(CompileError, match=r"^op 1 \(gemm 'layers\.0'\): its SYQ codes have "
                                           r"idx_bits = 0; .* \(quantize with syq_idx_bits "
                                           r"1\.\.3\)") as refused:
        compile_program(program, width=4)
    assert len(str(refused.value).splitlines()) == 3


def test_quantize_refuses_more_codebooks_than_the_decoder_holds(tmp_path, monkeypatch, capsys):
    """A row-wise SYQ layer of 4 097 output channels needs 4 097 codebooks, one more than
    the decoder holds: ``olmac quantize`` refuses it before writing, naming the layer and
    what makes it run."""
    (tmp_path / "wide.py").write_text(
        "from torch import nn\n\ndef model():\n"
        "    return nn.Sequential(nn.Linear(4, 4097), nn.ReLU(), nn.Linear(4097, 3))\n")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).random((16, 4)))
    monkeypatch.chdir(tmp_path)
    lines = _refused(capsys, ["quantize", "--model", "wide.py:model", "--calibration",
                              "cal.npy", "--scheme", "syq", "--out", "out"]).splitlines()
    assert lines == [
        "olmac: error: the network core (8x8) cannot run 1 op(s); nothing written",
        "olmac: error: op 1 (gemm '0'): its 4097 SYQ codebooks exceed the 4096 the core's "
        "codebook decoder holds (fewer output channels, syq_granularity 'layer', or another "
        "scheme for this layer: --layer-scheme)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,value,message", [
    ("codebook_subgroups", 4097, r"^codebook_subgroups must be an integer in 0\.\.4096, not 4097$"),
    ("codebook_idx_bits", 4, r"^codebook_idx_bits must be an integer in 1\.\.3, not 4$"),
])
def test_core_config_refuses_bad_codebook_options(option, value, message):
    options = dict(width=2, act_bits=4, weight_bits=8, max_k=8, data_depth=16, weight_depth=4,
                   param_depth=2, program_depth=4, codebook_subgroups=2)
    options[option] = value
    with pytest.raises(TypeError, match=message):
        NetworkCore.Config(**options)


def test_codebook_path_decodes_under_backpressure_and_bypasses_dense_ops():
    """The CodebookPath on its own, the array stalling at random: an SYQ op's beats leave as ``(−1)^sign · T[g][index]`` (docs/codebooks.md §4, computed
    here from the entries sent) with their activations in order, each once; a second SYQ
    op reloads other codebooks; a dense op's beats pass unchanged."""
    config = NetworkCore.Config(width=2, act_bits=4, weight_bits=4, max_k=8, data_depth=64,
                                weight_depth=32, param_depth=8, program_depth=4,
                                codebook_subgroups=3, codebook_idx_bits=2)
    dut = CodebookPath(config)
    descriptor = config.layouts["program"]
    per_word, rng = config.codebook_word_entries, random.Random(5)
    ops = []
    for mode in (CodebookMode.ROW, CodebookMode.LAYER, CodebookMode.DENSE):
        tables = [[rng.randrange(8) for _ in range(3)] for _ in range(3)]  # g × index 1..3
        entries = [value for row in tables for value in row]
        words = [sum(v << (3 * i) for i, v in enumerate(entries[s:s + per_word]))
                 for s in range(0, len(entries), per_word)]
        beats = []
        for _ in range(12):
            codes = [[rng.randrange(8) for _ in range(2)] for _ in range(2)]
            groups = [rng.randrange(3) for _ in range(2)]
            act = {"data": [rng.randrange(16) for _ in range(2)], "last": rng.randrange(2)}
            decoded = [[(-1) ** (code >> 2) * ([0] + tables[groups[col]])[code & 3]
                        for col, code in enumerate(row)] for row in codes]
            beats.append((act, codes, groups, decoded))
        ops.append((mode, words, len(entries), beats))
    layouts = {name: getattr(dut, name).payload.shape()
               for name in ("beat_act", "beat_codes", "beat_weights", "weights")}
    got = {"act": [], "weights": []}

    async def array(ctx):
        """Takes ``act`` and ``weights`` together, as the MacArray does, stalling at
        random."""
        local = random.Random(1)
        while True:
            ready = local.random() < 0.6 and ctx.get(dut.act.valid) and \
                ctx.get(dut.weights.valid)
            ctx.set(dut.act.ready, ready)
            ctx.set(dut.weights.ready, ready)
            _, _, *sampled = await ctx.tick().sample(
                dut.act.valid, dut.act.ready, dut.act.payload, dut.weights.valid,
                dut.weights.ready, dut.weights.payload)
            act_valid, act_ready, act, weights_valid, weights_ready, weights = sampled
            if act_valid and act_ready:
                assert weights_valid and weights_ready
                got["act"].append(act)
                got["weights"].append(weights)

    async def bench(ctx):
        expected = 0
        for mode, words, entries, beats in ops:
            syq = mode != CodebookMode.DENSE
            await _run(ctx, dut.control, descriptor.const({
                "kind": OpKind.GEMM, "codebook": mode, "codebook_entries": entries,
                "codebook_words": len(words) if syq else 0}))
            if syq:
                await _send(ctx, dut.beat_codebooks, words)
            for act, codes, groups, decoded in beats:
                ctx.set(dut.beat_act.payload, layouts["beat_act"].const(act))
                ctx.set(dut.beat_codes.payload, layouts["beat_codes"].const(
                    {"tile": codes, "subgroup": groups}))
                ctx.set(dut.beat_weights.payload, layouts["beat_weights"].const(
                    {"tile": decoded}))
                for port in (dut.beat_act, dut.beat_codes, dut.beat_weights):
                    ctx.set(port.valid, 1)
                await ctx.tick().until(dut.beat_act.ready)
                for port in (dut.beat_act, dut.beat_codes, dut.beat_weights):
                    ctx.set(port.valid, 0)
            expected += len(beats)
            while len(got["weights"]) < expected:  # the op ends when its beats are out
                await ctx.tick()
            ctx.set(dut.control.running, 0)
        await ctx.tick().repeat(4)

    _simulate(dut, array, bench)
    beats = [beat for op in ops for beat in op[3]]
    assert [{"data": list(a.data), "last": a.last} for a in got["act"]] == \
        [act for act, _, _, _ in beats]
    assert [[list(row) for row in w.tile] for w in got["weights"]] == \
        [decoded for _, _, _, decoded in beats]
