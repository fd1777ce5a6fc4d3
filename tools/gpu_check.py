"""The book on a CUDA GPU, within a device budget: every chapter's smoke profile, then
the full ``gpu`` profile of as many chapters as the budget leaves time for, all
recorded in one JSON file.

Run from the repository root on a machine with a CUDA GPU, the data folder named as for
the tests (no network is needed when it holds the data)::

    GDL_DATA_DIR=../shared/data python -m tools.gpu_check --budget 540 --out gpu.json

What it runs, in this order, stopping cleanly when ``--budget`` seconds are spent:

1. **The device**: torch and CUDA versions, the GPU's name, compute capability and
   memory, whether it has native bf16, and the precision the chapters choose there
   (``utils.precision.choose``: bf16 autocast from compute capability 8.0, fp32 below,
   e.g. Colab's T4).
2. **Every chapter's smoke profile** (``GDL_SMOKE=1``, as the tests run them): whether
   it runs on this device, its seconds, and the error where it fails.
3. **Full runs** of the chapters with a ``gpu=dict(...)`` profile (or those named on
   the command line), the cheapest first (by the book's CPU record): each with the
   time that is left as its time-out. For each: its seconds, device, precision and
   headline metric, beside the book's CPU run of the same chapter.

Notebooks run in ``book/`` with nothing stored: outputs are discarded, and records go
to a temporary results folder that starts with the book's records (chapters compare
themselves with other chapters' runs), never to ``book/results``. The JSON is written
atomically after every chapter, so a run stopped by the machine's time limit keeps
what it measured. Exit status: 0 when every chapter that ran passed.

Without a CUDA GPU it stops with an error, unless ``--allow-cpu`` (to check this script
itself, on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
#: Not a chapter: the results page reads the records, it trains nothing.
NOT_CHAPTERS = {"results"}
#: Seconds a full run needs at least to be started.
MIN_FULL_S = 60.0


def chapters() -> list[str]:
    """Every chapter notebook of ``book/``, by name."""
    return sorted(p.stem for p in BOOK.glob("*.ipynb") if p.stem not in NOT_CHAPTERS)


def has_gpu_profile(chapter: str) -> bool:
    """Whether the chapter's ``runtime.setup`` has ``gpu`` settings."""
    from utils.chapter_code import gpu_settings

    return bool(gpu_settings(BOOK / f"{chapter}.ipynb"))


def cpu_record(chapter: str) -> dict[str, Any] | None:
    """The book's full-run record of the chapter (on a CPU), or None."""
    path = BOOK / "results" / f"{chapter}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def device_facts(allow_cpu: bool) -> dict[str, Any]:
    """What the chapters will run on; an error without CUDA unless ``allow_cpu``."""
    import torch

    from utils import precision, runtime

    device = runtime.get_device()
    if device.type != "cuda" and not allow_cpu:
        raise SystemExit(
            f"no CUDA GPU here (torch {torch.__version__}, device {device.type}): "
            "run this on a GPU machine, or pass --allow-cpu to check the script"
        )
    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": runtime.device_description(device),
        "precision": precision.choose(device).describe(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            memory_gib=round(props.total_memory / 2**30, 1),
            native_bf16=precision.native_bf16(device),
        )
    return facts


def run_notebook(chapter: str, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Execute ``book/<chapter>.ipynb`` in ``book/`` with ``env`` set, outputs
    discarded; its seconds, and the error where it failed or ran out of time."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    nb = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    start = time.perf_counter()
    outcome: dict[str, Any] = {"chapter": chapter, "ok": True}
    try:
        NotebookClient(
            nb,
            timeout=max(1, int(timeout)),
            kernel_name="python3",
            resources={"metadata": {"path": str(BOOK)}},
        ).execute()
    except CellTimeoutError:
        outcome.update(ok=False, error=f"timed out (a cell ran past {timeout:.0f} s)")
    except CellExecutionError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        outcome.update(ok=False, error="\n".join(lines[-3:]))
    except Exception as error:  # noqa: BLE001 -- a kernel that died, a bad notebook
        outcome.update(ok=False, error=f"{type(error).__name__}: {error}")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    outcome["seconds"] = round(time.perf_counter() - start, 1)
    return outcome


def write(report: dict[str, Any], out: Path) -> None:
    """The report, written atomically (a stopped run keeps the last complete one)."""
    from utils.sources import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")


def keep(report: dict[str, Any], kind: str, done: dict[str, Any], out: Path) -> None:
    """Add a run (``kind``: smoke or full) to the report, say it, write the report."""
    report[kind].append(done)
    state = "ok" if done["ok"] else "FAILED"
    print(f"{kind} {done['chapter']}: {state}, {done['seconds']:.0f} s", flush=True)
    write(report, out)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Records per chapter: smoke (ok, seconds, error); full (ok, seconds, "
            "device, precision, headline metric and value, wall time, and the book's "
            "CPU run of it). The default --budget 540 fits a 10-minute device budget "
            "with a minute to spare for starting up and copying the JSON back."
        ),
    )
    parser.add_argument(
        "full",
        nargs="*",
        help="chapters to run in full (default: those with a gpu profile)",
    )
    parser.add_argument(
        "--budget", type=float, default=540.0, help="seconds in all (default 540)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("gpu_check.json"),
        help="the JSON report (default gpu_check.json)",
    )
    parser.add_argument(
        "--smoke-only", action="store_true", help="no full runs, smoke profiles only"
    )
    parser.add_argument(
        "--smoke",
        nargs="+",
        metavar="CHAPTER",
        help="smoke-run only these chapters (default: every chapter)",
    )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run without a GPU (checks the script)"
    )
    args = parser.parse_args(argv)
    known = set(chapters())
    for name in [*args.full, *(args.smoke or [])]:
        if name not in known:
            parser.error(f"no chapter {name!r}: one of {', '.join(sorted(known))}")
    if not args.budget > 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.perf_counter()

    def left() -> float:
        return args.budget - (time.perf_counter() - start)

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "budget_s": args.budget,
        "device": device_facts(args.allow_cpu),
        "smoke": [],
        "full": [],
        "not_run": [],
    }
    write(report, args.out)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        records = Path(folder) / "results"
        shutil.copytree(BOOK / "results", records)  # other chapters' records
        common = {
            "GDL_RESULTS_DIR": str(records),
            "GDL_TEXT_PROGRESS": "1",
            "GDL_SHORT": "0",  # a CUDA GPU takes the gpu settings anyway
        }
        for chapter in args.smoke or chapters():
            if left() < 10:
                report["not_run"].append(f"{chapter} (smoke): the budget was spent")
                continue
            done = run_notebook(chapter, {**common, "GDL_SMOKE": "1"}, left())
            keep(report, "smoke", done, args.out)
        full = (
            []
            if args.smoke_only
            else args.full or [c for c in chapters() if has_gpu_profile(c)]
        )
        full.sort(key=lambda c: (cpu_record(c) or {}).get("wall_time_s", 1e9))
        for chapter in full:
            if left() < MIN_FULL_S:
                report["not_run"].append(f"{chapter} (full): the budget was spent")
                continue
            (records / f"{chapter}.json").unlink(missing_ok=True)
            done = run_notebook(chapter, {**common, "GDL_SMOKE": "0"}, left())
            try:
                record = json.loads((records / f"{chapter}.json").read_text())
            except (OSError, ValueError):
                record = None
            if record is not None:
                metric = record["headline"]["metric"]
                done.update(
                    device=record["device"],
                    precision=record["precision"],
                    metric=metric,
                    value=record["metrics"][metric],
                    wall_time_s=record["wall_time_s"],
                )
            book = cpu_record(chapter)
            if book is not None:
                metric = book["headline"]["metric"]
                done["book_cpu_run"] = {
                    "device": book["device"],
                    "wall_time_s": book["wall_time_s"],
                    "value": book["metrics"].get(metric),
                }
            keep(report, "full", done, args.out)
    report["spent_s"] = round(time.perf_counter() - start, 1)
    write(report, args.out)
    failed = [d["chapter"] for d in report["smoke"] + report["full"] if not d["ok"]]
    print(
        f"{args.out}: {len(report['smoke'])} smoke and {len(report['full'])} full "
        f"runs, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
        f"{report['spent_s']:.0f} s of {args.budget:.0f}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
