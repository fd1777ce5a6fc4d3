import pytest
import torch

from utils import runtime


@pytest.mark.parametrize(
    "value, smoke", [("1", True), ("true", True), ("0", False), ("", False)]
)
def test_profile_switch(monkeypatch, value, smoke):
    monkeypatch.setenv(runtime.SMOKE_ENV, value)
    assert runtime.is_smoke() is smoke
    assert runtime.profile_name() == ("smoke" if smoke else "full")


def test_settings_take_the_smoke_overrides_only_in_smoke(monkeypatch):
    full, smoke = dict(epochs=30, batch_size=128), dict(epochs=1)
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    cfg = runtime.settings(full, smoke)
    assert (cfg.profile, cfg.epochs, cfg.batch_size) == ("smoke", 1, 128)
    monkeypatch.delenv(runtime.SMOKE_ENV)
    cfg = runtime.settings(full, smoke)
    assert (cfg.profile, cfg.epochs, cfg.batch_size) == ("full", 30, 128)


def test_settings_reject_override_keys_the_full_profile_lacks():
    with pytest.raises(KeyError, match="epoch"):
        runtime.settings(dict(epochs=30), dict(epoch=1))


def test_gpu_overrides_apply_only_on_cuda_with_native_bf16(monkeypatch):
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    monkeypatch.setattr(runtime, "get_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(runtime.precision, "native_bf16", lambda device: True)
    assert runtime.settings(dict(width=32), {}, gpu=dict(width=64)).width == 64
    # a T4 (compute capability 7.5, fp32) runs the full settings
    monkeypatch.setattr(runtime.precision, "native_bf16", lambda device: False)
    assert runtime.settings(dict(width=32), {}, gpu=dict(width=64)).width == 32
    monkeypatch.setattr(runtime, "get_device", lambda: torch.device("cpu"))
    assert runtime.settings(dict(width=32), {}, gpu=dict(width=64)).width == 32


def test_seed_makes_runs_repeat():
    runtime.seed_everything(3)
    a = torch.randn(5)
    runtime.seed_everything(3)
    assert torch.equal(a, torch.randn(5))


def test_setup_prints_profile_device_and_settings(monkeypatch, capsys):
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    cfg, device = runtime.setup(dict(epochs=30), dict(epochs=2))
    out = capsys.readouterr().out
    assert cfg.epochs == 2 and isinstance(device, torch.device)
    assert "profile: smoke" in out and "epochs=2" in out
