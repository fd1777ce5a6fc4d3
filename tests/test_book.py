"""The book as committed: the chapter contract (README, "Adding a chapter"), stored outputs and results.

Each test says which rule of the contract it checks; the contract's template, ``templates/chapter.ipynb``,
passes every structural rule too.
"""
import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from utils import notebooks, results

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
TEMPLATE = ROOT / "templates" / "chapter.ipynb"
#: The largest a committed notebook may be.
MAX_NOTEBOOK_BYTES = 2_000_000


def toc_files() -> list[str]:
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


#: Notebooks that present the book rather than teach a model: no training, exercises or results file.
PAGES = {"book/results"}
CHAPTERS = [f for f in toc_files() if (ROOT / f"{f}.ipynb").is_file() and f not in PAGES]


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def contract_problems(path: Path) -> list[str]:
    """Every structural rule of the chapter contract that the notebook at ``path`` breaks."""
    nb = nbformat.read(path, as_version=4)
    name = path.stem
    found = []
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    first = nb.cells[0].source
    if not first.startswith("# "):
        found.append("rule 2: the first cell is a markdown cell with the chapter's title")
    badge = f"(https://colab.research.google.com/github/{repo}/blob/main/book/{name}.ipynb)"
    if f"[![Open In Colab](images/colab-badge.svg)]{badge}" not in first:
        found.append("rule 2: the first cell carries the local Colab badge linking to this notebook")
    if "colab.research.google.com/assets" in "".join(c.source for c in nb.cells):
        found.append("rule 2: no external badge image (the book must render offline)")
    cells = code_cells(nb)
    colab = cells[0] if cells else None
    body = [line for line in (colab.source if colab else "").splitlines() if line.strip() and not line.startswith("#")]
    if not (body[:2] == ["import sys", 'if "google.colab" in sys.modules:'] and all(l.startswith("    ") for l in body[2:])
            and f"git+{CONFIG['repository']['url']}" in colab.source):
        found.append("rule 3: the first code cell installs utils in Colab only, and does nothing elsewhere")
    elif "remove-cell" not in colab.metadata.get("tags", []):
        found.append("rule 3: the Colab cell is tagged remove-cell, so the rendered book does not show it")
    setups = [i for i, c in enumerate(cells) if "runtime.setup(" in c.source]
    users = [i for i, c in enumerate(cells) if re.search(r"\b(cfg|device)\b", c.source)]
    setup = cells[setups[0]].source if len(setups) == 1 else ""
    if (not re.search(r"^cfg, device = runtime\.setup\(\s*\n?\s*full=dict\(", setup, re.M) or "smoke=dict(" not in setup
            or (users and users[0] < setups[0])):
        found.append("rule 4: one code cell calls cfg, device = runtime.setup(full=dict(...), smoke=dict(...)), "
                     "before any cell uses cfg or device")
    for index, cell in enumerate(cells):
        if re.search(r"^\s*#\s*NBVAL_", cell.source, re.M):
            found.append(f"rule 9: code cell {index} marks nbval with a comment; use the cell tag nbval-check-output")
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    if "$$" not in markdown:
        found.append("rule 5: the chapter states its math in MyST $$ blocks")
    if not re.search(r"^## Exercises\n\n1\. ", markdown, re.M):
        found.append("rule 7: an exercise list (## Exercises, then 1. ...) ends the chapter")
    saves = [c.source for c in cells if "results.save_results(" in c.source]
    call = re.search(rf'results\.save_results\("{name}",', saves[-1]) if saves else None
    if not call or not all(f"{k}=" in saves[-1] for k in ("headline", "meaning", "reference")):
        found.append(f'rule 6: the last cell with code saves results.save_results("{name}", ..., headline=..., '
                     "meaning=..., reference=...)")
    for index, cell in enumerate(cells[1:], start=1):
        try:
            ast.parse(cell.source)
        except SyntaxError as err:
            found.append(f"code cell {index} is not valid Python ({err.msg}); only the Colab cell may use %pip")
    return found


def test_every_toc_entry_exists_and_every_notebook_is_listed():
    for entry in toc_files():
        assert any((ROOT / f"{entry}{ext}").is_file() for ext in (".md", ".ipynb")), entry
    listed = set(toc_files())
    for notebook in (ROOT / "book").glob("*.ipynb"):
        assert f"book/{notebook.stem}" in listed, f"{notebook.name} is not in _toc.yml (rule 1)"


def test_the_book_is_built_from_stored_outputs():
    assert CONFIG["execute"]["execute_notebooks"] == "off"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_follows_the_contract(chapter):
    assert contract_problems(ROOT / f"{chapter}.ipynb") == []


def test_the_template_follows_the_contract():
    assert contract_problems(TEMPLATE) == []


def test_the_contract_finds_what_a_careless_chapter_gets_wrong(tmp_path):
    nb = nbformat.read(TEMPLATE, as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace("images/colab-badge.svg", "https://colab.research.google.com/assets/colab-badge.svg")
    nb.cells[1].metadata["tags"] = []
    code_cells(nb)[2].source = "# NBVAL_CHECK_OUTPUT\n" + code_cells(nb)[2].source
    for cell in nb.cells:
        cell.source = cell.source.replace("headline=", "main=").replace("## Exercises", "## Homework")
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, path)
    rules = {problem.split(":")[0] for problem in contract_problems(path)}
    assert rules == {"rule 2", "rule 3", "rule 6", "rule 7", "rule 9"}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_stores_the_figures_of_a_full_run(chapter):
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    outputs = [o for c in code_cells(nb) for o in c.outputs]
    figures = [o for o in outputs if notebooks.figure_size(o)]
    assert len(figures) >= 3, "rule 5: the committed notebook carries the figures of a full run"
    printed = "".join(o.get("text", "") for o in outputs)
    assert "profile: full" in printed, "rule 8: the stored outputs must come from the full profile"


@pytest.mark.parametrize("page", CHAPTERS + sorted(PAGES))
def test_stored_outputs_are_clean(page):
    path = ROOT / f"{page}.ipynb"
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is {path.stat().st_size:,} bytes"
    assert notebooks.problems(nbformat.read(path, as_version=4)) == []


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_results_come_from_a_full_run(chapter):
    name = Path(chapter).stem
    record = results.load_results(name)  # checked: well-formed, full profile, headline among the metrics
    assert record["chapter"] == name and record["threads"] >= 1 and record["precision"]
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs)
    assert f"Saved book/results/{name}.json" in printed, "rule 6: the stored run is the one that saved the results"


def test_results_page_shows_every_chapter_in_a_table():
    nb = nbformat.read(ROOT / "book" / "results.ipynb", as_version=4)
    code = code_cells(nb)
    assert all("remove-input" in c.metadata.get("tags", []) for c in code), "the page's code is hidden"
    table = "".join(o.get("data", {}).get("text/html", "") for c in code for o in c.outputs)
    rows = re.findall(r'<tr><td><a href="(\w+)\.html">', table)
    assert rows == [Path(c).stem for c in CHAPTERS], "one row per chapter, in the order of the table of contents"
    assert "Skipped results files" not in table


def test_the_problem_checker_finds_each_kind_of_problem():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="Saved /home/reader/book/results/x.json\n"),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: careful\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "<matplotlib.colorbar.Colorbar at 0x7f00>"},
                               execution_count=1),
        nbformat.v4.new_output("execute_result", data={"text/plain": "Text(0.5, 1.0, 'title')"}, execution_count=2),
    ]
    nb.cells = [cell]
    kinds = [p.split(": ")[1].split(" ")[0] for p in notebooks.problems(nb)]
    assert kinds == ["execution", "an", "output", "a", "a"]
    assert json.dumps(notebooks.problems(nb)).count("stray repr") == 2


def test_cleaning_keeps_one_final_bar_per_loop_and_drops_timestamps():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fit()")
    cell.metadata["execution"] = {"shell.execute_reply": "2026-01-01T00:00:00Z"}
    bar = "denoise: {p:3d}%|#####| {n}/30 [00:10<00:01, 9.50s/it]"
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=bar.format(p=0, n=0) + "\r" + bar.format(p=7, n=2) + "\n"),
                    nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"}),
                    nbformat.v4.new_output("stream", name="stdout", text=bar.format(p=100, n=30) + "\nMSE 0.026\n")]
    nb.cells = [cell]
    notebooks.clean_outputs(nb)
    streams = [o.text for o in cell.outputs if o.output_type == "stream"]
    assert streams == [bar.format(p=100, n=30) + "\nMSE 0.026\n"] and "execution" not in cell.metadata
