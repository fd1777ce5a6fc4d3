import json

import matplotlib.pyplot as plt
import torch

from utils import notebooks, results, runtime, training


def test_history_records_and_plots():
    history = training.History()
    for step in range(3):
        history.log(train=1.0 / (step + 1), test=2.0)
    assert history["train"] == [1.0, 0.5, 1.0 / 3] and history.last("test") == 2.0
    ax = history.plot(title="curves")
    assert [line.get_label() for line in ax.get_lines()] == ["train", "test"]
    plt.close("all")


def test_tensorboard_writer_logs_in_a_per_chapter_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(training.LOG_DIR_ENV, str(tmp_path))
    writer = training.tensorboard_writer("toy")
    for step, value in enumerate([1.0, 0.5, 0.25]):
        writer.add_scalar("Train/loss", value, step)
    writer.close()
    events = list((tmp_path / "toy").glob("*/events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert training.read_scalars(events[0].parent) == {"Train/loss": ([0, 1, 2], [1.0, 0.5, 0.25])}


def test_text_progress_ends_with_the_full_bar(monkeypatch, capsys):
    monkeypatch.setenv(training.TEXT_PROGRESS_ENV, "1")
    assert list(training.progress(range(4), desc="epochs")) == [0, 1, 2, 3]
    assert "4/4" in notebooks.final_text(capsys.readouterr().out)


def test_smoke_runs_never_write_results(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    assert results.save_results("toy", {"loss": 1.0}, torch.device("cpu"), 1.0) is None
    assert list(tmp_path.iterdir()) == []


def test_full_runs_write_the_results_record(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    path = results.save_results("toy", {"loss": 0.5}, torch.device("cpu"), 12.34)
    record = json.loads(path.read_text())
    assert path == tmp_path / "toy.json"
    assert record["chapter"] == "toy" and record["profile"] == "full"
    assert record["metrics"] == {"loss": 0.5} and record["wall_time_s"] == 12.3
    assert record["device"].startswith("cpu") and results.load_results("toy") == record


def test_final_text_keeps_what_a_terminal_shows():
    assert notebooks.final_text("a\r  0%|\r100%|\nnext\r\n") == "100%|\nnext\n"
