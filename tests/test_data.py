"""The datasets: real files from the data folder, damaged copies of them, and synthetic
stand-ins."""

import gzip
import io
import shutil
import struct
import zipfile

import pytest
import torch

from conftest import real_file
from utils import data, sources

MNIST_NAMES = [e.name for e in data.MNIST_FILES.files]


def _copy_mnist(dest):
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_NAMES:
        shutil.copy(real_file(f"MNIST/raw/{name}"), raw / name)
    return raw


def test_real_mnist_loads_verified_and_unpacks_into_the_cache(data_home, cache_home):
    raw = _copy_mnist(data_home)
    train, test = data.mnist(train=True), data.mnist(train=False)
    assert (len(train), len(test)) == (60_000, 10_000)
    # the data folder is untouched
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_NAMES)
    image, label = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 5
    x, y = data.as_tensors(test, limit=5)
    assert (
        x.shape == (5, 1, 28, 28)
        and y.tolist() == [7, 2, 1, 0, 4]
        and 0 <= x.min()
        and x.max() <= 1
    )


def test_mnist_tensors_read_without_torchvision_equal_its_dataset(
    data_home, cache_home
):
    _copy_mnist(data_home)
    for train in (True, False):
        x, y = data.mnist_tensors(train=train, limit=300)
        expected = data.as_tensors(data.mnist(train=train), limit=300)
        assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    assert data.mnist_tensors(train=False)[0].shape == (10_000, 1, 28, 28)


def test_the_published_files_are_those_torchvision_lists():
    from torchvision import datasets

    for cls in (datasets.MNIST, datasets.FashionMNIST):
        mirrors, md5s = data._IDX_PUBLISHED[cls.__name__]
        # the same hosts (torchvision 0.17.2 lists MNIST's in the other order)
        assert set(mirrors) == set(cls.mirrors)
        assert md5s == dict(cls.resources)


@pytest.mark.parametrize("damage", ["truncated", "altered", "empty"])
def test_a_damaged_mnist_file_is_rejected_with_its_name_and_the_fix(
    data_home, monkeypatch, damage
):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    raw = _copy_mnist(data_home)
    target = raw / "t10k-labels-idx1-ubyte.gz"
    payload = target.read_bytes()
    target.write_bytes(
        {
            "truncated": payload[: len(payload) // 2],
            "empty": b"",
            "altered": gzip.compress(gzip.decompress(payload)[:-1] + b"\x09"),
        }[damage]
    )
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.mnist(train=False)
    message = str(err.value)
    assert (
        f"data folder: {raw} (t10k-labels-idx1-ubyte.gz: " in message
        and "MNIST/raw" in message
    )
    assert ("the file is empty" if damage == "empty" else "MD5 is") in message


def test_fashion_mnist_files_under_the_mnist_name_are_the_wrong_dataset(
    data_home, monkeypatch
):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    offline = data.FASHION_MNIST_FILES.offline[0]
    if not offline.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    raw = data_home / "MNIST" / "raw"
    shutil.copytree(offline, raw)
    with pytest.raises(
        data.DatasetNotFoundError,
        match=(
            r"unzipped content is [0-9a-f]+, expected [0-9a-f]+ \(published for MNIST\)"
        ),
    ):
        data.mnist(train=False)
    # the same files are right for Fashion-MNIST
    assert len(data.fashion_mnist(train=False)) == 10_000


def test_a_damaged_unpacked_copy_is_rebuilt(data_home, cache_home):
    _copy_mnist(data_home)
    first = data.as_tensors(data.mnist(train=False))
    unpacked = next(
        cache_home.glob("unpacked/MNIST-*/MNIST/raw/t10k-images-idx3-ubyte")
    )
    # a partial copy left by an old crash
    unpacked.write_bytes(unpacked.read_bytes()[:1000])
    again = data.as_tensors(data.mnist(train=False))
    assert torch.equal(first[0], again[0]) and unpacked.stat().st_size == 7_840_016
    unpacked.write_bytes(b"")
    assert torch.equal(data.as_tensors(data.mnist(train=False))[0], first[0])


def test_fashion_mnist_names_the_debian_package_when_missing(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    spec = data.FileSet(
        **{**data.FASHION_MNIST_FILES.__dict__, "offline": (data_home / "nothing",)}
    )
    monkeypatch.setattr(data, "FASHION_MNIST_FILES", spec)
    with pytest.raises(
        data.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"
    ):
        data.fashion_mnist()


def test_take_and_its_bad_input():
    items = list(range(10))
    assert list(data.take(items, 3)) == [0, 1, 2]
    assert data.take(items, None) is items and data.take(items, 50) is items
    with pytest.raises(ValueError, match="positive"):
        data.take(items, 0)


def test_check_images_names_the_expected_shape():
    assert data.check_images(torch.zeros(2, 1, 28, 28), (1, 28, 28)).shape == (
        2,
        1,
        28,
        28,
    )
    with pytest.raises(
        ValueError, match=r"must have shape \(batch, 1, 28, 28\), got \(2, 28, 28\)"
    ):
        data.check_images(torch.zeros(2, 28, 28), (1, 28, 28))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        data.check_images([[0.0]], (1,))


# --- CelebA ---------------------------------------------------------------------------


def _face_zip(path, n=3):
    from PIL import Image

    with zipfile.ZipFile(path, "w") as archive:
        for i in range(n):
            buffer = io.BytesIO()
            Image.new("RGB", (80, 60), (10 * i, 20, 30)).save(buffer, "JPEG")
            archive.writestr(f"{i:06d}.jpg", buffer.getvalue())
    return path


def test_celeba_faces_from_a_zip_in_the_data_folder(data_home):
    _face_zip(data_home / "celeba64-10k.zip")
    faces = data.celeba_faces(limit=2, size=32)
    assert faces.shape == (2, 3, 32, 32) and faces.dtype == torch.uint8
    with pytest.raises(
        data.BadFileError, match="holds 3 face images, fewer than the 5 asked for"
    ):
        data.celeba_faces(limit=5)


def test_the_real_face_zip_passes_and_a_damaged_copy_does_not(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    real = real_file("celeba64-10k.zip")
    payload = real.read_bytes()
    (data_home / "celeba64-10k.zip").write_bytes(payload)
    assert data.celeba_faces(limit=4).shape == (4, 3, 64, 64)
    sources._VERIFIED.clear()
    # a partial download
    (data_home / "celeba64-10k.zip").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(
        data.DatasetNotFoundError,
        match=r"celeba64-10k.zip: it is not a readable zip archive",
    ):
        data.celeba_faces(limit=4)


def test_a_zip_with_a_damaged_member_is_rejected(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    path = _face_zip(data_home / "celeba64-10k.zip")
    payload = bytearray(path.read_bytes())
    payload[200] ^= 0xFF  # inside the first member's data: its CRC no longer matches
    path.write_bytes(bytes(payload))
    with pytest.raises(
        data.DatasetNotFoundError,
        match=r"000000.jpg is damaged \(CRC mismatch\)|does not decode",
    ):
        data.celeba_faces(limit=2)


def test_celeba_missing_everywhere_names_every_source(data_home, monkeypatch):
    def no_host(*args, **kwargs):
        raise RuntimeError("quota exceeded")

    monkeypatch.setattr(data, "_celeba_zip_from_torchvision", no_host)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.celeba_faces(limit=4)
    message = str(err.value)
    assert str(data_home / "celeba") in message and "quota exceeded" in message
    assert "daily quota" in message and "celeba64-10k.zip" in message
    # the one message of locate(), not a second one
    assert message.count("To provide it") == 1


# --- Texts ----------------------------------------------------------------------------


def _nietzsche_like(extra: bytes = b"") -> bytes:
    body = (
        b"preface\n\n\nsupposing that truth is a woman--what then? "
        + b"werthsch\xe3\xa4tzung " * 40_000
    )
    return body[:600_000] + extra


def test_nietzsche_is_read_as_latin1_from_the_data_folder(data_home):
    (data_home / "nietzsche.txt").write_bytes(_nietzsche_like())  # not valid UTF-8
    text = data.nietzsche_text()
    assert (
        text.startswith("preface")
        and len(text) == 600_000
        and "werthsch\xe3\xa4tzung" in text
    )


def test_the_real_nietzsche_text_passes(data_home):
    (data_home / "nietzsche.txt").write_bytes(real_file("nietzsche.txt").read_bytes())
    assert len(data.nietzsche_text()) == 600_902


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "the file is empty"),
        (
            b"preface\n\n\nsupposing that truth is a woman",
            "bytes, expected 590,000 to 610,000",
        ),
        (b"<!DOCTYPE html><html><head>" + b" " * 600_000, "it is a web page"),
        (b"\x00\x01" * 300_000, "NUL bytes"),
        (b"another book entirely. " * 26_000, "it does not start with 'preface"),
    ],
)
def test_a_wrong_nietzsche_file_is_rejected(data_home, monkeypatch, payload, reason):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    (data_home / "nietzsche.txt").write_bytes(payload)
    with pytest.raises(
        data.DatasetNotFoundError,
        match=r"(?s)Could not find the Nietzsche text.*" + reason,
    ):
        data.nietzsche_text()


def test_wikitext2_without_train_split_says_what_trains_on_what(toy_wikitext):
    with pytest.warns(
        UserWarning,
        match=r"(?s)train.txt was not found.*training on the first 80% of valid.txt",
    ):
        splits = data.wikitext2(held_out=0.2)
    assert (
        splits.train == [f" valid line {i} " for i in range(8)]
        and len(splits.valid) == 2
    )
    assert splits.test == [" test line "] and "train.txt was not found" in splits.note
    description = splits.describe()
    assert "train: valid.txt, lines 1-8 (train.txt not found) (8 lines)" in description
    assert (
        "valid: valid.txt, lines 9-10" in description
        and "test : test.txt" in description
    )
    with pytest.raises(ValueError, match="held_out must be a fraction"):
        data.wikitext2(held_out=1.0)


def test_wikitext2_can_leave_the_warning_to_the_chapter(toy_wikitext, recwarn):
    assert "valid.txt" in data.wikitext2(warn=False).note and not recwarn.list


def test_wikitext2_uses_a_train_txt_that_passes_its_check(toy_wikitext):
    # 277 bytes a line
    words = " ".join(["a plausible line of tokenized wikipedia text"] * 6) + " \n"
    (toy_wikitext / "train.txt").write_text(
        words[:90] + "\n" + words * (data.WIKITEXT2_TRAIN_LINES - 2)
    )
    with pytest.warns(
        UserWarning, match="train.txt was not found"
    ):  # one line short: rejected, not used
        assert data.wikitext2().sources["train"].startswith("valid.txt")
    (toy_wikitext / "train.txt").write_text(words * data.WIKITEXT2_TRAIN_LINES)
    splits = data.wikitext2()
    assert (
        len(splits.train) == data.WIKITEXT2_TRAIN_LINES
        and splits.sources["train"] == "train.txt"
    )
    assert splits.note == ""


def test_the_real_wikitext_files_pass_and_an_altered_copy_does_not(
    data_home, monkeypatch
):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    folder = data_home / "wikitext-2"
    folder.mkdir()
    for name in ("valid.txt", "test.txt"):
        shutil.copy(real_file(f"wikitext-2/{name}"), folder / name)
    assert len(data.wikitext2(warn=False).test) == 4_358
    (folder / "test.txt").write_text(
        (folder / "test.txt").read_text().replace(" the ", " a ", 1)
    )
    with pytest.raises(
        data.DatasetNotFoundError,
        match=r"test.txt: MD5 is [0-9a-f]+, expected 781c9418",
    ):
        data.wikitext2(warn=False)


def test_wikitext2_missing_gives_one_clear_error(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    with pytest.raises(
        data.DatasetNotFoundError,
        match=(
            r"(?s)Could not find WikiText-2 \(valid.txt "
            r"and test.txt\).*valid.txt, test.txt into"
        ),
    ):
        data.wikitext2()


def _idx(magic, *dims):
    return struct.pack(">I" + "I" * len(dims), magic, *dims)


def test_the_idx_structure_check():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x"
        path.write_bytes(_idx(2049, 3) + b"\x01\x02\x03")
        assert data._idx_problem(path) is None
        path.write_bytes(_idx(2049, 3) + b"\x01")
        assert "header promises 11" in data._idx_problem(path)
        path.write_bytes(_idx(2051, 2, 2, 2) + bytes(8))
        assert data._idx_problem(path) is None
        path.write_bytes(_idx(1234, 1) + b"\x00")
        assert "magic number 1234" in data._idx_problem(path)
        path.write_bytes(b"\x00")
        assert "too short" in data._idx_problem(path)


_UNPACK = """
import hashlib, sys
from utils import data
# the same unpacking as data.mnist, without torchvision's import in each process
images, labels = data.mnist_tensors(train=False)
print(hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest())
"""


def test_processes_unpacking_into_one_cache_at_once_get_identical_data(tmp_path):
    import subprocess
    import sys

    real_file("MNIST/raw/t10k-images-idx3-ubyte.gz")
    from conftest import REAL_DATA_DIR

    env = {
        "GDL_DATA_DIR": str(REAL_DATA_DIR),
        "GDL_CACHE_DIR": str(tmp_path / "cache"),
        "GDL_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _UNPACK],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    digests = {out.strip() for out, _ in outputs}
    assert len(digests) == 1
    unpacked = list((tmp_path / "cache").glob("unpacked/MNIST-*/MNIST/raw/*"))
    # no temp files
    assert sorted(p.name for p in unpacked) == sorted(
        n.removesuffix(".gz") for n in MNIST_NAMES
    )
