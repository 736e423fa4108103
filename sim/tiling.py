"""The streaming order of docs/semantics.md §4, as the testbenches read it."""

from dataclasses import dataclass

import numpy as np

__all__ = ["GemmBeats", "gemm_beats", "output_vectors", "assemble_output"]


@dataclass(frozen=True)
class GemmBeats:
    """All beats of one GEMM in stream order: ``acts`` is ``(B, lanes)``, ``last`` is
    ``(B,)`` and ``weights`` is ``(B, lanes, cols)``, all dense (§4). With outliers (§6),
    ``act_outliers`` is ``(B, slots, 3)`` of ``(valid, lane, value)`` and
    ``weight_outliers`` is ``(B, slots, 4)`` of ``(valid, lane, col, value)``, valid
    entries first."""
    acts: np.ndarray
    last: np.ndarray
    weights: np.ndarray
    act_outliers: np.ndarray | None = None
    weight_outliers: np.ndarray | None = None
    plane_shifts: np.ndarray | None = None


def _tiles(count, size):
    return -(-count // size)


def _split_outliers(values, dense_range, slots, what):
    """Per beat (row of ``values``): the dense row with outliers zeroed, and the outlier
    slots ``(valid, index, value)``, outliers first in index order (§6)."""
    low, high = dense_range
    outside = (values < low) | (values > high)
    counts = outside.sum(axis=1)
    if (counts > slots).any():
        beat = int(np.flatnonzero(counts > slots)[0])
        raise ValueError(f"{what} of beat {beat} holds {int(counts[beat])} outliers; a beat "
                         f"carries at most {slots}")
    order = np.argsort(~outside, axis=1, kind="stable")
    if slots > values.shape[1]:
        order = np.pad(order, ((0, 0), (0, slots - values.shape[1])))
    order = order[:, :slots]
    valid = np.take_along_axis(outside, order, axis=1) & (np.arange(slots) < counts[:, None])
    picked = np.take_along_axis(values, order, axis=1)
    slot_values = np.stack([valid, np.where(valid, order, 0), np.where(valid, picked, 0)],
                           axis=2)
    return np.where(outside, 0, values), slot_values.astype(np.int64)


def gemm_beats(acts: np.ndarray, weights: np.ndarray, lanes: int, cols: int, *,
               act_dense_range=None, act_slots=0, weight_dense_range=None,
               weight_slots=0, plane_shifts=None) -> GemmBeats:
    """Cut ``acts`` (M×K) and ``weights`` (K×N, or P×K×N planes with ``plane_shifts``
    (P-1)×N, §8) into beats, zero-padding the last tiles.

    With ``act_slots`` (``weight_slots``), entries outside ``act_dense_range``
    (``weight_dense_range``) travel as outliers of their beat (§6).

    Raises
    ------
    ValueError
        If a beat holds more outliers than it has slots.
    """
    planes = weights if weights.ndim == 3 else weights[None]
    p = planes.shape[0]
    m, k = acts.shape
    n = planes.shape[2]
    kt, nt = _tiles(k, lanes), _tiles(n, cols)
    padded_acts = np.zeros((m, kt * lanes), dtype=np.int64)
    padded_acts[:, :k] = acts
    padded_weights = np.zeros((p, kt * lanes, nt * cols), dtype=np.int64)
    padded_weights[:, :k, :n] = planes
    # beat (row, n_tile, plane, k_tile), k_tile fastest
    act_tiles = padded_acts.reshape(m, 1, 1, kt, lanes)
    act_tiles = np.broadcast_to(act_tiles, (m, nt, p, kt, lanes)).reshape(-1, lanes)
    weight_tiles = padded_weights.reshape(p, kt, lanes, nt, cols).transpose(3, 0, 1, 2, 4)
    weight_tiles = np.broadcast_to(weight_tiles, (m, nt, p, kt, lanes, cols))
    last = np.zeros((m, nt, p, kt), dtype=np.int64)
    last[:, :, -1, -1] = 1
    beat_shifts = None
    if plane_shifts is not None:
        padded_shifts = np.zeros((p, nt * cols), dtype=np.int64)
        padded_shifts[1:, :n] = plane_shifts
        beat_shifts = np.zeros((m, nt, p, kt, cols), dtype=np.int64)
        beat_shifts[:, :, :, 0, :] = padded_shifts.reshape(p, nt, cols).transpose(1, 0, 2)
        beat_shifts = beat_shifts.reshape(-1, cols)
    act_tiles = np.ascontiguousarray(act_tiles)
    weight_tiles = np.ascontiguousarray(weight_tiles.reshape(-1, lanes * cols))
    act_outliers = weight_outliers = None
    if act_slots:
        act_tiles, act_outliers = _split_outliers(act_tiles, act_dense_range, act_slots,
                                                  "The activation vector")
    if weight_slots:
        weight_tiles, flat = _split_outliers(weight_tiles, weight_dense_range, weight_slots,
                                             "The weight tile")
        valid, index, value = np.moveaxis(flat, 2, 0)
        weight_outliers = np.stack([valid, index // cols, index % cols, value], axis=2)
    return GemmBeats(acts=act_tiles, last=last.reshape(-1),
                     weights=weight_tiles.reshape(-1, lanes, cols),
                     act_outliers=act_outliers, weight_outliers=weight_outliers,
                     plane_shifts=beat_shifts)


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
