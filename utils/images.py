"""Image grids for the book's figures: rows of tensors with titles, shown inline or saved."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid


def grid_array(images: torch.Tensor, nrow: int = 8, padding: int = 2,
               value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A batch (N, C, H, W) tiled into one (H', W', C) array in [0, 1] for ``imshow``.

    ``value_range`` maps e.g. Tanh outputs (-1, 1) to [0, 1]; by default values are clipped.
    """
    if images.dim() == 3:  # (N, H, W): add the channel axis
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    images = images.detach().float().cpu()
    if value_range is not None:
        low, high = value_range
        images = (images - low) / (high - low)
    grid = make_grid(images.clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def show_rows(rows: Sequence[torch.Tensor], titles: Sequence[str], *,
              value_range: tuple[float, float] | None = None, scale: float = 1.0,
              suptitle: str | None = None, path: str | Path | None = None) -> plt.Figure:
    """One figure with a titled row per batch, e.g. originals / noisy / reconstructed.

    Each row is tiled left to right; the figure is shown inline and saved when ``path`` is given.
    """
    if len(rows) != len(titles):
        raise ValueError(f"got {len(rows)} rows but {len(titles)} titles")
    arrays = [grid_array(r, nrow=len(r), value_range=value_range) for r in rows]
    height, width = arrays[0].shape[:2]
    fig, axes = plt.subplots(len(rows), 1, squeeze=False,
                             figsize=(scale * width / 40, scale * len(rows) * (height / 40 + 0.35)))
    for ax, array, title in zip(axes[:, 0], arrays, titles):
        _draw(ax, array, title, fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig, path)


def show_grid(images: torch.Tensor, title: str | None = None, nrow: int = 8, *,
              value_range: tuple[float, float] | None = None, size: float = 5.0,
              path: str | Path | None = None) -> plt.Figure:
    """One titled grid of images, shown inline and saved when ``path`` is given."""
    array = grid_array(images, nrow=nrow, value_range=value_range)
    fig, ax = plt.subplots(figsize=(size, size * array.shape[0] / array.shape[1]))
    _draw(ax, array, title)
    return _finish(fig, path)


def _draw(ax: plt.Axes, array: np.ndarray, title: str | None, fontsize: float | None = None) -> None:
    ax.imshow(array.squeeze(-1) if array.shape[-1] == 1 else array, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=fontsize)


def _finish(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    return fig
