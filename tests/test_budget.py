"""A chapter's pace on the reader's machine (utils.budget) and its short run
(``GDL_SHORT=1``): the estimate, the offer of a shorter run past 20 minutes, and the
short run's own settings and record."""

import json
from pathlib import Path

import pytest
import torch

from utils import budget, results, runtime

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = dict(headline="loss", meaning="lower is better", reference="goal 1.0")


class FakeClock:
    """``time.perf_counter`` that advances only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Before:
    """A chapter's Stopwatch that says how long ran before the loop."""

    def __init__(self, seconds: float) -> None:
        self.value = seconds

    def seconds(self) -> float:
        return self.value


def record(profile, wall, pace=None, loss=1.3821, device="cpu (2 threads, AVX2)"):
    found = {
        "chapter": "toy",
        "profile": profile,
        "headline": {
            "metric": "loss",
            "meaning": "nats, lower is better",
            "reference": "goal 1.0",
        },
        "metrics": {"loss": loss},
        "device": device,
        "threads": 2,
        "precision": "fp32",
        "wall_time_s": wall,
    }
    if pace:
        found["pace"] = pace
    return found


@pytest.fixture(autouse=True)
def fresh_chapter(monkeypatch):
    """runtime.settings remembers the chapter's short run and budget its last pace:
    restore both after each test."""
    monkeypatch.setattr(runtime, "_short_settings", {})
    monkeypatch.setattr(runtime, "_short_chosen", False)
    monkeypatch.setattr(budget, "_last", None)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(budget.time, "perf_counter", fake)
    return fake


@pytest.fixture
def full_run(monkeypatch, tmp_path):
    """A chapter in its full profile on a CPU, with short settings, and its records in
    tmp_path."""
    for name in (runtime.SMOKE_ENV, runtime.SHORT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    runtime.settings(dict(epochs=30, size=64), dict(epochs=1), short=dict(epochs=10))
    return tmp_path


def write(folder, found):
    path = folder / ("short" if found["profile"] == "short" else "") / "toy.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(found))


def run_steps(pace, clock, seconds, amount=1.0):
    for s in seconds:
        clock.now += s
        pace.step(amount)


def test_the_estimate_skips_the_warm_up_and_prints_once(clock, full_run, capsys):
    pace = budget.Pace("toy", steps=1000, clock=Before(30.0))
    # two slow warm-up steps, then 0.5 s a step: at least five steps and 10 s fill the
    # window
    run_steps(pace, clock, [4.0, 4.0] + [0.5] * 19)
    assert capsys.readouterr().out == ""
    run_steps(pace, clock, [0.5])
    assert capsys.readouterr().out == (
        "pace: 0.5 s a step (steps 3 to 22, timed here) x 1,000 steps: the training "
        "steps take about 8 min on this machine, 9 min with what ran before them (the "
        "evaluation after them not counted)\n"
    )
    assert pace.estimate_s == pytest.approx(500.0)
    run_steps(pace, clock, [0.5] * 20)
    assert capsys.readouterr().out == ""
    assert pace.measured() == {
        "planned_steps": 1000,
        "steps": 42,
        "before_s": 30.0,
        "loop_s": 28.0,
        "step_s": 0.5,
    }


def test_the_whole_chapter_scales_from_the_books_run_and_offers_the_short_one(
    clock, full_run, capsys
):
    # the book's full run: 10 s of setup, a 60 s loop of 100 steps timed at 0.5 s a
    # step (evaluations between them), 30 s after it
    pace_there = {"steps": 100, "before_s": 10.0, "loop_s": 60.0, "step_s": 0.5}
    write(full_run, record("full", 100.0, pace_there, device="cpu (AMX)"))
    write(full_run, record("short", 840.0))
    pace = budget.Pace("toy", steps=1000, clock=Before(30.0))
    run_steps(pace, clock, [1.0] * 12)  # twice as slow a step here
    out = capsys.readouterr().out
    # 30 s + 2 x (0.6 s x 1,000 steps + 30 s) = 1,290 s
    assert pace._whole_chapter(1.0)[0] == pytest.approx(1290.0)
    assert (
        "the training steps take about 17 min on this machine; the whole chapter "
        "about 22 min (scaled from the book's full run on cpu (AMX))\n"
        "That is past 20 minutes. For a shorter run, set GDL_SHORT=1 and run the "
        "chapter again (in Jupyter: %env GDL_SHORT=1, then run from the setup cell): "
        "epochs=10. In the book's short run (cpu (2 threads, AVX2), 14 min in all) it "
        "reached loss = 1.382 (nats, lower is better).\n"
    ) in out


def test_the_short_record_is_the_scale_where_the_full_one_has_no_pace(
    clock, full_run, capsys
):
    write(full_run, record("full", 100.0))  # an older record: no pace in it
    short_pace = {"steps": 50, "before_s": 20.0, "loop_s": 60.0, "step_s": 1.0}
    write(full_run, record("short", 140.0, short_pace))
    pace = budget.Pace("toy", steps=100, clock=Before(5.0))
    run_steps(pace, clock, [1.0] * 12)
    # 5 s + 1 x (1.2 s x 100 steps + 60 s after the loop) = 185 s
    assert pace._whole_chapter(1.0)[0] == pytest.approx(185.0)
    assert "the whole chapter about 3 min (scaled from the book's short run" in (
        capsys.readouterr().out
    )


def test_without_records_the_offer_points_to_the_chapter(clock, full_run, capsys):
    pace = budget.Pace("toy", steps=3000)
    run_steps(pace, clock, [1.0] * 12)
    out = capsys.readouterr().out
    assert "epochs=10; what it reaches: the chapter's note on time." in out
    runtime.settings(dict(epochs=30), dict(epochs=1))  # a chapter without one
    pace = budget.Pace("toy", steps=3000)
    run_steps(pace, clock, [1.0] * 12)
    assert "This chapter offers no shorter run." in capsys.readouterr().out


def test_a_malformed_record_never_stops_the_training(clock, full_run, capsys):
    (full_run / "short").mkdir()
    (full_run / "short" / "toy.json").write_text('{"profile": "short", "pace": 3}')
    (full_run / "toy.json").write_text("not json")
    pace = budget.Pace("toy", steps=3000)
    run_steps(pace, clock, [1.0] * 12)
    assert "what it reaches: the chapter's note on time" in capsys.readouterr().out


def test_only_a_full_run_on_a_cpu_offers_the_short_run(
    clock, full_run, monkeypatch, capsys
):
    monkeypatch.setenv(runtime.SHORT_ENV, "1")
    runtime.settings(dict(epochs=30), dict(epochs=1), short=dict(epochs=10))
    pace = budget.Pace("toy", steps=3000)
    run_steps(pace, clock, [1.0] * 12)
    out = capsys.readouterr().out
    assert "about 50 min" in out and "past 20 minutes" not in out
    monkeypatch.delenv(runtime.SHORT_ENV)
    runtime.settings(dict(epochs=30), dict(epochs=1), short=dict(epochs=10))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pace = budget.Pace("toy", steps=3000)
    run_steps(pace, clock, [1.0] * 12)
    assert "past 20 minutes" not in capsys.readouterr().out


def test_steps_of_different_sizes_and_a_loop_too_short_to_time(clock, full_run, capsys):
    # two evaluations of a big image, then a smaller one counts a quarter
    pace = budget.Pace("toy", steps=2.5, warmup=0, min_steps=1, min_seconds=10.0)
    run_steps(pace, clock, [2.0, 2.0])
    run_steps(pace, clock, [0.5], amount=0.25)
    assert capsys.readouterr().out == ""
    run_steps(pace, clock, [0.5], amount=0.25)
    assert capsys.readouterr().out.startswith(
        "pace: 2 s a step (all 4 steps, timed here) x 2 steps: the training steps "
        "take about 5 s on this machine"
    )
    with pytest.raises(ValueError, match="a training loop of 0 steps"):
        budget.Pace("toy", steps=0)


def test_the_short_run_takes_its_settings_only_when_asked(monkeypatch):
    full, smoke, short = dict(epochs=30, size=64), dict(epochs=1), dict(epochs=10)
    for name in (runtime.SMOKE_ENV, runtime.SHORT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "get_device", lambda: torch.device("cpu"))
    cfg = runtime.settings(full, smoke, short=short)
    assert (cfg.profile, cfg.epochs) == ("full", 30)
    monkeypatch.setenv(runtime.SHORT_ENV, "1")
    cfg = runtime.settings(full, smoke, short=short)
    assert (cfg.profile, cfg.epochs, cfg.size) == ("short", 10, 64)
    assert runtime.short_settings() == {"epochs": 10}
    # the profile is the one the setup chose, whatever the switch says later
    monkeypatch.setenv(runtime.SHORT_ENV, "0")
    assert runtime.chosen_profile() == "short"
    monkeypatch.setenv(runtime.SHORT_ENV, "1")
    # a chapter that offers no short run runs in full, and a CUDA GPU with native bf16
    # its gpu settings
    cfg = runtime.settings(full, smoke)
    assert (cfg.profile, cfg.epochs, runtime.chosen_profile()) == ("full", 30, "full")
    monkeypatch.setattr(runtime, "get_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(runtime.precision, "native_bf16", lambda device: True)
    cfg = runtime.settings(full, smoke, gpu=dict(size=128), short=short)
    assert (cfg.profile, cfg.epochs, cfg.size) == ("full", 30, 128)
    with pytest.raises(KeyError, match="short settings name keys"):
        runtime.settings(full, smoke, short=dict(epoch=10))
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    with pytest.raises(ValueError, match="GDL_SMOKE and GDL_SHORT are both on"):
        runtime.settings(full, smoke, short=short)
    monkeypatch.setenv(runtime.SMOKE_ENV, "0")
    monkeypatch.setenv(runtime.SHORT_ENV, "shrot")
    with pytest.raises(ValueError, match="GDL_SHORT='shrot' is not a valid switch"):
        runtime.settings(full, smoke, short=short)


def test_a_short_run_records_beside_the_full_record_never_over_it(
    full_run, monkeypatch, capsys
):
    (full_run / "toy.json").write_text("the full run's record")
    monkeypatch.setenv(runtime.SHORT_ENV, "1")
    runtime.settings(dict(epochs=30), dict(epochs=1), short=dict(epochs=10))
    monkeypatch.delenv(runtime.SHORT_ENV)  # changed after the setup: still short
    cpu = torch.device("cpu")
    path = results.save_results("toy", {"loss": 1.5}, cpu, 60.0, **HEADLINE)
    assert path == full_run / "short" / "toy.json"
    assert (full_run / "toy.json").read_text() == "the full run's record"
    saved = results.load_results("toy", profile="short")
    assert saved["profile"] == "short" and saved["cpu_class"]
    # a short record is never read as a full one
    (full_run / "other.json").write_text(path.read_text().replace('"toy"', '"other"'))
    with pytest.raises(ValueError, match="it records a short run, not a full one"):
        results.load_results("other")
    records, skipped = results.all_results()
    assert records == [] and any("other.json" in s for s in skipped)


def test_the_record_keeps_what_the_pace_measured(clock, full_run, monkeypatch, capsys):
    cpu = torch.device("cpu")
    path = results.save_results("toy", {"loss": 1.0}, cpu, 9.0, **HEADLINE)
    assert "pace" not in json.loads(path.read_text())  # no loop was timed
    pace = budget.Pace("toy", steps=100)
    run_steps(pace, clock, [2.0, 2.0] + [0.5] * 20)
    path = results.save_results("toy", {"loss": 1.0}, cpu, 90.0, **HEADLINE)
    assert json.loads(path.read_text())["pace"] == {
        "planned_steps": 100,
        "steps": 22,
        "before_s": 0.0,
        "loop_s": 14.0,
        "step_s": 0.5,
    }
    # the next setup starts a new run: no pace carried over
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    runtime.setup(dict(epochs=30), dict(epochs=1))
    assert budget.measured() is None


def test_the_book_runner_stores_full_runs_only(monkeypatch, tmp_path):
    from utils import notebooks

    monkeypatch.delenv(runtime.SMOKE_ENV, raising=False)
    monkeypatch.setenv(runtime.SHORT_ENV, "1")
    with pytest.raises(RuntimeError, match="unset GDL_SHORT: the book stores"):
        notebooks.execute(tmp_path / "chapter.ipynb")
    monkeypatch.delenv(runtime.SHORT_ENV)
    # --short on a chapter without a short run would overwrite its full record
    with pytest.raises(RuntimeError, match="vae.ipynb offers no short run"):
        notebooks.execute(ROOT / "book" / "vae.ipynb", short=True)


def test_the_scale_is_the_books_run_on_this_cpu_class(
    clock, full_run, monkeypatch, capsys
):
    from utils import precision

    def written(kind, wall, step_s, cpu):
        found = record(
            "full",
            wall,
            {"steps": 100, "loop_s": 100 * step_s, "step_s": step_s},
            device=f"cpu ({cpu})",
        )
        found["cpu_class"] = cpu
        path = full_run / ("" if kind == "full" else kind) / "toy.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(found))

    written("full", 100.0, 0.5, "AMX")
    written("avx2", 250.0, 1.0, "AVX2")
    monkeypatch.setattr(precision, "cpu_class", lambda: "AVX2")
    pace = budget.Pace("toy", steps=100)
    run_steps(pace, clock, [1.0] * 12)
    # the AVX2 run, at this step's pace: 100 s of loop + 150 s after it
    assert (
        "the whole chapter about 4 min (scaled from the book's AVX2 CPU run on "
        "cpu (AVX2))" in capsys.readouterr().out
    )
    monkeypatch.setattr(precision, "cpu_class", lambda: "AMX")
    monkeypatch.setattr(budget, "_last", None)
    pace = budget.Pace("toy", steps=100)
    run_steps(pace, clock, [1.0] * 12)
    # the AMX run at twice its step time: 2 x (50 s of loop + 50 s after it) = 200 s
    assert "about 3 min (scaled from the book's full run on cpu (AMX))" in (
        capsys.readouterr().out
    )


def test_an_avx2_record_holds_a_full_run_on_an_avx2_cpu(full_run):
    found = record("full", 90.0)
    found["cpu_class"] = "AMX"
    (full_run / "avx2").mkdir()
    path = full_run / "avx2" / "toy.json"
    assert results.record_path("toy", "avx2") == path
    with pytest.raises(
        ValueError,
        match=r"no such file: python -m utils.notebooks "
        r"--avx2 book/toy.ipynb",
    ):
        results.load_results("toy", "avx2")
    path.write_text(json.dumps(found))
    with pytest.raises(ValueError, match="its cpu_class is 'AMX', not 'AVX2'"):
        results.load_results("toy", "avx2")
    found["cpu_class"] = "AVX2"
    path.write_text(json.dumps(found))
    assert results.load_results("toy", "avx2")["wall_time_s"] == 90.0
    path.write_text(json.dumps(dict(found, profile="short")))
    with pytest.raises(ValueError, match="a short run, not a full one"):
        results.load_results("toy", "avx2")


def test_the_avx2_run_limits_the_kernels_and_records_apart(monkeypatch):
    import nbclient

    from utils import notebooks

    seen = {}

    class Client:
        def __init__(self, nb, **kwargs):
            pass

        def execute(self):
            seen.update({k: notebooks.os.environ.get(k) for k in names})

    names = [
        *notebooks.AVX2_LIMITS,
        results.RECORD_AS_ENV,
        results.RESULTS_DIR_ENV,
        runtime.SHORT_ENV,
        "CUDA_VISIBLE_DEVICES",
    ]
    for name in names + ["GDL_TEXT_PROGRESS", runtime.SMOKE_ENV]:
        monkeypatch.setenv(name, "")  # so that the test restores each one
        monkeypatch.delenv(name)
    monkeypatch.setattr(nbclient, "NotebookClient", Client)
    monkeypatch.setattr(notebooks.platform, "machine", lambda: "x86_64")
    chapter = ROOT / "book" / "vae.ipynb"
    before = chapter.read_bytes()
    seconds, found = notebooks.execute(chapter, avx2=True)
    assert seen == {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        results.RECORD_AS_ENV: "avx2",  # the record moves, the folder read does not
        results.RESULTS_DIR_ENV: None,
        runtime.SHORT_ENV: "0",
        "CUDA_VISIBLE_DEVICES": "",  # a CPU run, also where there is a GPU
    }
    assert found == [] and chapter.read_bytes() == before  # not stored
    # a plain run refuses the switch rather than store a notebook and record apart
    with pytest.raises(RuntimeError, match="unset GDL_RECORD_AS"):
        notebooks.execute(chapter)
    monkeypatch.setattr(notebooks.platform, "machine", lambda: "arm64")
    with pytest.raises(RuntimeError, match="--avx2 limits an x86 CPU.*this is arm64"):
        notebooks.execute(chapter, avx2=True)
    with pytest.raises(RuntimeError, match="choose one"):
        notebooks.execute(chapter, short=True, avx2=True)


def test_a_record_as_avx2_goes_apart_and_must_be_an_avx2_run(full_run, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(results.RECORD_AS_ENV, "avx2")
    monkeypatch.setattr(results, "cpu_class", lambda: "AVX2")
    path = results.save_results("toy", {"loss": 1.5}, cpu, 60.0, **HEADLINE)
    assert path == full_run / "avx2" / "toy.json"
    assert not (full_run / "toy.json").exists()
    assert results.load_results("toy", "avx2")["cpu_class"] == "AVX2"
    monkeypatch.setattr(results, "cpu_class", lambda: "AMX")
    with pytest.raises(ValueError, match="records a full run on an AVX2 CPU"):
        results.save_results("toy", {"loss": 1.5}, cpu, 60.0, **HEADLINE)
    monkeypatch.setenv(results.RECORD_AS_ENV, "avx512")
    with pytest.raises(ValueError, match="GDL_RECORD_AS='avx512': expected one of"):
        results.save_results("toy", {"loss": 1.5}, cpu, 60.0, **HEADLINE)


def test_the_window_needs_five_steps_as_well_as_ten_seconds(clock, full_run, capsys):
    pace = budget.Pace("toy", steps=100, clock=Before(0.0))
    run_steps(pace, clock, [1.0, 1.0] + [3.0] * 4)  # 12 s but four timed steps
    assert capsys.readouterr().out == ""
    run_steps(pace, clock, [3.0])
    assert "pace: 3 s a step (steps 3 to 7, timed here)" in capsys.readouterr().out


def test_a_record_with_a_broken_pace_is_not_a_scale(clock, full_run, capsys):
    broken = {"steps": 100, "before_s": None, "loop_s": 60.0, "step_s": 0.5}
    write(full_run, record("full", 100.0, broken))
    pace = budget.Pace("toy", steps=100, clock=Before(0.0))
    run_steps(pace, clock, [1.0] * 12)
    out = capsys.readouterr().out
    assert "pace: 1 s a step" in out and "whole chapter" not in out
