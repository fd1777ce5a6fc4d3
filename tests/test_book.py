"""The book as committed: the chapter contract (README, "Adding a chapter"), stored
outputs and results.

Each test says which rule of the contract it checks; the contract's template,
``templates/chapter.ipynb``, passes every structural rule too, and draws the figures of
rule 5 when it runs.
"""

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from utils import chapter_code, notebooks, results

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
TEMPLATE = ROOT / "templates" / "chapter.ipynb"
INTRO = (ROOT / "book" / "intro.md").read_text()
GLOSSARY = (ROOT / "book" / "glossary.md").read_text()
README = (ROOT / "README.md").read_text()
#: Rule 5: the fewest figures a chapter shows.
MIN_FIGURES = 3
#: The largest a committed notebook may be.
MAX_NOTEBOOK_BYTES = 2_000_000


def toc_files() -> list[str]:
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


#: Notebooks that present the book rather than teach a model: no training, exercises or
#: results file.
PAGES = {"book/results"}
CHAPTERS = [
    f for f in toc_files() if (ROOT / f"{f}.ipynb").is_file() and f not in PAGES
]


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def figures(nb) -> list:
    """The stored figures (PNG or JPEG outputs) of a notebook."""
    return [o for c in code_cells(nb) for o in c.outputs if notebooks.figure_size(o)]


def linked_pages(markdown: str) -> set[str]:
    """The book pages a markdown text links to by relative file name (``vae.ipynb``,
    ``glossary.md#x``)."""
    return set(re.findall(r"\]\((\w+)\.(?:ipynb|md)(?:#[^)]*)?\)", markdown))


def contract_problems(path: Path) -> list[str]:
    """Every structural rule of the chapter contract that the notebook at ``path``
    breaks."""
    nb = nbformat.read(path, as_version=4)
    name = path.stem
    found = []
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    first = nb.cells[0].source
    if not first.startswith("# "):
        found.append(
            "rule 2: the first cell is a markdown cell with the chapter's title"
        )
    badge = (
        f"(https://colab.research.google.com/github/{repo}/blob/main/book/{name}.ipynb)"
    )
    if f"[![Open In Colab](images/colab-badge.svg)]{badge}" not in first:
        found.append(
            "rule 2: the first cell carries the local "
            "Colab badge linking to this notebook"
        )
    if "colab.research.google.com/assets" in "".join(c.source for c in nb.cells):
        found.append("rule 2: no external badge image (the book must render offline)")
    cells = code_cells(nb)
    colab = cells[0] if cells else None
    body = [
        line
        for line in (colab.source if colab else "").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    if not (
        body[:2] == ["import sys", 'if "google.colab" in sys.modules:']
        and all(line.startswith("    ") for line in body[2:])
        and f"git+{CONFIG['repository']['url']}" in colab.source
    ):
        found.append(
            "rule 3: the first code cell installs utils "
            "in Colab only, and does nothing elsewhere"
        )
    elif "remove-cell" not in colab.metadata.get("tags", []):
        found.append(
            "rule 3: the Colab cell is tagged remove-cell, "
            "so the rendered book does not show it"
        )
    setups = [i for i, c in enumerate(cells) if "runtime.setup(" in c.source]
    users = [i for i, c in enumerate(cells) if re.search(r"\b(cfg|device)\b", c.source)]
    setup = cells[setups[0]].source if len(setups) == 1 else ""
    if (
        not re.search(
            r"^cfg, device = runtime\.setup\(\s*\n?\s*full=dict\(", setup, re.M
        )
        or "smoke=dict(" not in setup
        or (users and users[0] < setups[0])
    ):
        found.append(
            "rule 4: one code cell calls cfg, device = runtime.setup(full=dict(...), "
            "smoke=dict(...)), before any cell uses cfg or device"
        )
    for index, cell in enumerate(cells):
        if re.search(r"^\s*#\s*NBVAL_", cell.source, re.M):
            found.append(
                f"rule 9: code cell {index} marks nbval with a "
                "comment; use the cell tag nbval-check-output"
            )
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    if "$$" not in markdown:
        found.append("rule 5: the chapter states its math in MyST $$ blocks")
    if not re.search(r"^## Exercises\n\n1\. ", markdown, re.M):
        found.append(
            "rule 7: an exercise list (## Exercises, then 1. ...) ends the chapter"
        )
    saves = [c.source for c in cells if "results.save_results(" in c.source]
    call = (
        re.search(rf'results\.save_results\(\s*"{name}",', saves[-1]) if saves else None
    )
    if not call or not all(
        f"{k}=" in saves[-1] for k in ("headline", "meaning", "reference")
    ):
        found.append(
            f'rule 6: the last cell with code saves results.save_results("{name}", '
            "..., headline=..., meaning=..., reference=...)"
        )
    for index, cell in enumerate(cells[1:], start=1):
        try:
            ast.parse(cell.source)
        except SyntaxError as err:
            found.append(
                f"code cell {index} is not valid Python "
                f"({err.msg}); only the Colab cell may use %pip"
            )
    return found


def test_every_toc_entry_exists_and_every_notebook_is_listed():
    for entry in toc_files():
        assert any((ROOT / f"{entry}{ext}").is_file() for ext in (".md", ".ipynb")), (
            entry
        )
    listed = set(toc_files())
    for notebook in (ROOT / "book").glob("*.ipynb"):
        assert f"book/{notebook.stem}" in listed, (
            f"{notebook.name} is not in _toc.yml (rule 1)"
        )


def test_the_book_is_built_from_stored_outputs():
    assert CONFIG["execute"]["execute_notebooks"] == "off"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_follows_the_contract(chapter):
    assert contract_problems(ROOT / f"{chapter}.ipynb") == []


def test_the_template_follows_the_contract():
    assert contract_problems(TEMPLATE) == []


def test_the_contract_finds_what_a_careless_chapter_gets_wrong(tmp_path):
    nb = nbformat.read(TEMPLATE, as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace(
        "images/colab-badge.svg",
        "https://colab.research.google.com/assets/colab-badge.svg",
    )
    nb.cells[1].metadata["tags"] = []
    code_cells(nb)[2].source = "# NBVAL_CHECK_OUTPUT\n" + code_cells(nb)[2].source
    for cell in nb.cells:
        cell.source = cell.source.replace("headline=", "main=").replace(
            "## Exercises", "## Homework"
        )
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, path)
    rules = {problem.split(":")[0] for problem in contract_problems(path)}
    assert rules == {"rule 2", "rule 3", "rule 6", "rule 7", "rule 9"}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_stores_the_figures_of_a_full_run(chapter):
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    found = len(figures(nb))
    assert found >= MIN_FIGURES, (
        f"rule 5 asks for at least {MIN_FIGURES} figures and rule 8 for the stored "
        f"outputs of a full run; {chapter}.ipynb stores {found}: draw them, then run "
        f"python -m utils.notebooks {chapter}.ipynb"
    )
    printed = "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs)
    assert "profile: full" in printed, (
        f"rule 8: the stored outputs must come from the full profile; run "
        f"python -m utils.notebooks {chapter}.ipynb"
    )


def test_the_template_draws_the_figures_it_asks_for(tmp_path, monkeypatch):
    """Rule 5 on the template, which stores no outputs: run it in the smoke profile and
    count its figures."""
    nb = nbformat.read(TEMPLATE, as_version=4)
    assert not any(c.outputs for c in code_cells(nb)), "the template stores no outputs"
    monkeypatch.setenv("GDL_SMOKE", "1")
    monkeypatch.setenv("GDL_TEXT_PROGRESS", "1")
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path / "results"))
    # the kernel's inline backend stores the figures
    monkeypatch.delenv("MPLBACKEND", raising=False)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(TEMPLATE.parent)}},
    ).execute()
    notebooks.clean_outputs(nb)
    found = len(figures(nb))
    assert found >= MIN_FIGURES, (
        f"rule 5: the template draws {found} figures, "
        f"at least {MIN_FIGURES} are asked for"
    )
    printed = "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs)
    # the record was built and checked
    assert "Smoke profile: chapter results are not saved." in printed
    assert notebooks.problems(nb) == [] and not (tmp_path / "results").exists()


@pytest.mark.parametrize("page", CHAPTERS + sorted(PAGES))
def test_stored_outputs_are_clean(page):
    path = ROOT / f"{page}.ipynb"
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, (
        f"{path.name} is {path.stat().st_size:,} bytes"
    )
    assert notebooks.problems(nbformat.read(path, as_version=4)) == []


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_results_come_from_a_full_run(chapter, monkeypatch):
    name = Path(chapter).stem
    # results are read from the working folder's checkout, as a notebook does
    monkeypatch.chdir(ROOT / "book")
    monkeypatch.delenv(results.RESULTS_DIR_ENV, raising=False)
    # checked: well-formed, full profile, headline among the metrics
    record = results.load_results(name)
    assert record["chapter"] == name and record["threads"] >= 1 and record["precision"]
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs)
    assert f"Saved book/results/{name}.json" in printed, (
        "rule 6: the stored run is the one that saved the results"
    )


#: Rule 4: a chapter whose full run took longer than this, in seconds, times its main
#: training loop with utils.budget.Pace, so a reader learns early what it costs there.
PACED_AFTER_S = 300


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_long_chapter_times_its_training_on_the_readers_machine(chapter, monkeypatch):
    monkeypatch.chdir(ROOT / "book")
    monkeypatch.delenv(results.RESULTS_DIR_ENV, raising=False)
    name = Path(chapter).stem
    if results.load_results(name)["wall_time_s"] <= PACED_AFTER_S:
        pytest.skip(f"{name}'s full run took under {PACED_AFTER_S} s")
    code = "\n".join(
        c.source
        for c in code_cells(nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4))
    )
    assert re.search(rf'budget\.Pace\(\s*"{name}",', code) and "pace.step()" in code, (
        f'rule 4: {name} makes a budget.Pace("{name}", steps, clock) before its main '
        "training loop and calls pace.step() after each step"
    )


def test_results_page_shows_every_chapter_in_a_table():
    nb = nbformat.read(ROOT / "book" / "results.ipynb", as_version=4)
    code = code_cells(nb)
    assert all("remove-input" in c.metadata.get("tags", []) for c in code), (
        "the page's code is hidden"
    )
    table = "".join(
        o.get("data", {}).get("text/html", "") for c in code for o in c.outputs
    )
    rows = re.findall(r'<tr><td><a href="(\w+)\.html">', table)
    assert rows == [Path(c).stem for c in CHAPTERS], (
        "rule 8: after a chapter's full run, re-execute the results page so its table "
        f"has one row per chapter, in the order of _toc.yml (it has {rows}): python -m "
        "utils.notebooks book/results.ipynb"
    )
    assert "Skipped results files" not in table, (
        "rule 6: the results page skipped a malformed results file; fix the chapter, "
        "re-run it, then python -m utils.notebooks book/results.ipynb"
    )


def test_after_a_chapter_the_runner_names_the_results_page(monkeypatch, capsys):
    runs = []
    monkeypatch.setattr(
        notebooks,
        "execute",
        lambda path, short, avx2: runs.append((short, avx2)) or (1.0, []),
    )
    assert notebooks.main(["book/vae.ipynb"]) == 0
    assert "python -m utils.notebooks book/results.ipynb" in capsys.readouterr().out
    assert notebooks.main(["book/vae.ipynb", "book/results.ipynb"]) == 0
    assert "Next:" not in capsys.readouterr().out
    # a short run records its results only: the book's pages do not change
    assert notebooks.main(["--short", "book/vae.ipynb"]) == 0
    assert "Next:" not in capsys.readouterr().out
    # and so does a run on AVX2 kernels
    assert notebooks.main(["book/vae.ipynb", "--avx2"]) == 0
    assert "Next:" not in capsys.readouterr().out
    plain, short, avx2 = (False, False), (True, False), (False, True)
    assert runs == [plain, plain, plain, short, avx2]


@pytest.mark.parametrize("chapter", CHAPTERS + ["templates/chapter"])
def test_chapter_ends_with_an_exercise_on_paper_and_its_hidden_solution(chapter):
    last = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4).cells[-1].source
    found = re.findall(r"^(\d+)\. ★ \*\*On paper: ", last, re.M)
    assert found, f"{chapter}: rule 7: no exercise on paper (★ **On paper: ...**)"
    solution = f"```{{admonition}} Solution to exercise {found[-1]}\n:class: dropdown\n"
    assert solution in last, f"{chapter}: rule 7: its solution, collapsed, below"
    exercises = last[last.index("## Exercises") :]  # every exercise marked by effort
    items = re.findall(r"^\d+\. (\S+)", exercises, re.M)
    assert all(set(mark) == {"★"} and len(mark) <= 3 for mark in items), (
        f"{chapter}: rule 7: every exercise starts with ★, ★★ or ★★★: {items}"
    )


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_has_a_row_in_the_readme_table(chapter):
    rows = [
        line for line in README.split("\n## ")[0].splitlines() if line.startswith("| ")
    ]
    assert any(f"| `{chapter}.ipynb` |" in row for row in rows), (
        f"rule 1: add a row for `{chapter}.ipynb` (part, chapter, notebook, metric) to "
        "the table at the top of README.md"
    )


def time_table(text: str) -> list[str]:
    """The lines of the "Time per chapter" table in ``text`` (README or introduction):
    the table that follows that heading."""
    section = re.split(r"^#+ Time per chapter\s*$", text, maxsplit=1, flags=re.M)
    assert len(section) == 2, "a section 'Time per chapter' with the table"
    lines = section[1].strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    table = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        table.append(line)
    return table


def test_the_time_of_every_chapter_is_stated_for_both_cpu_classes(monkeypatch):
    """README, "Time per chapter", and the introduction show the table that
    ``python -m benchmarks.chapter_times`` makes from the records, with a row for every
    chapter and a time on both CPU classes."""
    from benchmarks import chapter_times

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(results.RESULTS_DIR_ENV, raising=False)
    made = chapter_times.table().splitlines()
    assert time_table(README) == made, (
        "README's 'Time per chapter' is not the table the records give: paste the "
        "output of python -m benchmarks.chapter_times"
    )
    assert time_table(INTRO) == made, "the introduction's time table differs from it"
    named = [re.match(r"\| `(\w+)`", line).group(1) for line in made[2:]]
    assert named == [Path(c).stem for c in CHAPTERS]
    assert not [line for line in made if "not measured" in line]


def test_the_time_table_estimates_from_the_short_run_and_checks_it(
    monkeypatch, tmp_path
):
    from benchmarks import chapter_times

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    full = json.loads((ROOT / "book" / "results" / "transformer.json").read_text())
    (tmp_path / "transformer.json").write_text(json.dumps(full))
    short = dict(full, profile="short", wall_time_s=600.0, cpu_class="AVX2")
    short["pace"] = {"steps": 1000, "before_s": 10.0, "loop_s": 500.0, "step_s": 0.5}
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "transformer.json").write_text(json.dumps(short))
    assert chapter_times.scale("transformer") == 2.0  # steps=2_000, short 1_000
    # 600 s, and the 500 s loop once more: 1,100 s
    row = chapter_times.chapter_time("transformer").row()
    assert "| ≈ 18.3 (estimate) | 10.0 min (steps=1000): val_loss" in row
    assert chapter_times.checks() == []
    (tmp_path / "avx2").mkdir()
    avx2 = dict(full, wall_time_s=1000.0, cpu_class="AVX2")
    (tmp_path / "avx2" / "transformer.json").write_text(json.dumps(avx2))
    assert "| 16.7 |" in chapter_times.chapter_time("transformer").row()
    assert chapter_times.checks() == [
        "transformer: estimated 18.3 min from its short run, measured 16.7 min in "
        "full (+10%)"
    ]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_short_run_is_recorded_on_a_cpu_without_bf16_units(chapter, monkeypatch):
    """Rule 4: a chapter that offers GDL_SHORT=1 commits that run's record, made on
    the kind of CPU it is for, with its pace, and says in its text what it reached."""
    name = Path(chapter).stem
    path = ROOT / f"{chapter}.ipynb"
    short = chapter_code.short_settings(path)
    recorded = (ROOT / "book" / "results" / "short" / f"{name}.json").exists()
    if not short:
        assert not recorded, f"{name} offers no short run but has a short record"
        pytest.skip(f"{name} offers no short run")
    monkeypatch.chdir(ROOT / "book")
    monkeypatch.delenv(results.RESULTS_DIR_ENV, raising=False)
    record = results.load_results(name, profile="short")
    assert record["cpu_class"] not in ("AMX", "AVX-512 BF16") and record["pace"]
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "GDL_SHORT=1" in text, f"{name}'s text says what its short run reached"
    minutes = f"took {record['wall_time_s'] / 60:.1f} minutes"
    note = f"{name}'s note on its short run says it {minutes}"
    assert minutes in " ".join(text.split()), note


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_is_linked_from_the_introduction_and_the_glossary(chapter):
    name = Path(chapter).stem
    assert name in linked_pages(INTRO), (
        f"rule 10: book/intro.md links the chapter ({name}.ipynb)"
    )
    rows = [line for line in GLOSSARY.splitlines() if line.startswith("| ")]
    assert any(name in linked_pages(row) for row in rows), (
        "rule 10: at least one row of book/glossary.md names "
        f"a term of the chapter and links it ({name}.ipynb)"
    )


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_links_another_chapter(chapter):
    name = Path(chapter).stem
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    others = linked_pages(markdown) & {Path(c).stem for c in CHAPTERS} - {name}
    assert others, (
        f"rule 10: {name}.ipynb links none of its neighbours (the "
        "chapters before and after it in _toc.yml, and any it "
        "builds on); link at least one, as [title](other.ipynb)"
    )


def test_the_link_checks_see_links_and_only_links():
    assert linked_pages(
        "see [VAEs](vae.ipynb), [terms](glossary.md#gan) and vae.ipynb"
    ) == {"vae", "glossary"}
    assert linked_pages("no [link](https://example.com/gan.ipynb) here") == set()


def test_the_problem_checker_finds_each_kind_of_problem():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    cell.outputs = [
        nbformat.v4.new_output(
            "stream", name="stdout", text="Saved /home/reader/book/results/x.json\n"
        ),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: careful\n"),
        nbformat.v4.new_output(
            "execute_result",
            data={"text/plain": "<matplotlib.colorbar.Colorbar at 0x7f00>"},
            execution_count=1,
        ),
        nbformat.v4.new_output(
            "execute_result",
            data={"text/plain": "Text(0.5, 1.0, 'title')"},
            execution_count=2,
        ),
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
    cell.outputs = [
        nbformat.v4.new_output(
            "stream",
            name="stdout",
            text=bar.format(p=0, n=0) + "\r" + bar.format(p=7, n=2) + "\n",
        ),
        nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"}),
        nbformat.v4.new_output(
            "stream", name="stdout", text=bar.format(p=100, n=30) + "\nMSE 0.026\n"
        ),
    ]
    nb.cells = [cell]
    notebooks.clean_outputs(nb)
    streams = [o.text for o in cell.outputs if o.output_type == "stream"]
    assert (
        streams == [bar.format(p=100, n=30) + "\nMSE 0.026\n"]
        and "execution" not in cell.metadata
    )


def test_cleaning_keeps_the_lines_a_loop_printed_over_its_bar():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("train()")
    bar = "training: {p:3d}%|#####| {n}/20 [00:10<00:01, 9.50it/s]"
    text = (
        bar.format(p=50, n=10)
        + "step 10: loss 1.5\n"
        + bar.format(p=100, n=20)
        + "step 20: loss 1.2\n"
        + bar.format(p=100, n=20)
        + "\n"
    )
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    nb.cells = [cell]
    notebooks.clean_outputs(nb)
    assert cell.outputs[0].text == (
        "step 10: loss 1.5\nstep 20: loss 1.2\n" + bar.format(p=100, n=20) + "\n"
    )
