"""Colab, emulated: a chapter notebook run alone in an empty folder outside the
checkout, with ``utils`` installed from a git URL of this checkout, as its Colab cell
installs it.

In Colab a chapter's first code cell runs ``%pip install ... "git+<repository>"`` (and,
for a chapter that runs the repository's scripts, clones the repository and works in
its ``book`` folder); the notebook itself lies in ``/content`` with nothing beside it.
:func:`working_folder` reads that cell and does what it does, here and offline: the
package comes from a snapshot of this checkout (uncommitted changes included) installed
into a folder of its own, which goes first on the kernel's ``PYTHONPATH``, the place
pip's ``--target`` takes in Colab; a clone comes from the same snapshot. Everything is
made once per process, in a temporary folder removed at exit. ``tests/conftest.py``
runs every chapter of ``book/`` this way under nbval.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
#: Where Colab runs a notebook; the Colab cells ``%cd`` there.
COLAB_HOME = "/content"


class ColabCellError(ValueError):
    """A Colab cell does something this emulation does not know how to do here."""


@functools.cache
def _workspace() -> Path:
    """A temporary folder for this process, removed at exit."""
    folder = tempfile.TemporaryDirectory(prefix="gdl-colab-")
    _workspace.keep = folder  # type: ignore[attr-defined]  # removed at exit
    return Path(folder.name)


def _git(*args: str, **env: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@functools.cache
def snapshot_repository() -> Path:
    """A bare git repository whose ``main`` is this checkout as it is now, uncommitted
    and new files included (in CI, a clean checkout, that is its HEAD), made without
    touching the checkout's own index or objects: a commit in temporary objects that
    borrow the checkout's."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        raise RuntimeError("not a git checkout: the Colab emulation needs git")
    common = (ROOT / _git("rev-parse", "--git-common-dir")).resolve()
    borrowed = str(common / "objects")
    objects = _workspace() / "objects"
    objects.mkdir()
    temporary = {
        "GIT_INDEX_FILE": str(_workspace() / "index"),
        "GIT_OBJECT_DIRECTORY": str(objects),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": borrowed,
        "GIT_AUTHOR_NAME": "snapshot",
        "GIT_AUTHOR_EMAIL": "snapshot@localhost",
        "GIT_COMMITTER_NAME": "snapshot",
        "GIT_COMMITTER_EMAIL": "snapshot@localhost",
    }
    _git("add", "--all", **temporary)
    tree = _git("write-tree", **temporary)
    commit = _git("commit-tree", tree, "-m", "snapshot", **temporary)
    repo = _workspace() / "snapshot.git"
    _git("init", "--quiet", "--bare", str(repo))
    (repo / "objects" / "info" / "alternates").write_text(f"{objects}\n{borrowed}\n")
    _git("--git-dir", str(repo), "update-ref", "refs/heads/main", commit)
    _git("--git-dir", str(repo), "symbolic-ref", "HEAD", "refs/heads/main")
    return repo


@functools.cache
def installed_site() -> Path:
    """``utils`` installed by pip from a git URL of :func:`snapshot_repository` into a
    folder of its own, as the Colab cell installs it: offline (no index, setuptools
    from this environment) and without dependencies (the package declares none; the
    install test checks its metadata)."""
    site = _workspace() / "site"
    install = subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--no-index", "--no-build-isolation", "--no-cache-dir", "--no-deps"),
            *("--target", str(site), f"git+file://{snapshot_repository()}"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if install.returncode != 0:
        raise RuntimeError(f"pip could not install utils: {install.stderr.strip()}")
    return site


def colab_lines(notebook: Path) -> list[str] | None:
    """The lines the notebook's Colab cell runs in Colab (those under its ``if
    "google.colab" in sys.modules:``), or None for a notebook without one."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    if not code or "google.colab" not in code[0]:
        return None
    lines = code[0].splitlines()
    start = next(i for i, line in enumerate(lines) if "google.colab" in line)
    return [line.strip() for line in lines[start + 1 :] if line.strip()]


def kernel_env() -> dict[str, str]:
    """The environment of a kernel run as in Colab: the installed copy of ``utils``
    first on the path, and no results folder named (records go to ``./results``)."""
    env = {**os.environ, "PYTHONPATH": str(installed_site())}
    env.pop("GDL_RESULTS_DIR", None)
    return env


def working_folder(notebook: Path) -> Path:
    """An empty folder outside the checkout where ``notebook`` runs as in Colab, after
    doing what its Colab cell does: ``%pip install`` of the repository (the installed
    snapshot, :func:`kernel_env`), ``%cd`` and ``!git clone`` of the repository (a
    clone of the snapshot). Anything else in the cell is a :class:`ColabCellError`."""
    lines = colab_lines(notebook)
    if lines is None:
        raise ColabCellError(f"{notebook.name} has no Colab cell")
    home = Path(tempfile.mkdtemp(prefix=f"{notebook.stem}-", dir=_workspace()))
    here = home
    for line in lines:
        words = shlex.split(line)
        if words[:2] == ["%pip", "install"]:
            if f"git+{REPOSITORY}" not in words:
                raise ColabCellError(
                    f"{notebook.name}: {line!r} does not install utils"
                )
            installed_site()
        elif words[0] == "%cd" and len(words) == 2:
            target = words[1]
            if target.startswith("/") and target != COLAB_HOME:
                raise ColabCellError(f"{notebook.name}: {line!r} leaves {COLAB_HOME}")
            here = home if target == COLAB_HOME else here / target
            if not here.is_dir():
                raise ColabCellError(f"{notebook.name}: {line!r}: no such folder")
        elif words[:2] == ["!git", "clone"] and words[-1] == REPOSITORY:
            name = REPOSITORY.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
            source = f"file://{snapshot_repository()}"
            _git("clone", *words[2:-1], source, str(here / name))
        else:
            raise ColabCellError(f"{notebook.name}: the Colab cell's {line!r}")
    return here
