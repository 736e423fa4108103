"""The two demo networks of the integer-program flow, trained in seconds on the digits data.

* ``DigitsMLP`` (``olmac.models.digits``): ``64 → 64 → 64 → 10`` with ReLU, on flat images.
* ``ResidualCNN``: ``conv3x3 1→8, ReLU``, one residual block ``conv3x3 8→8, ReLU,
  conv3x3 8→8, + skip, ReLU``, ``avg-pool 2×2``, flatten, ``Linear 128 → 10``, on
  ``N×1×8×8`` images (``as_images``). Every convolution has ``padding=1``.
* ``LargeCNN`` (``cnn28``), the model that fills a larger board's memories: the digits
  upsampled to ``28×28`` (``upsampled``), 108 688 weights and 1 145 920 MACs an image,
  trained on the training split and two shifted copies of it (``shifted_copies``).

Both train with ``olmac.models.training.train`` on shuffled mini-batches of ``BATCH`` for
``EPOCHS`` epochs: a tenth of the arithmetic of 300 full-batch epochs, which for the CNN's
three convolutions take over a minute on two cores; 30 mini-batch epochs take a few
seconds. ``mlp`` and ``cnn`` are the trained models, cached under ``build/models``.
"""

from pathlib import Path

import torch
from torch import nn

from .digits import DigitsMLP, DigitsSplit, as_images, shifted_copies, upsampled
from .training import MODEL_DIR, cached, train

__all__ = ["EPOCHS", "BATCH", "ResidualCNN", "LargeCNN", "large_cnn_images", "mlp", "cnn",
           "cnn28"]

#: Training epochs of the demo networks.
EPOCHS = 30
#: Mini-batch size of the demo networks' training.
BATCH = 128
#: Training epochs of ``LargeCNN``: three times the images, each about 20 times the
#: arithmetic of the small CNN's.
EPOCHS_28 = 10


class ResidualCNN(nn.Module):
    """conv 1→c, ReLU; conv c→c, ReLU, conv c→c, + skip, ReLU; avg-pool 2×2; Linear → 10.

    Input ``N×1×8×8``; every convolution is 3×3 with ``padding=1``, so the block keeps the
    8×8 size and the pooled ``c×4×4`` map flattens to ``16·c`` features.
    """

    def __init__(self, channels: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16 * channels, 10)

    def forward(self, x):
        skip = self.relu1(self.conv1(x))
        h = self.relu2(self.conv2(skip))
        h = self.relu3(self.conv3(h) + skip)
        return self.fc(self.flatten(self.pool(h)))


class LargeCNN(nn.Module):
    """conv 1→c stride 2, ReLU; conv c→c, ReLU, conv c→c, + skip, ReLU; conv c→c stride 2,
    ReLU; Linear ``49·c`` → ``hidden``, ReLU; Linear → 10.

    Input ``N×1×28×28``; every convolution is 3×3 with ``padding=1``, so the strided ones
    halve the map (28 → 14 → 7). At ``c = 16``, ``hidden = 128``: 108 688 weights (the first
    linear layer 100 352 of them) and 1 145 920 MACs an image.
    """

    def __init__(self, channels: int = 16, hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.relu4 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(49 * channels, hidden)
        self.relu5 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        skip = self.relu1(self.conv1(x))
        h = self.relu2(self.conv2(skip))
        h = self.relu3(self.conv3(h) + skip)
        h = self.relu4(self.conv4(h))
        return self.fc2(self.relu5(self.fc1(self.flatten(h))))


def large_cnn_images(x: torch.Tensor) -> torch.Tensor:
    """Flat digits images as ``LargeCNN`` takes them: ``upsampled`` to ``N×1×28×28``."""
    return upsampled(x, 28)


def mlp(split: DigitsSplit, *, seed: int = 0, directory: Path | str = MODEL_DIR) -> DigitsMLP:
    """``DigitsMLP`` trained on ``split.x_train`` (flat images), cached as
    ``mlp_s<seed>.pt``."""
    return cached(f"mlp_s{seed}", DigitsMLP, lambda model: train(
        model, split.x_train, split.y_train, epochs=EPOCHS, batch=BATCH, seed=seed), directory)


def cnn(split: DigitsSplit, *, seed: int = 0, directory: Path | str = MODEL_DIR) -> ResidualCNN:
    """``ResidualCNN`` trained on ``as_images(split.x_train)``, cached as
    ``cnn_s<seed>.pt``."""
    return cached(f"cnn_s{seed}", ResidualCNN, lambda model: train(
        model, as_images(split.x_train), split.y_train, epochs=EPOCHS, batch=BATCH,
        seed=seed), directory)


def cnn28(split: DigitsSplit, *, seed: int = 0, directory: Path | str = MODEL_DIR) -> LargeCNN:
    """``LargeCNN`` trained on ``large_cnn_images(split.x_train)`` and two copies of it
    shifted by up to 2 pixels (of 28), cached as ``cnn28_s<seed>.pt``."""
    images, labels = shifted_copies(large_cnn_images(split.x_train), split.y_train,
                                    copies=2, max_shift=2, seed=seed)
    return cached(f"cnn28_s{seed}", LargeCNN, lambda model: train(
        model, images, labels, epochs=EPOCHS_28, batch=BATCH, seed=seed), directory)
