"""The precision switch: the fast path of this device (channels_last, and bf16 where it
pays), else fp32.

bfloat16 keeps float32's range with an 8-bit mantissa. Products and convolutions in bf16
run about twice as fast where the hardware has bf16 instructions: CUDA GPUs of compute
capability 8.0 or newer, and CPUs with AMX or AVX-512 BF16 (measured on the book's CPUs,
README, "Benchmarks"; a network that still runs slower in bf16, such as one of narrow
convolutions between GroupNorm layers, is kept in fp32 by its chapter's
``runtime.setup(bf16_on_cpu=False)``). Elsewhere (AVX2 CPUs, older
GPUs, MPS) bf16 is emulated and slower, so it is chosen from what the device reports,
never assumed. Under ``torch.autocast`` only the products and convolutions run in bf16:
weights, optimiser state, losses (autocast keeps them in fp32) and metrics stay in fp32.

channels_last (the NHWC layout oneDNN and cuDNN convolve fastest) is part of the fast
path on CPUs and CUDA devices alike. ``GDL_PRECISION=fp32`` turns the whole fast path
off: plain fp32 in the default memory format, the reference every fast path is checked
against; ``GDL_PRECISION=bf16`` turns bf16 on whatever the device reports, to compare or
to check numerics.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

#: Environment variable choosing the precision: ``auto`` (default), ``fp32`` or
#: ``bf16``.
PRECISION_ENV = "GDL_PRECISION"
CHOICES = ("auto", "fp32", "bf16")
M = TypeVar("M", nn.Module, torch.Tensor)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g.
    macOS)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_bf16_unit() -> str | None:
    """The CPU's bf16 instructions, ``"AMX"`` or ``"AVX-512 BF16"``, or None where it
    has neither.

    oneDNN runs bf16 products on both at about twice the fp32 rate (measured on the
    book's AVX-512 BF16 CPU: 358 against 162 GFLOP/s); without them bf16 is converted to
    fp32 and back, which is slower.
    """
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    return None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 products faster than fp32 (CUDA: compute capability
    8.0 or newer; CPU: AMX or AVX-512 BF16)."""
    if device.type == "cuda":
        return (
            torch.cuda.is_available()
            and torch.cuda.get_device_capability(device)[0] >= 8
        )
    if device.type == "cpu":
        return cpu_bf16_unit() is not None
    return False  # MPS and others: fp32


@functools.cache
def fused_adam(device: torch.device) -> bool:
    """Whether torch's fused Adam/AdamW kernel (one kernel over all parameters) runs on
    ``device``: on CUDA it does, on a CPU only from torch 2.4 on, where older releases
    refuse ``fused=True``. For ``AdamW(..., fused=fused_adam(device))``; False gives
    the default loop, with the same results."""
    try:
        probe = torch.zeros(1, device=device, requires_grad=True)
        torch.optim.AdamW([probe], fused=True)
    except (RuntimeError, AssertionError):  # torch without CUDA asserts
        return False
    return True


def for_chapter(
    device: torch.device, fast_path: bool = True, bf16_on_cpu: bool = True
) -> Precision:
    """A chapter's precision from its ``runtime.setup`` switches: plain fp32 without
    the fast path; the device's choice (:func:`choose`), with bf16 off on a CPU where
    the chapter's network measured slower in bf16, unless ``$GDL_PRECISION`` asks."""
    if not fast_path:
        return fp32(device, "this chapter's small networks do not use the fast path")
    chosen = choose(device)
    if (
        not bf16_on_cpu
        and device.type == "cpu"
        and chosen.bf16
        and requested() == "auto"
    ):
        return replace(
            chosen,
            bf16=False,
            reason="bf16 off: this chapter's network measured slower in bf16 on a CPU",
        )
    return chosen


def requested() -> str:
    """``$GDL_PRECISION``, strictly parsed: ``auto`` (also when unset), ``fp32`` or
    ``bf16``."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(
            f"{PRECISION_ENV}={os.environ.get(PRECISION_ENV)!r} "
            "is not a valid precision; use auto, fp32 or bf16 "
            "(auto: bf16 where the device runs it natively)"
        )
    return value


@dataclass(frozen=True)
class Precision:
    """How a chapter computes: ``bf16`` autocast or not, and channels_last for
    convolutional models."""

    device: torch.device
    bf16: bool
    channels_last: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """A context in which products and convolutions run in bf16 (a no-op in
        fp32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def prepare(self, x: M) -> M:
        """A convolutional model or a 4-D image batch in the memory format of the fast
        path (channels_last: the layout oneDNN and cuDNN convolve fastest); anything
        else unchanged."""
        if not self.channels_last:
            return x
        if isinstance(x, nn.Module):
            if any(isinstance(m, nn.modules.conv._ConvNd) for m in x.modules()):
                return x.to(memory_format=torch.channels_last)
            return x
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    def describe(self) -> str:
        """E.g. ``fp32 + channels_last (no bf16 matrix units: ...)`` or
        ``fp32 (GDL_PRECISION=fp32)``."""
        mode = ("bf16 autocast" if self.bf16 else "fp32") + (
            " + channels_last" if self.channels_last else ""
        )
        return f"{mode} ({self.reason})"


def fp32(device: torch.device, reason: str) -> Precision:
    """Plain fp32 in the default memory format, for ``reason``."""
    return Precision(device, False, False, reason)


def choose(device: torch.device) -> Precision:
    """The precision for ``device``: with ``$GDL_PRECISION`` unset or ``auto``,
    channels_last on CPUs and CUDA devices, plus bf16 autocast where the device runs
    bf16 natively; ``fp32``: plain fp32; ``bf16``: bf16 autocast whatever the device.
    The reason is part of :meth:`Precision.describe`."""
    wanted = requested()
    if wanted == "fp32":
        return fp32(device, f"{PRECISION_ENV}=fp32")
    layout = device.type in ("cpu", "cuda")
    if wanted == "bf16":
        return Precision(device, True, layout, f"{PRECISION_ENV}=bf16")
    if native_bf16(device):
        what = (
            cpu_bf16_unit()
            if device.type == "cpu"
            else torch.cuda.get_device_name(device)
        )
        return Precision(device, True, layout, f"bf16 instructions: {what}")
    if device.type == "cpu":
        return Precision(
            device,
            False,
            layout,
            "no bf16 instructions on this CPU: bf16 would be slower",
        )
    return Precision(device, False, layout, f"no native bf16 on this {device.type}")
