"""The results page's short texts and goals (utils.summary) against the chapters' own
records: every chapter has a row, every bound the page checks is the one the chapter
states, and the figure draws every family from the records."""

import re

import matplotlib
import pytest
from test_book import CHAPTERS

from utils import results, summary

matplotlib.use("Agg")
NAMES = [c.split("/")[-1] for c in CHAPTERS]


@pytest.fixture
def book_records(monkeypatch):
    monkeypatch.delenv(results.RESULTS_DIR_ENV, raising=False)
    monkeypatch.chdir(results.checkout(results.Path(__file__).parent) / "book")


def _goal_numbers(reference: str) -> set[float]:
    """The numbers of the reference's goal clause (up to the next ";"), "25x" as 25."""
    clause = reference[reference.index("goal") :].split(";")[0]
    return {float(t) for t in re.findall(r"(?<![\w.])\d[\d.]*(?:e-?\d+)?", clause)}


@pytest.mark.parametrize("chapter", NAMES)
def test_every_goal_on_the_page_is_the_chapters_own(chapter, book_records):
    assert chapter in summary.YARDSTICKS, f"{chapter} has no row text"
    stick = summary.YARDSTICKS[chapter]
    record = results.load_results(chapter)
    reference, meaning = record["headline"]["reference"], record["headline"]["meaning"]
    if stick.at_most is not None or stick.at_least is not None:
        bound = stick.at_most if stick.at_most is not None else stick.at_least
        assert bound in _goal_numbers(reference), (chapter, bound)
        better = "lower" if stick.at_most is not None else "higher"
        if stick.of is None:  # a goal on the headline: its direction is the goal's
            assert f"{better} is better" in meaning
    if stick.peer is not None:
        assert f"the {stick.peer[0]} chapter" in reference
        assert "lower is better" in meaning
    assert summary.goal_met(record, stick) in (True, False, None)


def test_the_page_checks_goals_both_ways(book_records):
    record = results.load_results("vae")
    stick = summary.YARDSTICKS["vae"]
    assert summary.goal_met(record, stick) is (record["metrics"]["test_loss"] <= 100)
    worse = {**record, "metrics": {**record["metrics"], "test_loss": 100.5}}
    assert summary.goal_met(worse, stick) is False
    dcgan = results.load_results("dcgan")
    m = dcgan["metrics"]
    far = {
        **dcgan,
        "metrics": {**m, "frechet_distance": 26 * m["frechet_floor_real_vs_real"]},
    }
    assert summary.goal_met(far, summary.YARDSTICKS["dcgan"]) is False


def test_the_table_has_one_short_row_per_chapter_and_the_full_texts_under_it(
    book_records,
):
    page = summary.summary_html()
    table, details = page.split("<details", 1)
    assert table.count("<tr>") == len(NAMES) + 1
    for chapter in NAMES:
        reference = results.load_results(chapter)["headline"]["reference"]
        assert results.html.escape(reference) in details
        assert results.html.escape(reference) not in table


def test_the_figure_draws_every_family_beside_its_baseline(book_records):
    fig = summary.families_figure()
    quality, bits, text = fig.axes
    assert len(quality.patches) == len(summary.SAMPLE_QUALITY)
    assert len(bits.patches) == len(summary.LIKELIHOOD) + len(summary.CODE_BASELINES)
    assert len(text.patches) == len(summary.TEXT) + 1
    assert [line.get_ydata()[0] for line in quality.lines] == [1]


def test_the_goal_numbers_are_read_from_the_goal_clause_only():
    reference = (
        "the cGAN's 19.24 (measured here); goal: at most 1.30 within 15 min; 0.9"
    )
    assert _goal_numbers(reference) == {1.30, 15}
    assert _goal_numbers("goal 25x the floor; floor 112801.2") == {25}
    assert 2e-06 in _goal_numbers("goal: weights within 2e-06 (0.1% of 0.002)")


def test_the_machine_column_names_the_class_of_every_device():
    base = {"precision": "fp32", "device": "cpu (2 threads, x86_64)"}
    assert summary.device_class(base) == "CPU"
    assert summary.device_class({**base, "cpu_class": "AVX2"}) == "CPU, AVX2"
    amx = {**base, "precision": "bf16 autocast (bf16 instructions: AMX)"}
    assert summary.device_class(amx) == "CPU, AMX"
    epyc = {**base, "precision": "fp32 (AVX-512 BF16 but no AMX: bf16 would be slower)"}
    assert summary.device_class(epyc) == "CPU, AVX-512 BF16"
    assert (
        summary.device_class({**base, "device": "cuda (NVIDIA T4)"}) == "GPU, NVIDIA T4"
    )
    assert summary.device_class({**base, "device": "cuda"}) == "GPU"
    assert summary.device_class({**base, "device": "mps"}) == "Apple GPU (MPS)"
