"""Execute a chapter for the book: its full profile, with outputs stored cleanly.

Usage: ``python -m utils.notebooks book/autoencoder.ipynb [more.ipynb ...]``.
``--short`` runs each chapter's short run instead (``GDL_SHORT=1``, see
``utils.budget``): the chapter writes its record to ``book/results/short/``, and the
notebook is not stored, since the book shows full runs. ``--avx2`` runs the full profile
limited to AVX2 kernels (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``: the
fp32 path of a CPU without AVX-512 or bf16 units, on any x86 machine that has AVX2) and
records it in ``book/results/avx2/``, for the time table of the README and the pace
estimates; its notebook is not stored either.

What can be cleaned is cleaned when the outputs are stored: progress bars are plain text
(see :func:`utils.training.progress`) and only each loop's final bar is kept, streams
keep only what a terminal would finally show, and per-cell execution timestamps are
dropped. What cannot be cleaned without hiding something (an absolute path, a warning on
stderr, a stray object repr, an oversized figure) is reported by :func:`problems`, and
the run fails so the chapter gets fixed; the book's tests apply the same checks to every
committed notebook.
"""

from __future__ import annotations

import base64
import os
import platform
import re
import struct
import sys
import time
from pathlib import Path

from .chapter_code import short_settings
from .switches import RECORD_AS_ENV, SHORT_ENV, is_short, is_smoke

_OVERWRITTEN = re.compile(r"[^\n]*\r(?!\n)")
#: A tqdm text bar: "<desc>:  40%|████      | 4/10 [00:01<00:02, 2.5it/s]" (the
#: description may be empty).
_BAR = re.compile(r"^(?P<desc>.*?):?\s*\d+%\|.*\|\s*\d+/\d+ \[.*\]\s*$")
#: A bar that a print inside the loop continued on the same line ("<bar>step 250: ...").
_BAR_THEN_TEXT = re.compile(
    r"^[^\n]*?\d+%\|[^|\n]*\|\s*\d+/\d+ \[[^\]\n]*\](?=\S)", re.M
)
#: Stored figures are capped: at most this many pixels wide and this many bytes (PNG or
#: JPEG).
MAX_FIGURE_WIDTH = 1600
MAX_FIGURE_BYTES = 400_000
#: Absolute paths of a machine: a Unix home, root, temporary or work folder, or a
#: Windows drive.
_ABSOLUTE_PATH = re.compile(
    r"(?<![\w.~])(/(?:home|root|tmp|work|Users|var|opt|mnt|private)/[^\s'\"]+|[A-Z]:\\\\[^\s'\"]+)"
)
#: Reprs that say nothing to a reader: "<matplotlib... at 0x...>",
#: "Text(0.5, 1.0, '...')", "[<matplotlib...>]".
_STRAY_REPR = re.compile(
    r"^\[?<[\w.]+ (object )?at "
    r"0x[0-9a-f]+>|^\[?(Text|Line2D|<matplotlib)\b.*\)\]?$|^<IPython\."
)


def final_text(text: str) -> str:
    """What a terminal shows of text with carriage returns: each line's last rewrite."""
    return _OVERWRITTEN.sub("", text.replace("\r\n", "\n"))


def _keep_final_bars(cell) -> None:
    """Within a cell, keep only the last state of each progress bar (bars are told apart
    by their description), so a loop that shows figures between epochs stores one bar,
    not one per figure."""
    streams = [out for out in cell.outputs if out.output_type == "stream"]
    lines = [out.text.split("\n") for out in streams]
    bars = {
        (i, j): match.group("desc")
        for i, text in enumerate(lines)
        for j, line in enumerate(text)
        if (match := _BAR.match(line))
    }
    # positions ascend: the last one wins
    last = {desc: position for position, desc in bars.items()}
    for i, out in enumerate(streams):
        out.text = "\n".join(
            line
            for j, line in enumerate(lines[i])
            if (i, j) not in bars or last[bars[(i, j)]] == (i, j)
        )
    cell.outputs = [
        out for out in cell.outputs if out.output_type != "stream" or out.text.strip()
    ]


def clean_outputs(nb) -> None:
    """Merge consecutive stream outputs of a cell, drop text that ``\\r`` overwrote,
    keep one final bar per loop, and drop per-cell execution metadata (timestamps that
    change on every run)."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        merged: list = []
        for out in cell.outputs:
            if (
                out.output_type == "stream"
                and merged
                and merged[-1].output_type == "stream"
                and merged[-1].name == out.name
            ):
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                # a bar interrupted by a print keeps the printed line, not the bar
                out.text = _BAR_THEN_TEXT.sub("", final_text(out.text))
        cell.outputs = merged
        _keep_final_bars(cell)


def figure_size(out) -> tuple[str, int, int] | None:
    """(format, width in pixels, bytes) of a stored PNG or JPEG figure, or None for
    other outputs."""
    data = out.get("data", {})
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            raw = base64.b64decode(data[mime])
            if mime == "image/png":
                width = struct.unpack(">I", raw[16:20])[0]
            else:
                width = _jpeg_width(raw)
            return mime.split("/")[1], width, len(raw)
    return None


def _jpeg_width(raw: bytes) -> int:
    i = 2
    while i < len(raw) - 9:
        marker, length = raw[i + 1], struct.unpack(">H", raw[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # start of frame: height, then width
            return struct.unpack(">H", raw[i + 7 : i + 9])[0]
        i += 2 + length
    return 0


def problems(nb) -> list[str]:
    """What a reader should not see in a notebook's stored outputs: absolute paths,
    anything on stderr, errors, stray object reprs, execution timestamps, and figures
    over the size cap."""
    found = []
    for index, cell in enumerate(nb.cells):
        where = f"cell {index}"
        if "execution" in cell.metadata:
            found.append(f"{where}: execution timestamps in its metadata")
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            kind = out.output_type
            texts = [out.get("text", "")] + [
                v
                for k, v in out.get("data", {}).items()
                if k.startswith("text/") and isinstance(v, str)
            ]
            for text in texts:
                for path in _ABSOLUTE_PATH.findall(text):
                    found.append(f"{where}: an absolute path {path}")
            if kind == "stream" and out.name == "stderr":
                found.append(f"{where}: output on stderr: {out.text.strip()[:120]!r}")
            if kind == "error":
                found.append(f"{where}: a stored error {out.get('ename')}")
            if kind == "execute_result" and not (
                {"image/png", "image/jpeg", "text/html", "text/markdown"}
                & set(out.get("data", {}))
            ):
                plain = out["data"].get("text/plain", "").strip()
                if _STRAY_REPR.match(plain):
                    found.append(
                        f"{where}: a stray repr {plain[:80]!r} (end the line with ';')"
                    )
            size = figure_size(out)
            if size and (size[1] > MAX_FIGURE_WIDTH or size[2] > MAX_FIGURE_BYTES):
                found.append(
                    f"{where}: a {size[0].upper()} figure {size[1]} px wide, "
                    f"{size[2]:,} bytes (caps: {MAX_FIGURE_WIDTH} px, "
                    f"{MAX_FIGURE_BYTES:,} bytes)"
                )
    return found


#: The environment of an ``--avx2`` run: oneDNN and ATen limited to AVX2 kernels.
AVX2_LIMITS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def _avx2_run() -> None:
    """Set up an ``--avx2`` run: the kernel limits, no GPU, and its record sent to
    ``book/results/avx2/`` (``GDL_RECORD_AS=avx2``; the run reads other chapters'
    records where they always are). A CPU without AVX2 fails when the chapter saves
    its record, which must say AVX2."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(
            "--avx2 limits an x86 CPU to its AVX2 kernels; this is "
            f"{platform.machine()}"
        )
    os.environ.update(AVX2_LIMITS)
    os.environ[RECORD_AS_ENV] = "avx2"


def execute(
    path: Path, timeout: int = 3600, short: bool = False, avx2: bool = False
) -> tuple[float, list[str]]:
    """Run a notebook in its own folder with the full profile (or, with ``short``, its
    short run; with ``avx2``, the full profile on AVX2 kernels; neither stores its
    outputs); store cleaned outputs; return the seconds it took and the problems
    :func:`problems` finds in what was stored."""
    import nbformat
    from nbclient import NotebookClient

    if short and avx2:
        raise RuntimeError("--short and --avx2 are two different runs: choose one")
    if is_smoke():  # strictly parsed: a mistyped value is an error here too
        raise RuntimeError("unset GDL_SMOKE: the book stores the outputs of a full run")
    if is_short() and not short:
        raise RuntimeError(
            f"unset {SHORT_ENV}: the book stores the outputs of a full run (--short "
            "runs a chapter's short run and records only its results)"
        )
    if short and not short_settings(path):
        raise RuntimeError(
            f"{path.name} offers no short run (no short=dict(...) in its "
            "runtime.setup): run it in full, without --short"
        )
    if os.environ.get(RECORD_AS_ENV, "").strip() and not avx2:
        raise RuntimeError(
            f"unset {RECORD_AS_ENV}: the book stores the outputs of a full run (--avx2 "
            "runs a chapter on AVX2 kernels and records only its results)"
        )
    if avx2:
        _avx2_run()
    if short or avx2:  # runs for CPUs: a GPU would run (and record) other settings
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ[SHORT_ENV] = "1" if short else "0"
    os.environ["GDL_TEXT_PROGRESS"] = "1"
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    seconds = time.perf_counter() - start
    clean_outputs(nb)
    if short or avx2:
        return seconds, []
    nbformat.write(nb, path)
    return seconds, problems(nb)


#: The results page: its table is stored output too, so it is re-executed after any
#: chapter's full run.
RESULTS_PAGE = "results.ipynb"


def main(names: list[str]) -> int:
    status, short, avx2 = 0, "--short" in names, "--avx2" in names
    names = [name for name in names if name not in ("--short", "--avx2")]
    for name in names:
        seconds, found = execute(Path(name), short=short, avx2=avx2)
        print(f"{name}: executed in {seconds:.0f} s")
        for problem in found:
            print(f"  {name}: {problem}", file=sys.stderr)
            status = 1
    pages = [Path(name) for name in names]
    if (
        pages
        and not (short or avx2)
        and all(page.name != RESULTS_PAGE for page in pages)
    ):
        page = pages[-1].parent / RESULTS_PAGE
        print(
            "Next: re-execute the results page, python -m utils.notebooks "
            f"{page.as_posix()}, and commit it with the chapter (README, rule 8)"
        )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
