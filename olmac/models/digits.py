"""scikit-learn's bundled digits data (1797 8×8 images, no download) and a small MLP on it.

The float baselines that the quantization schemes are measured against.
"""

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DigitsSplit", "load_digits_split", "as_images", "upsampled", "shifted_copies",
           "DigitsMLP", "accuracy"]


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


def upsampled(x: torch.Tensor, size: int = 28, steps: int = 16) -> torch.Tensor:
    """Flat ``N×64`` digits images as ``N×1×size×size``: bilinearly interpolated (half-pixel
    centres), then rounded to multiples of ``1/steps``, the pixel grid of the input
    quantizer (``pixel_scale = 1/16``), so the float model and the integer program see the
    same images.

    >>> upsampled(torch.full((1, 64), 0.5)).unique()
    tensor([0.5000])
    """
    images = nn.functional.interpolate(as_images(x), size=(size, size), mode="bilinear",
                                       align_corners=False)
    return torch.round(images.clamp(0, 1) * steps) / steps


def shifted_copies(images: torch.Tensor, labels: torch.Tensor, copies: int, max_shift: int,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` (``N×C×H×W``) followed by ``copies`` copies, each image moved by a random
    ``(dy, dx)`` in ``−max_shift..max_shift`` with zeros shifted in (a data augmentation
    that keeps the digit's pixels and label); the labels repeated to match.

    >>> x, y = shifted_copies(torch.ones(2, 1, 4, 4), torch.tensor([3, 5]), 2, 1)
    >>> x.shape, y.tolist(), float(x[:2].sum())
    (torch.Size([6, 1, 4, 4]), [3, 5, 3, 5, 3, 5], 32.0)
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = images.shape[-2:]
    padded = nn.functional.pad(images, (max_shift,) * 4)
    moved = [images]
    for _ in range(copies):
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, len(images)), generator=generator)
        moved.append(torch.stack([image[..., y:y + height, x:x + width]
                                  for image, y, x in zip(padded, dy.tolist(), dx.tolist())]))
    return torch.cat(moved), labels.repeat(copies + 1)


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
