"""Models written the ordinary way, with the layers people use beyond the demo networks:
the examples of the lowering (docs/program.md §17), measured in the README and checked on
the network core by the tests.

* ``ConvBNStack``: Conv+BatchNorm+ReLU stacks with ``padding='same'``, ReLU6,
  ``F.max_pool2d(x, 3, 2, padding=1)``, Dropout, ``x.view(x.size(0), -1)``, BatchNorm1d,
  ``torch.clamp`` and a trailing ``log_softmax``.
* ``ResidualBN``: a residual block with BatchNorm, adaptive average pooling, ``nn.Identity``,
  ``contiguous`` and ``x.reshape(x.shape[0], -1)``.
* ``DepthwiseSeparable``: a stem convolution, a depthwise-separable block (depthwise 3×3
  with BatchNorm and ReLU6, pointwise 1×1 with BatchNorm and ReLU), a grouped 3×3
  convolution (4 groups, stride 2), adaptive average pooling to 2×2 and a Linear head, on
  ``N×1×8×8`` digits images.
* ``InceptionBranches``: Inception-style branches (1×1, 3×3, max pool) joined by
  ``torch.cat`` on the channels, average pooling and a Linear head.
* ``DenseBlocks``: DenseNet-style ``torch.cat([x, f(x)], 1)`` twice (3 + 5 channels, then
  8 + 6), max pooling and a Linear head.
* ``SequenceCNN``: ``nn.Conv1d`` layers with ``BatchNorm1d``, ``padding='same'``,
  ``nn.MaxPool1d`` and ``F.adaptive_avg_pool1d`` on digits read as sequences
  (``as_sequences``: ``N×8×8``, the 8 rows as channels along the 8 columns).
* ``SmoothActivations``: the table activations (docs/program.md §12): ``nn.Hardswish``
  after the first convolution, ``F.silu`` after the second, a ``torch.sigmoid`` gate after
  the hidden Linear and ``nn.Tanh`` after a flatten (a table not fused into a GEMM), on
  ``N×1×8×8`` digits images.

``trained`` trains one from torch's own initialization, as a user's model would be, with
the demo networks' epochs and mini-batches.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .demo import BATCH, EPOCHS
from .training import train

__all__ = ["ConvBNStack", "ResidualBN", "DepthwiseSeparable", "InceptionBranches", "DenseBlocks", "SequenceCNN",
           "SmoothActivations", "as_sequences", "trained"]


class ConvBNStack(nn.Module):
    """Conv+BN+ReLU, ``padding='same'``, ReLU6, ``F.max_pool2d(x, 3, 2, padding=1)``, Dropout,
    ``x.view(x.size(0), -1)``, BatchNorm1d, ``clamp`` and a trailing ``log_softmax``."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding="same"), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.relu6, self.drop = nn.ReLU6(), nn.Dropout(0.1)
        self.fc1, self.bn3 = nn.Linear(16 * 4 * 4, 32), nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.relu6(self.bn2(self.conv2(x))), 3, 2, padding=1)
        x = self.drop(x.view(x.size(0), -1))
        x = torch.clamp(self.bn3(self.fc1(x)), 0, 6)
        return F.log_softmax(self.fc2(x), dim=1)


class ResidualBN(nn.Module):
    """A residual block with BatchNorm, adaptive average pooling, Identity, ``contiguous``
    and ``x.reshape(x.shape[0], -1)``."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv_a, self.bn_a = nn.Conv2d(8, 8, 3, padding="same"), nn.BatchNorm2d(8)
        self.conv_b, self.bn_b = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool, self.skip = nn.AdaptiveAvgPool2d(2), nn.Identity()
        self.head = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = F.relu(self.bn_a(self.conv_a(x)))
        x = F.relu(self.bn_b(self.conv_b(y)) + self.skip(x))
        x = self.pool(x).contiguous()
        return self.head(x.reshape(x.shape[0], -1))


class DepthwiseSeparable(nn.Module):
    """Depthwise-separable and grouped convolutions (``groups`` > 1) on digits images."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn_dw, self.act = nn.BatchNorm2d(8), nn.ReLU6()
        self.pointwise, self.bn_pw = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=4)
        self.head = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.act(self.bn_dw(self.depthwise(x)))
        x = F.relu(self.bn_pw(self.pointwise(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.grouped(x)), 2)
        return self.head(x.flatten(1))


class InceptionBranches(nn.Module):
    """Inception-style branches (1×1, 3×3, max pool) joined on the channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.b1, self.b3 = nn.Conv2d(6, 4, 1), nn.Conv2d(6, 5, 3, padding=1)
        self.head = nn.Linear(15 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        pooled = F.max_pool2d(x, 3, 1, padding=1)
        x = torch.cat([F.relu(self.b1(x)), self.b3(x), pooled], 1)
        return self.head(F.avg_pool2d(x, 2).flatten(1))


class DenseBlocks(nn.Module):
    """DenseNet-style: each block's input concatenated with its output, twice."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.c1, self.c2 = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(14 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([x, F.relu(self.c1(x))], 1)
        x = torch.cat([x, self.c2(x)], 1)
        return self.head(F.max_pool2d(x, 2).flatten(1))


class SequenceCNN(nn.Module):
    """One-dimensional convolutions (``nn.Conv1d``) on ``N×8×8`` sequences."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(8, 16, 3, padding=1), nn.BatchNorm1d(16)
        self.conv2, self.bn2 = nn.Conv1d(16, 32, 3, padding="same"), nn.BatchNorm1d(32)
        self.pool = nn.MaxPool1d(2)
        self.conv3 = nn.Conv1d(32, 32, 3, padding=1)
        self.head = nn.Linear(32 * 2, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = F.adaptive_avg_pool1d(F.relu(self.conv3(x)), 2)
        return self.head(x.view(x.size(0), -1))


class SmoothActivations(nn.Module):
    """Smooth activations, each a lookup table on the core, between convolutions on digits
    images."""

    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(1, 8, 3, padding=1), nn.Hardswish()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool, self.squash = nn.AvgPool2d(2), nn.Tanh()
        self.hidden = nn.Linear(16 * 2 * 2, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = F.silu(self.conv2(self.act1(self.conv1(x))))
        x = self.squash(self.pool(x).flatten(1))
        return self.head(torch.sigmoid(self.hidden(x)))


def as_sequences(x: torch.Tensor) -> torch.Tensor:
    """Flat ``N×64`` digits as ``N×8×8`` sequences: 8 channels (the rows), length 8."""
    return x.reshape(len(x), 8, 8)


def trained(factory, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0) -> nn.Module:
    """``factory()`` trained on ``x``, ``y`` for ``EPOCHS`` epochs of mini-batches of
    ``BATCH``, from torch's initialization under ``torch.manual_seed(seed)``; eval mode."""
    torch.manual_seed(seed)
    return train(factory(), x, y, epochs=EPOCHS, lr=1e-2, batch=BATCH, seed=seed,
                 initialize=False)
