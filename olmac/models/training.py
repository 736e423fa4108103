"""The one training loop of the float models and studies, and the cache of trained weights.

``train`` is Adam on cross-entropy (against the labels, or against a teacher's softened
predictions: knowledge distillation), full-batch or on shuffled mini-batches, from a fresh
initialization or (quantization-aware fine-tuning) from the model's current parameters.
It runs on one CPU thread, so a run is deterministic for a seed whatever the machine's
thread count. ``cached`` keeps a trained ``state_dict`` under a directory
(``build/models`` of the working directory by default) so that tests and benches train
each model once.
"""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

__all__ = ["MODEL_DIR", "one_thread", "train", "cached"]

#: Where ``cached`` keeps trained weights unless told otherwise: ``build/models`` under the
#: working directory (``build/`` is ignored by git).
MODEL_DIR = Path("build") / "models"


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


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 300,
          lr: float = 1e-2, batch: int | None = None, seed: int = 0,
          initialize: bool = True, anneal: bool = False,
          teacher: torch.Tensor | None = None,
          report: Callable[[int, float, float], None] | None = None) -> nn.Module:
    """Adam on the cross-entropy of ``model(x)`` against the labels ``y`` for ``epochs``
    passes over the data; returns ``model`` in eval mode.

    With ``teacher`` (another model's logits on ``x``, ``N×classes``) the target is the
    teacher's softmax instead of the labels (knowledge distillation at temperature 1, as
    quantization-aware training from a float model does it: the float model's
    confidences carry more than the labels, and a student that can only approximate
    them is not pushed to fit the few images the float model gets wrong); ``y`` then only
    scores the reported accuracy.

    With ``initialize``, ``torch.manual_seed(seed)`` then Kaiming-uniform weights (every
    parameter of two or more dimensions), unit normalization scales (a one-dimensional
    ``weight``, as of BatchNorm) and zero biases; without, training goes on from
    the model's current parameters (quantization-aware fine-tuning from trained float
    weights) and the global random state is left alone. ``batch=None`` takes one step per
    epoch on the whole data; else each epoch visits the data in a random order (a
    generator of its own, seeded with ``seed``) in mini-batches of ``batch``. With
    ``anneal`` the learning rate falls from ``lr`` to 0 over all steps on a half cosine
    (the end point of fine-tuning then does not jitter with the last steps). Runs on one
    CPU thread (``one_thread``): the result depends only on the arguments. ``report``, if
    given, is called after each epoch with the epoch (from 1), the mean loss and the
    accuracy of the epoch's batches (as they were scored before each step).
    """
    with one_thread():
        if initialize:
            torch.manual_seed(seed)
            for name, parameter in model.named_parameters():
                if parameter.dim() > 1:
                    nn.init.kaiming_uniform_(parameter, nonlinearity="relu")
                elif name.rpartition(".")[2] == "weight":
                    # a normalization's scale: zero would cut every path through it
                    nn.init.ones_(parameter)
                else:
                    nn.init.zeros_(parameter)
        shuffle = None if batch is None else torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * (1 if batch is None else -(-len(x) // batch))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1)) \
            if anneal else None
        model.train()
        for epoch in range(epochs):
            if shuffle is None:
                batches = [slice(None)]
            else:
                order = torch.randperm(len(x), generator=shuffle)
                batches = [order[start:start + batch] for start in range(0, len(x), batch)]
            loss_sum, right = 0.0, 0
            for chosen in batches:
                optimizer.zero_grad()
                logits = model(x[chosen])
                target = y[chosen] if teacher is None else \
                    teacher[chosen].to(logits.dtype).softmax(1)
                loss = nn.functional.cross_entropy(logits, target)
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                if report is not None:
                    loss_sum += loss.item() * len(logits)
                    right += int((logits.argmax(1) == y[chosen]).sum())
            if report is not None:
                report(epoch + 1, loss_sum / len(x), right / len(x))
    return model.eval()


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
