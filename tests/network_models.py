"""Models for the ``olmac quantize --model module:callable`` tests."""

import torch
from torch import nn


def gelu_mlp() -> nn.Module:
    """A model with a layer the integer program does not support (``nn.GELU``)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 10)).eval()


def tiny_mlp() -> nn.Module:
    """An untrained but supported model of the digits input shape."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
