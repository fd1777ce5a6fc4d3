import matplotlib.pyplot as plt
import pytest
import torch

from utils import images


def test_grid_shape_for_grey_and_colour_batches():
    grey = images.grid_array(torch.rand(10, 1, 28, 28), nrow=5, padding=2)
    assert grey.shape == (2 + 2 * 30, 2 + 5 * 30, 3)
    colour = images.grid_array(torch.rand(3, 3, 16, 16), nrow=3, padding=0)
    assert colour.shape == (16, 48, 3)
    assert images.grid_array(torch.rand(4, 28, 28), nrow=4).shape == (32, 2 + 4 * 30, 3)


def test_value_range_maps_tanh_outputs_to_unit_interval():
    grid = images.grid_array(
        torch.full((1, 1, 4, 4), -1.0), nrow=1, padding=0, value_range=(-1, 1)
    )
    assert grid.min() == 0.0 and grid.max() == 0.0
    grid = images.grid_array(
        torch.full((1, 1, 4, 4), 1.0), nrow=1, padding=0, value_range=(-1, 1)
    )
    assert grid.min() == 1.0


def test_bad_shapes_get_a_clear_error():
    with pytest.raises(
        ValueError, match=r"expected images of shape \(N, 1 or 3, H, W\)"
    ):
        images.grid_array(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="2 rows but 1 titles"):
        images.show_rows([torch.rand(2, 1, 8, 8)] * 2, ["only one"])


def test_show_rows_and_grid_save_figures(tmp_path):
    fig = images.show_rows(
        [torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)],
        ["a", "b"],
        path=tmp_path / "rows.png",
    )
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    fig = images.show_grid(
        torch.rand(6, 3, 8, 8), "six", nrow=3, path=tmp_path / "grid.png"
    )
    assert fig.axes[0].get_title() == "six"
    assert (tmp_path / "rows.png").stat().st_size > 0 and (
        tmp_path / "grid.png"
    ).stat().st_size > 0
    plt.close("all")


def test_load_image_converts_grey_and_rgba_and_resizes(tmp_path):
    from PIL import Image

    Image.new("L", (40, 20), 128).save(tmp_path / "grey.png")
    Image.new("RGBA", (30, 30), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    grey = images.load_image(tmp_path / "grey.png", size=10)
    assert grey.shape == (1, 3, 10, 20) and torch.allclose(
        grey, torch.full_like(grey, 128 / 255)
    )
    clear = images.load_image(str(tmp_path / "clear.png"), size=(8, 12))
    # over white
    assert clear.shape == (1, 3, 8, 12) and torch.allclose(
        clear, torch.ones_like(clear)
    )


def test_load_image_bad_input_gets_clear_errors(tmp_path, data_home):
    with pytest.raises(
        FileNotFoundError,
        match=r"no image at '.*missing.jpg': it is not a file, not a URL",
    ):
        images.load_image(tmp_path / "missing.jpg")
    (tmp_path / "notes.jpg").write_text("not really a JPEG")
    with pytest.raises(ValueError, match="is not an image that Pillow can read"):
        images.load_image(tmp_path / "notes.jpg")
    with pytest.raises(
        FileNotFoundError,
        match=r"could not download the image http://127.0.0.1:9/x.jpg",
    ):
        images.load_image("http://127.0.0.1:9/x.jpg")
    (tmp_path / "ok.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not an image"):
        images.load_image(tmp_path / "ok.png")


def test_bundled_samples_load():
    night = images.load_image("starry_night", size=64)
    assert night.shape[:3] == (1, 3, 64) and night.shape[3] > 64  # landscape
    assert images.load_image("grace_hopper", size=32).shape[1] == 3


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("1", 1, 1.0),
        ("L", 51, 0.2),
        ("P", 0, 0.0),
        ("CMYK", (0, 0, 0, 0), 1.0),
        ("I;16", 65535, 1.0),
        ("I;16", 32768, 32768 / 65535),
        ("LA", (255, 255), 1.0),
    ],
)
def test_every_accepted_mode_gives_values_in_the_unit_interval(
    tmp_path, mode, value, expected
):
    from PIL import Image

    image = Image.new(mode, (6, 4), value)
    path = tmp_path / f"image.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
    image.save(path)
    loaded = images.load_image(path)
    assert loaded.shape == (1, 3, 4, 6) and loaded.dtype == torch.float32
    assert torch.allclose(loaded, torch.full_like(loaded, expected), atol=1e-3)


def test_modes_without_a_fixed_range_and_bad_sizes_are_rejected(tmp_path):
    from PIL import Image

    Image.new("F", (4, 4), 3.5).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="mode 'F' .*no fixed range"):
        images.load_image(tmp_path / "float.tiff")
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    for size in (2.5, "64", (4, 4.0), (4,), True, 0, (0, 3)):
        with pytest.raises(
            ValueError, match="size must be a positive integer|size must be positive"
        ):
            images.load_image(tmp_path / "rgb.png", size=size)


def test_downloaded_images_are_cached_by_their_whole_url(cache_home, monkeypatch):
    a = images.url_cache_path("https://one.example/a/photo.jpg")
    b = images.url_cache_path("https://two.example/b/photo.jpg?x=1")
    assert a != b and a.name.endswith("-photo.jpg") and b.name.endswith("-photo.jpg")
    assert a.parent == b.parent == cache_home / "images"


def test_images_honour_the_offline_switch_and_verify_the_cache(
    cache_home, monkeypatch, tmp_path
):
    from PIL import Image

    url = "https://example.invalid/picture.png"
    monkeypatch.setenv("GDL_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match="not in the cache and GDL_OFFLINE is set"
    ):
        images.load_image(url)
    cached = images.url_cache_path(url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"<html>a portal page</html>")  # a bad cache entry is never used
    with pytest.raises(FileNotFoundError, match="not in the cache"):
        images.load_image(url)
    Image.new("RGB", (5, 5), (255, 0, 0)).save(cached, "PNG")
    assert images.load_image(url)[0, 0].mean() == 1.0


def test_figures_are_drawn_at_an_integer_zoom_under_the_width_cap():
    assert (
        images._zoom(302, None) == 3
        and images._zoom(530, None) == 1
        and images._zoom(2000, None) == 1
    )
    assert images._zoom(302, 2) == 2
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="zoom must be a positive integer"):
            images._zoom(100, bad)
    fig = images.show_grid(torch.rand(10, 1, 28, 28), "ten digits", nrow=10)
    width = fig.get_size_inches()[0] * fig.dpi
    # zoom 3 of the 302-pixel grid
    assert width == pytest.approx(3 * (2 + 10 * 30), abs=1)
    plt.close("all")


def test_photographs_are_shown_as_jpeg_in_a_notebook(monkeypatch):
    from IPython import display as ipy

    shown = []
    monkeypatch.setattr(images, "_in_notebook", lambda: True)
    monkeypatch.setattr(ipy, "display", lambda obj: shown.append(obj))
    fig = images.show_images(
        [torch.rand(1, 3, 20, 30), torch.rand(1, 3, 20, 20)], ["a", "b"]
    )
    assert (
        len(shown) == 1
        and shown[0].format == "jpeg"
        and shown[0].data[:2] == b"\xff\xd8"
    )
    # closed, so the inline backend does not add a PNG
    assert not plt.fignum_exists(fig.number)
    # drawings stay with the inline backend's PNG
    images.show_grid(torch.rand(4, 1, 8, 8), "grey")
    assert len(shown) == 1
    plt.close("all")
