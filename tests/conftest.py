"""Shared fixtures: an isolated data folder per test, the real data folder and a toy
WikiText-2. (A headless matplotlib, each worker's share of the cores, and how nbval runs
the chapters, are set in the root ``conftest.py``.)"""

from pathlib import Path

import pytest

from utils import data, sources

#: The data folder the suite was started with (CI points it at ../shared/data), read
#: before any test replaces it, so tests can copy real files from it.
REAL_DATA_DIR = sources.data_dir()


def real_file(relative: str) -> Path:
    """A file of the real data folder, or skip the test when this machine does not have
    it."""
    path = REAL_DATA_DIR / relative
    if not path.is_file():
        pytest.skip(f"{relative} is not in the data folder {REAL_DATA_DIR}")
    return path


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """An empty cache folder for downloads and unpacked copies."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(sources.CACHE_DIR_ENV, str(folder))
    monkeypatch.setattr(sources, "DEFAULT_DATA_DIR", folder)
    return folder


@pytest.fixture
def data_home(tmp_path, monkeypatch, cache_home):
    """An empty data folder (looked in first, never written to), with its own empty
    cache."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(folder))
    monkeypatch.delenv(sources.OFFLINE_ENV, raising=False)
    return folder


@pytest.fixture
def toy_wikitext(data_home, monkeypatch):
    """WikiText-2's split logic on small synthetic files (the real valid/test files have
    checksums)."""
    monkeypatch.setenv(sources.OFFLINE_ENV, "1")
    spec = data.FileSet(
        **{
            **data.WIKITEXT2_EVAL_FILES.__dict__,
            "files": tuple(
                data.Expected(e.name) for e in data.WIKITEXT2_EVAL_FILES.files
            ),
        }
    )
    monkeypatch.setattr(data, "WIKITEXT2_EVAL_FILES", spec)
    folder = data_home / "wikitext-2"
    folder.mkdir()
    (folder / "valid.txt").write_text("".join(f" valid line {i} \n" for i in range(10)))
    (folder / "test.txt").write_text(" test line \n")
    return folder


#: The batch the benchmark steps are checked on: their equalities do not depend on the
#: batch size, and the full-profile batches make these checks a minute of CPU. (With the
#: tests' seeds, the diffusion case's label dropout still drops one label of the 8, so
#: the null-label path is compared too.)
CHECK_BATCH = 8


@pytest.fixture
def small_batches(monkeypatch):
    """The benchmark cases (``benchmarks.training_steps``) built from each chapter's
    full-profile settings, with the batch cut to ``CHECK_BATCH``."""
    from types import SimpleNamespace

    from benchmarks import training_steps

    full = training_steps.full_settings

    def settings(chapter: str) -> SimpleNamespace:
        cfg = full(chapter)
        if hasattr(cfg, "batch_size"):
            cfg.batch_size = min(cfg.batch_size, CHECK_BATCH)
        return cfg

    monkeypatch.setattr(training_steps, "full_settings", settings)
