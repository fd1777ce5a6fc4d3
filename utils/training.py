"""Training helpers the chapters share: progress bars, a loss history, TensorBoard
writers."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence, TypeVar

from tqdm.auto import tqdm
from tqdm.std import tqdm as tqdm_text

from .switches import env_flag

if TYPE_CHECKING:  # pyplot is imported where a plot is drawn: training scripts skip it
    import matplotlib.pyplot as plt

T = TypeVar("T")

#: Environment variable naming the folder for TensorBoard logs (default ``runs/`` in the
#: cwd).
LOG_DIR_ENV = "GDL_LOG_DIR"


#: Set to ``1`` for plain-text progress bars (used when a chapter is executed for the
#: book).
TEXT_PROGRESS_ENV = "GDL_TEXT_PROGRESS"


def progress(
    iterable: Iterable[T], desc: str = "", total: int | None = None, leave: bool = True
) -> Iterable[T]:
    """A ``tqdm.auto`` progress bar: a widget in Jupyter, text in a terminal.

    With ``$GDL_TEXT_PROGRESS=1`` it is plain text on stdout, so a notebook executed
    headless stores the bar's final state rather than a widget frozen at 0%.
    """
    if env_flag(TEXT_PROGRESS_ENV):
        return tqdm_text(
            iterable,
            desc=desc,
            total=total,
            leave=leave,
            file=sys.stdout,
            mininterval=5.0,
            ascii=False,
        )
    return tqdm(iterable, desc=desc, total=total, leave=leave, mininterval=1.0)


class History:
    """Named series of numbers recorded during training, e.g.
    ``history.log(train=0.1, test=0.2)``."""

    def __init__(self) -> None:
        self.series: dict[str, list[float]] = defaultdict(list)

    def log(self, **values: float) -> None:
        """Append one value to each named series."""
        for name, value in values.items():
            self.series[name].append(float(value))

    def __getitem__(self, name: str) -> list[float]:
        return self.series[name]

    def last(self, name: str) -> float:
        """The latest value of a series."""
        return self.series[name][-1]

    def plot(
        self,
        names: Sequence[str] | None = None,
        xlabel: str = "epoch",
        ylabel: str = "loss",
        title: str | None = None,
        logy: bool = False,
        ax: plt.Axes | None = None,
    ) -> plt.Axes:
        """Plot the named series (all by default) against their step, starting at 1."""
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6, 3.5))
        for name in names or list(self.series):
            values = self.series[name]
            ax.plot(
                range(1, len(values) + 1),
                values,
                marker="o" if len(values) < 40 else None,
                label=name,
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        if title:
            ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
        return ax


def decay_in_second_half(optimizers: Sequence, epochs: int) -> list:
    """Learning-rate schedules that keep each optimiser's rate for the first half of
    ``epochs`` and then lower it linearly to zero; call ``step()`` on each once per
    epoch. The GAN chapters use it so that the last epochs settle instead of
    circling."""
    import torch

    def factor(epoch: int) -> float:
        return min(1.0, (epochs - epoch) / (epochs / 2))

    return [
        torch.optim.lr_scheduler.LambdaLR(optimizer, factor) for optimizer in optimizers
    ]


def log_dir(chapter: str) -> Path:
    """A fresh per-run log folder, ``runs/<chapter>/<timestamp>``, under
    ``$GDL_LOG_DIR`` or the cwd."""
    base = Path(os.environ.get(LOG_DIR_ENV) or "runs")
    return base / chapter / time.strftime("%Y%m%d-%H%M%S")


def tensorboard_writer(chapter: str, logdir: str | Path | None = None):
    """A tensorboardX ``SummaryWriter`` logging to ``logdir`` (default
    :func:`log_dir`); view with ``tensorboard --logdir runs``."""
    # imported here: only chapters that log need it
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir=str(logdir or log_dir(chapter)))


class Stopwatch:
    """Wall-clock time since creation, for the ``wall_time_s`` a chapter records."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def read_scalars(logdir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series in a TensorBoard log folder, as ``{tag: (steps, values)}``.

    Lets a chapter plot inline exactly what TensorBoard would show.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    accumulator.Reload()
    series = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        series[tag] = ([e.step for e in events], [e.value for e in events])
    return series
