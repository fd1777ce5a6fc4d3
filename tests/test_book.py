"""Checks of the book as committed: table of contents, chapters, stored outputs and results."""
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def toc_files() -> list[str]:
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


#: Notebooks that present the book rather than teach a model: no training, exercises or results file.
PAGES = {"book/results"}
CHAPTERS = [f for f in toc_files() if (ROOT / f"{f}.ipynb").is_file() and f not in PAGES]


def test_every_toc_entry_exists_and_every_notebook_is_listed():
    for entry in toc_files():
        assert any((ROOT / f"{entry}{ext}").is_file() for ext in (".md", ".ipynb")), entry
    listed = set(toc_files())
    for notebook in (ROOT / "book").glob("*.ipynb"):
        assert f"book/{notebook.stem}" in listed, f"{notebook.name} is not in _toc.yml"


def test_the_book_is_built_from_stored_outputs():
    assert CONFIG["execute"]["execute_notebooks"] == "off"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_has_colab_badge_and_colab_only_install_cell(chapter):
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{repo}/blob/main/{chapter}.ipynb"
    assert badge in nb.cells[0].source, "the first cell must carry the Colab badge for this notebook"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert 'if "google.colab" in sys.modules:' in first_code.source
    assert f"git+{CONFIG['repository']['url']}" in first_code.source
    # Outside Colab the cell must do nothing: everything but the import is under the Colab check.
    body = [line for line in first_code.source.splitlines() if line.strip() and not line.startswith("#")]
    assert body[0] == "import sys" and body[1] == 'if "google.colab" in sys.modules:'
    assert all(line.startswith("    ") for line in body[2:])


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_has_exercises_math_and_stored_figures(chapter):
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert re.search(r"^## Exercises\n\n1\. ", markdown, re.M), "an exercise list ends each chapter"
    assert "$$" in markdown, "each chapter states its math"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 3, "the committed notebook carries the figures of a full run"
    assert not [o for o in outputs if o.output_type == "error"], "no stored errors"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_results_come_from_a_full_run(chapter):
    path = ROOT / "book" / "results" / f"{Path(chapter).stem}.json"
    assert path.is_file(), f"{path.name} missing: run the chapter with the full profile"
    record = json.loads(path.read_text())
    assert record["profile"] == "full" and record["chapter"] == Path(chapter).stem
    assert record["metrics"] and record["wall_time_s"] > 0 and record["device"]
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "profile: full" in printed, "the stored outputs must come from the full profile"


def test_results_page_shows_every_chapter():
    nb = nbformat.read(ROOT / "book" / "results.ipynb", as_version=4)
    table = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
    for chapter in CHAPTERS:
        assert f"| {Path(chapter).stem} |" in table, f"{chapter} is missing from the stored results table"
