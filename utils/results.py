"""The measured results of a chapter: a full run writes ``book/results/<chapter>.json``.

Each record names its headline metric and what that metric compares with (a goal, a
published number, a real-data floor), so the results page is built from the records
alone. A record is built and checked in every profile, so a bad one fails in the smoke
run too; smoke runs, and runs whose profile switch is invalid, never write; full runs
write atomically, into the checkout of the working folder (where the notebook runs),
never into the checkout ``utils`` was imported from.

Two more kinds of record serve the time a chapter takes ("Time per chapter" in the
README, and the estimates of ``utils.budget``), never the results page: a short run's
(``GDL_SHORT=1``) in ``short/<chapter>.json``, and a full run's on an AVX2 CPU
(``GDL_RECORD_AS=avx2``, set by ``python -m utils.notebooks --avx2``) in
``avx2/<chapter>.json``.
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

from . import budget
from .precision import Precision, choose, cpu_class
from .runtime import chosen_profile, device_description, is_smoke
from .sources import atomic_path
from .switches import RECORD_AS_ENV

#: Environment variable that overrides where results files go.
RESULTS_DIR_ENV = "GDL_RESULTS_DIR"
#: The profiles whose runs are recorded: a full run in ``<chapter>.json``, a short run
#: (``GDL_SHORT=1``) in ``short/<chapter>.json``; smoke runs are never recorded.
RECORDED_PROFILES = ("full", "short")
#: Records of full runs on a CPU class other than the book's, kept for the time a
#: chapter takes there (README, "Time per chapter") and for the pace estimates of
#: ``utils.budget``: ``avx2/<chapter>.json``, written by ``python -m utils.notebooks
#: --avx2`` (a full run limited to AVX2 kernels). Kind -> the CPU class it must record.
CLASS_RECORDS = {"avx2": "AVX2"}


def record_as() -> str | None:
    """The class folder a full run records into (``$GDL_RECORD_AS``), or None; any
    value but those of :data:`CLASS_RECORDS` is an error. Only the write moves, so the
    run still reads other chapters' records from the results folder."""
    value = os.environ.get(RECORD_AS_ENV, "").strip().lower()
    if value and value not in CLASS_RECORDS:
        raise ValueError(
            f"${RECORD_AS_ENV}={value!r}: expected one of {', '.join(CLASS_RECORDS)}, "
            "or unset it"
        )
    return value or None


_CHAPTER = re.compile(r"^[a-z][a-z0-9_]*$")
#: A clause of a headline's reference that holds a number must say where the number
#: comes from.
_SOURCED = re.compile(r"\bgoal|\(measured here|\(source: ", re.I)


def checkout(start: Path | None = None) -> Path | None:
    """The book checkout holding ``start`` (default: the working folder): the nearest
    folder at or above it with a ``_toc.yml``, or None outside any checkout."""
    start = (Path.cwd() if start is None else start).resolve()
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").is_file():
            return folder
    return None


def results_dir() -> Path:
    """``$GDL_RESULTS_DIR``, else ``book/results`` of the working folder's checkout,
    else ``results/``.

    Resolved from the working folder (a notebook runs in ``book/``), not from where
    ``utils`` was imported, so one venv serves several checkouts; a target in another
    checkout is an error.
    """
    here = checkout()
    override = os.environ.get(RESULTS_DIR_ENV, "").strip()
    if not override:
        return here / "book" / "results" if here else Path("results")
    target = Path(override).expanduser()
    there = checkout(target)
    if here and there and there != here:
        raise ValueError(
            f"${RESULTS_DIR_ENV}={override!r} lies in the checkout {there}, but this "
            f"notebook runs in the checkout {here}: unset {RESULTS_DIR_ENV} to write "
            f"into {_shown(here / 'book' / 'results')}, or run the notebook in {there}"
        )
    return target


def shipped_dir() -> Path | None:
    """The book's own records as published with ``utils``: ``utils/records`` of an
    installed copy (the Colab cell's ``pip install git+...`` ships ``book/results``
    there, see ``pyproject.toml``), else ``book/results`` of the checkout ``utils`` was
    imported from (an editable install); None if neither is there."""
    here = Path(__file__).resolve().parent
    for folder in (here / "records", here.parent / "book" / "results"):
        if folder.is_dir():
            return folder
    return None


def _reading_path(path: Path) -> Path:
    """Where to read the record at ``path``: ``path`` itself, unless the notebook runs
    alone (no checkout around the working folder and no ``$GDL_RESULTS_DIR``: a
    chapter opened in Colab) and ``path`` is missing there; then the book's own record
    of the same name from :func:`shipped_dir`, so a chapter that compares itself with
    another chapter's run finds that run's published record. Writes never move."""
    alone = checkout() is None and not os.environ.get(RESULTS_DIR_ENV, "").strip()
    shipped = shipped_dir()
    if path.exists() or not alone or shipped is None:
        return path
    candidate = shipped / path.relative_to(results_dir())
    return candidate if candidate.is_file() else path


def cpu_budget(budget: str, device: torch.device) -> str:
    """The time clause of a chapter's goal, ``budget`` ("within about 15 minutes") on
    2 CPU cores: the goals are set for the full profile on the book's CPU, so a run
    on another device says so instead of claiming that budget as its own."""
    clause = f"{budget} on 2 CPU cores"
    if torch.device(device).type == "cpu":
        return clause
    return f"{clause} (the CPU profile's goal; this run: {torch.device(device).type})"


def plain(value: Any, name: str = "value") -> Any:
    """A metric as a JSON value: numpy and tensor scalars become numbers, small arrays
    lists; NaN, infinity and other objects are rejected with the metric's name."""
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
            raise ValueError(
                f"metric {name!r} is {value}: only finite numbers can be recorded"
            )
        return float(value)
    if isinstance(value, (list, tuple)):
        return [plain(v, name) for v in value]
    raise TypeError(
        f"metric {name!r} has a value of type {type(value).__name__}; record numbers, "
        "strings, booleans or lists of them"
    )


def check_record(record: Mapping[str, Any]) -> list[str]:
    """What is wrong with a results record (empty when it is well-formed)."""
    problems = []
    if not isinstance(record, Mapping):
        return [f"a record is a JSON object, got {type(record).__name__}"]
    chapter, metrics, headline = (
        record.get("chapter"),
        record.get("metrics"),
        record.get("headline"),
    )
    if not isinstance(chapter, str) or not _CHAPTER.match(chapter):
        problems.append(f"'chapter' must be a lower-case name, got {chapter!r}")
    if record.get("profile") not in RECORDED_PROFILES:
        problems.append(
            f"'profile' must be 'full' or 'short', got {record.get('profile')!r}"
        )
    if not isinstance(metrics, Mapping) or not metrics:
        problems.append("'metrics' must be a non-empty object")
        metrics = {}
    if not isinstance(headline, Mapping) or not {
        "metric",
        "meaning",
        "reference",
    } <= set(headline):
        problems.append("'headline' must name 'metric', 'meaning' and 'reference'")
    elif headline["metric"] not in metrics:
        problems.append(
            f"the headline metric {headline['metric']!r} is not among the metrics"
        )
    elif isinstance(metrics[headline["metric"]], bool) or not isinstance(
        metrics[headline["metric"]], (int, float)
    ):
        problems.append(f"the headline metric {headline['metric']!r} is not a number")
    if isinstance(headline, Mapping) and "reference" in headline:
        problems += reference_problems(headline["reference"])
    if not isinstance(record.get("device"), str) or not record.get("device"):
        problems.append("'device' must be a non-empty string")
    wall = record.get("wall_time_s")
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not wall > 0:
        problems.append(f"'wall_time_s' must be a positive number, got {wall!r}")
    return problems


def reference_problems(reference: Any) -> list[str]:
    """What is wrong with a headline's ``reference`` ("; "-separated clauses): each
    clause with a number must say where it comes from, "goal", "(measured here" or
    "(source: ", so no number is unexplained."""
    if not isinstance(reference, str) or not reference.strip():
        return [f"'reference' must be a non-empty string, got {reference!r}"]
    return [
        f'the reference clause {clause!r} has a number but not its source (say "goal", '
        '"(measured here, ...)" or "(source: ...)")'
        for clause in reference.split("; ")
        if re.search(r"\d", clause) and not _SOURCED.search(clause)
    ]


def _shown(path: Path) -> str:
    """A path as a reader should see it: relative to the working folder's checkout or
    the working folder."""
    for base in (checkout(), Path.cwd()):
        if base is None:
            continue
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return f"{path.name} in ${RESULTS_DIR_ENV}"


def save_results(
    chapter: str,
    metrics: Mapping[str, Any],
    device: torch.device,
    wall_time_s: float,
    *,
    headline: str,
    meaning: str,
    reference: str,
    precision: Precision | None = None,
) -> Path | None:
    """Write the chapter's metrics from a full run; in the smoke profile check them but
    write nothing, return None.

    ``headline`` names the metric the results page shows, ``meaning`` says how to read
    it ("nats per image, lower is better") and ``reference`` what it compares with
    ("goal 100; ..."). The record is built and checked in every profile, so a bad value
    fails with its name in the smoke run (and the tests), not at the end of a full run
    or in the results page. ``precision`` is what the chapter computed in
    (``cfg.precision``; by default the device's choice).
    """
    # strictly parsed: a mistyped switch is an error before anything else
    smoke = is_smoke()
    profile = "full" if smoke else chosen_profile()
    record = {
        "chapter": chapter,
        "profile": profile,
        "headline": {"metric": headline, "meaning": meaning, "reference": reference},
        "metrics": {str(k): plain(v, str(k)) for k, v in metrics.items()},
        "device": device_description(device),
        "threads": torch.get_num_threads(),
        **({"cpu_class": cpu_class()} if device.type == "cpu" else {}),
        "precision": (precision or choose(device)).describe(),
        "wall_time_s": round(float(wall_time_s), 1),
    }
    pace = budget.measured()
    if pace is not None:  # the main training loop, timed by utils.budget.Pace
        record["pace"] = pace
    problems = check_record(record)
    if problems:
        raise ValueError(
            f"the results of {chapter!r} are not recordable: " + "; ".join(problems)
        )
    kind = record_as() if profile == "full" else None
    if kind and record.get("cpu_class") != CLASS_RECORDS[kind]:
        raise ValueError(
            f"${RECORD_AS_ENV}={kind} records a full run on an {CLASS_RECORDS[kind]} "
            f"CPU, but this run computed on {record['device']}: unset {RECORD_AS_ENV}"
        )
    # resolved in every profile: a wrong target fails early too
    path = record_path(chapter, kind or profile)
    if smoke:
        print(f"Smoke profile: {chapter} results are not saved.")
        return None
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(f"Saved {_shown(path)}")
    return path


def record_path(chapter: str, profile: str = "full") -> Path:
    """Where the record of ``chapter``'s run in ``profile`` lives: ``<chapter>.json``
    for a full run, ``short/<chapter>.json`` for a short one, ``avx2/<chapter>.json``
    for a full run on an AVX2 CPU (:data:`CLASS_RECORDS`)."""
    if profile not in RECORDED_PROFILES and profile not in CLASS_RECORDS:
        raise ValueError(
            f"{profile!r} runs are not recorded: "
            f"{', '.join(RECORDED_PROFILES + tuple(CLASS_RECORDS))}"
        )
    folder = results_dir() / ("" if profile == "full" else profile)
    return folder / f"{chapter}.json"


def load_results(chapter: str, profile: str = "full") -> dict:
    """The recorded results of a chapter's full run (or short run, or full run on an
    AVX2 CPU: ``profile="avx2"``), checked; a clear error names a missing or malformed
    file. A notebook run alone (Colab) that lacks the record reads the book's own
    (:func:`shipped_dir`)."""
    path = _reading_path(record_path(chapter, profile))
    record, problem = _read(path, profile)
    if problem:
        raise ValueError(f"{_shown(path)}: {problem}")
    return record


def _read(path: Path, profile: str = "full") -> tuple[dict, str | None]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        how = (
            f"python -m utils.notebooks --{profile} book/{path.stem}.ipynb"
            if profile in CLASS_RECORDS
            else f"run the chapter with the {profile} profile"
        )
        return {}, f"no such file: {how}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"not readable JSON ({exc})"
    problems = check_record(record)
    run = "full" if profile in CLASS_RECORDS else profile
    if not problems and record["profile"] != run:
        problems.append(f"it records a {record['profile']} run, not a {run} one")
    wanted = CLASS_RECORDS.get(profile)
    if not problems and wanted and record.get("cpu_class") != wanted:
        problems.append(f"its cpu_class is {record.get('cpu_class')!r}, not {wanted!r}")
    if not problems and record["chapter"] != path.stem:
        problems.append(f"it records chapter {record['chapter']!r}, not {path.stem!r}")
    return record, "; ".join(problems) or None


def all_results() -> tuple[list[dict], list[str]]:
    """Every well-formed record in :func:`results_dir`, and a note for each file that
    was skipped."""
    records, skipped = [], []
    for path in sorted(results_dir().glob("*.json")):
        record, problem = _read(path)
        if problem:
            skipped.append(f"{path.name}: {problem}")
        else:
            records.append(record)
    return records, skipped


def toc_order() -> list[str]:
    """The chapters in the order of the table of contents (``_toc.yml``) of the working
    folder's checkout; empty outside a checkout."""
    here = checkout()
    if here is None:
        return []
    toc = here / "_toc.yml"
    return re.findall(r"^\s*-\s*file:\s*book/(\w+)\s*$", toc.read_text(), flags=re.M)


def number_text(value: float | int) -> str:
    """A value as a reader reads it: 0.0262, 99.16, 3,340,718 (no exponent notation)."""
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def duration_text(seconds: float) -> str:
    """A wall time as a reader reads it: seconds under a minute, else minutes."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def table_html(
    header: Sequence[str], rows: Sequence[Sequence[str]], css_class: str
) -> str:
    """An HTML table (the book renders it as a table; a markdown table in a code output
    would stay text).

    Cells are inserted as given, so callers escape text with ``html.escape``; ``rows``
    must all have as many cells as ``header``.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"a table row has {len(row)} cells for "
                f"{len(header)} columns: {list(row)}"
            )
    head = "".join(f"<th>{c}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows
    )
    return (
        f'<table class="{css_class}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


#: The chapters whose models give an exact likelihood, measured in bits per dimension
#: on the 10,000 8-bit MNIST test digits (their records hold ``bits_per_dim`` and the
#: compressor baselines measured on the same digits, ``baseline_<name>``).
LIKELIHOOD_CHAPTERS = ("pixelcnn", "flow")

#: Published test bits per dimension on MNIST, with their settings (the UvA notebooks'
#: printed outputs: phlippe/uvadlc_notebooks, tutorials 11 and 12).
PUBLISHED_BITS_PER_DIM = (
    (
        "gated PixelCNN, unconditional (exact)",
        0.808,
        "852,160 parameters, 64 channels, a masked input layer and 7 gated layers "
        "(dilations 1, 2, 1, 4, 1, 2, 1), 150 epochs on 50,000 digits, best-validation "
        "checkpoint, on a GPU",
        "UvA DL tutorial 12, Autoregressive Image Modeling",
    ),
    (
        "flow, simple (uniform dequantization)",
        1.078,
        "556,312 parameters, 200 epochs on a GPU; bound with 8 importance samples",
        "UvA DL tutorial 11, Normalizing Flows for Image Modeling",
    ),
    (
        "flow, variational dequantization",
        1.043,
        "628,388 parameters, 200 epochs on a GPU; bound with 8 importance samples",
        "UvA DL tutorial 11, Normalizing Flows for Image Modeling",
    ),
    (
        "flow, multi-scale (variational dequantization)",
        1.020,
        "1,711,818 parameters, 200 epochs on a GPU; bound with 8 importance samples",
        "UvA DL tutorial 11, Normalizing Flows for Image Modeling",
    ),
)

#: The compressor baselines of :func:`utils.metrics.compressor_baselines` (recorded as
#: ``baseline_<name>`` metrics), as shown.
BASELINE_NAMES = {
    "png": "PNG, one file per digit",
    "png_pixel_data": "PNG, compressed pixel data only",
    "xz": "xz -9e, the whole test set as one stream",
    "bz2": "bz2 -9, the whole test set as one stream",
    "pixel_histogram": "per-pixel histogram of the training digits",
    "raw": "the bytes as they are",
}


def bits_per_dim_html(current: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """One table of every model measured in bits per dimension on the MNIST test
    digits: this book's likelihood chapters (from their records, or from ``current``,
    chapter -> metrics of the run in progress), the compressors and histogram measured
    on the same digits, and the published numbers with their settings."""
    measured: dict[str, Mapping[str, Any]] = {}
    for chapter in LIKELIHOOD_CHAPTERS:
        if current and chapter in current:
            measured[chapter] = current[chapter]
            continue
        try:
            measured[chapter] = load_results(chapter)["metrics"]
        except (FileNotFoundError, ValueError):
            continue
    rows = []
    for chapter, m in measured.items():
        setting = (
            f"{m['parameters']:,} parameters, {m['epochs']} epoch(s), "
            f"{duration_text(m['train_seconds'])} of training"
        )
        rows.append(
            (
                html.escape(m["model"]),
                f"{m['bits_per_dim']:.3f}",
                html.escape(setting),
                f'measured here: <a href="{chapter}.html">{chapter}</a>',
            )
        )
    baselines = next(iter(measured.values()), {})
    for key, label in BASELINE_NAMES.items():
        if f"baseline_{key}" in baselines:
            rows.append(
                (
                    html.escape(label),
                    f"{baselines[f'baseline_{key}']:.3f}",
                    "the same 10,000 test digits",
                    "measured here",
                )
            )
    for model, bits, setting, source in PUBLISHED_BITS_PER_DIM:
        rows.append(
            (
                html.escape(model),
                f"{bits:.3f}",
                html.escape(setting),
                f"source: {html.escape(source)}",
            )
        )
    return table_html(
        ("model or code", "bits/dim", "setting", "where from"), rows, "bits-table"
    )
