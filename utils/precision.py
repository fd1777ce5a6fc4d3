"""The precision switch: the fast path of this device (channels_last, and bf16 where it pays), else fp32.

bfloat16 keeps float32's range with an 8-bit mantissa. Products and convolutions in bf16 run about
twice as fast where the hardware has bf16 matrix units (CUDA GPUs of compute capability 8.0 or newer,
CPUs with AMX) and *slower* elsewhere: on the book's 2-core AVX-512 BF16 CPU without AMX, bf16 autocast
made every chapter's step slower (see README, "Benchmarks"). So bf16 is chosen from what the device
reports, never assumed. Under ``torch.autocast`` only the products and convolutions run in bf16:
weights, optimiser state, losses (autocast keeps them in fp32) and metrics stay in fp32.

channels_last (the NHWC layout oneDNN and cuDNN convolve fastest) is part of the fast path on CPUs
and CUDA devices alike. ``GDL_PRECISION=fp32`` turns the whole fast path off: plain fp32 in the
default memory format, the reference every fast path is checked against.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

#: Environment variable choosing the precision: ``auto`` (default) or ``fp32``.
PRECISION_ENV = "GDL_PRECISION"
CHOICES = ("auto", "fp32")
M = TypeVar("M", nn.Module, torch.Tensor)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_native_bf16() -> bool:
    """True when this CPU has bf16 matrix units (AMX). AVX-512 BF16 alone only adds dot-product
    instructions, which measured slower than fp32 for every chapter's step on the book's CPU."""
    return "amx_bf16" in cpu_flags()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 products faster than fp32 (CUDA: compute capability 8.0 or newer)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return cpu_native_bf16()
    return False  # MPS and others: fp32


def requested() -> str:
    """``$GDL_PRECISION``, strictly parsed: ``auto`` (also when unset) or ``fp32``."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{PRECISION_ENV}={os.environ.get(PRECISION_ENV)!r} is not a valid precision; use "
                         f"{' or '.join(CHOICES)} (auto: bf16 where the device runs it natively)")
    return value


@dataclass(frozen=True)
class Precision:
    """How a chapter computes: ``bf16`` autocast or not, and channels_last for convolutional models."""

    device: torch.device
    bf16: bool
    channels_last: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """A context in which products and convolutions run in bf16 (a no-op in fp32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def prepare(self, x: M) -> M:
        """A convolutional model or a 4-D image batch in the memory format of the fast path
        (channels_last: the layout oneDNN and cuDNN convolve fastest); anything else unchanged."""
        if not self.channels_last:
            return x
        if isinstance(x, nn.Module):
            if any(isinstance(m, nn.modules.conv._ConvNd) for m in x.modules()):
                return x.to(memory_format=torch.channels_last)
            return x
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    def describe(self) -> str:
        """E.g. ``fp32 + channels_last (no bf16 matrix units: ...)`` or ``fp32 (GDL_PRECISION=fp32)``."""
        mode = ("bf16 autocast" if self.bf16 else "fp32") + (" + channels_last" if self.channels_last else "")
        return f"{mode} ({self.reason})"


def choose(device: torch.device) -> Precision:
    """The precision for ``device``: with ``$GDL_PRECISION`` unset or ``auto``, channels_last on CPUs and
    CUDA devices, plus bf16 autocast where the device has bf16 matrix units; with ``fp32``, plain fp32.
    The reason is part of :meth:`Precision.describe`."""
    if requested() == "fp32":
        return Precision(device, False, False, f"{PRECISION_ENV}=fp32")
    layout = device.type in ("cpu", "cuda")
    if native_bf16(device):
        what = "AMX" if device.type == "cpu" else torch.cuda.get_device_name(device)
        return Precision(device, True, layout, f"bf16 matrix units: {what}")
    if device.type == "cpu":
        has = "AVX-512 BF16 but no AMX" if "avx512_bf16" in cpu_flags() else "no bf16 instructions"
        return Precision(device, False, layout, f"{has}: bf16 would be slower here")
    return Precision(device, False, layout, f"no bf16 matrix units on this {device.type}")
