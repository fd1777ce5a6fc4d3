"""How long a chapter's run takes on the reader's machine, measured from its first
steps, and the shorter run to choose where the full one would take too long.

The book's full profiles are sized for about 15 minutes on a 2-core CPU with bf16 units
(README, "Time per chapter"). On a CPU without them (an AVX2 laptop) the same run can
take two or three times as long. A chapter cannot know that from a table, so it times
itself: :class:`Pace` watches the first steps of the chapter's main training loop and
prints, once, what the loop and the whole chapter will take here. Where the run would go
past :data:`LONG_RUN_MINUTES`, it says so and names the chapter's short run
(``GDL_SHORT=1``, the ``short`` settings of its ``runtime.setup``) with what that run
measured when the book ran it (``book/results/short/<chapter>.json``).

The whole chapter is estimated from a recorded run of it that holds its own pace (the
book's full run, its full run on an AVX2 CPU, or its short run; one made on this CPU
class first): everything after the setup scales with the time a step takes, here against
there. Without such a record only the training steps are counted, and the message says
so.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from . import runtime

#: A run that would take longer than this, in minutes, announces itself and offers the
#: chapter's short run.
LONG_RUN_MINUTES = 20.0
#: The last :class:`Pace` made in this process (a chapter has one), for its record.
_last: Pace | None = None


def minutes_text(seconds: float) -> str:
    """``"41 min"``, or ``"40 s"`` under two minutes."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def forget() -> None:
    """Forget the last pace (``runtime.setup`` calls it: a new chapter run)."""
    global _last
    _last = None


def measured() -> dict[str, float | int] | None:
    """:meth:`Pace.measured` of the chapter's pace, or None where it made none."""
    return _last.measured() if _last is not None else None


def _sync() -> None:
    """Wait for queued GPU work, so a step's time is its computation's (CPU work is
    done when the step returns)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        torch.mps.synchronize()


def _record(chapter: str, profile: str) -> dict[str, Any] | None:
    """The book's record of the chapter's run in ``profile``, or None where there is
    none or it cannot be read (a pace report must never stop the training)."""
    from . import results  # imported here: results imports this module

    try:
        return results.load_results(chapter, profile=profile)
    except Exception:  # noqa: BLE001 - missing, malformed: no reference then
        return None


def _paced(record: dict[str, Any] | None) -> bool:
    """Whether ``record`` holds a usable pace: positive steps, loop and step seconds,
    a non-negative time before the loop, and the run's wall time."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    pace = (record or {}).get("pace")
    return (
        isinstance(pace, dict)
        and all(
            number(pace.get(k)) and pace[k] > 0 for k in ("steps", "loop_s", "step_s")
        )
        and number(pace.get("before_s", 0.0))
        and pace.get("before_s", 0.0) >= 0
        and number(record.get("wall_time_s"))
    )


def _short_run_text(chapter: str, record: dict[str, Any] | None) -> str:
    """How to ask for the chapter's short run, and what it measured where the book has
    its record."""
    from . import results

    lowered = ", ".join(f"{k}={v}" for k, v in runtime.short_settings().items())
    how = (
        f"set {runtime.SHORT_ENV}=1 and run the chapter again (in Jupyter: "
        f"%env {runtime.SHORT_ENV}=1, then run from the setup cell): {lowered}"
    )
    if record is None:
        return f"{how}; what it reaches: the chapter's note on time"
    headline = record["headline"]["metric"]
    return (
        f"{how}. In the book's short run ({record['device']}, "
        f"{minutes_text(record['wall_time_s'])} in all) it reached "
        f"{headline} = {results.number_text(record['metrics'][headline])} "
        f"({record['headline']['meaning']})"
    )


class Pace:
    """The pace of a chapter's main training loop, measured on this machine.

    Make one just before the loop, with the number of steps the loop will take, and
    call :meth:`step` after every step (``step(amount)`` where steps differ in size:
    the style-transfer chapter counts an evaluation of a smaller image as a fraction).
    After ``warmup`` steps (the first ones pay for memory allocation and kernel choice)
    it times at least ``min_steps`` steps and ``min_seconds`` seconds, then prints once:
    the seconds a step, the loop's estimated time and, from a recorded run of the
    chapter with its own pace, the whole chapter's. ``clock`` is the chapter's
    :class:`utils.training.Stopwatch`, started at its setup. Where the estimate passes
    :data:`LONG_RUN_MINUTES` in a full run on a CPU, it says so and names the chapter's
    short run, if it offers one. A loop too short to fill the timing window prints its
    measured time at its last step.
    """

    def __init__(
        self,
        chapter: str,
        steps: float,
        clock: Any = None,
        warmup: int = 2,
        min_steps: int = 5,
        min_seconds: float = 10.0,
    ) -> None:
        if not steps > 0:
            raise ValueError(f"a training loop of {steps} steps has no pace to measure")
        self.chapter, self.steps, self.clock = chapter, steps, clock
        self.warmup, self.min_steps, self.min_seconds = warmup, min_steps, min_seconds
        self.before_s = clock.seconds() if clock is not None else 0.0
        self.done = 0.0
        self.calls = 0
        self.loop_start = self.last_step_at = time.perf_counter()
        self.window_start: float | None = self.loop_start if warmup == 0 else None
        self.window_from = 0.0
        self.estimate_s: float | None = None
        self.per_step_s: float | None = None
        global _last
        _last = self

    def measured(self) -> dict[str, float | int]:
        """What this loop measured, for the chapter's results record: the steps it
        planned and made, the seconds before it (since the setup), from its start to
        its last step, and a step's seconds in the timing window."""
        return {
            "planned_steps": round(self.steps, 2),
            "steps": round(self.done, 2),
            "before_s": round(self.before_s, 1),
            "loop_s": round(self.last_step_at - self.loop_start, 1),
            "step_s": round(self.per_step_s or 0.0, 5),
        }

    def step(self, amount: float = 1.0) -> None:
        """Count one finished step (or ``amount`` of one); print the estimate when the
        timing window is full."""
        self.done += amount
        self.calls += 1
        if self.estimate_s is not None:
            self.last_step_at = time.perf_counter()
            return
        _sync()
        now = self.last_step_at = time.perf_counter()
        if self.calls == self.warmup:
            self.window_start, self.window_from = now, self.done
        if self.window_start is not None and self.calls > self.warmup:
            timed = self.done - self.window_from
            seconds = now - self.window_start
            if (
                self.calls - self.warmup >= self.min_steps
                and seconds >= self.min_seconds
            ):
                self._report(
                    seconds / timed, f"steps {self.warmup + 1} to {self.calls}"
                )
                return
        if self.done >= self.steps - 1e-9:
            self._report((now - self.loop_start) / self.done, f"all {self.calls} steps")

    def _whole_chapter(self, per_step: float) -> tuple[float, str] | None:
        """The whole chapter's seconds here, scaled from a recorded run with a pace,
        and which run that was; None without one.

        The records tried: the book's run in this profile, its full run, its full run
        on an AVX2 CPU, its short run; the first made on this CPU class is taken, else
        the first with a pace (a step's time scales the evaluations with it)."""
        from .precision import cpu_class

        profile = runtime.chosen_profile()
        kinds = (profile if profile != "smoke" else "full", "full", "avx2", "short")
        paced = [
            (kind, record)
            for kind in dict.fromkeys(kinds)
            if _paced(record := _record(self.chapter, kind))
        ]
        if not paced:
            return None
        here = cpu_class() if not torch.cuda.is_available() else None
        kind, record = next(
            ((k, r) for k, r in paced if r.get("cpu_class") == here), paced[0]
        )
        pace = record["pace"]
        speed = per_step / pace["step_s"]  # their seconds -> ours
        # the loop as it ran there (its evaluations included), per planned step
        loop_per_step = pace["loop_s"] / pace["steps"]
        after = record["wall_time_s"] - pace.get("before_s", 0.0) - pace["loop_s"]
        total = self.before_s + speed * (loop_per_step * self.steps + max(after, 0))
        run = "AVX2 CPU" if kind == "avx2" else kind
        return total, f"scaled from the book's {run} run on {record['device']}"

    def _report(self, per_step: float, over: str) -> None:
        self.per_step_s, self.estimate_s = per_step, per_step * self.steps
        try:
            whole = self._whole_chapter(per_step)
        except Exception:  # noqa: BLE001 - a reference gone wrong must not stop training
            whole = None
        line = (
            f"pace: {per_step:.3g} s a step ({over}, timed here) x {self.steps:,.0f} "
            f"steps: the training steps take about {minutes_text(self.estimate_s)} on "
            "this machine"
        )
        if whole is not None:
            total = whole[0]
            line += f"; the whole chapter about {minutes_text(total)} ({whole[1]})"
        else:
            total = self.before_s + self.estimate_s
            if self.clock is not None:
                line += (
                    f", {minutes_text(total)} with what ran before them (the "
                    "evaluation after them not counted)"
                )
        lines = [line]
        on_cpu = not torch.cuda.is_available()
        if (
            total > LONG_RUN_MINUTES * 60
            and runtime.chosen_profile() == "full"
            and on_cpu
        ):
            offer = (
                "For a shorter run, "
                + _short_run_text(self.chapter, _record(self.chapter, "short"))
                + "."
                if runtime.short_settings()
                else "This chapter offers no shorter run."
            )
            lines.append(f"That is past {LONG_RUN_MINUTES:.0f} minutes. {offer}")
        print("\n".join(lines), file=sys.stdout, flush=True)
