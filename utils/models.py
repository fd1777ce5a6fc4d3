"""Models shared by chapters: not the lesson of any chapter, but the yardstick of
several.

:class:`FashionClassifier` scores generated Fashion-MNIST images (class accuracy, and
the features behind a Frechet distance); it is trained once and cached. The same network
trained on MNIST (:func:`digit_classifier`) is the yardstick for generated digits.
"""

from __future__ import annotations

import numbers
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data, sources
from .metrics import frechet_distance
from .runtime import is_smoke
from .training import progress

#: Fashion-MNIST's ten classes, in label order.
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class FashionClassifier(nn.Module):
    """A small CNN for 28x28 grey images with pixels in [0, 1]; about 91-92% test
    accuracy on Fashion-MNIST, about 98% on MNIST digits (2 epochs: 0.9815 measured)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 1x28x28 -> 32x14x14
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 64x7x7
            nn.Flatten(),  # -> 3136
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),  # -> 128 features
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128 penultimate-layer features used for the Frechet distance."""
        data.check_images(x, (1, 28, 28), "FashionClassifier input")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def classify(
    model: FashionClassifier, x: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted labels and penultimate features for images (N, 1, 28, 28) in [0, 1], on
    the CPU."""
    model.eval()
    device = next(model.parameters()).device
    labels, features = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i : i + batch_size].to(device))
        features.append(f.cpu())
        labels.append(model.head(f).argmax(1).cpu())
    return torch.cat(labels), torch.cat(features)


def fashion_classifier(
    device: torch.device,
    epochs: int = 4,
    train_size: int | None = None,
    cache: bool = True,
) -> FashionClassifier:
    """The Fashion-MNIST classifier: loaded from the cache, else trained (seeded),
    tested and cached.

    The cache file's name records ``epochs`` and ``train_size``, so different settings
    never mix. A cached file that does not load into the model is retrained and
    replaced; a cache that cannot be written only costs the next run the training (a
    warning says so).
    """
    return _classifier(device, True, epochs, train_size, cache)


def digit_classifier(
    device: torch.device,
    epochs: int = 2,
    train_size: int | None = None,
    cache: bool = True,
) -> FashionClassifier:
    """The same network trained on MNIST digits: the yardstick for generated digits
    (class shares, and the features behind a Frechet distance). Cached like
    :func:`fashion_classifier`, under its own name."""
    return _classifier(device, False, epochs, train_size, cache)


def _classifier(
    device: torch.device,
    fashion: bool,
    epochs: int,
    train_size: int | None,
    cache: bool,
) -> FashionClassifier:
    kind = "fashion" if fashion else "digit"
    title = _title(fashion)
    name = f"{kind}_classifier_e{epochs}_n{train_size or 'all'}.pt"
    path = sources.cache_dir() / "checkpoints" / name
    model = FashionClassifier().to(device)
    # the whole test set; its first 1,000 images in the smoke profile
    limit = 1_000 if is_smoke() else None
    x_test, y_test = data.mnist_tensors(train=False, fashion=fashion, limit=limit)
    if cache and path.is_file() and _load(model, path, device):
        print(f"Loaded the {title} classifier from the cache ({name})")
    else:
        _train(model, device, fashion, epochs, train_size)
        if cache:
            _save(model, path)
    accuracy = (classify(model, x_test)[0] == y_test).float().mean().item()
    print(
        f"{title} classifier: test accuracy "
        f"{accuracy:.4f} on {len(y_test):,} real test images"
    )
    return model


def _title(fashion: bool) -> str:
    """The classifier's data set, as its messages name it."""
    return "Fashion-MNIST" if fashion else "MNIST digit"


def _load(model: FashionClassifier, path: Path, device: torch.device) -> bool:
    """Load a cached state into ``model``; False (with a warning) when the file is
    damaged or another model's. A half-loaded model needs no reset: :func:`_train`,
    which follows, re-initialises every layer."""
    try:
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return True
    except Exception as exc:  # noqa: BLE001 -- any failure: the file is not a usable checkpoint
        warnings.warn(
            f"the cached classifier {path.name} could not be loaded "
            f"({type(exc).__name__}); training it again",
            stacklevel=3,
        )
        return False


def _train(
    model: FashionClassifier,
    device: torch.device,
    fashion: bool,
    epochs: int,
    train_size: int | None,
) -> None:
    x, y = data.mnist_tensors(train=True, fashion=fashion, limit=train_size)
    with torch.random.fork_rng(
        devices=[]
    ):  # seeded, without disturbing the chapter's random stream
        torch.manual_seed(0)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in progress(range(epochs), desc=f"training the {_title(fashion)} classifier"):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 128):
            batch = order[i : i + 128]
            loss = F.cross_entropy(model(x[batch].to(device)), y[batch].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def _save(model: FashionClassifier, path: Path) -> None:
    try:
        with sources.atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
    except OSError as exc:
        warnings.warn(
            f"the trained classifier could not be cached ({type(exc).__name__}: "
            f"{exc}); it is used now and trained again next time",
            stacklevel=3,
        )


def fashion_label(label: int | str | torch.Tensor) -> int:
    """The class index for a Fashion-MNIST label given as 0..9 or a name ("sneaker",
    "Ankle boot").

    Names are matched case-insensitively, ignoring spaces, hyphens and slashes;
    "t-shirt", "top" and "boot" are accepted too. Anything else gets a ValueError that
    lists the valid labels.
    """
    valid = ", ".join(f"{i}={name}" for i, name in enumerate(FASHION_CLASSES))
    if isinstance(label, (bool, np.bool_)):  # bool is an int subclass; True is no class
        raise ValueError(
            f"unknown Fashion-MNIST label {label!r}; valid labels: {valid}"
        )
    if isinstance(label, torch.Tensor):
        if (
            label.numel() != 1
            or label.dtype.is_floating_point
            or label.dtype.is_complex
            or label.dtype == torch.bool
        ):
            raise ValueError(
                "a Fashion-MNIST label tensor must hold one "
                f"integer, got {label!r}; valid labels: {valid}"
            )
        label = int(label.item())
    if isinstance(label, numbers.Integral):
        label = int(label)
        if 0 <= label < len(FASHION_CLASSES):
            return label
        raise ValueError(
            f"Fashion-MNIST label {label} is outside 0..9; valid labels: {valid}"
        )
    if isinstance(label, str):
        key = "".join(ch for ch in label.lower() if ch.isalnum())
        names = {
            "".join(ch for ch in n.lower() if ch.isalnum()): i
            for i, n in enumerate(FASHION_CLASSES)
        }
        names.update({"tshirt": 0, "top": 0, "boot": 9})
        if key in names:
            return names[key]
    raise ValueError(f"unknown Fashion-MNIST label {label!r}; valid labels: {valid}")


def sample_scores(
    model: FashionClassifier,
    samples: torch.Tensor,
    reference: torch.Tensor,
    requested: torch.Tensor | None = None,
) -> dict[str, float]:
    """Scores of generated images (N, 1, 28, 28) in [0, 1] against real reference
    images.

    ``frechet_distance``: between the classifier features of samples and reference
    (lower is better); with ``requested`` labels, ``class_accuracy``: how often the
    classifier predicts the class each sample was asked to be. ``reference`` is either
    images (M, 1, 28, 28) or their features from :func:`classify` (M, D), so a chapter
    that scores several generators against the same real images computes those features
    once.
    """
    predicted, features = classify(model, samples)
    reference_features = (
        reference if reference.dim() == 2 else classify(model, reference)[1]
    )
    scores = {"frechet_distance": frechet_distance(features, reference_features)}
    if requested is not None:
        scores["class_accuracy"] = (predicted == requested.cpu()).float().mean().item()
    return scores


def per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each Fashion-MNIST class, the share of its items (by ``labels``) predicted as
    that class (10,).

    A class without items gets NaN rather than a misleading 0.
    """
    if predicted.shape != labels.shape or predicted.dim() != 1:
        raise ValueError(
            f"predicted and labels must be two 1-d tensors of the same length, got "
            f"{tuple(predicted.shape)} and {tuple(labels.shape)}"
        )
    predicted, labels = predicted.cpu(), labels.cpu()
    return torch.stack(
        [
            (predicted[labels == c] == c).float().mean()
            for c in range(len(FASHION_CLASSES))
        ]
    )


def plot_per_class(
    generated: torch.Tensor, real: torch.Tensor, generated_label: str, ax=None
):
    """Bars of two per-class accuracies (10,) side by side: generated samples and real
    test images."""
    import matplotlib.pyplot as plt  # only chapters that plot need it

    if ax is None:
        ax = plt.subplots(figsize=(10, 3.2))[1]
    positions = np.arange(len(FASHION_CLASSES))
    ax.bar(
        positions - 0.2,
        torch.as_tensor(generated).cpu().numpy(),
        width=0.4,
        label=generated_label,
    )
    ax.bar(
        positions + 0.2,
        torch.as_tensor(real).cpu().numpy(),
        width=0.4,
        label="real test images of the class",
    )
    ax.set_xticks(positions, FASHION_CLASSES, rotation=30)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("classified as requested")
    ax.legend(loc="lower left")
    return ax
