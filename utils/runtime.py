"""Run-time switches every chapter shares: the smoke/full profile, the device and the
seed."""

from __future__ import annotations

import platform
import random
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import torch

from . import precision
from .switches import (  # noqa: F401 (runtime.SMOKE_ENV and env_flag, as before)
    SMOKE_ENV,
    env_flag,
    is_smoke,
    profile_name,
)


def get_device() -> torch.device:
    """The best available device, chosen once: CUDA, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def settings(
    full: Mapping[str, Any],
    smoke: Mapping[str, Any],
    gpu: Mapping[str, Any] | None = None,
) -> SimpleNamespace:
    """The settings of the current profile.

    ``full`` holds every setting; ``smoke`` overrides some of them for the smoke
    profile, and ``gpu`` overrides some for a full run on a GPU (a full run may scale up
    there). Unknown keys in the overrides are rejected, so a typo cannot silently leave
    a full-size value.
    """
    for name, extra in (("smoke", smoke), ("gpu", gpu or {})):
        unknown = set(extra) - set(full)
        if unknown:
            raise KeyError(
                f"{name} settings name keys that the "
                f"full settings lack: {sorted(unknown)}"
            )
    chosen = dict(full)
    if is_smoke():
        chosen.update(smoke)
    elif gpu and get_device().type == "cuda":
        chosen.update(gpu)
    return SimpleNamespace(profile=profile_name(), **chosen)


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch so a run repeats; returns a seeded CPU
    generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def device_description(device: torch.device) -> str:
    """A short human description of the device, e.g. ``cpu (2 threads, x86_64)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
    return device.type


def setup(
    full: Mapping[str, Any],
    smoke: Mapping[str, Any],
    gpu: Mapping[str, Any] | None = None,
    seed: int = 0,
    fast_path: bool = True,
    bf16_on_cpu: bool = True,
) -> tuple[SimpleNamespace, torch.device]:
    """A chapter's first step: seed everything, choose the device and the precision,
    pick and print the settings. The precision (see :mod:`utils.precision`) is
    ``cfg.precision``.

    A chapter whose networks do not use the fast path says ``fast_path=False`` (plain
    fp32); one whose network measured slower in bf16 on a CPU
    (``python -m benchmarks.training_steps``) says ``bf16_on_cpu=False`` (channels_last
    only there; GPUs keep bf16). ``GDL_PRECISION=bf16`` still forces bf16, to compare.
    """
    seed_everything(seed)
    device = get_device()
    cfg = settings(full, smoke, gpu)
    shown = ", ".join(f"{k}={v}" for k, v in vars(cfg).items() if k != "profile")
    cfg.precision = precision.for_chapter(device, fast_path, bf16_on_cpu)
    print(
        f"profile: {cfg.profile} | device: {device_description(device)} | seed: "
        f"{seed}\nprecision: {cfg.precision.describe()}\nsettings: {shown}"
    )
    return cfg, device
