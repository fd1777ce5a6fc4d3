import gzip
import struct
import time
from pathlib import Path

import pytest
import torch

from utils import data

SPEC = data.FileSet(name="the Toy dataset", files=(("a.txt", None), ("b.txt", None)), subdirs=("Toy/raw", "Toy"),
                    mirrors=("http://mirror-one.invalid/", "http://mirror-two.invalid/"),
                    how_to="Ask a friend for the files.")


def _write(folder: Path, names=("a.txt", "b.txt")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(name)
    return folder


def _no_network(url, dest, md5):
    raise OSError("network unreachable")


def test_data_folder_comes_first(data_home):
    _write(data_home / "Toy")
    calls = []
    folder = data.locate(SPEC, fetch=lambda *a: calls.append(a))
    assert folder == data_home / "Toy" and calls == []


def test_online_is_tried_next_mirror_by_mirror(data_home, cache_home):
    calls = []

    def fetch(url, dest, md5):
        calls.append(url)
        if "mirror-one" in url:
            raise OSError("mirror down")
        return _write(dest.parent, [dest.name]) / dest.name

    folder = data.locate(SPEC, fetch=fetch)
    assert folder == cache_home / "Toy/raw"  # downloads go to the cache, never to the data folder
    assert list(data_home.iterdir()) == []
    assert calls == ["http://mirror-one.invalid/a.txt", "http://mirror-two.invalid/a.txt",
                     "http://mirror-two.invalid/b.txt"]
    # The next call finds the downloaded copy in the cache and does not fetch again.
    assert data.locate(SPEC, fetch=_no_network) == cache_home / "Toy/raw"


def test_offline_package_folder_is_the_last_source(data_home, tmp_path):
    offline = _write(tmp_path / "usr/share/datasets/toy")
    spec = data.FileSet(**{**SPEC.__dict__, "offline": (offline,)})
    assert data.locate(spec, fetch=_no_network) == offline


def test_one_clear_error_lists_every_source_tried(data_home, tmp_path):
    spec = data.FileSet(**{**SPEC.__dict__, "offline": (tmp_path / "not-installed",)})
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.locate(spec, fetch=_no_network)
    message = str(err.value)
    for expected in ("Could not find the Toy dataset", str(data_home / "Toy/raw"), "mirror-one.invalid",
                     "mirror-two.invalid", "network unreachable", str(tmp_path / "not-installed"),
                     "a.txt, b.txt", data.DATA_DIR_ENV, "Ask a friend"):
        assert expected in message
    assert isinstance(err.value, FileNotFoundError)


def test_offline_switch_skips_the_network(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    with pytest.raises(data.DatasetNotFoundError, match="skipped because GDL_OFFLINE"):
        data.locate(SPEC, fetch=lambda *a: pytest.fail("fetched although offline"))


def test_unreachable_server_fails_fast_with_the_real_downloader(data_home):
    # Port 9 on the loopback interface has no server: the connection is refused at once.
    spec = data.FileSet(name="the Toy dataset", files=(("a.txt", None),), subdirs=("Toy",),
                        mirrors=("http://127.0.0.1:9/",))
    start = time.perf_counter()
    with pytest.raises(data.DatasetNotFoundError, match=r"online: http://127.0.0.1:9/ \(URLError"):
        data.locate(spec)
    assert time.perf_counter() - start < 15


def test_download_checks_the_checksum_and_leaves_no_partial_file(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"hello")
    dest = tmp_path / "out" / "copy.bin"
    good = data.download(source.as_uri(), dest, md5=data.md5sum(source))
    assert good.read_bytes() == b"hello"
    with pytest.raises(OSError, match="checksum mismatch"):
        data.download(source.as_uri(), tmp_path / "out" / "bad.bin", md5="0" * 32)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy.bin"]


def _idx_images(n: int) -> bytes:
    pixels = bytes((i * 7) % 256 for i in range(n * 28 * 28))
    return struct.pack(">IIII", 2051, n, 28, 28) + pixels


def _idx_labels(n: int) -> bytes:
    return struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n))


def test_mnist_loads_from_gzipped_files_in_the_data_folder(data_home, cache_home):
    raw = data_home / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", 4)):
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_images(n)))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_labels(n)))
    train, test = data.mnist(train=True), data.mnist(train=False)
    assert (len(train), len(test)) == (6, 4)
    assert sorted(p.name for p in raw.iterdir()) == sorted(n for n, _ in data.MNIST_FILES.files)  # untouched
    assert (cache_home / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # unpacked in the cache
    image, label = train[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 3
    assert 0.0 <= image.min() and image.max() <= 1.0
    x, y = data.as_tensors(train, limit=5)
    assert x.shape == (5, 1, 28, 28) and y.tolist() == [0, 1, 2, 3, 4]
    assert torch.allclose(x[3], image)


def test_fashion_mnist_names_the_debian_package_when_missing(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    spec = data.FileSet(**{**data.FASHION_MNIST_FILES.__dict__, "offline": (data_home / "nothing",)})
    monkeypatch.setattr(data, "FASHION_MNIST_FILES", spec)
    with pytest.raises(data.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist()


def test_take_and_its_bad_input():
    items = list(range(10))
    assert list(data.take(items, 3)) == [0, 1, 2]
    assert data.take(items, None) is items and data.take(items, 50) is items
    with pytest.raises(ValueError, match="positive"):
        data.take(items, 0)


def test_check_images_names_the_expected_shape():
    assert data.check_images(torch.zeros(2, 1, 28, 28), (1, 28, 28)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"must have shape \(batch, 1, 28, 28\), got \(2, 28, 28\)"):
        data.check_images(torch.zeros(2, 28, 28), (1, 28, 28))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        data.check_images([[0.0]], (1,))


def test_celeba_faces_from_a_zip_in_the_data_folder(data_home):
    import io
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(data_home / "celeba64-10k.zip", "w") as archive:
        for i in range(3):
            buffer = io.BytesIO()
            Image.new("RGB", (80, 60), (10 * i, 20, 30)).save(buffer, "JPEG")
            archive.writestr(f"{i:06d}.jpg", buffer.getvalue())
    faces = data.celeba_faces(limit=2, size=32)
    assert faces.shape == (2, 3, 32, 32) and faces.dtype == torch.uint8


def test_celeba_missing_everywhere_names_every_source(data_home, monkeypatch):
    def no_host(*args, **kwargs):
        raise RuntimeError("quota exceeded")

    monkeypatch.setattr(data, "_celeba_zip_from_torchvision", no_host)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.celeba_faces(limit=4)
    message = str(err.value)
    assert str(data_home / "celeba") in message and "quota exceeded" in message
    assert "daily quota" in message and "celeba64-10k.zip" in message
    assert message.count("To provide it") == 1  # the one message of locate(), not a second one


def test_a_fetch_function_fills_the_cache_when_no_mirror_has_the_files(data_home, cache_home):
    def build(folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "made.txt").write_text("built from the canonical source")

    spec = data.FileSet(name="a built dataset", files=(("made.txt", None),), subdirs=("built",), fetch=build,
                        fetch_from="the builder")
    assert (data.locate(spec) / "made.txt").read_text() == "built from the canonical source"
    lazy = data.FileSet(name="a lazy dataset", files=(("never.txt", None),), subdirs=("lazy",),
                        fetch=lambda folder: None, fetch_from="the lazy builder")
    with pytest.raises(data.DatasetNotFoundError, match="online: the lazy builder .OSError: it finished without writing never.txt"):
        data.locate(lazy)


def test_nietzsche_is_read_as_latin1_from_the_data_folder(data_home):
    (data_home / "nietzsche.txt").write_bytes(b"preface\n\nwerthsch\xe3\xa4tzung\n")  # not valid UTF-8
    text = data.nietzsche_text()
    assert text.startswith("preface") and len(text) == 25 and "werthsch\xe3\xa4tzung" in text


def test_nietzsche_missing_gives_one_clear_error(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    with pytest.raises(data.DatasetNotFoundError, match=r"(?s)Could not find the Nietzsche text.*nietzsche.txt"):
        data.nietzsche_text()


def _wikitext_folder(data_home, train_lines=None):
    folder = data_home / "wikitext-2"
    folder.mkdir()
    (folder / "valid.txt").write_text("".join(f" valid line {i} \n" for i in range(10)))
    (folder / "test.txt").write_text(" test line \n")
    if train_lines is not None:
        (folder / "train.txt").write_text(" train line \n" * train_lines)
    return folder


def test_wikitext2_without_train_split_says_what_trains_on_what(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    _wikitext_folder(data_home)
    with pytest.warns(UserWarning, match=r"(?s)train.txt was not found.*Training on the first 80% of valid.txt"):
        splits = data.wikitext2(held_out=0.2)
    assert splits.train == [f" valid line {i} " for i in range(8)] and len(splits.valid) == 2
    assert splits.test == [" test line "]
    description = splits.describe()
    assert "train: valid.txt, lines 1-8 (train.txt not found) (8 lines)" in description
    assert "valid: valid.txt, lines 9-10" in description and "test : test.txt" in description
    with pytest.raises(ValueError, match="held_out must be a fraction"):
        data.wikitext2(held_out=1.0)


def test_wikitext2_uses_train_txt_when_present_and_checks_it(data_home):
    _wikitext_folder(data_home, train_lines=data.WIKITEXT2_TRAIN_LINES)
    splits = data.wikitext2()
    assert len(splits.train) == data.WIKITEXT2_TRAIN_LINES and splits.sources["train"] == "train.txt"
    (data_home / "wikitext-2" / "train.txt").write_text("a partial download\n")
    with pytest.raises(data.DatasetNotFoundError, match="has 1 lines, but WikiText-2's train.txt has 36,718"):
        data.wikitext2()


def test_wikitext2_missing_gives_one_clear_error(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    with pytest.raises(data.DatasetNotFoundError,
                       match=r"(?s)Could not find WikiText-2 \(valid.txt and test.txt\).*valid.txt, test.txt into"):
        data.wikitext2()
