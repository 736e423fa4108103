"""Fast tier: the SYQ codebook decoder on Amaranth's simulator against golden.syq."""

import gc

import numpy as np
import pytest
import torch
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from olmac import golden
from olmac.golden.syq import decode_to_int, encode, init_codebook
from olmac.hw import MacArray
from olmac.hw.codebook import CodebookDecoder
from olmac.sim.codebook_stream import CodebookLayer, codebook_program, random_layers
from olmac.sim.codec import LayoutCodec
from olmac.sim.pysim import StreamSink, StreamSource
from olmac.sim.tiling import assemble_output, gemm_beats

pytestmark = pytest.mark.filterwarnings("error")

#: (idx_bits, zero): binary, ternary, and 2- and 3-bit indexes with and without a zero code.
CODEBOOKS = [(0, False), (1, True), (2, False), (2, True), (3, False), (3, True)]


def _simulate(dut, sources, sink, count, *, pause=0.0, seed=0):
    """Run ``sources`` (port, payloads) into ``dut`` until ``sink`` has ``count`` results.

    The simulation also ends, and the test fails rather than hangs, if they have not
    arrived within ten cycles per payload (a decoder that lost a reload batch would wait
    forever).
    """
    async def until_done(ctx):
        for _ in range(10 * sum(len(payloads) for _, payloads in sources) + 100):
            if len(sink.received) == count:
                return
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for index, (port, payloads) in enumerate(sources):
        sim.add_testbench(StreamSource(port, payloads, pause_probability=pause,
                                       seed=seed + index).run, background=True)
    sim.add_testbench(sink.run, background=True)
    sim.add_testbench(until_done)
    sim.run()
    # A source still waiting on `ready` (after a failure) is closed when the simulator is
    # collected; collect it now, so that happens here and not inside pytest's report.
    del sim
    gc.collect()
    assert len(sink.received) == count, f"only {len(sink.received)} of {count} results"
    return sink.received


def _decode(decoder, program, *, pause=0.0, seed=0):
    """Stream ``program`` through ``decoder``; returns the tiles (T × lanes × cols) and
    the cycles until the last one left."""
    count = len(program.tiles)
    sink = StreamSink(decoder.weights, count, pause_probability=pause, seed=seed + 10)
    received = _simulate(decoder, [(decoder.codes, program.codes),
                                   (decoder.load, program.loads)], sink, count,
                         pause=pause, seed=seed)
    tiles = LayoutCodec(decoder.weights.payload.shape()).unpack(received)
    return tiles.reshape(-1, decoder.lanes, decoder.cols), sink.cycles


@pytest.mark.parametrize("granularity", ["layer", "row", "pixel"])
@pytest.mark.parametrize("idx_bits,zero", CODEBOOKS)
def test_decoder_matches_golden(idx_bits, zero, granularity):
    """Every decoded tile equals golden's decode_to_int of its layer, for every codebook
    kind at every granularity, over layers that reload each other's subgroups, under random
    stalls on all three streams."""
    decoder = CodebookDecoder(lanes=3, cols=2, idx_bits=idx_bits, zero=zero, entry_bits=5,
                              subgroups=6, granularity=granularity)
    rng = np.random.default_rng(idx_bits * 10 + zero)
    program = codebook_program(decoder.config, random_layers(decoder.config, rng, 6), rows=2)
    tiles, _ = _decode(decoder, program, pause=0.3, seed=idx_bits)
    np.testing.assert_array_equal(tiles, program.tiles)


def test_widest_entries_and_single_subgroup():
    """u7 entries at their extremes decode to ±127 (s8, the widest array weight); one
    codebook needs zero-width subgroup ids; 1-bit entries decode to s2."""
    for entry_bits, top in ((7, 127), (1, 1)):
        decoder = CodebookDecoder(lanes=2, cols=2, idx_bits=1, zero=False,
                                  entry_bits=entry_bits, subgroups=1, granularity="layer")
        codes = torch.tensor([[0, 1], [2, 3]])
        layer = CodebookLayer(codes, torch.tensor([[[top, 0]]]))
        program = codebook_program(decoder.config, [layer])
        tiles, _ = _decode(decoder, program)
        np.testing.assert_array_equal(tiles[0], [[top, -top], [0, 0]])


def test_reloads_between_tiles():
    """A tile decodes with the tables of the reload batches requested at or before it,
    never a later one: two layers on the same subgroups with different tables, whose loads
    are always valid while the output stalls; a partial reload keeps the other entries;
    the zero code ignores loads to its index 0."""
    decoder = CodebookDecoder(lanes=2, cols=2, idx_bits=2, zero=True, entry_bits=4,
                              subgroups=2, granularity="row")
    rng = np.random.default_rng(5)
    codes = torch.from_numpy(rng.integers(0, 8, size=(2, 6)))
    first = torch.tensor([[[0, 1, 2, 3]], [[0, 4, 5, 6]]])
    second = torch.tensor([[[0, 15, 14, 13]], [[0, 12, 11, 10]]])
    program = codebook_program(decoder.config, [CodebookLayer(codes, first),
                                         CodebookLayer(codes, second),
                                         CodebookLayer(codes, first)], rows=3)
    # A partial reload before one more tile: entry 2 of subgroup 1 changes, and a load to
    # the zero code's index 0 is taken and discarded.
    load_codec = LayoutCodec(decoder.load.payload.shape())
    code_codec = LayoutCodec(decoder.codes.payload.shape())
    extra_code = code_codec.unpack(program.codes[:1])
    extra_code[0, -1] = 1
    partial = load_codec.pack([[0, 0, 15, 0], [1, 2, 15, 1]])
    after = first.squeeze(1).clone()
    after[1, 2] = 15
    expected_extra = decode_to_int(codes[:, :2].T, after[None], idx_bits=2, entry_bits=4)

    # The loads are always valid, so they wait on the tiles while the output stalls.
    count = len(program.tiles) + 1
    sink = StreamSink(decoder.weights, count, pause_probability=0.7, seed=4)
    received = _simulate(decoder, [(decoder.codes, program.codes + code_codec.pack(extra_code)),
                                   (decoder.load, program.loads + partial)], sink, count)
    tiles = LayoutCodec(decoder.weights.payload.shape()).unpack(received).reshape(-1, 2, 2)
    np.testing.assert_array_equal(tiles[:-1], program.tiles)
    np.testing.assert_array_equal(tiles[-1], expected_extra.numpy())
    assert (program.tiles[:9] != program.tiles[9:18]).any()  # the reload changed something


def test_one_tile_per_cycle():
    """Without stalls, T tiles after one reload batch of L loads leave within L + T + 3
    cycles (one tile per cycle, one cycle of latency)."""
    decoder = CodebookDecoder(lanes=4, cols=3, idx_bits=3, zero=False, entry_bits=6,
                              subgroups=3, granularity="row")
    rng = np.random.default_rng(2)
    layer = CodebookLayer(torch.from_numpy(rng.integers(0, 16, size=(3, 16))),
                          torch.from_numpy(rng.integers(0, 64, size=(3, 1, 8))))
    program = codebook_program(decoder.config, [layer], rows=10)
    tiles, cycles = _decode(decoder, program)
    np.testing.assert_array_equal(tiles, program.tiles)
    assert len(program.tiles) == 40
    assert cycles <= len(program.loads) + len(program.tiles) + 3, cycles


class _DecodedMacArray(wiring.Component):
    """A codebook decoder feeding a MacArray, as an engine would wire them."""

    def __init__(self, decoder, array):
        self._decoder, self._array = decoder, array
        super().__init__({
            "codes": In(decoder.codes.signature.flip()),
            "load": In(decoder.load.signature.flip()),
            "act": In(array.act.signature.flip()),
            "acc": Out(array.acc.signature),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder, m.submodules.array = self._decoder, self._array
        wiring.connect(m, self._decoder.weights, self._array.weights)
        wiring.connect(m, wiring.flipped(self.codes), self._decoder.codes)
        wiring.connect(m, wiring.flipped(self.load), self._decoder.load)
        wiring.connect(m, wiring.flipped(self.act), self._array.act)
        wiring.connect(m, self._array.acc, wiring.flipped(self.acc))
        return m


@pytest.mark.parametrize("granularity,idx_bits,zero,shape", [
    ("layer", 0, False, (5, 11)),
    ("row", 1, True, (5, 11)),
    ("pixel", 3, True, (5, 2, 3, 3)),
])
def test_decoder_feeds_mac_array(granularity, idx_bits, zero, shape):
    """Codes golden.syq.encode made from float weights, decoded in hardware and multiplied
    in a MacArray, give golden.gemm(acts, decode_to_int(...)) exactly, under stalls."""
    lanes, cols, rows, entry_bits = 4, 2, 3, 5
    torch.manual_seed(len(shape) + idx_bits)
    weight = torch.randn(shape)
    magnitudes = init_codebook(weight, granularity=granularity, idx_bits=idx_bits, zero=zero)
    coded = encode(weight, magnitudes, zero=zero, entry_bits=entry_bits)
    subgroups = coded.tables[..., 0].numel()
    decoder = CodebookDecoder(lanes=lanes, cols=cols, idx_bits=idx_bits, zero=zero,
                              entry_bits=entry_bits, subgroups=subgroups,
                              granularity=granularity)
    n, k = shape[0], weight[0].numel()
    array = MacArray(lanes=lanes, cols=cols, act_bits=4, weight_bits=entry_bits + 1,
                     act_signed=False, max_k=k)
    dut = _DecodedMacArray(decoder, array)
    program = codebook_program(decoder.config, [CodebookLayer(coded.codes, coded.tables)],
                               rows=rows)
    acts = np.random.default_rng(1).integers(0, 16, size=(rows, k))
    beats = gemm_beats(acts, np.zeros((k, n), dtype=np.int64), lanes, cols)
    act_payloads = LayoutCodec(dut.act.payload.shape()).pack(
        np.concatenate([beats.acts, beats.last[:, None]], axis=1))
    vector_count = rows * -(-n // cols)

    sink = StreamSink(dut.acc, vector_count, pause_probability=0.3, seed=7)
    received = _simulate(dut, [(dut.codes, program.codes), (dut.load, program.loads),
                               (dut.act, act_payloads)], sink, vector_count, pause=0.3)
    result = assemble_output(LayoutCodec(dut.acc.payload.shape()).unpack(received),
                             rows, n)
    weights = decode_to_int(coded.codes, coded.tables, idx_bits=idx_bits,
                            entry_bits=entry_bits).reshape(n, k)
    expected = golden.gemm(torch.from_numpy(acts), weights.T, act_bits=4, act_signed=False,
                           weight_bits=entry_bits + 1)
    np.testing.assert_array_equal(result, expected.numpy())


# -- parameter validation ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,message", [
    (dict(lanes=0), TypeError, r"^Lane count must be an integer in 1\.\.64, not 0$"),
    (dict(cols=65), TypeError, r"^Column count must be an integer in 1\.\.64, not 65$"),
    (dict(idx_bits=4), TypeError, r"^Index width must be an integer in 0\.\.3, not 4$"),
    (dict(idx_bits=-1), TypeError, r"^Index width must be an integer in 0\.\.3, not -1$"),
    (dict(zero=1), TypeError, r"^Zero code must be a bool, not 1$"),
    (dict(idx_bits=0, zero=True), ValueError,
     r"^A zero code needs an index width of at least 1, not 0$"),
    (dict(entry_bits=0), TypeError, r"^Entry width must be an integer in 1\.\.7, not 0$"),
    (dict(entry_bits=8), TypeError, r"^Entry width must be an integer in 1\.\.7, not 8$"),
    (dict(subgroups=0), TypeError,
     r"^Subgroup count must be an integer in 1\.\.4096, not 0$"),
    (dict(subgroups=4097), TypeError,
     r"^Subgroup count must be an integer in 1\.\.4096, not 4097$"),
    (dict(granularity=None), TypeError, r"^Granularity must be a string, not None$"),
    (dict(granularity="col"), ValueError,
     r"^Granularity must be one of 'layer', 'row', 'pixel', not 'col'$"),
])
def test_decoder_refuses_bad_parameters(kwargs, error, message):
    params = dict(lanes=4, cols=4, idx_bits=1, zero=True, entry_bits=4, subgroups=4,
                  granularity="row")
    params.update(kwargs)
    with pytest.raises(error, match=message):
        CodebookDecoder.Config(**params)


def test_program_refuses_a_layer_of_another_granularity():
    """The test program names each weight's subgroup by golden's broadcast of ``tables``;
    a row-wise layer cannot be sent to a pixel-wise decoder."""
    decoder = CodebookDecoder.Config(lanes=2, cols=2, idx_bits=0, zero=False, entry_bits=3,
                                     subgroups=4, granularity="pixel")
    layer = CodebookLayer(torch.zeros(3, 2, dtype=torch.int64),
                          torch.ones(3, 1, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"^The layer's subgroups are not pixel-wise$"):
        codebook_program(decoder, [layer])
