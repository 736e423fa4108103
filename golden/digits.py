"""Small models on scikit-learn's bundled digits data (1797 8×8 images, no download).

The float baselines that the quantization schemes are measured against. Training is
full-batch and deterministic for a given seed, and takes seconds on a CPU.
"""

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DigitsSplit", "load_digits_split", "DigitsMLP", "train", "accuracy"]


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


class DigitsMLP(nn.Module):
    """64 → hidden → hidden → 10 with ReLU."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                    nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 300,
          lr: float = 1e-2, seed: int = 0) -> nn.Module:
    """Full-batch Adam on cross-entropy; returns ``model`` in eval mode."""
    torch.manual_seed(seed)
    for parameter in model.parameters():
        if parameter.dim() > 1:
            nn.init.kaiming_uniform_(parameter, nonlinearity="relu")
        else:
            nn.init.zeros_(parameter)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return (model(x).argmax(dim=1) == y).float().mean().item()
