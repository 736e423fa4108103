"""The two demo networks of the integer-program flow, trained in seconds on the digits data.

* ``DigitsMLP`` (``golden.digits``): ``64 → 64 → 64 → 10`` with ReLU, on flat images.
* ``ResidualCNN``: ``conv3x3 1→8, ReLU``, one residual block ``conv3x3 8→8, ReLU,
  conv3x3 8→8, + skip, ReLU``, ``avg-pool 2×2``, flatten, ``Linear 128 → 10``, on
  ``N×1×8×8`` images (``as_images``). Every convolution has ``padding=1``.

Both train with ``train_minibatch`` (Adam on shuffled mini-batches, 30 epochs), the
initialization of ``golden.digits.train`` but a tenth of its arithmetic: 300 full-batch
epochs of the CNN's three convolutions take over a minute on two cores, 30 mini-batch
epochs a few seconds. Training runs on one thread and is deterministic for a seed.
``cached`` keeps a trained ``state_dict`` under a directory (``build/models`` by default)
so that tests and benches train each model once; ``mlp`` and ``cnn`` are the cached demo
models.
"""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .digits import DigitsMLP, DigitsSplit

__all__ = ["MODEL_DIR", "ResidualCNN", "as_images", "one_thread", "train_mlp", "train_minibatch",
           "train_cnn", "cached", "mlp", "cnn"]

#: Where ``cached`` keeps trained weights unless told otherwise: ``build/models`` under the
#: working directory (``build/`` is ignored by git).
MODEL_DIR = Path("build") / "models"


def as_images(x: torch.Tensor) -> torch.Tensor:
    """Flat ``N×64`` digits images as ``N×1×8×8``, row-major (row ``i // 8``, column
    ``i % 8``), the layout of scikit-learn's ``images``.

    >>> as_images(torch.arange(64.0)[None])[0, 0, 1, :3]
    tensor([ 8.,  9., 10.])
    """
    return x.reshape(-1, 1, 8, 8)


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


@contextmanager
def one_thread() -> Iterator[None]:
    """One CPU thread for the duration (restored after): tiny GEMMs run faster on one
    thread of a busy machine, and sums do not depend on the machine's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_mlp(split: DigitsSplit, *, hidden: int = 64, epochs: int = 30,
              seed: int = 0) -> DigitsMLP:
    """``DigitsMLP`` trained on ``split.x_train`` (flat images) with ``train_minibatch``."""
    return train_minibatch(DigitsMLP(hidden), split.x_train, split.y_train, epochs=epochs,
                           seed=seed)


def train_minibatch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 30,
                    batch: int = 128, lr: float = 1e-2, seed: int = 0) -> nn.Module:
    """Adam on cross-entropy over shuffled mini-batches; returns ``model`` in eval mode.

    Initialization as ``golden.digits.train`` (Kaiming-uniform weights, zero biases, after
    ``torch.manual_seed(seed)``); the shuffling has its own generator seeded with ``seed``.
    Runs on one CPU thread (restored afterwards): for these tiny layers that is several
    times faster than two threads on a busy machine, and the result does not depend on the
    machine's thread count.
    """
    with one_thread():
        return _train_minibatch(model, x, y, epochs=epochs, batch=batch, lr=lr, seed=seed)


def _train_minibatch(model, x, y, *, epochs, batch, lr, seed):
    torch.manual_seed(seed)
    for parameter in model.parameters():
        if parameter.dim() > 1:
            nn.init.kaiming_uniform_(parameter, nonlinearity="relu")
        else:
            nn.init.zeros_(parameter)
    shuffle = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=shuffle)
        for start in range(0, len(x), batch):
            chosen = order[start:start + batch]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[chosen]), y[chosen]).backward()
            optimizer.step()
    return model.eval()


def train_cnn(split: DigitsSplit, *, channels: int = 8, epochs: int = 30,
              seed: int = 0) -> ResidualCNN:
    """``ResidualCNN`` trained on ``as_images(split.x_train)`` with ``train_minibatch``."""
    return train_minibatch(ResidualCNN(channels), as_images(split.x_train), split.y_train,
                           epochs=epochs, seed=seed)


def cached(name: str, make: Callable[[], nn.Module], build: Callable[[nn.Module], nn.Module],
           directory: Path | str = MODEL_DIR) -> nn.Module:
    """The model ``make()`` with the weights in ``directory/name.pt``; if the file does not
    exist, ``build(make())`` (which trains and returns a model) is saved there first.
    Returned in eval mode.

    The file holds a plain ``state_dict`` (loaded with ``weights_only=True``). A file that
    does not fit ``make()`` raises the ``RuntimeError`` of ``load_state_dict``; delete it
    to retrain.
    """
    path = Path(directory) / f"{name}.pt"
    model = make()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = build(model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), temporary)
    temporary.replace(path)  # atomic: a concurrent reader never sees half a file
    return model


def mlp(split: DigitsSplit, *, seed: int = 0, directory: Path | str = MODEL_DIR) -> DigitsMLP:
    """The trained MLP of ``train_mlp`` (default sizes), cached as ``mlp_s<seed>.pt``."""
    return cached(f"mlp_s{seed}", DigitsMLP, lambda _: train_mlp(split, seed=seed), directory)


def cnn(split: DigitsSplit, *, seed: int = 0, directory: Path | str = MODEL_DIR) -> ResidualCNN:
    """The trained residual CNN of ``train_cnn`` (default sizes), cached as
    ``cnn_s<seed>.pt``."""
    return cached(f"cnn_s{seed}", ResidualCNN, lambda _: train_cnn(split, seed=seed), directory)
