"""The precision switch: the fast path of this device (channels_last, and bf16 where it
pays), else fp32.

bfloat16 keeps float32's range with an 8-bit mantissa. Products and convolutions in bf16
run about twice as fast where the hardware has bf16 instructions: CUDA GPUs of compute
capability 8.0 or newer, and CPUs with AMX or AVX-512 BF16 (measured on the book's CPUs,
README, "Benchmarks"; a network that still runs slower in bf16, such as one of narrow
convolutions between GroupNorm layers, is kept in fp32 by its chapter's
``runtime.setup(bf16_on_cpu=False)``). Elsewhere bf16 is converted to fp32 and back and
is slower, so it is chosen from what the device reports, never assumed: on a CPU, from
its class (:func:`cpu_class`: what torch detects, lowered to what oneDNN and ATen may
use). AVX-512 without bf16 units converts; on AVX2 oneDNN has no bf16 at all, and an
LSTM cannot run in bf16 there. Under ``torch.autocast`` only the products and
convolutions run in bf16: weights, optimiser state, losses (autocast keeps them in fp32)
and metrics stay in fp32.

channels_last (the NHWC layout oneDNN and cuDNN convolve fastest) is part of the fast
path on CPUs and CUDA devices alike; it changes only convolutional models, and no
convolutional chapter's step measured slower with it than in fp32's default layout on
the CPU classes tried (README, "Benchmarks"). ``GDL_PRECISION=fp32`` turns the whole
fast path off: plain fp32 in the default memory format, the reference every fast path is
checked against; ``GDL_PRECISION=bf16`` turns bf16 on whatever the device reports, to
compare or to check numerics; where the device has no bf16 kernel for an operation, the
chapter stops with :class:`Bf16Unsupported`, which names it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
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


def cpu_features() -> set[str]:
    """The CPU's instruction sets, lower-case (``avx2``, ``avx512f``, ``avx512_bf16``,
    ``amx_bf16``): as torch detects them (``torch.cpu.get_capabilities``, CPUID on any
    operating system, torch 2.9 and newer), else as /proc/cpuinfo names them, else from
    torch's older yes/no questions (Windows and macOS before torch 2.9)."""
    try:
        capabilities = torch.cpu.get_capabilities()  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        capabilities = None
    if capabilities:
        found = {name for name, value in capabilities.items() if value is True}
        # cpuinfo says avx512_f where /proc/cpuinfo says avx512f
        return found | {name.replace("avx512_f", "avx512f") for name in found}
    flags = cpu_flags()
    if flags:
        return flags
    asked = {
        "amx_bf16": "_is_amx_tile_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "avx512f": "_is_avx512_supported",
        "avx2": "_is_avx2_supported",
    }
    found = set()
    for name, question in asked.items():
        try:
            if getattr(torch.cpu, question)():
                found.add(name)
        except (AttributeError, RuntimeError):
            continue
    return found


#: The CPU classes the book tells apart, slowest first. bf16 products run natively in
#: the last two; AVX-512 without them converts bf16 to fp32 (slower than fp32); AVX2
#: converts too, and oneDNN has no bf16 LSTM there at all.
CPU_CLASSES = ("x86-64", "AVX2", "AVX-512", "AVX-512 BF16", "AMX")
#: oneDNN's ``ONEDNN_MAX_CPU_ISA`` values (oneDNN's documentation, "CPU dispatcher
#: control") and the class each allows at most; ``ALL`` and ``DEFAULT`` allow all.
_ONEDNN_ISA = {
    "SSE41": "x86-64",
    "AVX": "x86-64",
    "AVX2": "AVX2",
    "AVX2_VNNI": "AVX2",
    "AVX2_VNNI_2": "AVX2",
    "AVX512_CORE": "AVX-512",
    "AVX512_CORE_VNNI": "AVX-512",
    "AVX512_CORE_BF16": "AVX-512 BF16",
    "AVX512_CORE_FP16": "AVX-512 BF16",
    "AVX10_1_512": "AVX-512 BF16",
    "AVX10_2_512": "AVX-512 BF16",
}
#: ATen's ``ATEN_CPU_CAPABILITY`` (``torch.backends.cpu.get_cpu_capability()``, which
#: older releases call ``NO AVX`` when lowered to the default) and the class it allows
#: at most.
_ATEN_CAPABILITY = {"DEFAULT": "x86-64", "NO AVX": "x86-64", "AVX2": "AVX2"}


def _hardware_class() -> str:
    features = cpu_features()
    if "amx_bf16" in features:
        return "AMX"
    if "avx512_bf16" in features:
        return "AVX-512 BF16"
    if "avx512f" in features:
        return "AVX-512"
    return "AVX2" if "avx2" in features else "x86-64"


def _aten_capability() -> str:
    """The vector instructions ATen's own kernels use: ``"AVX512"``, ``"AVX2"``,
    ``"DEFAULT"`` (``ATEN_CPU_CAPABILITY`` lowers it), or "" where torch cannot say."""
    try:
        import torch.backends.cpu

        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):  # torch before 2.1
        return ""


def cpu_class() -> str:
    """The class of this CPU for the book's fast path: ``"AMX"``, ``"AVX-512 BF16"``,
    ``"AVX-512"``, ``"AVX2"`` or ``"x86-64"`` (older x86 CPUs), or the machine's
    architecture elsewhere (``"arm64"``, ...).

    It is what the CPU has, lowered to what oneDNN and ATen are allowed to use:
    ``ONEDNN_MAX_CPU_ISA=AVX2`` with ``ATEN_CPU_CAPABILITY=avx2`` makes an AMX machine
    compute, and this function answer, as an AVX2 laptop does (the suite checks the
    AVX2 class that way on any x86 machine).
    """
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return machine or "unknown"
    rank = CPU_CLASSES.index(_hardware_class())
    isa = (
        os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    )
    if isa.strip().upper() in _ONEDNN_ISA:
        rank = min(rank, CPU_CLASSES.index(_ONEDNN_ISA[isa.strip().upper()]))
    aten = _aten_capability()
    if aten in _ATEN_CAPABILITY:
        rank = min(rank, CPU_CLASSES.index(_ATEN_CAPABILITY[aten]))
    return CPU_CLASSES[rank]


def limited_from() -> str | None:
    """The class the CPU itself has, where ``ONEDNN_MAX_CPU_ISA`` or
    ``ATEN_CPU_CAPABILITY`` makes it compute as a lower one (:func:`cpu_class`), else
    None."""
    found = cpu_class()
    if found not in CPU_CLASSES:
        return None
    own = _hardware_class()
    return own if own != found else None


def onednn_bf16() -> bool:
    """Whether oneDNN, torch's CPU library for products, convolutions and LSTMs, runs
    bf16 on this CPU at all (natively, or by conversion on AVX-512), as torch reports
    it (``torch.ops.mkldnn._is_mkldnn_bf16_supported``, which honours
    ``ONEDNN_MAX_CPU_ISA``). Where it does not (AVX2), products and convolutions fall
    back to slow generic bf16 code, and an LSTM cannot run in bf16."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return cpu_class() in ("AVX-512", "AVX-512 BF16", "AMX")


def cpu_bf16_unit() -> str | None:
    """The CPU's bf16 instructions, ``"AMX"`` or ``"AVX-512 BF16"``, where oneDNN may
    use them, or None.

    oneDNN runs bf16 products on both at about twice the fp32 rate (measured on the
    book's AVX-512 BF16 CPU: 358 against 162 GFLOP/s); without them bf16 is converted to
    fp32 and back, which is slower.
    """
    found = cpu_class()
    return found if found in ("AMX", "AVX-512 BF16") and onednn_bf16() else None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 products faster than fp32 (CUDA: compute capability
    8.0 or newer; CPU: AMX or AVX-512 BF16 that oneDNN may use)."""
    if device.type == "cuda":
        return (
            torch.cuda.is_available()
            and torch.cuda.get_device_capability(device)[0] >= 8
        )
    if device.type == "cpu":
        return cpu_bf16_unit() is not None
    return False  # MPS and others: fp32


class Bf16Unsupported(RuntimeError):
    """bf16 was forced (``GDL_PRECISION=bf16``) on a device that has no bf16 kernel for
    one of the model's operations."""


#: oneDNN's message when it has no kernel for a primitive in the data type asked for.
_NO_PRIMITIVE = re.compile(
    r"could not create a primitive descriptor"
    r"(?: for (?:an? |the )?(?P<op>.+?) primitive)?"
)


class _Bf16Autocast:
    """``torch.autocast`` to bf16 that turns oneDNN's "could not create a primitive
    descriptor" into a :class:`Bf16Unsupported` naming the operation, the CPU and the
    switch to set."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.inner = torch.autocast(device.type, dtype=torch.bfloat16)

    def __enter__(self) -> None:
        self.inner.__enter__()

    def __exit__(self, kind, error, traceback) -> bool:
        self.inner.__exit__(kind, error, traceback)
        found = _NO_PRIMITIVE.search(str(error)) if error is not None else None
        if found and self.device.type == "cpu":
            x86 = cpu_class() in CPU_CLASSES
            what = f"the {found['op']}" if found["op"] else "one of its operations"
            raise Bf16Unsupported(
                f"bf16 autocast cannot run this model on this CPU ({cpu_class()}): "
                f"oneDNN has no bf16 kernel for {what} here"
                + ("" if onednn_bf16() or not x86 else " (it needs AVX-512)")
                + (
                    f". Unset {PRECISION_ENV} (auto computes in fp32 on this CPU) or "
                    f"set {PRECISION_ENV}=fp32."
                    if requested() == "bf16"
                    else f". Set {PRECISION_ENV}=fp32."
                )
            ) from None
        return False


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
        return _Bf16Autocast(self.device)

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
        reason = f"{PRECISION_ENV}=bf16"
        if device.type == "cpu" and cpu_class() in CPU_CLASSES and not onednn_bf16():
            reason += (
                f"; oneDNN has no bf16 on this {cpu_class()} CPU: slow, and an LSTM "
                "stops with an error"
            )
        return Precision(device, True, layout, reason)
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
            f"no bf16 units on this {cpu_class()} CPU: bf16 would be slower",
        )
    return Precision(device, False, layout, f"no native bf16 on this {device.type}")
