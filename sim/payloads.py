"""Port payloads for a GEMM: the streaming order of §4/§6, packed through the engine's own
layouts. Shared by the cocotb testbench and the Amaranth-simulator tests."""

import numpy as np
import torch
from amaranth.hdl import Shape

from olmac import golden
from olmac.hw import GemmEngine
from .codebook_stream import CodebookLayer, codebook_program
from .codec import LayoutCodec
from .job import GemmCase
from .tiling import gemm_beats

__all__ = ["stream_payloads", "output_codec", "output_leaves", "output_values"]


def _range(shape):
    shape = Shape.cast(shape)
    return golden.int_range(shape.width, shape.signed)


def _param_leaves(case, cols, with_threshold):
    """One parameter beat per output vector (§4 order): per column bias, multiplier,
    shift (zero past N), then the ReLU flag and, for output outliers, the threshold."""
    m, n = case.acts.shape[0], case.weights.shape[-1]
    per_channel = np.stack([case.bias, case.multiplier, case.shift], axis=1)
    padded = np.zeros((-(-n // cols) * cols, 3), dtype=np.int64)
    padded[:n] = per_channel
    tiles = np.tile(padded.reshape(-1, cols * 3), (m, 1))
    layer = [int(case.relu)] + ([case.outlier_threshold] if with_threshold else [])
    return np.concatenate([tiles, np.tile(layer, (len(tiles), 1))], axis=1)


def stream_payloads(config: GemmEngine.Config, case: GemmCase) -> dict[str, list[int]]:
    """Packed payloads for each input stream of the engine ``config`` describes: ``act``,
    ``weights`` (or, with a codebook decoder, ``codes`` and ``load``) and, with a
    requantizer, ``params``.

    Raises
    ------
    ValueError
        If a beat holds more outliers than the engine carries per beat.
    """
    beats = gemm_beats(case.acts, case.weights, config.lanes, config.cols,
                       act_dense_range=_range(config.act_shape),
                       act_slots=config.act_outlier_slots,
                       weight_dense_range=_range(config.weight_shape),
                       weight_slots=config.weight_outlier_slots,
                       plane_shifts=case.plane_shifts)
    if (beats.plane_shifts is not None) != bool(config.plane_shift_bits):
        raise ValueError("Weight planes need an engine with plane shifts, and vice versa")
    if beats.plane_shifts is not None:
        total = case.plane_shifts.sum(axis=0).max(initial=0)
        if total > config.max_plane_shift or case.plane_shifts.max(initial=0) >= \
                1 << config.plane_shift_bits:
            raise ValueError(f"Plane shifts {case.plane_shifts.tolist()} exceed the engine's "
                             f"{config.plane_shift_bits}-bit shifts or its total of "
                             f"{config.max_plane_shift}")
    count = len(beats.last)
    act_leaves = [beats.acts, beats.last[:, None]]
    if config.decoder is not None:
        program = codebook_program(config.decoder, [CodebookLayer(
            torch.from_numpy(case.codes), torch.from_numpy(case.tables))],
            rows=case.acts.shape[0])
        if len(program.codes) != count:
            raise ValueError(f"The codes make {len(program.codes)} tiles; the activations "
                             f"need {count}")
        weight_payloads = {"codes": program.codes, "load": program.loads}
    weight_leaves = [beats.weights.reshape(count, -1)]
    if beats.act_outliers is not None:
        act_leaves.append(beats.act_outliers.reshape(count, -1))
    if beats.weight_outliers is not None:
        weight_leaves.append(beats.weight_outliers.reshape(count, -1))
    if beats.plane_shifts is not None:
        weight_leaves.append(beats.plane_shifts)
    if config.decoder is None:
        weight_payloads = {"weights": LayoutCodec(config.weight_layout).pack(
            np.concatenate(weight_leaves, 1))}
    payloads = {
        "act": LayoutCodec(config.act_layout).pack(np.concatenate(act_leaves, 1)),
        **weight_payloads,
    }
    if config.requantizer is not None:
        with_threshold = config.out_outlier_bits is not None
        if with_threshold and case.outlier_threshold is None:
            raise ValueError("An engine with output outliers needs an outlier_threshold")
        payloads["params"] = LayoutCodec(config.requantizer.params_layout).pack(
            _param_leaves(case, config.cols, with_threshold))
    return payloads


def output_codec(config: GemmEngine.Config) -> LayoutCodec:
    """Unpacks the engine's ``out`` payloads into leaf vectors (see :func:`output_leaves`)."""
    return LayoutCodec(config.out_layout)


def output_leaves(config: GemmEngine.Config, dense: np.ndarray,
                  outliers: np.ndarray | None) -> np.ndarray:
    """The ``out`` leaves expected for output vectors ``dense`` (R×cols): the values, or
    with output outliers (§7) the dense values then a ``(valid, col, value)`` slot per
    column."""
    if config.out_outlier_bits is None:
        return dense
    columns = np.broadcast_to(np.arange(dense.shape[1]), dense.shape)
    slots = np.stack([(outliers != 0).astype(np.int64), columns, outliers], axis=2)
    return np.concatenate([dense, slots.reshape(len(dense), -1)], axis=1)


def output_values(config: GemmEngine.Config, leaves: np.ndarray) -> np.ndarray:
    """The values (R×cols) the next layer sees: with output outliers, dense + outliers."""
    if config.out_outlier_bits is None:
        return leaves
    cols = config.cols
    return leaves[:, :cols] + leaves[:, cols:].reshape(len(leaves), cols, 3)[:, :, 2]
