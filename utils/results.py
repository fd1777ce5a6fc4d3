"""The measured results of a chapter: a full run writes ``book/results/<chapter>.json``.

Each record names its headline metric and what that metric compares with (a goal, a published
number, a real-data floor), so the results page is built from the records alone. Smoke runs, and
runs whose profile switch is invalid, never write; a record is checked before it is written, and
written atomically.
"""
from __future__ import annotations

import html
import json
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .precision import choose
from .runtime import device_description, is_smoke
from .sources import atomic_path

#: Environment variable that overrides where results files go.
RESULTS_DIR_ENV = "GDL_RESULTS_DIR"
_REPO = Path(__file__).resolve().parent.parent
_CHAPTER = re.compile(r"^[a-z][a-z0-9_]*$")


def results_dir() -> Path:
    """``$GDL_RESULTS_DIR``, else ``book/results`` of this checkout, else ``results/`` in the cwd."""
    if os.environ.get(RESULTS_DIR_ENV, "").strip():
        return Path(os.environ[RESULTS_DIR_ENV].strip()).expanduser()
    if (_REPO / "_toc.yml").is_file():
        return _REPO / "book" / "results"
    return Path("results")


def plain(value: Any, name: str = "value") -> Any:
    """A metric as a JSON value: numpy and tensor scalars become numbers, small arrays lists;
    NaN, infinity and other objects are rejected with the metric's name."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r} is {value}: only finite numbers can be recorded")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [plain(v, name) for v in value]
    raise TypeError(f"metric {name!r} has a value of type {type(value).__name__}; record numbers, strings, "
                    "booleans or lists of them")


def check_record(record: Mapping[str, Any]) -> list[str]:
    """What is wrong with a results record (empty when it is well-formed)."""
    problems = []
    if not isinstance(record, Mapping):
        return [f"a record is a JSON object, got {type(record).__name__}"]
    chapter, metrics, headline = record.get("chapter"), record.get("metrics"), record.get("headline")
    if not isinstance(chapter, str) or not _CHAPTER.match(chapter):
        problems.append(f"'chapter' must be a lower-case name, got {chapter!r}")
    if record.get("profile") != "full":
        problems.append(f"'profile' must be 'full', got {record.get('profile')!r}")
    if not isinstance(metrics, Mapping) or not metrics:
        problems.append("'metrics' must be a non-empty object")
        metrics = {}
    if not isinstance(headline, Mapping) or not {"metric", "meaning", "reference"} <= set(headline):
        problems.append("'headline' must name 'metric', 'meaning' and 'reference'")
    elif headline["metric"] not in metrics:
        problems.append(f"the headline metric {headline['metric']!r} is not among the metrics")
    elif isinstance(metrics[headline["metric"]], bool) or not isinstance(metrics[headline["metric"]], (int, float)):
        problems.append(f"the headline metric {headline['metric']!r} is not a number")
    if not isinstance(record.get("device"), str) or not record.get("device"):
        problems.append("'device' must be a non-empty string")
    wall = record.get("wall_time_s")
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not wall > 0:
        problems.append(f"'wall_time_s' must be a positive number, got {wall!r}")
    return problems


def _shown(path: Path) -> str:
    """A path as a reader should see it: relative to the repository or the working folder."""
    for base in (_REPO, Path.cwd()):
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return f"{path.name} in ${RESULTS_DIR_ENV}"


def save_results(chapter: str, metrics: Mapping[str, Any], device: torch.device, wall_time_s: float, *,
                 headline: str, meaning: str, reference: str) -> Path | None:
    """Write the chapter's metrics from a full run; in the smoke profile write nothing, return None.

    ``headline`` names the metric the results page shows, ``meaning`` says how to read it ("nats per
    image, lower is better") and ``reference`` what it compares with ("goal 100; ..."). The record is
    checked before it is written, so a bad value fails here, with its name, not in the results page.
    """
    if is_smoke():
        print(f"Smoke profile: {chapter} results are not saved.")
        return None
    record = {
        "chapter": chapter, "profile": "full",
        "headline": {"metric": headline, "meaning": meaning, "reference": reference},
        "metrics": {str(k): plain(v, str(k)) for k, v in metrics.items()},
        "device": device_description(device), "threads": torch.get_num_threads(),
        "precision": choose(device).describe(),
        "wall_time_s": round(float(wall_time_s), 1),
    }
    problems = check_record(record)
    if problems:
        raise ValueError(f"the results of {chapter!r} are not recordable: " + "; ".join(problems))
    path = results_dir() / f"{chapter}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(f"Saved {_shown(path)}")
    return path


def load_results(chapter: str) -> dict:
    """The recorded results of a chapter, checked; a clear error names a missing or malformed file."""
    path = results_dir() / f"{chapter}.json"
    record, problem = _read(path)
    if problem:
        raise ValueError(f"{_shown(path)}: {problem}")
    return record


def _read(path: Path) -> tuple[dict, str | None]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, "no such file: run the chapter with the full profile"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"not readable JSON ({exc})"
    problems = check_record(record)
    if not problems and record["chapter"] != path.stem:
        problems.append(f"it records chapter {record['chapter']!r}, not {path.stem!r}")
    return record, "; ".join(problems) or None


def all_results() -> tuple[list[dict], list[str]]:
    """Every well-formed record in :func:`results_dir`, and a note for each file that was skipped."""
    records, skipped = [], []
    for path in sorted(results_dir().glob("*.json")):
        record, problem = _read(path)
        if problem:
            skipped.append(f"{path.name}: {problem}")
        else:
            records.append(record)
    return records, skipped


def toc_order() -> list[str]:
    """The chapters in the order of the book's table of contents (``_toc.yml``), when it is there."""
    toc = _REPO / "_toc.yml"
    if not toc.is_file():
        return []
    return re.findall(r"^\s*-\s*file:\s*book/(\w+)\s*$", toc.read_text(), flags=re.M)


def number_text(value: float | int) -> str:
    """A value as a reader reads it: 0.0262, 99.16, 3,340,718 (no exponent notation)."""
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def duration_text(seconds: float) -> str:
    """A wall time as a reader reads it: seconds under a minute, else minutes."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]], css_class: str) -> str:
    """An HTML table (the book renders it as a table; a markdown table in a code output would stay text).

    Cells are inserted as given, so callers escape text with ``html.escape``; ``rows`` must all have
    as many cells as ``header``.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells for {len(header)} columns: {list(row)}")
    head = "".join(f"<th>{c}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def summary_html(order: Sequence[str] | None = None) -> str:
    """The results page's table: one row per recorded chapter (in ``order``, by default the table of
    contents', then by name) with its
    headline metric, how to read it, what it compares with, the device and the wall time; a note under
    it names any file that was skipped."""
    records, skipped = all_results()
    rank = {name: i for i, name in enumerate(toc_order() if order is None else order)}
    records.sort(key=lambda r: (rank.get(r["chapter"], len(rank)), r["chapter"]))
    rows = []
    for r in records:
        h = r["headline"]
        cells = [f'<a href="{r["chapter"]}.html">{html.escape(r["chapter"])}</a>',
                 f"<code>{html.escape(h['metric'])}</code>", number_text(r["metrics"][h["metric"]]),
                 html.escape(h["meaning"]), html.escape(h["reference"]), html.escape(r["device"]),
                 duration_text(r["wall_time_s"])]
        rows.append(cells)
    table = table_html(("chapter", "headline metric", "value", "how to read it", "compared with", "device",
                        "wall time"), rows, "results-table")
    if skipped:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in skipped)
        table += f'<p class="results-skipped">Skipped results files:</p><ul>{items}</ul>'
    return table
