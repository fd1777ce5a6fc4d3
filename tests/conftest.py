"""Shared fixtures: a headless matplotlib and an isolated data folder per test."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from utils import data  # noqa: E402


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """An empty, writable data folder that stands in for both the data folder and the cache."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder))
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", folder)
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    return folder
