"""The time each chapter's full run takes, by CPU class, from the book's records.

Usage: ``python -m benchmarks.chapter_times`` prints the table of README's "Time per
chapter" (the introduction shows the same rows; a test keeps all three equal) and how
far its estimates are from the full runs that check them.

Every number comes from a record a run wrote (``utils.results``), never typed in:

- **CPU with bf16 units**: the book's full run, ``book/results/<chapter>.json``
  (``python -m utils.notebooks book/<chapter>.ipynb`` on such a CPU);
- **AVX2 CPU, fp32**: the full run limited to AVX2 kernels,
  ``book/results/avx2/<chapter>.json`` (``python -m utils.notebooks --avx2 ...``);
  where the book has none, an estimate from the chapter's short run on that CPU
  (``book/results/short/<chapter>.json``): its time plus the training loop's time once
  more for each multiple of the short run's steps that the full run makes (the time
  before and after the loop stays as it was);
- **short run**: that short run's time and headline, beside the full run's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from utils import results
from utils.budget import LONG_RUN_MINUTES
from utils.chapter_code import setup_settings, short_settings

BOOK = Path(__file__).resolve().parent.parent / "book"
HEADER = (
    "| chapter | CPU with bf16 units, min | AVX2 CPU (fp32), min | short run "
    "(`GDL_SHORT=1`) on the AVX2 CPU |\n| --- | --- | --- | --- |"
)


@dataclass
class ChapterTime:
    """One chapter's row: minutes on each class, and how the AVX2 one was obtained."""

    chapter: str
    bf16_min: float | None
    avx2_min: float | None
    avx2_estimated: bool
    short: dict | None
    full: dict | None
    avx2: dict | None

    def row(self) -> str:
        """The chapter's line of the markdown table."""

        def minutes(value: float | None, estimated: bool = False) -> str:
            if value is None:
                return "not measured"
            return f"≈ {value:.1f} (estimate)" if estimated else f"{value:.1f}"

        return (
            f"| `{self.chapter}` | {minutes(self.bf16_min)} | "
            f"{minutes(self.avx2_min, self.avx2_estimated)} | {self.short_text()} |"
        )

    def short_text(self) -> str:
        """The short run's time, settings and headline beside the full run's; or why
        there is none."""
        if self.short is None:
            needed = self.avx2_min is None or self.avx2_min > LONG_RUN_MINUTES
            return "none recorded" if needed else "none (not needed)"
        lowered = ", ".join(
            f"{k}={v}"
            for k, v in short_settings(BOOK / f"{self.chapter}.ipynb").items()
        )
        metric = self.short["headline"]["metric"]
        reached = results.number_text(self.short["metrics"][metric])
        full = (
            f" (full run: {results.number_text(self.full['metrics'][metric])})"
            if self.full
            else ""
        )
        minutes = self.short["wall_time_s"] / 60
        return f"{minutes:.1f} min ({lowered}): {metric} {reached}{full}"


def _record(chapter: str, kind: str) -> dict | None:
    """The chapter's record of ``kind``, None where there is none; a malformed one is
    an error (a table must not drop it silently)."""
    if not results.record_path(chapter, kind).exists():
        return None
    return results.load_results(chapter, profile=kind)


def scale(chapter: str) -> float:
    """How many times the short run's training loop the full run makes: the ratio of
    the one number the short run lowers (``epochs=10`` of 20: 2)."""

    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    path = BOOK / f"{chapter}.ipynb"
    full, short = setup_settings(path), short_settings(path)
    lowered = [k for k, v in short.items() if number(v) and number(full.get(k))]
    if len(lowered) != 1:
        raise ValueError(
            f"{chapter}'s short run must lower exactly one number of its full run (its "
            f"length), not {lowered}: {short}"
        )
    return full[lowered[0]] / short[lowered[0]]


def estimate_s(chapter: str, short: dict) -> float:
    """The full run's seconds on the short run's machine: the short run's time, plus its
    training loop's time for each further multiple of its steps."""
    return short["wall_time_s"] + (scale(chapter) - 1) * short["pace"]["loop_s"]


def chapter_time(chapter: str) -> ChapterTime:
    """The chapter's row, from its full, AVX2 and short records."""
    full, avx2, short = (_record(chapter, k) for k in ("full", "avx2", "short"))
    if avx2 is not None:
        avx2_min, estimated = avx2["wall_time_s"] / 60, False
    elif short is not None and short.get("pace"):
        avx2_min, estimated = estimate_s(chapter, short) / 60, True
    else:
        avx2_min, estimated = None, False
    return ChapterTime(
        chapter,
        full["wall_time_s"] / 60 if full else None,
        avx2_min,
        estimated,
        short,
        full,
        avx2,
    )


def chapters() -> list[str]:
    """The chapters that have a full record, in the order of the table of contents (of
    the working folder's checkout: run from the repository)."""
    if results.checkout() != BOOK.parent:
        raise RuntimeError(f"run python -m benchmarks.chapter_times in {BOOK.parent}")
    return [c for c in results.toc_order() if results.record_path(c).exists()]


def table(times: list[ChapterTime] | None = None) -> str:
    """The "Time per chapter" table in markdown, of ``times`` (default: all)."""
    times = [chapter_time(c) for c in chapters()] if times is None else times
    return "\n".join([HEADER, *(t.row() for t in times)])


def checks(times: list[ChapterTime] | None = None) -> list[str]:
    """For each chapter with both a short and a full AVX2 record: the estimate from the
    short run against the full run's measured time."""
    times = [chapter_time(c) for c in chapters()] if times is None else times
    lines = []
    for t in times:
        if t.short is None or t.avx2 is None or not t.short.get("pace"):
            continue
        guess, real = estimate_s(t.chapter, t.short) / 60, t.avx2["wall_time_s"] / 60
        lines.append(
            f"{t.chapter}: estimated {guess:.1f} min from its short run, measured "
            f"{real:.1f} min in full ({(guess - real) / real:+.0%})"
        )
    return lines


def main() -> int:
    times = [chapter_time(c) for c in chapters()]  # each record read once
    print(table(times))
    print()
    print(
        "\n".join(checks(times)) or "no chapter has both a short and a full AVX2 record"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
