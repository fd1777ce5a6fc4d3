import math

import pytest
import torch

from utils import models
from utils.metrics import frechet_distance


def test_identical_sets_are_at_distance_zero():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_matches_the_closed_form_for_shifted_and_scaled_gaussians():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200_000, 2, generator=g)
    b = 3.0 * torch.randn(200_000, 2, generator=g) + torch.tensor([1.0, 2.0])
    # |mu|^2 = 5; each dimension adds 1 + 9 - 2*sqrt(1*9) = 4.
    assert frechet_distance(a, b) == pytest.approx(5.0 + 8.0, rel=0.02)


def test_is_symmetric():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(300, 5, generator=g), torch.rand(300, 5, generator=g)
    assert math.isclose(frechet_distance(a, b), frechet_distance(b, a), rel_tol=1e-6)


def test_bad_shapes_are_rejected_clearly():
    with pytest.raises(ValueError, match="feature sizes differ: 3 and 4"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"must have shape \(N >= 2, D\)"):
        frechet_distance(torch.zeros(5), torch.zeros(5, 1))


def test_fashion_labels_by_name_or_index_and_clear_errors():
    from utils.models import fashion_label

    assert fashion_label("sneaker") == 7 and fashion_label("Ankle boot") == 9
    assert (
        fashion_label("T-shirt") == 0
        and fashion_label("t-shirt/top") == 0
        and fashion_label(3) == 3
    )
    with pytest.raises(
        ValueError,
        match=r"unknown Fashion-MNIST label 'hat'; valid labels: 0=T-shirt/top",
    ):
        fashion_label("hat")
    with pytest.raises(ValueError, match="label 10 is outside 0..9"):
        fashion_label(10)
    with pytest.raises(ValueError, match="unknown Fashion-MNIST label"):
        fashion_label(True)


def test_sample_scores_on_an_untrained_classifier():
    from utils.models import FashionClassifier, sample_scores

    torch.manual_seed(0)
    model = FashionClassifier()
    real = torch.rand(64, 1, 28, 28)
    scores = sample_scores(
        model, real, real, requested=torch.zeros(64, dtype=torch.long)
    )
    assert scores["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= scores["class_accuracy"] <= 1.0
    with pytest.raises(
        ValueError,
        match=r"FashionClassifier input must have shape \(batch, 1, 28, 28\)",
    ):
        sample_scores(model, torch.rand(4, 784), real)


def test_sample_scores_accepts_precomputed_reference_features():
    from utils.models import FashionClassifier, classify, sample_scores

    torch.manual_seed(0)
    model = FashionClassifier()
    samples, real = torch.rand(64, 1, 28, 28), torch.rand(64, 1, 28, 28)
    from_images = sample_scores(model, samples, real)["frechet_distance"]
    from_features = sample_scores(model, samples, classify(model, real)[1])[
        "frechet_distance"
    ]
    assert from_images > 0 and from_features == pytest.approx(from_images, rel=1e-6)


def test_fashion_labels_accept_numpy_and_tensor_integers():
    import numpy as np

    from utils.models import fashion_label

    assert fashion_label(np.int64(7)) == 7 and fashion_label(np.uint8(2)) == 2
    assert fashion_label(torch.tensor(9)) == 9 and fashion_label(torch.tensor([4])) == 4
    with pytest.raises(ValueError, match="outside 0..9"):
        fashion_label(np.int32(12))
    for bad in (torch.tensor([1, 2]), torch.tensor(1.5), np.bool_(True), 2.0):
        with pytest.raises(ValueError, match="label"):
            fashion_label(bad)


def test_a_damaged_cached_classifier_is_retrained_and_an_unwritable_cache_only_warns(
    data_home, cache_home, monkeypatch
):
    from conftest import real_file
    from utils import models

    offline = models.data.FASHION_MNIST_FILES.offline[0]
    if not offline.is_dir():
        # skips: no Fashion-MNIST on this machine
        real_file("FashionMNIST/raw/t10k-images-idx3-ubyte.gz")
    checkpoints = cache_home / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "fashion_classifier_e1_n256.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="could not be loaded"):
        first = models.fashion_classifier(torch.device("cpu"), epochs=1, train_size=256)
    # now from the cache
    reloaded = models.fashion_classifier(torch.device("cpu"), epochs=1, train_size=256)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), reloaded.state_dict().values())
    )

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(models.torch, "save", refuse)
    with pytest.warns(UserWarning, match="could not be cached .*PermissionError"):
        again = models.fashion_classifier(torch.device("cpu"), epochs=1, train_size=128)
    # still returned
    assert isinstance(again, models.FashionClassifier)
    # training is seeded:
    with pytest.warns(UserWarning, match="could not be cached"):
        twin = models.fashion_classifier(torch.device("cpu"), epochs=1, train_size=128)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), twin.state_dict().values())
    )


def test_per_class_accuracy_counts_each_class_on_its_own_items():
    labels = torch.tensor([0, 0, 1, 1, 1, 9])
    predicted = torch.tensor([0, 3, 1, 1, 2, 9])
    accuracy = models.per_class_accuracy(predicted, labels)
    assert accuracy.shape == (10,)
    assert (
        accuracy[0] == 0.5
        and torch.isclose(accuracy[1], torch.tensor(2 / 3))
        and accuracy[9] == 1.0
    )
    assert torch.isnan(accuracy[5])  # no items of class 5: not a misleading 0
    with pytest.raises(ValueError, match="two 1-d tensors of the same length"):
        models.per_class_accuracy(predicted, labels[:3])
    ax = models.plot_per_class(accuracy, accuracy, "samples")
    assert len(ax.patches) == 20 and [
        t.get_text() for t in ax.get_xticklabels()
    ] == list(models.FASHION_CLASSES)


def test_bits_per_dim_converts_nats_and_counts_the_dequantization():
    from utils.metrics import bits_per_dim, dequantized_nll

    # a uniform code over 256 values costs exactly 8 bits per dimension
    assert bits_per_dim(torch.full((5,), 784 * math.log(256)), 784) == pytest.approx(8)
    # the uniform density on [0, 1)^D (log p = 0) is the same code once the change of
    # scale is counted
    assert bits_per_dim(dequantized_nll(torch.zeros(3), 784), 784) == pytest.approx(8)
    with pytest.raises(ValueError, match="dims must be positive"):
        bits_per_dim(1.0, 0)
    with pytest.raises(ValueError, match="not finite"):
        bits_per_dim(torch.tensor([float("nan")]), 4)


def test_compressors_and_the_histogram_on_images_of_known_content():
    from utils.metrics import (
        compressor_baselines,
        pixel_histogram_bits_per_dim,
        png_bits_per_dim,
        stream_bits_per_dim,
    )

    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (20, 28, 28), generator=g, dtype=torch.uint8)
    blank = torch.zeros(20, 1, 28, 28, dtype=torch.uint8)
    # random bytes do not compress; blank images almost vanish
    assert stream_bits_per_dim(noise)["xz"] > 7.9
    assert stream_bits_per_dim(blank)["bz2"] < 0.1
    assert png_bits_per_dim(noise) > 8 > png_bits_per_dim(blank)
    # the pixel data alone is smaller than the whole PNG file (header and framing)
    assert png_bits_per_dim(blank, whole_file=False) < png_bits_per_dim(blank)
    # add-one counts over 20 blank images: p(0) = 21 / 276 at every position, and a
    # value never seen there has 1 / 276
    assert pixel_histogram_bits_per_dim(blank, blank) == pytest.approx(
        math.log2(276 / 21), rel=1e-9
    )
    assert pixel_histogram_bits_per_dim(blank, blank + 7) == pytest.approx(
        math.log2(276), rel=1e-9
    )
    baselines = compressor_baselines(blank, noise)
    assert set(baselines) == {
        "png",
        "png_pixel_data",
        "xz",
        "bz2",
        "pixel_histogram",
        "raw",
    }


def test_compressor_helpers_reject_what_is_not_8_bit_images():
    from utils.metrics import pixel_histogram_bits_per_dim, png_bits_per_dim

    with pytest.raises(ValueError, match="uint8 tensor"):
        png_bits_per_dim(torch.rand(2, 28, 28))
    with pytest.raises(ValueError, match=r"shape \(N, H, W\)"):
        png_bits_per_dim(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="differ in size"):
        pixel_histogram_bits_per_dim(
            torch.zeros(2, 28, 28, dtype=torch.uint8),
            torch.zeros(2, 14, 14, dtype=torch.uint8),
        )


def test_the_digit_classifier_learns_digits_and_is_cached_apart(cache_home):
    from conftest import real_file
    from utils import data, models

    real_file("MNIST/raw/train-images-idx3-ubyte.gz")  # skips without MNIST

    model = models.digit_classifier(torch.device("cpu"), epochs=1, train_size=2000)
    assert (cache_home / "checkpoints" / "digit_classifier_e1_n2000.pt").is_file()
    assert not (cache_home / "checkpoints" / "fashion_classifier_e1_n2000.pt").exists()
    x, y = data.mnist_tensors(train=False, limit=500)
    accuracy = (models.classify(model, x)[0] == y).float().mean().item()
    # trained on digits, not on clothing: a Fashion-MNIST model reads digits at ~10-30%
    assert accuracy > 0.5, accuracy


def test_auroc_is_the_chance_an_outlier_scores_above_an_inlier():
    from utils.metrics import auroc

    assert auroc(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0])) == 1.0
    assert auroc(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert auroc(torch.ones(4), torch.ones(3)) == 0.5  # all tied: chance
    generator = torch.Generator().manual_seed(0)
    inliers = torch.randn(200, generator=generator).round(decimals=1)
    outliers = (torch.randn(150, generator=generator) + 0.7).round(decimals=1)
    pairs = outliers[:, None] - inliers[None, :]  # every outlier against every inlier
    brute = ((pairs > 0).double() + 0.5 * (pairs == 0).double()).mean().item()
    assert auroc(inliers, outliers) == pytest.approx(brute, abs=1e-12)
    for bad in ((torch.ones(2, 2), torch.ones(3)), (torch.ones(0), torch.ones(3))):
        with pytest.raises(ValueError, match="1-d tensors"):
            auroc(*bad)
    with pytest.raises(ValueError, match="NaN"):
        auroc(torch.tensor([0.0, float("nan")]), torch.ones(3))


def test_per_image_code_lengths_average_to_the_per_dimension_ones():
    from utils import metrics

    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8, generator=generator)
    test = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8, generator=generator)
    test[0] = 0  # a blank image: the cheapest PNG of the set
    per_image = metrics.pixel_histogram_bits(train, test)
    assert per_image.shape == (7,)
    assert per_image.mean().item() == pytest.approx(
        metrics.pixel_histogram_bits_per_dim(train, test)
    )
    png = metrics.png_bits(test)
    assert png.shape == (7,) and png.argmin().item() == 0
    assert png.mean().item() == pytest.approx(metrics.png_bits_per_dim(test))
