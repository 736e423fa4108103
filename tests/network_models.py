"""Models for the ``olmac quantize --model module:callable`` tests."""

import torch
from torch import nn


def mish_mlp() -> nn.Module:
    """A model with a layer the integer program does not support (``nn.Mish``)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.Mish(), nn.Linear(16, 10)).eval()


def softmax_mlp() -> nn.Module:
    """``tiny_mlp`` with a BatchNorm to fold and a trailing ``LogSoftmax`` to drop."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10),
                         nn.LogSoftmax(1)).eval()


def tiny_mlp() -> nn.Module:
    """An untrained but supported model of the digits input shape."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


def _digits_trained(factory, shape) -> nn.Module:
    from olmac.models.digits import load_digits_split
    from olmac.models.ordinary import trained
    split = load_digits_split()
    return trained(factory, shape(split.x_train), split.y_train)


def conv_bn_stack() -> nn.Module:
    """``olmac.models.ordinary.ConvBNStack`` trained on the digits images."""
    from olmac.models.digits import as_images
    from olmac.models.ordinary import ConvBNStack
    return _digits_trained(ConvBNStack, as_images)


def residual_bn() -> nn.Module:
    """``olmac.models.ordinary.ResidualBN`` trained on the digits images."""
    from olmac.models.digits import as_images
    from olmac.models.ordinary import ResidualBN
    return _digits_trained(ResidualBN, as_images)


def depthwise_separable() -> nn.Module:
    """``olmac.models.ordinary.DepthwiseSeparable`` trained on the digits images."""
    from olmac.models.digits import as_images
    from olmac.models.ordinary import DepthwiseSeparable
    return _digits_trained(DepthwiseSeparable, as_images)


def sequence_cnn() -> nn.Module:
    """``olmac.models.ordinary.SequenceCNN`` (Conv1d) trained on the digits as sequences."""
    from olmac.models.ordinary import SequenceCNN, as_sequences
    return _digits_trained(SequenceCNN, as_sequences)


def tiny_cnn() -> nn.Module:
    """An untrained convolutional model of the digits input shape (1 × 8 × 8), written the
    ordinary way; small enough for the board's cocotb test."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10)).eval()
