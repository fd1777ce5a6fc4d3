"""What the benchmarks share: reading a chapter's code from its notebook, timing, and
counting FLOPs.

A benchmark runs the chapter's own definitions (its classes and functions, executed from
the notebook), never a copy, so the two cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import nbformat
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from utils.chapter_code import setup_settings
from utils.precision import Precision

BOOK = Path(__file__).resolve().parent.parent / "book"


def code_cells(chapter: str) -> list[str]:
    """The sources of the code cells of ``book/<chapter>.ipynb``."""
    return [
        cell.source
        for cell in nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4).cells
        if cell.cell_type == "code"
    ]


def definitions(chapter: str, names: set[str], namespace: dict | None = None) -> dict:
    """The notebook's imports and its top-level class/def statements named in ``names``,
    executed in ``namespace`` (which may hold the globals those definitions use, e.g.
    ``bce`` or ``cfg``)."""
    namespace = {"torch": torch, "nn": nn, "F": F, **(namespace or {})}
    for source in code_cells(chapter):
        try:
            tree = ast.parse(source)
        except SyntaxError:  # the Colab cell's %pip line
            continue
        keep = [
            node
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            or (
                isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in names
            )
        ]
        code = compile(
            ast.Module(body=keep, type_ignores=[]), f"{chapter}.ipynb", "exec"
        )
        exec(code, namespace)  # noqa: S102
    missing = names - set(namespace)
    if missing:
        raise RuntimeError(f"book/{chapter}.ipynb defines none of {sorted(missing)}")
    return namespace


def full_settings(chapter: str) -> SimpleNamespace:
    """The ``full=dict(...)`` settings of the chapter's ``runtime.setup`` call."""
    return SimpleNamespace(**setup_settings(BOOK / f"{chapter}.ipynb"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(
    steps: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each step after one warm-up call each, rotating which goes
    first."""
    for step in steps.values():
        step()
        sync(device)
    times: dict[str, list[float]] = {label: [] for label in steps}
    items = list(steps.items())
    for repeat in range(repeats):
        shift = repeat % len(items)
        for label, step in items[shift:] + items[:shift]:
            start = time.perf_counter()
            step()
            sync(device)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def count_flops(step: Callable[[], object]) -> int:
    """Floating-point operations of one call (matrix products and convolutions, forward
    and backward), counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def achieved_gflops(
    step: Callable[[], object], repeats: int, device: torch.device
) -> float:
    """GFLOP/s of ``step``: its counted FLOPs over its median time."""
    seconds = median_times({"step": step}, repeats, device)["step"]
    return count_flops(step) / seconds / 1e9


def conv_peak_gflops(device: torch.device, prec: Precision, repeats: int = 5) -> float:
    """GFLOP/s of a large 3x3 convolution, forward and backward, on ``device`` in the
    precision ``prec`` (its layout, and bf16 autocast where it has it): the convolution
    throughput this machine reaches, measured in the same run as the steps it is
    compared with."""
    conv = prec.prepare(nn.Conv2d(256, 256, 3, padding=1).to(device))
    x = prec.prepare(torch.randn(32, 256, 32, 32, device=device)).requires_grad_()

    def step() -> None:
        with prec.autocast():
            y = conv(x)
        y.float().sum().backward()

    return achieved_gflops(step, repeats, device)


def matmul_peak_gflops(
    device: torch.device, prec: Precision, size: int = 1024, repeats: int = 5
) -> float:
    """GFLOP/s of a large matrix product, forward and backward, in the precision
    ``prec``: the yardstick of a model made of matrix products (the Transformer),
    measured in the same run."""
    a = torch.randn(size, size, device=device, requires_grad=True)
    b = torch.randn(size, size, device=device, requires_grad=True)

    def step() -> None:
        with prec.autocast():
            y = a @ b
        y.float().sum().backward()

    return achieved_gflops(step, repeats, device)


def uses_convolutions(chapter: str) -> bool:
    """Whether the chapter's model has convolutions (``nn.Conv...`` layers, or VGG19's
    from ``utils.vgg``): only these change with channels_last, so without bf16 the fast
    path of any other chapter is its fp32 step itself."""
    return any(
        re.search(r"\bnn\.Conv|\bvgg\.", source) for source in code_cells(chapter)
    )


def chapter_precision(chapter: str) -> str:
    """What the chapter's ``runtime.setup`` call asks of the fast path: ``"fast"`` (all
    of it), ``"no bf16"`` (``bf16_on_cpu=False``) or ``"fp32"``
    (``fast_path=False``)."""
    for source in code_cells(chapter):
        if "runtime.setup(" in source:
            flags = {
                node.arg: ast.literal_eval(node.value)
                for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.keyword)
                and node.arg in ("fast_path", "bf16_on_cpu")
            }
            if flags.get("fast_path", True) is False:
                return "fp32"
            return "no bf16" if flags.get("bf16_on_cpu", True) is False else "fast"
    raise RuntimeError(f"book/{chapter}.ipynb has no runtime.setup call")
