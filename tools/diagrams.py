"""The book's schematic diagrams, drawn by code: ``python -m tools.diagrams`` writes
every one of them to ``book/images/<name>.svg``; ``--check`` only says which of the
committed files differ from what the code draws (the tests run it).

Each diagram is a function that draws boxes and arrows on one matplotlib axis; the SVG
keeps text as text (``svg.fonttype: none``) and carries no date or random ids, so the
same code gives the same bytes. :data:`DIAGRAMS` maps each file to its function and to
the alt text the chapters use where they show it.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

IMAGES = Path(__file__).resolve().parent.parent / "book" / "images"
STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "gdl-pytorch",
    "font.size": 9,
    "font.family": "DejaVu Sans",
}
COLOURS = {
    "data": "#dbe9f6",
    "net": "#fde2c4",
    "latent": "#e2f0d9",
    "loss": "#f8d7da",
    "op": "#eeeeee",
}


def box(ax, x, y, text, kind="net", w=1.6, h=0.7):
    """A rounded box centred at (x, y) with ``text``; its fill says what it is."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=COLOURS[kind],
            edgecolor="#333333",
            linewidth=1,
        )
    )
    ax.text(x, y, text, ha="center", va="center")


def arrow(ax, start, end, text="", dashed=False, bend=0.0, offset=(0.0, 0.15)):
    """An arrow from ``start`` to ``end``, labelled at its middle."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=12,
            color="#333333",
            linewidth=1,
            linestyle="--" if dashed else "-",
            connectionstyle=f"arc3,rad={bend}",
        )
    )
    if text:
        mid = ((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1])
        ax.text(*mid, text, ha="center", va="bottom", fontsize=9)


def canvas(width: float, height: float):
    """A figure whose axis spans 0..2 width by 0..2 height units of 0.72 inches."""
    fig, ax = plt.subplots(figsize=(1.44 * width, 1.44 * height))
    ax.set_xlim(0, width * 2)
    ax.set_ylim(0, height * 2)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def autoencoder():
    fig, ax = canvas(7, 1.6)
    box(ax, 1, 1.6, "image x\n(noisy, for\ndenoising)", "data", h=1.1)
    box(ax, 4, 1.6, "encoder\nconvolutions", w=1.9)
    box(ax, 7, 1.6, "code z\n(latent_dim)", "latent")
    box(ax, 10, 1.6, "decoder\ntransposed conv.", w=2.1)
    box(ax, 13, 1.6, "x̂", "data", w=1.0)
    for a, b in ((1.8, 3.05), (4.95, 6.2), (7.8, 8.95), (11.05, 12.5)):
        arrow(ax, (a, 1.6), (b, 1.6))
    ax.plot([13, 13, 1], [1.25, 0.6, 0.6], color="#333333", lw=1, ls="--")
    arrow(ax, (1, 0.6), (1, 1.05), dashed=True)
    ax.text(7, 0.05, "loss: ‖x̂ − clean x‖² per pixel", ha="center", fontsize=9)
    return fig


def vae():
    fig, ax = canvas(7.5, 2.0)
    box(ax, 1, 2, "image x", "data", w=1.3)
    box(ax, 3.8, 2, "encoder q(z|x)", w=2.0)
    box(ax, 6.6, 2.8, "mean μ", "latent", w=1.3, h=0.6)
    box(ax, 6.6, 1.2, "log σ²", "latent", w=1.3, h=0.6)
    box(ax, 9.4, 2, "z = μ + σ ⊙ ε", "op", w=2.0)
    box(ax, 9.4, 3.5, "ε ~ N(0, I)", "data", w=1.6, h=0.6)
    box(ax, 12.3, 2, "decoder p(x|z)", w=2.0)
    box(ax, 14.4, 2, "x̂", "data", w=0.8)
    arrow(ax, (1.65, 2), (2.8, 2))
    arrow(ax, (4.8, 2.2), (5.95, 2.8))
    arrow(ax, (4.8, 1.8), (5.95, 1.2))
    arrow(ax, (7.25, 2.8), (8.4, 2.15))
    arrow(ax, (7.25, 1.2), (8.4, 1.85))
    arrow(ax, (9.4, 3.2), (9.4, 2.35), dashed=True)
    arrow(ax, (10.4, 2), (11.3, 2))
    arrow(ax, (13.3, 2), (14.0, 2))
    ax.text(
        9.4,
        0.55,
        "the noise is an input: gradients flow through μ and σ",
        ha="center",
        fontsize=9,
    )
    ax.text(
        6.6, 0.25, "KL(q(z|x) ‖ N(0, I)) on μ, σ", ha="center", fontsize=9, color="#a33"
    )
    return fig


def gan_loop():
    fig, ax = canvas(7, 2.4)
    box(ax, 1, 3.6, "noise z", "latent", w=1.2)
    box(ax, 4, 3.6, "generator G")
    box(ax, 7, 3.6, "fake G(z)", "data", w=1.5)
    box(ax, 7, 1.2, "real x", "data", w=1.5)
    box(ax, 10, 2.4, "discriminator D", w=1.9)
    box(ax, 12.9, 2.4, "D(·) ∈ (0, 1)", "op", w=1.5)
    arrow(ax, (1.6, 3.6), (3.2, 3.6))
    arrow(ax, (4.8, 3.6), (6.25, 3.6))
    arrow(ax, (7.75, 3.5), (9.1, 2.65))
    arrow(ax, (7.75, 1.3), (9.1, 2.15))
    arrow(ax, (10.95, 2.4), (12.15, 2.4))
    ax.text(
        10,
        4.4,
        "D step: real → 1, fake → 0 (G fixed)",
        ha="center",
        fontsize=9,
        color="#a33",
    )
    ax.text(
        10,
        0.35,
        "G step: make D call fakes real (D fixed)",
        ha="center",
        fontsize=9,
        color="#a33",
    )
    arrow(ax, (12.9, 2.05), (4.2, 3.2), dashed=True, bend=-0.35)
    return fig


def coupling():
    fig, ax = canvas(7, 2.2)
    box(ax, 1, 3.2, "kept half y_a", "data", w=1.7)
    box(ax, 1, 1.2, "other half y_b", "data", w=1.7)
    box(ax, 5, 2.2, "network\n(any layers)", w=1.7, h=0.9)
    box(ax, 8.8, 1.2, "z_b = y_b ⊙ exp(s) + t", "op", w=2.8)
    box(ax, 8.8, 3.2, "z_a = y_a", "op", w=1.7)
    arrow(ax, (1.85, 3.2), (7.95, 3.2))
    arrow(ax, (1.85, 3.05), (4.15, 2.35))
    arrow(ax, (5.85, 2.0), (7.4, 1.45), "s, t")
    arrow(ax, (1.85, 1.2), (7.4, 1.2))
    ax.text(12.2, 3.6, "log|det J| = Σ s", fontsize=10)
    ax.text(12.2, 2.9, "(triangular Jacobian)", fontsize=9)
    ax.text(12.2, 1.9, "inverse:", fontsize=10)
    ax.text(12.2, 1.25, "y_b = (z_b − t) ⊙ exp(−s)", fontsize=9)
    ax.text(12.2, 0.6, "squeeze: 2x2 pixels → 4 channels", fontsize=9)
    return fig


def unet():
    fig, ax = canvas(7, 2.6)
    levels = [(1.2, 4.2, "28x28, 16"), (3.4, 2.9, "14x14, 32"), (5.6, 1.6, "7x7, 64")]
    for x, y, text in levels:
        box(ax, x, y, text, w=1.7, h=0.6)
    for (x, y, text), xr in zip(levels, (12.8, 10.6, 8.4)):
        box(ax, xr, y, text, w=1.7, h=0.6)
    box(ax, 7, 0.5, "middle", w=1.4, h=0.5)
    for (x1, y1, _), (x2, y2, _) in zip(levels, levels[1:]):
        arrow(
            ax, (x1 + 0.2, y1 - 0.3), (x2 - 0.3, y2 + 0.3), "down", offset=(-0.5, -0.1)
        )
    arrow(ax, (5.6, 1.3), (6.4, 0.6))
    arrow(ax, (7.6, 0.6), (8.4, 1.3))
    ups = [(8.4, 1.6), (10.6, 2.9), (12.8, 4.2)]
    for (x1, y1), (x2, y2) in zip(ups, ups[1:]):
        arrow(ax, (x1 + 0.3, y1 + 0.3), (x2 - 0.2, y2 - 0.3), "up", offset=(0.5, -0.1))
    for (x, y, _), (xr, _) in zip(levels, reversed(ups)):
        arrow(ax, (x + 0.85, y), (xr - 0.85, y), "skip", dashed=True)
    box(ax, 1.4, 1.0, "step t, label y", "latent", w=1.9, h=0.6)
    ax.text(1.4, 0.25, "embedded, added in every block", ha="center", fontsize=8)
    ax.text(12.8, 4.65, "output: the noise ε̂", ha="center", fontsize=8)
    return fig


def lstm_cell():
    fig, ax = canvas(7, 2.4)
    ax.plot([0.5, 13.5], [4.0, 4.0], color="#333333", lw=2, zorder=0)
    ax.text(0.5, 4.25, "cell state c", fontsize=9)
    box(ax, 3.6, 4.0, "× f", "op", w=0.9, h=0.6)
    box(ax, 6.6, 4.0, "+ i ⊙ g", "op", w=1.3, h=0.6)
    box(ax, 12.3, 2.2, "h = o ⊙ tanh(c)", "op", w=2.4, h=0.6)
    box(ax, 1.6, 1.0, "[h_{t−1}, x_t]", "data", w=1.9, h=0.6)
    gates = [
        (3.6, "f = σ(·)"),
        (5.6, "i = σ(·)"),
        (7.6, "g = tanh(·)"),
        (9.6, "o = σ(·)"),
    ]
    for x, text in gates:
        box(ax, x, 2.2, text, w=1.5, h=0.55)
    ax.plot([2.55, 9.6], [1.0, 1.0], color="#333333", lw=1)
    for x, _ in gates:
        arrow(ax, (x, 1.0), (x, 1.9))
    arrow(ax, (3.6, 2.5), (3.6, 3.7))
    arrow(ax, (5.6, 2.5), (6.4, 3.7))
    arrow(ax, (7.6, 2.5), (6.8, 3.7))
    arrow(ax, (10.35, 2.2), (11.1, 2.2))
    arrow(ax, (12.3, 4.0), (12.3, 2.5))
    arrow(ax, (12.3, 1.9), (12.3, 0.9))
    ax.text(
        12.3,
        0.3,
        "h_t: the output, and the\nnext step's input",
        ha="center",
        fontsize=8,
    )
    ax.text(
        6,
        0.3,
        "every gate reads the last output and the new input",
        ha="center",
        fontsize=9,
    )
    return fig


def transformer_block():
    fig, ax = canvas(5, 3.2)
    ax.plot([5, 5], [0.4, 6.0], color="#333333", lw=2, zorder=0)
    ax.text(5.2, 0.4, "residual stream h", fontsize=9)
    box(ax, 2.2, 1.7, "LayerNorm", "op", w=1.6, h=0.5)
    box(ax, 2.2, 2.6, "causal multi-head\nattention", w=2.2, h=0.8)
    box(ax, 2.2, 4.0, "LayerNorm", "op", w=1.6, h=0.5)
    box(ax, 2.2, 4.9, "MLP 4C, GELU", w=2.0, h=0.6)
    box(ax, 5, 3.3, "+", "op", w=0.5, h=0.5)
    box(ax, 5, 5.6, "+", "op", w=0.5, h=0.5)
    arrow(ax, (5, 1.2), (3.0, 1.7))
    arrow(ax, (2.2, 1.95), (2.2, 2.2))
    arrow(ax, (3.3, 2.7), (4.75, 3.25))
    arrow(ax, (5, 3.55), (3.0, 4.0))
    arrow(ax, (2.2, 4.25), (2.2, 4.6))
    arrow(ax, (3.2, 5.0), (4.75, 5.55))
    ax.text(7.2, 3.3, "h ← h + MHA(LN(h))", fontsize=9)
    ax.text(7.2, 5.6, "h ← h + MLP(LN(h))", fontsize=9)
    ax.text(7.2, 1.2, "× L blocks, then LN\nand the tied output", fontsize=9)
    return fig


def all_reduce():
    fig, ax = canvas(7, 2.2)
    for i, y in enumerate((3.4, 1.0)):
        box(ax, 1.2, y, f"rank {i}: batch\nhalf {i + 1}", "data", w=1.7, h=0.8)
        box(ax, 4.2, y, f"model copy\n→ gradient g{i}", w=2.0, h=0.8)
        box(ax, 10.4, y, "(g0 + g1) / 2", "op", w=1.9, h=0.6)
        box(ax, 13.1, y, "same step", "latent", w=1.5, h=0.6)
        arrow(ax, (2.05, y), (3.2, y))
        arrow(ax, (11.35, y), (12.35, y))
    box(ax, 7.3, 2.2, "all-reduce\n(sum, ÷ N)", "loss", w=1.8, h=0.9)
    arrow(ax, (5.2, 3.3), (6.4, 2.5))
    arrow(ax, (5.2, 1.1), (6.4, 1.9))
    arrow(ax, (8.2, 2.5), (9.45, 3.3))
    arrow(ax, (8.2, 1.9), (9.45, 1.1))
    ax.text(
        7.3,
        0.1,
        "every rank ends with the mean gradient: one step on the whole batch",
        ha="center",
        fontsize=9,
    )
    return fig


def taxonomy():
    fig, ax = canvas(7.5, 2.8)
    box(ax, 7.5, 5.0, "generative models of p(x)", "op", w=3.4, h=0.6)
    families = [
        (
            2.0,
            "exact likelihood",
            "PixelCNN, LSTM,\nTransformer (chain rule);\nRealNVP (flow)",
        ),
        (6.0, "a bound", "VAE (ELBO);\ndiffusion (trained on\na reweighted bound)"),
        (
            10.0,
            "no likelihood value",
            "GAN, cGAN, DCGAN\n(a game);\nenergy-based model\n(no normaliser)",
        ),
    ]
    for x, title, members in families:
        box(ax, x, 3.5, title, "latent", w=2.6, h=0.6)
        box(ax, x, 1.8, members, "net", w=3.2, h=1.5)
        arrow(ax, (7.5, 4.7), (x, 3.8))
        arrow(ax, (x, 3.2), (x, 2.55))
    box(ax, 13.3, 3.5, "images from a\ntrained network", "data", w=2.3, h=0.8)
    box(ax, 13.3, 1.8, "DeepDream,\nstyle transfer\n(no p(x))", "op", w=2.3, h=1.3)
    arrow(ax, (13.3, 3.1), (13.3, 2.45))
    return fig


#: File name -> (function, alt text used where the chapter shows it).
DIAGRAMS: dict[str, tuple[Callable, str]] = {
    "autoencoder": (
        autoencoder,
        "An image goes through the encoder to a small code and "
        "through the decoder back to an image; the loss compares the output "
        "with the clean image.",
    ),
    "vae": (
        vae,
        "The encoder gives a mean and a log-variance; the code is the mean plus "
        "sigma times outside noise (the reparameterisation trick), and the decoder "
        "maps it back to an image; the KL term acts on the mean and variance.",
    ),
    "gan_loop": (
        gan_loop,
        "Noise goes through the generator to a fake image; the "
        "discriminator scores fakes and real images; its step and the "
        "generator's step alternate.",
    ),
    "coupling": (
        coupling,
        "A coupling layer keeps one half of the input, and a network "
        "of that half gives a scale and shift for the other half; the Jacobian "
        "is triangular, so its log-determinant is the sum of the scales.",
    ),
    "unet": (
        unet,
        "The U-Net halves the resolution twice on the way down, doubles it on "
        "the way up, with skip connections across; the step and label embeddings "
        "enter every block; it outputs the predicted noise.",
    ),
    "lstm_cell": (
        lstm_cell,
        "An LSTM cell: forget, input, candidate and output gates "
        "read the last output and the new input; the cell state runs along "
        "the top, scaled by the forget gate and added to by the input gate.",
    ),
    "transformer_block": (
        transformer_block,
        "A pre-LayerNorm Transformer block: the "
        "residual stream passes through, and attention and an MLP, "
        "each after a LayerNorm, add to it.",
    ),
    "all_reduce": (
        all_reduce,
        "Two ranks compute gradients on their halves of the "
        "batch; an all-reduce averages them, so both take the same step.",
    ),
    "taxonomy": (
        taxonomy,
        "The book's families: exact likelihood (PixelCNN, LSTM, "
        "Transformer, RealNVP), a bound (VAE, diffusion), no likelihood value (GANs, "
        "and the energy-based model, whose normaliser is unknown), "
        "and images from a trained network (DeepDream, style transfer).",
    ),
}


def svg(name: str) -> bytes:
    """The diagram's SVG, byte for byte the same on every run."""
    with plt.rc_context(STYLE):
        fig = DIAGRAMS[name][0]()
        out = io.BytesIO()
        fig.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
        plt.close(fig)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.diagrams", description=__doc__
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; list the diagrams that differ",
    )
    args = parser.parse_args(argv)
    stale = []
    for name in DIAGRAMS:
        path = IMAGES / f"{name}.svg"
        drawn = svg(name)
        if args.check:
            if not path.is_file() or path.read_bytes() != drawn:
                stale.append(name)
        else:
            path.write_bytes(drawn)
    for name in stale:
        print(
            f"book/images/{name}.svg differs from tools/diagrams.py: run "
            "python -m tools.diagrams",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
