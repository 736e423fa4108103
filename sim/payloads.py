"""Port payloads for a GEMM: the streaming order of §4/§6, packed through the engine's own
layouts. Shared by the cocotb testbench and the Amaranth-simulator tests."""

import numpy as np
from amaranth.hdl import Shape

import golden
from hw.requant import RequantParams
from .codec import LayoutCodec
from .job import GemmCase
from .tiling import gemm_beats

__all__ = ["stream_payloads", "output_codec"]


def _range(shape):
    shape = Shape.cast(shape)
    return golden.int_range(shape.width, shape.signed)


def _param_leaves(case, cols):
    """One parameter beat per output vector (§4 order): per column bias, multiplier,
    shift (zero past N), then the ReLU flag."""
    m, n = case.acts.shape[0], case.weights.shape[1]
    per_channel = np.stack([case.bias, case.multiplier, case.shift], axis=1)
    padded = np.zeros((-(-n // cols) * cols, 3), dtype=np.int64)
    padded[:n] = per_channel
    tiles = np.tile(padded.reshape(-1, cols * 3), (m, 1))
    return np.concatenate([tiles, np.full((len(tiles), 1), int(case.relu))], axis=1)


def stream_payloads(engine, case: GemmCase) -> dict[str, list[int]]:
    """Packed payloads for each input stream of ``engine`` (a :class:`hw.GemmEngine`):
    ``act``, ``weights`` and, with a requantizer, ``params``.

    Raises
    ------
    ValueError
        If a beat holds more outliers than the engine carries per beat.
    """
    array = engine.array
    beats = gemm_beats(case.acts, case.weights, array.lanes, array.cols,
                       act_dense_range=_range(array.act_shape),
                       act_slots=array.act_outlier_slots,
                       weight_dense_range=_range(array.weight_shape),
                       weight_slots=array.weight_outlier_slots)
    count = len(beats.last)
    act_leaves = [beats.acts, beats.last[:, None]]
    weight_leaves = [beats.weights.reshape(count, -1)]
    if beats.act_outliers is not None:
        act_leaves.append(beats.act_outliers.reshape(count, -1))
    if beats.weight_outliers is not None:
        weight_leaves.append(beats.weight_outliers.reshape(count, -1))
    payloads = {
        "act": LayoutCodec(engine.act.payload.shape()).pack(np.concatenate(act_leaves, 1)),
        "weights": LayoutCodec(engine.weights.payload.shape()).pack(
            np.concatenate(weight_leaves, 1)),
    }
    if engine.requantizer is not None:
        payloads["params"] = LayoutCodec(RequantParams(array.cols)).pack(
            _param_leaves(case, array.cols))
    return payloads


def output_codec(engine) -> LayoutCodec:
    """Unpacks ``engine.out`` payloads into vectors of ``cols`` values."""
    return LayoutCodec(engine.out.payload.shape())
