"""The measured results of a chapter: a full run writes ``book/results/<chapter>.json``.

Smoke runs never write it, so the committed file always comes from a full run.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Mapping

import torch

from .runtime import is_smoke, profile_name

#: Environment variable that overrides where results files go.
RESULTS_DIR_ENV = "GDL_RESULTS_DIR"


def results_dir() -> Path:
    """``$GDL_RESULTS_DIR``, else ``book/results`` of this checkout, else ``results/`` in the cwd."""
    if os.environ.get(RESULTS_DIR_ENV):
        return Path(os.environ[RESULTS_DIR_ENV])
    repo = Path(__file__).resolve().parent.parent
    if (repo / "_toc.yml").is_file():
        return repo / "book" / "results"
    return Path("results")


def device_description(device: torch.device) -> str:
    """A short human description of the device, e.g. ``cpu (2 threads, x86_64)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
    return device.type


def save_results(chapter: str, metrics: Mapping[str, float | int | str], device: torch.device,
                 wall_time_s: float) -> Path | None:
    """Write the chapter's metrics from a full run; in the smoke profile write nothing, return None."""
    if is_smoke():
        print(f"Smoke profile: {chapter} results are not saved.")
        return None
    record = {"chapter": chapter, "profile": profile_name(), "metrics": dict(metrics),
              "device": device_description(device), "wall_time_s": round(float(wall_time_s), 1)}
    path = results_dir() / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"Saved {path}")
    return path


def load_results(chapter: str) -> dict:
    """The recorded results of a chapter."""
    return json.loads((results_dir() / f"{chapter}.json").read_text())
