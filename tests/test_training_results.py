import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from utils import notebooks, results, runtime, summary, training


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
    assert training.read_scalars(events[0].parent) == {
        "Train/loss": ([0, 1, 2], [1.0, 0.5, 0.25])
    }


def test_text_progress_ends_with_the_full_bar(monkeypatch, capsys):
    monkeypatch.setenv(training.TEXT_PROGRESS_ENV, "1")
    assert list(training.progress(range(4), desc="epochs")) == [0, 1, 2, 3]
    assert "4/4" in notebooks.final_text(capsys.readouterr().out)


HEADLINE = dict(headline="loss", meaning="lower is better", reference="goal 1.0")


def test_smoke_runs_never_write_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    assert (
        results.save_results("toy", {"loss": 1.0}, torch.device("cpu"), 1.0, **HEADLINE)
        is None
    )
    assert capsys.readouterr().out == "Smoke profile: toy results are not saved.\n"
    # a typo is an error, never a full run's results
    monkeypatch.setenv(runtime.SMOKE_ENV, "smoek")
    with pytest.raises(ValueError, match="GDL_SMOKE='smoek'"):
        results.save_results("toy", {"loss": 1.0}, torch.device("cpu"), 1.0, **HEADLINE)
    assert list(tmp_path.iterdir()) == []


def test_full_runs_write_a_checked_record_atomically(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    metrics = {
        "loss": np.float32(0.5),
        "steps": np.int64(7),
        "acc": torch.tensor(0.25),
        "size": (3, 4),
        "shape": torch.tensor([2, 3]),
        "weights": "caffe",
        "ok": True,
    }
    path = results.save_results("toy", metrics, torch.device("cpu"), 12.34, **HEADLINE)
    record = json.loads(path.read_text())
    assert path == tmp_path / "toy.json" and [p.name for p in tmp_path.iterdir()] == [
        "toy.json"
    ]
    assert record["metrics"] == {
        "loss": 0.5,
        "steps": 7,
        "acc": 0.25,
        "size": [3, 4],
        "shape": [2, 3],
        "weights": "caffe",
        "ok": True,
    }
    assert record["headline"] == {
        "metric": "loss",
        "meaning": "lower is better",
        "reference": "goal 1.0",
    }
    assert (
        record["chapter"] == "toy"
        and record["profile"] == "full"
        and record["wall_time_s"] == 12.3
    )
    assert record["threads"] == torch.get_num_threads() and record["device"].startswith(
        "cpu"
    )
    assert results.load_results("toy") == record
    # no absolute path printed
    assert "Saved toy.json in $GDL_RESULTS_DIR" in capsys.readouterr().out


@pytest.mark.parametrize(
    "metrics, headline, message",
    [
        ({"loss": float("nan")}, "loss", "metric 'loss' is nan"),
        ({"loss": object()}, "loss", "metric 'loss' has a value of type object"),
        (
            {"loss": 1.0},
            "accuracy",
            "the headline metric 'accuracy' is not among the metrics",
        ),
        ({"loss": "low"}, "loss", "the headline metric 'loss' is not a number"),
        ({}, "loss", "'metrics' must be a non-empty object"),
    ],
)
def test_bad_records_fail_before_anything_is_written(
    tmp_path, monkeypatch, metrics, headline, message
):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    with pytest.raises((ValueError, TypeError), match=message):
        results.save_results(
            "toy",
            metrics,
            torch.device("cpu"),
            1.0,
            **{**HEADLINE, "headline": headline},
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "metrics, headline, reference, message",
    [
        (
            {"loss": {"train": 1.0}},
            "loss",
            "goal 1.0",
            "metric 'loss' has a value of type dict",
        ),
        (
            {"loss": 1.0},
            "accuracy",
            "goal 1.0",
            "the headline metric 'accuracy' is not among the metrics",
        ),
        (
            {"loss": 1.0},
            "loss",
            "floor 0.5",
            "the reference clause 'floor 0.5' has a number",
        ),
    ],
)
def test_smoke_runs_check_the_record_they_do_not_write(
    tmp_path, monkeypatch, capsys, metrics, headline, reference, message
):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    with pytest.raises(
        (ValueError, TypeError), match=message
    ):  # in seconds, not at a full run's last cell
        results.save_results(
            "toy",
            metrics,
            torch.device("cpu"),
            1.0,
            headline=headline,
            meaning="lower is better",
            reference=reference,
        )
    assert (
        list(tmp_path.iterdir()) == []
        and "Smoke profile" not in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "reference",
    [
        "goal 0.030",
        (
            "Goal 100; pytorch/examples' MLP VAE: 106.7 after 7 epochs (source: "
            "pytorch/examples README, 10 epochs)"
        ),
        (
            "the noisy input itself: 0.0467 (measured here, this run); the cGAN: 19.24 "
            "(measured here: the cgan chapter)"
        ),
        # no number, nothing to source
        "the classifier on real images (same yardstick); lower is better",
    ],
)
def test_every_number_in_a_reference_says_where_it_comes_from(reference):
    assert results.reference_problems(reference) == []


@pytest.mark.parametrize(
    "reference, clause",
    [
        ("real-vs-real floor: 0.24", "real-vs-real floor: 0.24"),
        (
            "goal 1.45; nanoGPT's character-level Shakespeare: 1.47",
            "nanoGPT's character-level Shakespeare: 1.47",
        ),
        (
            "the source notes report 0.037 (measured in the notes)",
            "the source notes report 0.037 (measured in the notes)",
        ),
        (
            "at the start: 3.6 (source pytorch tutorial)",
            "at the start: 3.6 (source pytorch tutorial)",
        ),
    ],
)
def test_a_reference_number_without_its_source_is_named(reference, clause):
    found = results.reference_problems(reference)
    assert len(found) == 1 and repr(clause) in found[0] and "(source: ...)" in found[0]
    record = {
        "chapter": "toy",
        "profile": "full",
        "metrics": {"loss": 1.0},
        "device": "cpu",
        "wall_time_s": 1.0,
        "headline": {
            "metric": "loss",
            "meaning": "lower is better",
            "reference": reference,
        },
    }
    assert results.check_record(record) == found
    assert results.reference_problems(None) == [
        "'reference' must be a non-empty string, got None"
    ]


def fake_checkout(folder: Path) -> Path:
    """A checkout as results_dir sees one: a folder with _toc.yml and book/."""
    (folder / "book").mkdir(parents=True)
    (folder / "_toc.yml").write_text(
        "root: book/intro\nparts:\n  - chapters:\n      - file: book/beta\n"
        "      - file: book/alpha\n"
    )
    return folder


def test_results_go_to_the_checkout_the_notebook_runs_in(tmp_path, monkeypatch, capsys):
    first, second = (
        fake_checkout(tmp_path / "first"),
        fake_checkout(tmp_path / "second"),
    )
    monkeypatch.delenv(results.RESULTS_DIR_ENV, raising=False)
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    # a notebook runs in its own folder; utils may come from anywhere
    monkeypatch.chdir(second / "book")
    assert results.results_dir() == second.resolve() / "book" / "results"
    assert results.toc_order() == ["beta", "alpha"]
    path = results.save_results(
        "toy", {"loss": 1.0}, torch.device("cpu"), 1.0, **HEADLINE
    )
    assert path == second.resolve() / "book" / "results" / "toy.json" and path.is_file()
    assert "Saved book/results/toy.json" in capsys.readouterr().out
    assert not (first / "book" / "results").exists()
    # outside any checkout: results/ in the working folder, no table of contents
    monkeypatch.chdir(tmp_path)
    assert results.results_dir() == Path("results") and results.toc_order() == []


def test_the_results_folder_of_another_checkout_is_refused(tmp_path, monkeypatch):
    first, second = (
        fake_checkout(tmp_path / "first"),
        fake_checkout(tmp_path / "second"),
    )
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    monkeypatch.chdir(second / "book")
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(first / "book" / "results"))
    with pytest.raises(
        ValueError,
        match=(
            r"GDL_RESULTS_DIR=.* lies in the checkout .*first, but this notebook "
            r"runs in the checkout .*second"
        ),
    ):
        results.save_results("toy", {"loss": 1.0}, torch.device("cpu"), 1.0, **HEADLINE)
    assert not (first / "book" / "results").exists()
    # the same checkout: allowed
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(second / "elsewhere"))
    assert results.results_dir() == second / "elsewhere"
    # no checkout: allowed
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path / "outside"))
    assert results.save_results(
        "toy", {"loss": 1.0}, torch.device("cpu"), 1.0, **HEADLINE
    ).is_file()


def test_the_summary_table_skips_and_names_malformed_files(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    for name, value, seconds in (
        ("beta", 2.5, 90.0),
        ("alpha", 0.125, 9.0),
        ("gamma", 3340718.3, 600.0),
    ):
        results.save_results(
            name, {"loss": value}, torch.device("cpu"), seconds, **HEADLINE
        )
    (tmp_path / "broken.json").write_text("{ not json")
    (tmp_path / "stray.json").write_text(
        json.dumps({"chapter": "stray", "metrics": {}})
    )
    records, skipped = results.all_results()
    assert [r["chapter"] for r in records] == ["alpha", "beta", "gamma"]
    assert [s.split(":")[0] for s in skipped] == ["broken.json", "stray.json"]
    table = summary.summary_html(order=["beta", "alpha"])
    assert table.count("<tr>") == 4 and table.index(">beta<") < table.index(">alpha<")
    # a chapter the page has no yardstick for: its metric's name, no goal to meet
    assert "<td>loss</td><td>0.125</td><td>–</td><td>–</td>" in table
    assert "<td>3,340,718</td>" in table
    assert "goal 1.0" in table.split("<details")[1]  # the full reference, under it
    assert (
        "<td>1.5 min, CPU, " in table
        and "<td>9 s, CPU, " in table
        and "<td>10.0 min, CPU, " in table
    )
    assert "broken.json: not readable JSON" in table and "stray.json" in table
    with pytest.raises(
        ValueError, match=r"stray.json in \$GDL_RESULTS_DIR: 'profile' must be 'full'"
    ):
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
    table = results.table_html(
        ("model", "value"),
        [
            ["GAN", results.number_text(42.15)],
            ["diffusion", results.number_text(3340718.3)],
        ],
        "comparison",
    )
    assert table.startswith(
        '<table class="comparison"><thead><tr><th>model</th><th>value</th></tr></thead>'
    )
    assert (
        table.count("<tr>") == 3
        and "<td>42.15</td>" in table
        and "<td>3,340,718</td>" in table
    )
    assert (
        results.duration_text(59.4) == "59 s"
        and results.duration_text(90.0) == "1.5 min"
    )
    with pytest.raises(ValueError, match="a table row has 1 cells for 2 columns"):
        results.table_html(("model", "value"), [["GAN"]], "comparison")
