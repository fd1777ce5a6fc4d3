"""What does a second core give the scaling chapter's step, as a second thread or as a
second process? A profile of the diffusion chapter's training step (its own U-Net and
``train_step``, executed from the notebook) in one process, with one thread and with
two, and the step on half the batch.

Two threads split each operator's work (intra-op parallelism) and meet at the end of
every operator; two processes each run the whole step on half the batch and meet once
per step, in DDP's all-reduce. The profile shows, per kind of operator, its time with
one thread (the profiler's self CPU time) and how much faster a second thread makes
it; the whole step is also timed apart, without the profiler, whose own cost would
distort it. Adam's update (the single-tensor path on a CPU) counts with the
elementwise work.

Usage: ``python -m benchmarks.threads [--batch 64] [--steps 20] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

from utils import chapter_code, precision

from .common import BOOK, full_settings

#: Operator names (aten::...) grouped into kinds, by the first pattern they contain.
KINDS = (
    ("convolution", ("conv", "mkldnn")),
    ("normalisation", ("group_norm",)),
    ("matrix product", ("addmm", "mm", "linear")),
)


def kind(name: str) -> str:
    for label, patterns in KINDS:
        if any(p in name for p in patterns):
            return label
    return "elementwise and other"


def chapter() -> tuple[SimpleNamespace, dict]:
    """The diffusion chapter's full-profile settings and its definitions, in fp32."""
    cfg = full_settings("diffusion")
    cfg.precision = precision.fp32(torch.device("cpu"), "benchmark")
    names = {"cosine_alpha_bar", "UNet", "train_step", "diffusion_loss", "add_noise"}
    ns = chapter_code.tagged_definitions(BOOK / "diffusion.ipynb", names, {"cfg": cfg})
    ns["alpha_bar"] = ns["cosine_alpha_bar"](cfg.T)
    return cfg, ns


def step_profile(
    cfg: SimpleNamespace, ns: dict, threads: int, batch: int, steps: int
) -> tuple[float, dict]:
    """Seconds per step, and self CPU seconds per step for each kind of operator."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ns["UNet"](tuple(cfg.channels))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x = torch.randn(batch, 1, 28, 28).clamp(-1, 1)
    y = torch.randint(0, 10, (batch,))
    for _ in range(3):  # warm-up: allocations, oneDNN's kernel choice
        ns["train_step"](model, optimizer, x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            ns["train_step"](model, optimizer, x, y)
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::") or event.key.startswith("mkldnn"):
            totals[kind(event.key)] += event.self_cpu_time_total / 1e6 / steps
    # the wall-clock time of a step, measured apart (the profiler adds overhead)
    start = time.perf_counter()
    for _ in range(steps):
        ns["train_step"](model, optimizer, x, y)
    return (time.perf_counter() - start) / steps, dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the three layouts are run this many times, interleaved (medians)",
    )
    args = parser.parse_args(argv)
    layouts = {
        "one": (1, args.batch),
        "two": (2, args.batch),
        "half": (1, args.batch // 2),
    }
    cfg, ns = chapter()
    runs: dict[str, list] = {name: [] for name in layouts}
    for _ in range(args.rounds):  # interleaved: a slow spell hits every layout
        for name, (threads, batch) in layouts.items():
            runs[name].append(step_profile(cfg, ns, threads, batch, args.steps))

    def median(name: str, part: str | None = None) -> float:
        values = [
            wall if part is None else parts.get(part, 0.0) for wall, parts in runs[name]
        ]
        return statistics.median(values)

    kinds = sorted(runs["one"][0][1], key=lambda k: -runs["one"][0][1][k])
    print(
        f"the diffusion U-Net's training step, batch {args.batch}: medians of "
        f"{args.rounds} interleaved runs of {args.steps} steps (ms per step)"
    )
    total1 = sum(median("one", k) for k in kinds) * 1e3
    total2 = sum(median("two", k) for k in kinds) * 1e3
    print(f"{'kind of operator':24} | 1 thread, share | 2 threads | speed-up")
    for label in kinds:
        a, b = median("one", label) * 1e3, median("two", label) * 1e3
        print(f"{label:24} | {a:7.1f} {a / total1:6.1%} | {b:9.1f} | {a / b:.2f}x")
    print(
        f"{'all operators':24} | {total1:7.1f}        | {total2:9.1f} | "
        f"{total1 / total2:.2f}x"
    )
    one, two, half = (median(name) for name in layouts)
    spread = {
        name: (min(w for w, _ in runs[name]) * 1e3, max(w for w, _ in runs[name]) * 1e3)
        for name in layouts
    }
    print(
        f"{'whole step, unprofiled':24} | {one * 1e3:7.1f}        | {two * 1e3:9.1f} | "
        f"{one / two:.2f}x"
    )
    print(
        f"1 thread, batch {args.batch // 2}: {half * 1e3:.1f} ms per step, "
        f"{one / (2 * half):.2f} times the per-image rate of batch {args.batch}. Two "
        "processes, each with one thread and half the batch, would take that long per "
        f"step: {one / half:.2f}x the one-thread rate, before the all-reduce and the "
        "wait for each other"
    )
    print(
        "lowest to highest, ms per step: "
        + "; ".join(f"{n} {lo:.1f} to {hi:.1f}" for n, (lo, hi) in spread.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
