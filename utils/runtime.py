"""Run-time switches every chapter shares: the smoke/full profile, the device and the
seed."""

from __future__ import annotations

import platform
import random
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import torch

from . import budget, precision
from .switches import (  # noqa: F401 (runtime.SMOKE_ENV and env_flag, as before)
    SHORT_ENV,
    SMOKE_ENV,
    env_flag,
    is_short,
    is_smoke,
    profile_name,
)

#: The ``short`` settings of this process's last :func:`settings` call (empty where the
#: chapter offers no short run), and whether that call chose them; read by
#: ``utils.results`` and ``utils.budget``, so a switch changed after the setup cannot
#: relabel the run.
_short_settings: dict[str, Any] = {}
_short_chosen = False


def get_device() -> torch.device:
    """The best available device, chosen once: CUDA, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def gpu_sized(device: torch.device) -> bool:
    """Whether a chapter's ``gpu`` settings apply on ``device``: a CUDA GPU with native
    bf16 (compute capability 8.0 or newer). They scale a chapter up for such a GPU; an
    older one (Colab's T4 is 7.5) computes in fp32 (``utils.precision``), several times
    slower, so it runs the full settings, those sized for a 2-core CPU."""
    return device.type == "cuda" and precision.native_bf16(device)


def settings(
    full: Mapping[str, Any],
    smoke: Mapping[str, Any],
    gpu: Mapping[str, Any] | None = None,
    short: Mapping[str, Any] | None = None,
) -> SimpleNamespace:
    """The settings of the current profile.

    ``full`` holds every setting; ``smoke`` overrides some of them for the smoke
    profile, ``gpu`` overrides some for a full run on a GPU with native bf16
    (:func:`gpu_sized`: a full run may scale up there), and ``short`` some for a short
    run (``GDL_SHORT=1``, for a machine where the full run would take too long; a
    chapter without them runs in full). Unknown keys in the overrides are rejected, so
    a typo cannot silently leave a full-size value.
    """
    global _short_settings, _short_chosen
    for name, extra in (("smoke", smoke), ("gpu", gpu or {}), ("short", short or {})):
        unknown = set(extra) - set(full)
        if unknown:
            raise KeyError(
                f"{name} settings name keys that the "
                f"full settings lack: {sorted(unknown)}"
            )
    device = get_device()
    on_cuda = device.type == "cuda"
    _short_settings = dict(short or {})
    # a short run is for CPUs (and Apple's GPU); a CUDA GPU takes the gpu settings, or
    # the full ones below compute capability 8.0
    _short_chosen = bool(short) and is_short() and not is_smoke() and not on_cuda
    chosen, profile = dict(full), chosen_profile()
    if profile == "smoke":
        chosen.update(smoke)
    elif profile == "short":
        chosen.update(short or {})
    elif gpu and gpu_sized(device):
        chosen.update(gpu)
    return SimpleNamespace(profile=profile, **chosen)


def chosen_profile() -> str:
    """The profile the chapter runs: ``"smoke"``, ``"short"`` (where its :func:`setup`
    offered a short run and ``GDL_SHORT=1`` was set then) or ``"full"``."""
    if profile_name() == "smoke":
        return "smoke"
    return "short" if _short_chosen else "full"


def short_settings() -> dict[str, Any]:
    """The settings the chapter's short run lowers (its ``setup(short=...)``), or an
    empty dict where it offers none."""
    return dict(_short_settings)


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch so a run repeats; returns a seeded CPU
    generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def device_description(device: torch.device) -> str:
    """A short human description of the device, e.g. ``cpu (2 threads, x86_64, AVX2)``
    (the CPU class of :func:`utils.precision.cpu_class`, and the class the CPU has where
    ``ONEDNN_MAX_CPU_ISA`` or ``ATEN_CPU_CAPABILITY`` lowers it)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        found, limited = precision.cpu_class(), precision.limited_from()
        parts = [f"{torch.get_num_threads()} threads", platform.machine()]
        if found != platform.machine().lower():  # x86: the class; arm64 says it all
            parts.append(f"{found}, limited from {limited}" if limited else found)
        return f"cpu ({', '.join(parts)})"
    return device.type


def setup(
    full: Mapping[str, Any],
    smoke: Mapping[str, Any],
    gpu: Mapping[str, Any] | None = None,
    short: Mapping[str, Any] | None = None,
    seed: int = 0,
    fast_path: bool = True,
    bf16_on_cpu: bool = True,
) -> tuple[SimpleNamespace, torch.device]:
    """A chapter's first step: seed everything, choose the device and the precision,
    pick and print the settings. The precision (see :mod:`utils.precision`) is
    ``cfg.precision``.

    A chapter whose full run takes long on a CPU without bf16 units offers ``short``
    settings (``GDL_SHORT=1``), which its :class:`utils.budget.Pace` names when the run
    would take a reader past 20 minutes.

    A chapter whose networks do not use the fast path says ``fast_path=False`` (plain
    fp32); one whose network measured slower in bf16 on a CPU
    (``python -m benchmarks.training_steps``) says ``bf16_on_cpu=False`` (channels_last
    only there; GPUs keep bf16). ``GDL_PRECISION=bf16`` still forces bf16, to compare.
    """
    seed_everything(seed)
    budget.forget()  # a new run of the chapter: its pace is measured anew
    device = get_device()
    if device.type == "cuda":
        # the chapters' networks see the same shapes at every step: cuDNN times its
        # convolution algorithms once and keeps the fastest for the run
        torch.backends.cudnn.benchmark = True
    cfg = settings(full, smoke, gpu, short)
    shown = ", ".join(f"{k}={v}" for k, v in vars(cfg).items() if k != "profile")
    cfg.precision = precision.for_chapter(device, fast_path, bf16_on_cpu)
    print(
        f"profile: {cfg.profile} | device: {device_description(device)} | seed: "
        f"{seed}\nprecision: {cfg.precision.describe()}\nsettings: {shown}"
    )
    return cfg, device
