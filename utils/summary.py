"""The results page (``book/results.ipynb``): every chapter's headline in one table a
reader takes in at a glance, and one figure per family of models, each on its own
yardstick.

A record (``utils.results``) holds its headline metric with a sentence on how to read
it and a long reference text (goals, peers and published numbers, each with its
source). The page needs them short: :data:`YARDSTICKS` says, per chapter, what the
headline measures in a few words, its unit, and its goal or peer in a form that can be
checked (an upper or lower bound, a multiple of another metric of the same record, or
another chapter's value). The goals are the chapters' own: ``tests/test_summary.py``
checks that each bound stated here is the one in the goal clause of the chapter's
reference text. The long
texts go into a list under the table that the reader opens on demand.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Sequence

from .results import (
    all_results,
    duration_text,
    load_results,
    number_text,
    table_html,
    toc_order,
)


@dataclass(frozen=True)
class Yardstick:
    """How the results page shows a chapter's headline.

    ``goal`` is the short text of its goal or peer, formatted with the record's metrics
    (``"floor {frechet_floor_real_vs_real}"``); ``at_most`` or ``at_least`` make it a
    bound that the headline (or the record's metric ``of``, where the chapter's goal is
    on another of its numbers) must meet, times the record's metric ``times`` where
    given; ``peer`` (chapter, metric) is another chapter's value the headline must not
    exceed."""

    measured: str
    unit: str = ""
    goal: str = ""
    at_most: float | None = None
    at_least: float | None = None
    times: str | None = None
    peer: tuple[str, str] | None = None
    of: str | None = None


#: Per chapter: the headline in words, its unit, and its goal or peer.
YARDSTICKS = {
    "autoencoder": Yardstick(
        "error of denoised test digits", "MSE per pixel", "at most 0.030", 0.030
    ),
    "vae": Yardstick(
        "negative ELBO of test digits", "nats per image", "at most 100", 100
    ),
    "pixelcnn": Yardstick(
        "code length of test digits, label sent", "bits/dim", "at most 1.00", 1.00
    ),
    "flow": Yardstick(
        "code length of test digits (a bound)", "bits/dim", "at most 1.20", 1.20
    ),
    "gan": Yardstick(
        "Fréchet distance to real images",
        "classifier features",
        "real vs real: {frechet_floor_real_vs_real}",
    ),
    "cgan": Yardstick(
        "samples classified as the class asked for",
        "fraction",
        "at least 0.90",
        at_least=0.90,
    ),
    "dcgan": Yardstick(
        "Fréchet distance to real faces",
        "VGG19 features",
        "at most 25x real vs real",
        at_most=25,
        times="frechet_floor_real_vs_real",
    ),
    "energy_based": Yardstick(
        "AUROC of the energy, digits against Fashion-MNIST",
        "",
        "at least 0.95",
        at_least=0.95,
    ),
    "diffusion": Yardstick(
        "Fréchet distance to real images",
        "classifier features",
        "accuracy at least 0.95: {class_accuracy}; cGAN {peer}",
        at_least=0.95,
        of="class_accuracy",
        peer=("cgan", "frechet_distance"),
    ),
    "deepdream": Yardstick(
        "mean squared activation of the chosen layers", "x the photo's"
    ),
    "style_transfer": Yardstick(
        "style loss after L-BFGS (Gram error, relative)",
        "",
        "at the start: {style_loss_start}",
    ),
    "lstm_basics": Yardstick("training accuracy, next word of six sentences"),
    "text_generation": Yardstick(
        "loss on held-out text", "nats/char", "at most 1.25", 1.25
    ),
    "language_model": Yardstick(
        "test perplexity over words, open vocabulary", "", "at most 240", 240
    ),
    "transformer": Yardstick(
        "loss on the LSTM's held-out text",
        "nats/char",
        "at most the LSTM's {peer}",
        peer=("text_generation", "val_loss"),
    ),
    "music": Yardstick(
        "loss on held-out chorales (unseen tunes)",
        "nats/token",
        "at most 0.8x the best n-gram's {ngram_best_nll}",
        at_most=0.8,
        times="ngram_best_nll",
    ),
    "scaling": Yardstick(
        "weight difference where |g| > 100 eps, DDP against 1 process",
        "",
        "at most 2e-06",
        2e-06,
    ),
}


def _peer_value(yardstick: Yardstick) -> float | None:
    if yardstick.peer is None:
        return None
    chapter, metric = yardstick.peer
    try:
        return load_results(chapter)["metrics"][metric]
    except (ValueError, KeyError):
        return None


def goal_met(
    record: dict[str, Any], yardstick: Yardstick, peer: float | None = None
) -> bool | None:
    """Whether the record's headline meets its goal; None where it has none (or its
    peer's record is missing). ``peer`` is the peer's value where the caller has read
    it already."""
    value = record["metrics"][yardstick.of or record["headline"]["metric"]]
    scale = record["metrics"][yardstick.times] if yardstick.times else 1.0
    if yardstick.at_most is not None:
        return value <= yardstick.at_most * scale
    if yardstick.at_least is not None:
        return value >= yardstick.at_least * scale
    peer = _peer_value(yardstick) if peer is None else peer
    return None if peer is None else value <= peer


def device_class(record: dict[str, Any]) -> str:
    """The class of machine a record ran on, short: the CPU class (AMX, AVX-512 BF16,
    AVX2, ...), the bf16 unit a record before CPU classes names, or the GPU."""
    device = record["device"]
    if device.startswith("cuda"):
        name = device.removeprefix("cuda").strip(" ()")
        return f"GPU, {name}" if name else "GPU"
    if not device.startswith("cpu"):
        return {"mps": "Apple GPU (MPS)"}.get(device.split()[0], device)
    if record.get("cpu_class"):
        return f"CPU, {record['cpu_class']}"
    _, found, unit = record["precision"].partition("bf16 instructions: ")
    if found:
        return f"CPU, {unit.split(')')[0]}"
    if "AVX-512 BF16 but no AMX" in record["precision"]:
        return "CPU, AVX-512 BF16"
    return "CPU"


def _goal_text(record: dict[str, Any], yardstick: Yardstick, peer: float | None) -> str:
    numbers = {k: number_text(v) for k, v in record["metrics"].items() if _num(v)}
    return yardstick.goal.format(
        **numbers, peer="?" if peer is None else number_text(peer)
    )


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


MET_TEXT = {True: "✓ yes", False: "✗ no", None: "–"}


def summary_html(order: Sequence[str] | None = None) -> str:
    """The results page's table: one row per recorded chapter (in ``order``, by default
    the table of contents', then by name): the chapter (linked), what it measures, the
    value with its unit, its goal or peer, whether it met it, and how long the chapter
    took on which class of machine. Under it, a list the reader opens for each
    chapter's full reading, comparisons and sources, and a note naming any file that
    was skipped."""
    records, skipped = all_results()
    rank = {name: i for i, name in enumerate(toc_order() if order is None else order)}
    records.sort(key=lambda r: (rank.get(r["chapter"], len(rank)), r["chapter"]))
    rows, details = [], []
    for r in records:
        h = r["headline"]
        name = r["chapter"]
        stick = YARDSTICKS.get(name, Yardstick(h["metric"].replace("_", " ")))
        peer = _peer_value(stick)  # read once, for the text and the check
        unit = f' <span class="unit">{html.escape(stick.unit)}</span>'
        rows.append(
            [
                f'<a href="{name}.html">{html.escape(name)}</a>',
                html.escape(stick.measured),
                number_text(r["metrics"][h["metric"]]) + (unit if stick.unit else ""),
                html.escape(_goal_text(r, stick, peer)) or "–",
                MET_TEXT[goal_met(r, stick, peer)],
                f"{duration_text(r['wall_time_s'])}, {html.escape(device_class(r))}",
            ]
        )
        details.append(
            f'<dt><a href="{name}.html">{html.escape(name)}</a>: '
            f"<code>{html.escape(h['metric'])}</code></dt>"
            f"<dd>{html.escape(h['meaning'])}. Compared with: "
            f"{html.escape(h['reference'])}. Ran on {html.escape(r['device'])}, "
            f"{html.escape(r['precision'])}.</dd>"
        )
    page = table_html(
        ("chapter", "measures", "value", "goal or peer", "met", "time, machine"),
        rows,
        "results-table",
    )
    page += (
        '<details class="results-details"><summary>What each number means and is '
        "compared with, in full, with its sources</summary>"
        f"<dl>{''.join(details)}</dl></details>"
    )
    if skipped:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in skipped)
        page += f'<p class="results-skipped">Skipped results files:</p><ul>{items}</ul>'
    return page


#: The families of the figure under the table: (title, chapters, metric key).
SAMPLE_QUALITY = ("gan", "cgan", "dcgan", "diffusion")
LIKELIHOOD = ("pixelcnn", "flow")
TEXT = ("text_generation", "transformer")
#: Compressor and histogram baselines the likelihood chapters record (baseline_<key>).
CODE_BASELINES = {
    "png": "PNG files",
    "bz2": "bz2",
    "xz": "xz",
    "pixel_histogram": "histogram",
}


def _bars(ax, labels, values, colours, ylabel: str, title: str, label: str) -> None:
    """One panel: a bar per value, each labelled with ``label`` (a format)."""
    ax.bar(labels, values, color=colours)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    for i, value in enumerate(values):
        ax.annotate(label.format(value), (i, value), ha="center", va="bottom")


def families_figure():
    """Three small panels, one per family, each on its own yardstick: the GAN's, the
    cGAN's and diffusion's Fréchet distance as a multiple of their real-vs-real floor
    (1 = as close as two sets of real images: the best a generator can do, not a
    trivial baseline; the DCGAN's, in another colour, is on faces in VGG19's features
    and 2,000 samples, another yardstick); the likelihood models' bits per dimension
    beside the compressors and the pixel histogram measured on the same digits; the
    text models' nats per character beside a model of character frequencies alone. A
    chapter without a record is left out."""
    import matplotlib.pyplot as plt

    def record(chapter: str) -> dict[str, Any] | None:
        try:
            return load_results(chapter)["metrics"]
        except ValueError:
            return None

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    quality, bits, text = axes
    found = {c: m for c in SAMPLE_QUALITY if (m := record(c))}
    names = [f"{c}\n(faces, VGG19)" if c == "dcgan" else c for c in found]
    multiples = [
        m["frechet_distance"] / m["frechet_floor_real_vs_real"] for m in found.values()
    ]
    colours = ["tab:orange" if c == "dcgan" else "tab:blue" for c in found]
    _bars(
        quality,
        names,
        multiples,
        colours,
        "Fréchet distance / floor",
        "Samples: distance to real data, lower is better",
        "≈{:.0f}x",
    )
    quality.axhline(1, color="black", lw=1, ls="--")
    quality.annotate(
        "floor: real vs real", (len(names) - 0.5, 1), ha="right", va="bottom", size=8
    )
    quality.set_yscale("log")
    quality.set_ylim(0.5, max(multiples, default=10) * 4)

    found = {c: m for c in LIKELIHOOD if (m := record(c))}
    labels = list(found)
    values = [m["bits_per_dim"] for m in found.values()]
    colours = ["tab:green"] * len(labels)
    first = next(iter(found.values()), {})
    for key, label in CODE_BASELINES.items():
        if f"baseline_{key}" in first:
            labels.append(label)
            values.append(first[f"baseline_{key}"])
            colours.append("tab:gray")
    _bars(
        bits,
        labels,
        values,
        colours,
        "bits per dimension",
        "Likelihood: MNIST test digits, lower is better",
        "{:.2f}",
    )

    found = {c: m for c in TEXT if (m := record(c))}
    labels = ["LSTM" if c == "text_generation" else c for c in found]
    values = [m["val_loss"] for m in found.values()]
    colours = ["tab:purple"] * len(labels)
    if "text_generation" in found:
        labels.append("frequencies")
        values.append(found["text_generation"]["baseline_unigram"])
        colours.append("tab:gray")
    _bars(
        text,
        labels,
        values,
        colours,
        "nats per character",
        "Text: held-out characters, lower is better",
        "{:.3f}",
    )
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    for ax in (bits, text):
        ax.margins(y=0.15)
    fig.tight_layout()
    return fig
