"""Execute a chapter for the book: its full profile, with outputs stored cleanly.

Usage: ``python -m utils.notebooks book/autoencoder.ipynb [more.ipynb ...]``.
Progress bars are plain text (see :func:`utils.training.progress`) and each stream output
keeps only what a terminal would finally show, so the rendered page stays small and readable.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from .runtime import is_smoke

_OVERWRITTEN = re.compile(r"[^\n]*\r(?!\n)")


def final_text(text: str) -> str:
    """What a terminal shows of text with carriage returns: each line's last rewrite."""
    return _OVERWRITTEN.sub("", text.replace("\r\n", "\n"))


def clean_outputs(nb) -> None:
    """Merge consecutive stream outputs of a cell and drop text that ``\\r`` overwrote."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list = []
        for out in cell.outputs:
            if (out.output_type == "stream" and merged and merged[-1].output_type == "stream"
                    and merged[-1].name == out.name):
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = final_text(out.text)
        cell.outputs = merged


def execute(path: Path, timeout: int = 3600) -> float:
    """Run a notebook in its own folder with the full profile; store outputs; return seconds."""
    import nbformat
    from nbclient import NotebookClient

    if is_smoke():  # strictly parsed: a mistyped value is an error here too
        raise RuntimeError("unset GDL_SMOKE: the book stores the outputs of a full run")
    os.environ["GDL_TEXT_PROGRESS"] = "1"
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    clean_outputs(nb)
    nbformat.write(nb, path)
    return time.perf_counter() - start


if __name__ == "__main__":
    for name in sys.argv[1:]:
        seconds = execute(Path(name))
        print(f"{name}: executed in {seconds:.0f} s")
