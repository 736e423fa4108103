"""The code and codebook-load streams of SYQ weights (docs/codebooks.md), in the order
of docs/semantics.md §4, with the tiles golden expects the decoder to produce. Shared by the
decoder's testbenches and the GEMM engine's."""

from dataclasses import dataclass

import numpy as np
import torch

from olmac.golden.syq import decode_to_int
from olmac.hw.codebook import CodebookDecoder
from .codec import LayoutCodec

__all__ = ["CodebookLayer", "CodebookProgram", "codebook_program", "random_layers"]


@dataclass(frozen=True)
class CodebookLayer:
    """One layer's SYQ weights as golden holds them: ``codes`` (``out×in`` or
    ``out×in×kh×kw``) and ``tables`` (``*subgroup_shape × 2^idx_bits``, docs/codebooks.md
    §4). The decoder holds subgroup ``g`` of the layer (row-major in ``subgroup_shape``) at
    id ``base + g``."""
    codes: torch.Tensor
    tables: torch.Tensor
    base: int = 0


@dataclass(frozen=True)
class CodebookProgram:
    """Packed payloads for ``codes`` and ``load`` and the expected ``weights`` tiles
    (``T × lanes × cols``), in stream order."""
    codes: list[int]
    loads: list[int]
    tiles: np.ndarray


def _tiles(count, size):
    return -(-count // size)


def _beat_ids(decoder, ids):
    """The subgroup ids a tile carries, from the id of each of its ``lanes × cols`` weights.

    Raises
    ------
    ValueError
        If the layer's subgroups do not follow the decoder's granularity.
    """
    if decoder.granularity == "layer":
        beat, expanded = ids[0, :1], ids[:1, :1]
    elif decoder.granularity == "row":
        beat, expanded = ids[0, :], ids[:1, :]
    else:
        beat, expanded = ids[:, 0], ids[:, :1]
    if not (ids == expanded).all():
        raise ValueError(f"The layer's subgroups are not {decoder.granularity}-wise")
    return beat


def _layer_beats(decoder, layer, rows):
    """Code tiles, subgroup ids and expected tiles of one layer, in the order a
    ``MacArray`` takes them for ``rows`` activation rows: (row, N tile, K tile)."""
    lanes, cols, slots = decoder.lanes, decoder.cols, 1 << decoder.idx_bits
    n = layer.codes.shape[0]
    groups = layer.tables.reshape(-1, slots)
    # golden broadcasts `tables` against `codes`; the same broadcast names each weight's
    # subgroup, so the ids below are golden's own reading of the granularity.
    subgroup = torch.arange(len(groups)).reshape(layer.tables.shape[:-1])
    ids = (layer.base + subgroup.expand(layer.codes.shape)).reshape(n, -1).T.numpy()
    decoded = decode_to_int(layer.codes, layer.tables, idx_bits=decoder.idx_bits,
                            entry_bits=decoder.entry_bits).reshape(n, -1).T.numpy()
    k = ids.shape[0]
    kt, nt = _tiles(k, lanes), _tiles(n, cols)
    # Padding is code 0, in the subgroup of the nearest real weight so that every tile
    # keeps the granularity; it decodes to entry 0 of that subgroup's table.
    padding = ((0, kt * lanes - k), (0, nt * cols - n))
    padded_ids = np.pad(ids, padding, mode="edge")
    padded_codes = np.pad(layer.codes.reshape(n, -1).T.numpy(), padding)
    expected = decode_to_int(torch.from_numpy(padded_codes),
                             groups[torch.from_numpy(padded_ids - layer.base)],
                             idx_bits=decoder.idx_bits, entry_bits=decoder.entry_bits).numpy()
    expected[:k, :n] = decoded

    def tiled(matrix):
        tiles = matrix.reshape(kt, lanes, nt, cols).transpose(2, 0, 1, 3)
        return np.broadcast_to(tiles, (rows, nt, kt, lanes, cols)).reshape(-1, lanes, cols)

    code_tiles, id_tiles, expected_tiles = map(tiled, (padded_codes, padded_ids, expected))
    beat_ids = np.stack([_beat_ids(decoder, tile) for tile in id_tiles])
    return code_tiles, beat_ids, expected_tiles


def codebook_program(decoder: CodebookDecoder.Config, layers: list[CodebookLayer], *,
                     rows: int = 1) -> CodebookProgram:
    """Every layer's tables as one reload batch requested by its first tile, then its
    tiles repeated for ``rows`` activation rows (the order of docs/semantics.md §4).

    Raises
    ------
    ValueError
        If a layer's subgroups do not follow the decoder's granularity.
    """
    code_leaves, load_leaves, expected = [], [], []
    for layer in layers:
        code_tiles, beat_ids, tiles = _layer_beats(decoder, layer, rows)
        reload = np.zeros((len(code_tiles), 1), dtype=np.int64)
        reload[0] = 1
        code_leaves.append(np.concatenate(
            [code_tiles.reshape(len(code_tiles), -1), beat_ids, reload], axis=1))
        expected.append(tiles)
        groups = layer.tables.reshape(-1, 1 << decoder.idx_bits).numpy()
        subgroup, index = np.indices(groups.shape).reshape(2, -1)
        last = np.zeros_like(index)
        last[-1] = 1
        load_leaves.append(np.stack([layer.base + subgroup, index, groups.reshape(-1), last],
                                    axis=1))
    return CodebookProgram(
        codes=LayoutCodec(decoder.codes_layout).pack(np.concatenate(code_leaves)),
        loads=LayoutCodec(decoder.load_layout).pack(np.concatenate(load_leaves)),
        tiles=np.concatenate(expected))


def random_layers(decoder: CodebookDecoder.Config, rng: np.random.Generator,
                  count: int) -> list[CodebookLayer]:
    """``count`` layers of random codes (including the never-written ``1 << idx_bits``)
    and tables (entry 0 is 0 with a zero code), at random ids, so that later layers reload
    ids earlier ones used. Shapes are random (most leave partial tiles): ``layer`` and
    ``row`` layers are ``N×K``, ``pixel`` layers ``N×C×kh×kw`` convolution weights with
    one subgroup per tap."""
    slots, subgroups = 1 << decoder.idx_bits, decoder.subgroups
    layers = []
    for _ in range(count):
        n = int(rng.integers(1, 3 * decoder.cols + 2))
        k = int(rng.integers(1, 3 * decoder.lanes + 2))
        if decoder.granularity == "layer":
            shape, groups = (n, k), (1, 1)
        elif decoder.granularity == "row":
            n = min(n, subgroups)
            shape, groups = (n, k), (n, 1)
        else:
            kh = int(rng.integers(1, min(3, subgroups) + 1))
            kw = int(rng.integers(1, min(3, subgroups // kh) + 1))
            channels = int(rng.integers(1, 3))
            shape, groups = (n, channels, kh, kw), (1, 1, kh, kw)
        codes = torch.from_numpy(rng.integers(0, 2 * slots, size=shape))
        tables = torch.from_numpy(rng.integers(0, 1 << decoder.entry_bits,
                                               size=groups + (slots,)))
        if decoder.zero:
            tables[..., 0] = 0
        base = int(rng.integers(0, subgroups - int(np.prod(groups)) + 1))
        layers.append(CodebookLayer(codes, tables, base))
    return layers
