"""The streaming order of docs/semantics.md §4, as the testbenches read it."""

from dataclasses import dataclass

import numpy as np

__all__ = ["GemmBeats", "gemm_beats", "output_vectors", "assemble_output"]


@dataclass(frozen=True)
class GemmBeats:
    """All beats of one GEMM in stream order: ``acts`` is ``(B, lanes)``, ``last`` is
    ``(B,)`` and ``weights`` is ``(B, lanes, cols)``."""
    acts: np.ndarray
    last: np.ndarray
    weights: np.ndarray


def _tiles(count, size):
    return -(-count // size)


def gemm_beats(acts: np.ndarray, weights: np.ndarray, lanes: int, cols: int) -> GemmBeats:
    """Cut ``acts`` (M×K) and ``weights`` (K×N) into beats, zero-padding the last tiles."""
    m, k = acts.shape
    n = weights.shape[1]
    kt, nt = _tiles(k, lanes), _tiles(n, cols)
    padded_acts = np.zeros((m, kt * lanes), dtype=np.int64)
    padded_acts[:, :k] = acts
    padded_weights = np.zeros((kt * lanes, nt * cols), dtype=np.int64)
    padded_weights[:k, :n] = weights
    # beat (row, n_tile, k_tile), k_tile fastest
    act_tiles = padded_acts.reshape(m, 1, kt, lanes)
    act_tiles = np.broadcast_to(act_tiles, (m, nt, kt, lanes)).reshape(-1, lanes)
    weight_tiles = padded_weights.reshape(kt, lanes, nt, cols).transpose(2, 0, 1, 3)
    weight_tiles = np.broadcast_to(weight_tiles, (m, nt, kt, lanes, cols))
    last = np.zeros((m, nt, kt), dtype=np.int64)
    last[:, :, -1] = 1
    return GemmBeats(acts=np.ascontiguousarray(act_tiles), last=last.reshape(-1),
                     weights=np.ascontiguousarray(weight_tiles.reshape(-1, lanes, cols)))


def output_vectors(result: np.ndarray, cols: int) -> np.ndarray:
    """The output vectors (R, cols) in stream order for an M×N result; padding is zero."""
    m, n = result.shape
    nt = _tiles(n, cols)
    padded = np.zeros((m, nt * cols), dtype=np.int64)
    padded[:, :n] = result
    return padded.reshape(m * nt, cols)


def assemble_output(vectors: np.ndarray, m: int, n: int) -> np.ndarray:
    """Inverse of :func:`output_vectors`: the M×N result from the received vectors."""
    return vectors.reshape(m, -1)[:, :n]
