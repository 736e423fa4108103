"""MMSE, multi-tensor and SYQ codebook weights on the digits MLP (docs/codebooks.md).

``python -m bench.codebooks`` prints markdown tables: figures, not assertions.

1. Weight MSE of max-abs and MMSE scales at 2/3/4 bits, one and two planes, per channel.
2. Test accuracy: the float model; max-abs and MMSE post-training quantization (weights
   per channel, activations per tensor calibrated on the training set, the float view of
   docs/semantics.md §5); SYQ binary and ternary QAT with 8-bit activations, evaluated
   with the hardware's fixed-point weights.
"""

import copy
import time

import torch
from torch import nn

from olmac.golden.fake_quant import fake_quantize
from olmac.golden.mmse import (choose_planes, max_abs_scale, mmse_scale, multi_tensor_quantize,
                         quantization_mse, reconstruct, relative_mse)
from olmac.golden.syq import freeze, syq_model
from olmac.models.digits import DigitsMLP, accuracy, load_digits_split
from olmac.models.training import train

BITS = (2, 3, 4)
#: Relative-MSE threshold above which a layer takes another plane (docs/codebooks.md §2).
PLANE_THRESHOLD = 0.02
#: SYQ fine-tuning schedule: full-batch Adam from the trained float weights.
QAT_EPOCHS, QAT_LR = 300, 3e-3
#: Width of the fixed-point codebook entries the SYQ accuracy is measured with.
ENTRY_BITS = 7
SCALES = {"max-abs": max_abs_scale, "MMSE": mmse_scale}


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.layers if isinstance(module, nn.Linear)]


def weight_mse(model: DigitsMLP) -> None:
    print("## Weight MSE per layer, per-channel scales (mean squared error, ×1e-4)")
    print()
    print(f"P = 2 adds a residual plane at `α_2 = α_1·2^(-e)`; the last column is the plane "
          f"count `choose_planes` picks for a relative MSE of at most {PLANE_THRESHOLD}.")
    print()
    print("| bits | layer | max-abs | MMSE | MMSE / max-abs | MMSE, P = 2 | rel. MSE P = 1 "
          "| rel. MSE P = 2 | planes chosen |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for bits in BITS:
        for number, linear in enumerate(_linears(model), start=1):
            w = linear.weight.detach()
            errors = {name: quantization_mse(w, scale(w, bits, per_channel=True), bits,
                                             per_channel=True).mean().item()
                      for name, scale in SCALES.items()}
            one = reconstruct(multi_tensor_quantize(w, bits, 1))
            two = reconstruct(multi_tensor_quantize(w, bits, 2))
            two_mse = ((w.double() - two) ** 2).mean().item()
            chosen = choose_planes(w, bits, PLANE_THRESHOLD).planes.shape[0]
            print(f"| {bits} | fc{number} {tuple(w.shape)} | {errors['max-abs'] * 1e4:.2f} "
                  f"| {errors['MMSE'] * 1e4:.2f} | {errors['MMSE'] / errors['max-abs']:.2f} "
                  f"| {two_mse * 1e4:.3f} | {relative_mse(w, one):.4f} "
                  f"| {relative_mse(w, two):.5f} | {chosen} |", flush=True)
    print()


def _layer(x: torch.Tensor, linear: nn.Linear, weight: torch.Tensor, act_scale: torch.Tensor,
           act_bits: int) -> torch.Tensor:
    """One linear layer in the §5 float view, its input fake-quantized to ``u<act_bits>``."""
    return nn.functional.linear(fake_quantize(x, act_scale, act_bits, signed=False), weight,
                                linear.bias)


@torch.no_grad()
def quantized_logits(model: DigitsMLP, x: torch.Tensor, weights: list[torch.Tensor],
                     act_bits: int, act_scales: list[torch.Tensor]) -> torch.Tensor:
    *hidden, last = zip(_linears(model), weights, act_scales)
    for linear, weight, scale in hidden:
        x = torch.relu(_layer(x, linear, weight, scale, act_bits))
    return _layer(x, *last, act_bits)


@torch.no_grad()
def calibrate(model: DigitsMLP, x: torch.Tensor, weights: list[torch.Tensor], act_bits: int,
              scale) -> list[torch.Tensor]:
    """Per-tensor activation scales, layer by layer on the quantized model's own inputs."""
    scales = []
    for linear, weight in zip(_linears(model), weights):
        scales.append(scale(x, act_bits, signed=False))
        x = torch.relu(_layer(x, linear, weight, scales[-1], act_bits))
    return scales


def ptq_accuracy(model: DigitsMLP, split, weights: list[torch.Tensor], act_bits: int,
                 scale) -> float:
    scales = calibrate(model, split.x_train, weights, act_bits, scale)
    logits = quantized_logits(model, split.x_test, weights, act_bits, scales)
    return (logits.argmax(dim=1) == split.y_test).float().mean().item()


def ptq_table(model: DigitsMLP, split) -> None:
    print("## Digits accuracy, post-training quantization (test set, 540 images)")
    print()
    print(f"Float model: **{accuracy(model, split.x_test, split.y_test):.2%}**. Weights per "
          f"channel, activations (the input pixels and the ReLU outputs) unsigned per tensor, "
          f"calibrated on the training set with the same rule as the weights.")
    print()
    print("| weights | activations | max-abs | MMSE | MMSE, P = 2 |")
    print("|---|---|---:|---:|---:|")
    floats = [linear.weight.detach() for linear in _linears(model)]
    for bits in BITS:
        fake = {name: [fake_quantize(w, scale(w, bits, per_channel=True), bits, True).float()
                       for w in floats] for name, scale in SCALES.items()}
        two = [reconstruct(multi_tensor_quantize(w, bits, 2)).float() for w in floats]
        for act_bits in (8, bits):
            row = [ptq_accuracy(model, split, fake[name], act_bits, scale)
                   for name, scale in SCALES.items()]
            row.append(ptq_accuracy(model, split, two, act_bits, mmse_scale))
            print(f"| s{bits} | u{act_bits} | " + " | ".join(f"{a:.2%}" for a in row) + " |",
                  flush=True)
    print()


def syq_table(model: DigitsMLP, split) -> None:
    print(f"## Digits accuracy, SYQ QAT with u8 activations ({QAT_EPOCHS} epochs of "
          f"full-batch Adam, lr {QAT_LR}, from the float weights)")
    print()
    print(f"Measured with the hardware's weights: codes decoded through u{ENTRY_BITS} "
          f"fixed-point tables (`freeze`). With first/last kept, only the 64×64 hidden layer "
          f"is SYQ. The first row fine-tunes the float model on the same schedule without "
          f"quantization; one test image is 0.19 pt.")
    print()
    print("| weights | granularity | first/last layers | accuracy | vs float | QAT s |")
    print("|---|---|---|---:|---:|---:|")
    reference = accuracy(model, split.x_test, split.y_test)
    longer = train(copy.deepcopy(model), split.x_train, split.y_train, epochs=QAT_EPOCHS,
                   lr=QAT_LR, initialize=False)
    score = accuracy(longer, split.x_test, split.y_test)
    print(f"| float, same fine-tuning | – | float | {score:.2%} | "
          f"{(score - reference) * 100:+.1f} pt | – |")
    for name, idx_bits, zero in (("binary", 0, False), ("ternary", 1, True)):
        for granularity in ("layer", "row"):
            for keep in (True, False):
                started = time.perf_counter()
                qat = syq_model(model.layers, idx_bits=idx_bits, zero=zero,
                                granularity=granularity, keep_first_last=keep)
                train(qat, split.x_train, split.y_train, epochs=QAT_EPOCHS, lr=QAT_LR,
                      initialize=False)
                elapsed = time.perf_counter() - started
                score = accuracy(freeze(qat, entry_bits=ENTRY_BITS), split.x_test,
                                 split.y_test)
                print(f"| {name} | {granularity} | {'float' if keep else 'SYQ'} "
                      f"| {score:.2%} | {(score - reference) * 100:+.1f} pt | {elapsed:.1f} |",
                      flush=True)
    print()


def report() -> None:
    """Print the tables of the module docstring."""
    started = time.perf_counter()
    split = load_digits_split()
    model = train(DigitsMLP(), split.x_train, split.y_train)
    weight_mse(model)
    ptq_table(model, split)
    syq_table(model, split)
    print(f"Total {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    report()
