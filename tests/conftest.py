"""Shared fixtures: a headless matplotlib and an isolated data folder per test."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from utils import data  # noqa: E402


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """An empty cache folder for downloads and unpacked copies."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(folder))
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", folder)
    return folder


@pytest.fixture
def data_home(tmp_path, monkeypatch, cache_home):
    """An empty data folder (looked in first, never written to), with its own empty cache."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder))
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    return folder
