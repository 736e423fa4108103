"""scikit-learn's bundled digits data (1797 8×8 images, no download) and a small MLP on it.

The float baselines that the quantization schemes are measured against.
"""

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DigitsSplit", "load_digits_split", "as_images", "DigitsMLP", "accuracy"]


@dataclass(frozen=True)
class DigitsSplit:
    """Images as float32 in [0, 1] (``N×64``) and labels as int64."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> DigitsSplit:
    """A stratified train/test split of the digits data, pixels scaled from 0..16 to 0..1."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=test_fraction, random_state=seed,
        stratify=digits.target)
    as_x = lambda array: torch.tensor(array, dtype=torch.float32)
    as_y = lambda array: torch.tensor(array, dtype=torch.int64)
    return DigitsSplit(as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test))


def as_images(x: torch.Tensor) -> torch.Tensor:
    """Flat ``N×64`` digits images as ``N×1×8×8``, row-major (row ``i // 8``, column
    ``i % 8``), the layout of scikit-learn's ``images``.

    >>> as_images(torch.arange(64.0)[None])[0, 0, 1, :3]
    tensor([ 8.,  9., 10.])
    """
    return x.reshape(-1, 1, 8, 8)


class DigitsMLP(nn.Module):
    """64 → hidden → hidden → 10 with ReLU."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                    nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return (model(x).argmax(dim=1) == y).float().mean().item()
