import json

import numpy as np
import pytest

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


HEADLINE = dict(headline="loss", meaning="lower is better", reference="goal 1.0")


def test_smoke_runs_never_write_results(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    assert results.save_results("toy", {"loss": 1.0}, torch.device("cpu"), 1.0, **HEADLINE) is None
    monkeypatch.setenv(runtime.SMOKE_ENV, "smoek")  # a typo is an error, never a full run's results
    with pytest.raises(ValueError, match="GDL_SMOKE='smoek'"):
        results.save_results("toy", {"loss": 1.0}, torch.device("cpu"), 1.0, **HEADLINE)
    assert list(tmp_path.iterdir()) == []


def test_full_runs_write_a_checked_record_atomically(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    metrics = {"loss": np.float32(0.5), "steps": np.int64(7), "acc": torch.tensor(0.25), "size": (3, 4),
               "shape": torch.tensor([2, 3]), "weights": "caffe", "ok": True}
    path = results.save_results("toy", metrics, torch.device("cpu"), 12.34, **HEADLINE)
    record = json.loads(path.read_text())
    assert path == tmp_path / "toy.json" and [p.name for p in tmp_path.iterdir()] == ["toy.json"]
    assert record["metrics"] == {"loss": 0.5, "steps": 7, "acc": 0.25, "size": [3, 4], "shape": [2, 3],
                                 "weights": "caffe", "ok": True}
    assert record["headline"] == {"metric": "loss", "meaning": "lower is better", "reference": "goal 1.0"}
    assert record["chapter"] == "toy" and record["profile"] == "full" and record["wall_time_s"] == 12.3
    assert record["threads"] == torch.get_num_threads() and record["device"].startswith("cpu")
    assert results.load_results("toy") == record
    assert "Saved toy.json in $GDL_RESULTS_DIR" in capsys.readouterr().out  # no absolute path printed


@pytest.mark.parametrize("metrics, headline, message", [
    ({"loss": float("nan")}, "loss", "metric 'loss' is nan"),
    ({"loss": object()}, "loss", "metric 'loss' has a value of type object"),
    ({"loss": 1.0}, "accuracy", "the headline metric 'accuracy' is not among the metrics"),
    ({"loss": "low"}, "loss", "the headline metric 'loss' is not a number"),
    ({}, "loss", "'metrics' must be a non-empty object"),
])
def test_bad_records_fail_before_anything_is_written(tmp_path, monkeypatch, metrics, headline, message):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    with pytest.raises((ValueError, TypeError), match=message):
        results.save_results("toy", metrics, torch.device("cpu"), 1.0,
                             **{**HEADLINE, "headline": headline})
    assert list(tmp_path.iterdir()) == []


def test_the_summary_table_skips_and_names_malformed_files(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    for name, value, seconds in (("beta", 2.5, 90.0), ("alpha", 0.125, 9.0), ("gamma", 3340718.3, 600.0)):
        results.save_results(name, {"loss": value}, torch.device("cpu"), seconds, **HEADLINE)
    (tmp_path / "broken.json").write_text("{ not json")
    (tmp_path / "stray.json").write_text(json.dumps({"chapter": "stray", "metrics": {}}))
    records, skipped = results.all_results()
    assert [r["chapter"] for r in records] == ["alpha", "beta", "gamma"]
    assert [s.split(":")[0] for s in skipped] == ["broken.json", "stray.json"]
    table = results.summary_html(order=["beta", "alpha"])
    assert table.count("<tr>") == 4 and table.index(">beta<") < table.index(">alpha<")
    assert "<td>0.125</td>" in table and "<td>3,340,718</td>" in table and "goal 1.0" in table
    assert "<td>1.5 min</td>" in table and "<td>9 s</td>" in table and "<td>10.0 min</td>" in table
    assert "broken.json: not readable JSON" in table and "stray.json" in table
    with pytest.raises(ValueError, match=r"stray.json in \$GDL_RESULTS_DIR: 'profile' must be 'full'"):
        results.load_results("stray")


def test_final_text_keeps_what_a_terminal_shows():
    assert notebooks.final_text("a\r  0%|\r100%|\nnext\r\n") == "100%|\nnext\n"


def test_the_learning_rate_stays_then_decays_linearly_to_zero():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizers = [torch.optim.SGD(params, lr=0.4), torch.optim.Adam(params, lr=0.2)]
    schedules = training.decay_in_second_half(optimizers, epochs=4)
    rates = []
    for _ in range(4):
        rates.append([o.param_groups[0]["lr"] for o in optimizers])
        for optimizer, schedule in zip(optimizers, schedules):
            optimizer.step()
            schedule.step()
    assert rates == [[0.4, 0.2], [0.4, 0.2], [0.4, 0.2], [0.2, 0.1]]
    assert optimizers[0].param_groups[0]["lr"] == 0.0


def test_a_table_has_one_cell_per_column_and_rejects_ragged_rows():
    table = results.table_html(("model", "value"), [["GAN", results.number_text(42.15)],
                                                     ["diffusion", results.number_text(3340718.3)]], "comparison")
    assert table.startswith('<table class="comparison"><thead><tr><th>model</th><th>value</th></tr></thead>')
    assert table.count("<tr>") == 3 and "<td>42.15</td>" in table and "<td>3,340,718</td>" in table
    assert results.duration_text(59.4) == "59 s" and results.duration_text(90.0) == "1.5 min"
    with pytest.raises(ValueError, match="a table row has 1 cells for 2 columns"):
        results.table_html(("model", "value"), [["GAN"]], "comparison")
