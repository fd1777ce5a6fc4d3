"""tools.gpu_check, the script ready for the first GPU the book gets: what it says it
does, its refusals, and one run of it on the CPU (``--allow-cpu``) with the report it
writes. On a GPU it runs the same code with every chapter."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def test_help_says_what_it_runs_and_records_within_the_budget():
    done = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for words in (
        "every chapter's smoke profile",
        "full ``gpu`` profile",
        "--budget",
        "default 540",
        "10-minute device budget",
        "headline metric",
        "JSON",
    ):
        assert words in text, words


def test_the_chapters_with_a_gpu_profile_are_found():
    found = {c for c in gpu_check.chapters() if gpu_check.has_gpu_profile(c)}
    assert {"transformer", "diffusion", "flow", "pixelcnn"} <= found
    assert "lstm_basics" not in found and "results" not in gpu_check.chapters()


def test_it_refuses_a_machine_without_a_gpu_and_an_unknown_chapter(tmp_path, capsys):
    if gpu_check.device_facts(allow_cpu=True)["device"].startswith("cuda"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="no CUDA GPU here"):
        gpu_check.main(["--out", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit):
        gpu_check.parse(["no_such_chapter"])
    assert "no chapter 'no_such_chapter'" in capsys.readouterr().err


def test_a_run_on_the_cpu_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.setenv("GDL_SMOKE", "1")  # the tests' switch must not leak into a run
    out = tmp_path / "report.json"
    status = gpu_check.main(
        ["--allow-cpu", "--smoke", "lstm_basics", "--out", str(out), "lstm_basics"]
    )
    report = json.loads(out.read_text())
    assert status == 0
    assert report["device"]["device"].startswith("cpu")
    assert [(s["chapter"], s["ok"]) for s in report["smoke"]] == [("lstm_basics", True)]
    (full,) = report["full"]
    assert full["ok"] and full["metric"] == "train_accuracy"
    assert full["value"] == full["book_cpu_run"]["value"] == 1.0
    assert 0 < full["wall_time_s"] <= full["seconds"] <= report["spent_s"]
    # a budget too small for anything runs nothing and says so
    assert gpu_check.main(["--allow-cpu", "--budget", "5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["smoke"] == report["full"] == []
    assert "transformer (full): the budget was spent" in report["not_run"]
