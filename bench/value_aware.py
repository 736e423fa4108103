"""Value-aware quantization figures (docs/value_aware.md): ``python -m bench.value_aware``.

1. Effective bits per value of the free-list and the block storage formats (§5), with the
   share of outliers a block quota would clamp if outliers fell at random positions.
2. Test accuracy of the digits MLP (olmac/models/digits.py) in float and with fake-quantized
   weights and activations: plain ``b``-bit, clipped at the outlier thresholds with the
   outliers dropped (an ablation), and value-aware with outliers kept.
3. Where the outliers of the value-aware 4-bit model are, and how many a quota clamps.
"""

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from olmac.golden.fake_quant import dequantize, fake_quantize
from olmac.golden.value_aware import (block_bits_per_value, list_bits_per_value,
                                outlier_threshold, to_value_aware_round_half_even,
                                value_aware_scale)
from olmac.models.digits import DigitsMLP, load_digits_split
from olmac.models.training import train

BLOCK = 64
SEED = 0
#: One outlier per 64-value weight channel: ``floor(r·64) = 1``.
PER_CHANNEL_ONE = 1 / 64

# A quantizer of one Linear layer: (layer index, tensor) -> the float value it stands for.
Quantizer = Callable[[int, torch.Tensor], torch.Tensor]


def _over_quota_share(ratio: float, quota: int) -> float:
    """``E[max(X - Q, 0)] / E[X]`` for ``X ~ Binomial(BLOCK, ratio)``: the share of outliers
    a block clamps when each value is an outlier independently with probability ``ratio``."""
    if ratio == 0:
        return 0.0
    excess = sum((x - quota) * math.comb(BLOCK, x) * ratio ** x * (1 - ratio) ** (BLOCK - x)
                 for x in range(quota + 1, BLOCK + 1))
    return excess / (BLOCK * ratio)


def storage_table() -> None:
    print("## Effective bits per value (docs/value_aware.md §5)")
    print()
    print(f"Free list: `b + r·(16 + 16)` (16-bit position, 16-bit value). Block: "
          f"`(B·b + Q·(6 + 16)) / B` with B = {BLOCK}; Q = ⌈r·B⌉ is the least quota "
          f"covering the mean count. \"clamped\" is the share of outliers over the quota if "
          f"outliers fell independently at random (Binomial(64, r)).")
    print()
    print("| b | r | free list | block, Q = ⌈rB⌉ | clamped | block, Q = ⌈rB⌉ + 1 "
          "| clamped |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for bits in (2, 3, 4):
        for ratio in (0.0, 0.01, 0.03):
            quota = math.ceil(ratio * BLOCK)
            cells = [f"{list_bits_per_value(bits, ratio):.2f}"]
            for q in (quota, quota + 1):
                cells += [f"{block_bits_per_value(bits, block=BLOCK, quota=q):.2f} (Q={q})",
                          f"{_over_quota_share(ratio, q):.1%}"]
            print(f"| {bits} | {ratio:.0%} | " + " | ".join(cells) + " |")
    print()


@torch.no_grad()
def _forward(model: DigitsMLP, x: torch.Tensor, weight_q: Quantizer | None = None,
             act_q: Quantizer | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits with each Linear's weight and input passed through the quantizers, and the
    (unquantized) inputs each Linear saw."""
    inputs, index = [], 0
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            inputs.append(x)
            weight = layer.weight if weight_q is None else weight_q(index, layer.weight)
            x = (x if act_q is None else act_q(index, x)) @ weight.T + layer.bias
            index += 1
        else:
            x = layer(x)
    return x, inputs


def _plain(bits: int, weight_ratio: float, act_thresholds: list[torch.Tensor]):
    """Weights per output channel and activations per tensor, clamped at the thresholds."""
    def weight_q(_, w):
        threshold = outlier_threshold(w, weight_ratio, channel_dim=0)
        return fake_quantize(w, value_aware_scale(threshold, bits, True)[:, None], bits, True)

    def act_q(i, a):
        return fake_quantize(a, value_aware_scale(act_thresholds[i], bits, False), bits, False)
    return weight_q, act_q


def _value_aware(bits: int, weight_ratio: float, act_thresholds: list[torch.Tensor],
                 quota: int | None, log: list):
    """Weights per output channel and activations per tensor, outliers kept; blocks run
    along the reduction dimension (rows of ``out×in`` weights and of ``M×K`` inputs).
    Appends ``(kind, layer, numel, outliers, ClampCounts)`` to ``log``."""
    def quantize(kind, i, x, threshold, signed, channel_dim):
        q, counts = to_value_aware_round_half_even(x, threshold, bits, signed=signed,
                                                   channel_dim=channel_dim, quota=quota,
                                                   block=BLOCK)
        log.append((kind, i, x.numel(), len(q.positions), counts))
        scale = value_aware_scale(threshold, bits, signed)
        return dequantize(q.recombined, scale if channel_dim is None else scale[:, None])

    def weight_q(i, w):
        return quantize("W", i, w, outlier_threshold(w, weight_ratio, channel_dim=0), True, 0)

    def act_q(i, a):
        return quantize("A", i, a, act_thresholds[i], False, None)
    return weight_q, act_q


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).double().mean().item()


def accuracy_tables() -> None:
    started = time.perf_counter()
    split = load_digits_split()
    model = train(DigitsMLP(), split.x_train, split.y_train, seed=SEED)
    _, calibration = _forward(model, split.x_train)
    float_logits, _ = _forward(model, split.x_test)
    thresholds = lambda ratio: [outlier_threshold(a, ratio) for a in calibration]
    schemes = {
        "plain (max-abs W per channel, calibrated max A)":
            lambda b, log: _plain(b, 0.0, thresholds(0.0)),
        "clipped at the 1/64 W, 1 % A thresholds, outliers dropped (ablation)":
            lambda b, log: _plain(b, PER_CHANNEL_ONE, thresholds(0.01)),
        "value-aware, W r = 1 % per channel, A r = 1 %":
            lambda b, log: _value_aware(b, 0.01, thresholds(0.01), None, log),
        "value-aware, W r = 1/64 per channel, A r = 1 %":
            lambda b, log: _value_aware(b, PER_CHANNEL_ONE, thresholds(0.01), None, log),
        "same, block format B = 64, Q = 1":
            lambda b, log: _value_aware(b, PER_CHANNEL_ONE, thresholds(0.01), 1, log),
        "same, block format B = 64, Q = 2":
            lambda b, log: _value_aware(b, PER_CHANNEL_ONE, thresholds(0.01), 2, log),
    }
    n_test = len(split.y_test)
    print(f"## Digits MLP 64-64-64-10 (seed {SEED}), fake-quantized weights and activations")
    print()
    print(f"Test accuracy in % over {n_test} images (one image = {100 / n_test:.2f} points) "
          f"and, in brackets, the relative logit error ‖y − y_float‖ / ‖y_float‖. Activation "
          f"thresholds are calibrated on the float model's Linear inputs over the "
          f"{len(split.y_train)} training images; all activations are unsigned (pixels in "
          f"[0, 1], then ReLU outputs). Every layer has 64 inputs, so a per-channel weight "
          f"ratio of 1 % gives floor(0.64) = 0 outliers per channel; 1/64 gives one.")
    print()
    print("| scheme | 4-bit | 3-bit | 2-bit |")
    print("|---|---:|---:|---:|")
    print(f"| float | {_accuracy(float_logits, split.y_test):.2%} | | |")
    logs = {}
    for name, make in schemes.items():
        cells = []
        for bits in (4, 3, 2):
            log = logs.setdefault((name, bits), [])
            logits, _ = _forward(model, split.x_test, *make(bits, log))
            error = ((logits - float_logits).norm() / float_logits.norm()).item()
            cells.append(f"{_accuracy(logits, split.y_test):.2%} ({error:.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    names = list(schemes)
    outlier_table(logs, {"free list": (names[3], None), "block Q=1": (names[4], 1),
                         "block Q=2": (names[5], 2)}, bits=4)
    print(f"(digits figures: {time.perf_counter() - started:.1f} s)")
    print()


def outlier_table(logs: dict, storages: dict[str, tuple[str, int | None]],
                  bits: int) -> None:
    """One row per quantized tensor of each storage's scheme, ``storages`` mapping a label
    to ``(scheme name, quota)``, ``None`` for the free list."""
    print(f"## Outliers of the {bits}-bit value-aware model, per Linear input (A, test set) "
          f"and weight (W)")
    print()
    print("Saturated: outliers beyond s16/u16. Over quota: outliers a block could not keep, "
          "clamped into the dense range (docs/value_aware.md §4). Effective bits: the free "
          "list at the measured outlier share, or the block format.")
    print()
    print("| storage | tensor | values | outliers kept | share | saturated | over quota "
          "| effective bits |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for storage, (name, quota) in storages.items():
        for kind, layer, numel, kept, counts in logs[(name, bits)]:
            share = kept / numel
            bits_per_value = (list_bits_per_value(bits, share) if quota is None else
                              block_bits_per_value(bits, block=BLOCK, quota=quota))
            print(f"| {storage} | {kind}{layer} | {numel} | {kept} | {share:.2%} "
                  f"| {counts.saturated} | {counts.over_quota} | {bits_per_value:.2f} |")
    print()


def report() -> None:
    """Print the markdown tables of this module's docstring."""
    storage_table()
    accuracy_tables()


if __name__ == "__main__":
    report()
