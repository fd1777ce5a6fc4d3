"""Images for the book: loading them (path, URL or bundled sample) and drawing titled
grids."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import sources


def grid_array(
    images: torch.Tensor,
    nrow: int = 8,
    padding: int = 2,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """A batch (N, C, H, W) tiled into one (H', W', C) array in [0, 1] for ``imshow``.

    ``value_range`` maps e.g. Tanh outputs (-1, 1) to [0, 1]; by default values are
    clipped.
    """
    if images.dim() == 3:  # (N, H, W): add the channel axis
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}"
        )
    images = images.detach().float().cpu()
    if value_range is not None:
        low, high = value_range
        images = (images - low) / (high - low)
    from torchvision.utils import make_grid  # here: importing torchvision takes seconds

    grid = make_grid(images.clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


#: Figures of images are drawn at an integer zoom of their pixels, at most this wide.
MAX_WIDTH_PX = 1000
_DPI = 100


def _zoom(width_px: int, zoom: int | None) -> int:
    """The integer zoom for a figure ``width_px`` pixels wide: as given, else the
    largest up to 3 that keeps it within :data:`MAX_WIDTH_PX` (1 for images that are
    wider already)."""
    if zoom is not None:
        if not isinstance(zoom, int) or isinstance(zoom, bool) or zoom < 1:
            raise ValueError(f"zoom must be a positive integer, got {zoom!r}")
        return zoom
    return max(1, min(3, MAX_WIDTH_PX // max(width_px, 1)))


def show_rows(
    rows: Sequence[torch.Tensor],
    titles: Sequence[str],
    *,
    value_range: tuple[float, float] | None = None,
    zoom: int | None = None,
    suptitle: str | None = None,
    path: str | Path | None = None,
) -> plt.Figure:
    """One figure with a titled row per batch, e.g. originals / noisy / reconstructed.

    Each row is tiled left to right at an integer zoom of its pixels (see
    :func:`_zoom`); the figure is shown inline (photographs as JPEG, see
    :func:`_finish`) and saved when ``path`` is given.
    """
    if len(rows) != len(titles):
        raise ValueError(f"got {len(rows)} rows but {len(titles)} titles")
    arrays = [grid_array(r, nrow=len(r), value_range=value_range) for r in rows]
    height, width = arrays[0].shape[:2]
    z = _zoom(width, zoom)
    title_in = 0.3
    fig, axes = plt.subplots(
        len(rows),
        1,
        squeeze=False,
        dpi=_DPI,
        figsize=(
            z * width / _DPI,
            len(rows) * (z * height / _DPI + title_in) + (0.4 if suptitle else 0),
        ),
    )
    for ax, array, title in zip(axes[:, 0], arrays, titles):
        _draw(ax, array, title, fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig, path, photo=any(_is_photo(r) for r in rows))


def show_grid(
    images: torch.Tensor,
    title: str | None = None,
    nrow: int = 8,
    *,
    value_range: tuple[float, float] | None = None,
    zoom: int | None = None,
    path: str | Path | None = None,
) -> plt.Figure:
    """One titled grid of images at an integer zoom of its pixels, shown inline and
    saved when ``path`` is given."""
    array = grid_array(images, nrow=nrow, value_range=value_range)
    z = _zoom(array.shape[1], zoom)
    fig, ax = plt.subplots(
        dpi=_DPI,
        figsize=(
            z * array.shape[1] / _DPI,
            z * array.shape[0] / _DPI + (0.3 if title else 0),
        ),
    )
    _draw(ax, array, title)
    return _finish(fig, path, photo=_is_photo(images))


def show_images(
    pictures: Sequence[torch.Tensor],
    titles: Sequence[str],
    *,
    zoom: int | None = None,
    suptitle: str | None = None,
    path: str | Path | None = None,
) -> plt.Figure:
    """Images of possibly different sizes side by side, each (1 or N, C, H, W) with its
    own title."""
    if len(pictures) != len(titles):
        raise ValueError(f"got {len(pictures)} images but {len(titles)} titles")
    arrays = [
        grid_array(p[:1] if p.dim() == 4 else p.unsqueeze(0), nrow=1, padding=0)
        for p in pictures
    ]
    widths = [a.shape[1] for a in arrays]
    height = max(a.shape[0] for a in arrays)
    z = _zoom(sum(widths) + 10 * len(arrays), zoom)
    titled = any("\n" in t for t in titles)
    fig, axes = plt.subplots(
        1,
        len(arrays),
        squeeze=False,
        dpi=_DPI,
        gridspec_kw={"width_ratios": widths},
        figsize=(
            z * (sum(widths) + 10 * len(arrays)) / _DPI,
            z * height / _DPI + (0.6 if titled else 0.35) + (0.4 if suptitle else 0),
        ),
    )
    for ax, array, title in zip(axes[0], arrays, titles):
        _draw(ax, array, title, fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig, path, photo=any(_is_photo(p) for p in pictures))


def _is_photo(images: torch.Tensor) -> bool:
    """Colour images are treated as photographs (stored as JPEG); grey ones as drawings
    (PNG)."""
    return images.dim() >= 3 and images.shape[-3] == 3


def _draw(
    ax: plt.Axes, array: np.ndarray, title: str | None, fontsize: float | None = None
) -> None:
    ax.imshow(
        array.squeeze(-1) if array.shape[-1] == 1 else array,
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=fontsize)


def _finish(
    fig: plt.Figure, path: str | Path | None, photo: bool = False
) -> plt.Figure:
    """Lay out, save when asked, and in a notebook show a photograph as a JPEG (a PNG of
    a photo is several times larger for no visible gain); drawings are left to the
    inline backend's PNG."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    if photo and _in_notebook():
        import io

        from IPython.display import Image, display

        buffer = io.BytesIO()
        fig.savefig(
            buffer,
            format="jpeg",
            dpi=_DPI,
            bbox_inches="tight",
            pil_kwargs={"quality": 88},
        )
        plt.close(fig)
        display(Image(data=buffer.getvalue(), format="jpeg"))
    return fig


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


# --- Loading images -------------------------------------------------------------------

#: Files the helpers ship as package data (installed with ``utils``, e.g. on Colab).
ASSETS = Path(__file__).resolve().parent / "assets"
#: Public-domain Starry Night (van Gogh, 1889), for readers without the book's files
#: (Colab).
STARRY_NIGHT_URL = (
    "https://upload.wikimedia.org/wikipedia/commons/thumb/e/ea/"
    "Van_Gogh_-_Starry_Night_-_Google_Art_Project.jpg/"
    "1024px-Van_Gogh_-_Starry_Night_-_Google_Art_Project.jpg"
)
#: Bundled sample images by name, and where they come from.
SAMPLES = {
    "starry_night": (
        "Vincent van Gogh, The Starry Night (1889); "
        "utils/assets/, the data folder or Wikimedia"
    ),
    "grace_hopper": "Grace Hopper, from matplotlib's sample data",
    "astronaut": "Eileen Collins, from scikit-image's sample data",
    "chelsea": "Chelsea the cat, from scikit-image's sample data",
    "coffee": "a cup of coffee, from scikit-image's sample data",
}


#: SHA-256 of the committed Starry Night (the copy in utils/assets/ and in the data
#: folder).
STARRY_NIGHT = sources.Expected(
    "starry_night.jpg",
    sha256="accda7a19a90f22a4a922fdc8c230167d7abf5f80882171e2cee125c5f12481d",
    source="of the book's copy",
)


def _sample(name: str):
    from PIL import Image

    if name == "starry_night":
        for folder in (ASSETS, sources.data_dir() / "images"):
            path = folder / STARRY_NIGHT.name
            if path.is_file() and STARRY_NIGHT.problem(path) is None:
                return open_image(path)
        how_to = (
            f"put {STARRY_NIGHT.name} into {sources.data_dir() / 'images'} (utils "
            f"ships it in {ASSETS}: a reinstall of utils brings it back)"
        )
        return open_image(_fetch(STARRY_NIGHT_URL, how_to))
    if name == "grace_hopper":
        from matplotlib import cbook

        return Image.open(cbook.get_sample_data("grace_hopper.jpg"))
    try:
        from skimage import data as skdata
    except ImportError:
        raise ModuleNotFoundError(
            f"the sample {name!r} comes with scikit-image: pip install scikit-image"
        ) from None
    return Image.fromarray(getattr(skdata, name)())


def _check_image(path: Path) -> None:
    """A structural check for a downloaded image: Pillow decodes it completely."""
    open_image(path, name="it").close()


def url_cache_path(url: str) -> Path:
    """Where a downloaded image is cached: keyed by the whole URL, so two URLs ending in
    the same file name never share a file; the name is kept for readers who look into
    the cache."""
    import hashlib

    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = Path(url.split("?")[0].split("#")[0]).name or "image"
    return sources.cache_dir() / "images" / f"{key}-{name}"


def _fetch(url: str, how_to: str = "download it yourself and pass its path") -> Path:
    """The cached copy of the image at ``url``, downloaded and checked when missing;
    else :class:`~utils.sources.DatasetNotFoundError` saying why and ``how_to``."""
    expected = sources.Expected(
        Path(url.split("?")[0]).name or "image", check=_check_image
    )
    dest = url_cache_path(url)
    if dest.is_file() and expected.problem(dest) is None:
        return dest
    if sources.offline():
        raise sources.DatasetNotFoundError(
            f"the image {url} is not in the cache and {sources.OFFLINE_ENV} is set: "
            + how_to
        )
    try:
        sources.download(url, dest, expected)
    except Exception as exc:  # noqa: BLE001
        raise sources.DatasetNotFoundError(
            f"could not download the image {url} ({type(exc).__name__}: {exc}); "
            + how_to
        ) from None
    return dest


#: The most pixels an image may have: a larger one is refused before it is decoded (a
#: decompression bomb declares a huge size in a few bytes). 40 megapixels as float32
#: RGB take 480 MB.
MAX_PIXELS = 40_000_000


def open_image(source, name: str | None = None, max_pixels: int = MAX_PIXELS):
    """A Pillow image decoded from a path or file object, or :class:`BadFileError`
    naming ``name`` (default: the path) when it is not a readable image: unknown
    format, damaged or truncated data, or more than ``max_pixels`` pixels (checked
    before decoding). No Pillow exception reaches the caller."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    name = str(source) if name is None else name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        width, height = image.size
        if width * height > max_pixels:
            image.close()
            raise sources.BadFileError(
                f"{name} is {width:,}x{height:,} pixels, more than the "
                f"{max_pixels:,} an image may have here (a decompression bomb?): "
                "scale it down first"
            )
        image.load()
    except sources.BadFileError:
        raise
    except UnidentifiedImageError:
        raise sources.BadFileError(
            f"{name} is not an image that Pillow can read (JPEG, PNG, ...)"
        ) from None
    except Image.DecompressionBombError:
        raise sources.BadFileError(
            f"{name} declares far more than the {max_pixels:,} pixels an image may "
            "have here (a decompression bomb?)"
        ) from None
    except Exception as exc:  # noqa: BLE001 -- any decoding failure: a damaged image
        raise sources.BadFileError(
            f"{name} could not be read as an image, it is damaged or truncated "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return image


#: Image modes with more than 8 bits per value, and the largest value of each.
_WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}


def _rgb_array(image) -> np.ndarray:
    """Any supported Pillow image -> float32 array (H, W, 3) in [0, 1]; transparency
    over white."""
    from PIL import Image

    if (
        image.mode in _WIDE_MODES
    ):  # 16-bit grey: scale by its own range, not clipped to 8 bits
        grey = np.asarray(image, dtype=np.float32) / _WIDE_MODES[image.mode]
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("I", "F"):
        raise ValueError(
            f"images of mode {image.mode!r} (32-bit "
            f"{'integer' if image.mode == 'I' else 'float'} values) have no fixed "
            "range to map to [0, 1]: save it as an 8- or 16-bit image first"
        )
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _target_size(size, height: int, width: int) -> tuple[int, int]:
    def whole(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if whole(size):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        scale = size / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(whole(v) and v > 0 for v in size)
    ):
        return int(size[0]), int(size[1])
    raise ValueError(
        "size must be a positive integer (the shorter side) or (height, width) of "
        f"positive integers, got {size!r}"
    )


def load_image(
    source: str | Path, size: int | tuple[int, int] | None = None
) -> torch.Tensor:
    """An RGB image as a tensor (1, 3, H, W) in [0, 1], from a path, a URL or a sample
    name.

    Sample names are the keys of :data:`SAMPLES`. Grey, palette, CMYK, 16-bit grey and
    transparent images are converted to RGB values in [0, 1] (transparency over white);
    32-bit integer or float images are rejected. ``size`` is the length of the shorter
    side, or (height, width).
    """
    text = str(source)
    if text.startswith(("http://", "https://")):
        image = open_image(_fetch(text))
    elif Path(text).expanduser().is_file():
        image = open_image(Path(text).expanduser())
    elif text in SAMPLES:
        image = _sample(text)
    else:
        raise FileNotFoundError(
            f"no image at {text!r}: it is not a file, not a URL, and not one of the "
            f"bundled samples ({', '.join(SAMPLES)})"
        )
    array = _rgb_array(image)
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
    if size is not None:
        height, width = _target_size(size, *array.shape[:2])
        tensor = torch.nn.functional.interpolate(
            tensor,
            size=(height, width),
            mode="bicubic",
            antialias=True,
            align_corners=False,
        ).clamp_(0, 1)
    return tensor
