"""Images for the book: loading them (path, URL or bundled sample) and drawing titled grids."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid

from . import data


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


# --- Loading images -----------------------------------------------------------------------

_BOOK_IMAGES = Path(__file__).resolve().parent.parent / "book" / "images"
#: Public-domain Starry Night (van Gogh, 1889), for readers without the book's files (Colab).
STARRY_NIGHT_URL = ("https://upload.wikimedia.org/wikipedia/commons/thumb/e/ea/"
                    "Van_Gogh_-_Starry_Night_-_Google_Art_Project.jpg/1024px-Van_Gogh_-_Starry_Night_-_Google_Art_Project.jpg")
#: Bundled sample images by name, and where they come from.
SAMPLES = {
    "starry_night": "Vincent van Gogh, The Starry Night (1889); book/images/, the data folder or Wikimedia",
    "grace_hopper": "Grace Hopper, from matplotlib's sample data",
    "astronaut": "Eileen Collins, from scikit-image's sample data",
    "chelsea": "Chelsea the cat, from scikit-image's sample data",
    "coffee": "a cup of coffee, from scikit-image's sample data",
}


def _sample(name: str):
    from PIL import Image

    if name == "starry_night":
        for folder in (_BOOK_IMAGES, data.data_dir() / "images"):
            if (folder / "starry_night.jpg").is_file():
                return Image.open(folder / "starry_night.jpg")
        return _open(_fetch(STARRY_NIGHT_URL))
    if name == "grace_hopper":
        from matplotlib import cbook

        return Image.open(cbook.get_sample_data("grace_hopper.jpg"))
    try:
        from skimage import data as skdata
    except ImportError:
        raise ModuleNotFoundError(f"the sample {name!r} comes with scikit-image: pip install scikit-image") from None
    return Image.fromarray(getattr(skdata, name)())


def _fetch(url: str) -> Path:
    dest = data.cache_dir() / "images" / Path(url.split("?")[0]).name
    if not dest.is_file():
        try:
            data.download(url, dest)
        except Exception as exc:  # noqa: BLE001
            raise FileNotFoundError(f"could not download the image {url} ({type(exc).__name__}: {exc}); "
                                    "download it yourself and pass its path") from None
    return dest


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image that Pillow can read (JPEG, PNG, ...)") from None
    except OSError as exc:
        raise ValueError(f"{path} could not be read as an image: {exc}") from None
    return image


def load_image(source: str | Path, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """An RGB image as a tensor (1, 3, H, W) in [0, 1], from a path, a URL or a sample name.

    Sample names are the keys of :data:`SAMPLES`. Grey, palette and RGBA images are converted to
    RGB (transparency over white). ``size`` is the length of the shorter side, or (height, width).
    """
    from PIL import Image

    text = str(source)
    if text.startswith(("http://", "https://")):
        image = _open(_fetch(text))
    elif Path(text).expanduser().is_file():
        image = _open(Path(text).expanduser())
    elif text in SAMPLES:
        image = _sample(text)
    else:
        raise FileNotFoundError(f"no image at {text!r}: it is not a file, not a URL, and not one of the "
                                f"bundled samples ({', '.join(SAMPLES)})")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    if size is not None:
        if isinstance(size, int):
            if size <= 0:
                raise ValueError(f"size must be positive, got {size}")
            scale = size / min(image.size)
            size = (round(image.height * scale), round(image.width * scale))
        image = image.resize((size[1], size[0]), Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
