"""Speed of the style-transfer chapter's loss against a plain reference implementation.

Times one L-BFGS closure evaluation (forward and backward through VGG19 up to relu5_1,
content loss at relu4_2, Gram-matrix style losses at relu1_1..relu5_1) with

- the chapter's own code, executed from the cells of ``book/style_transfer.ipynb`` that
  define it, and
- a reference written as in the PyTorch neural-style tutorial: loss modules inserted
  after the chosen layers of a truncated ``nn.Sequential``, each storing its loss during
  the forward pass,

at the same image size, in the same process, rotating which goes first, and prints the
ratio of the median times (chapter / reference; below 1 means the chapter's code is
faster). The chapter's closure is timed twice: in plain fp32 (the comparison with the
reference) and on the device's fast path (``utils.precision``), with the achieved
GFLOP/s of each as a share of a convolution peak measured in the same run.

Usage: ``python -m benchmarks.style_transfer [--size 256] [--repeats 10]``
"""

from __future__ import annotations

import argparse
import copy
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import code_cells, conv_peak_gflops, count_flops, median_times
from utils import images, precision, runtime, vgg

DEFINITIONS = ("STYLE_LAYERS =", "def gram_matrix", "class StyleTransferLoss")


def chapter_loss(
    extractor: vgg.VGG19Features,
    content: torch.Tensor,
    style: torch.Tensor,
    fast: precision.Precision,
):
    """The chapter's StyleTransferLoss, built from the notebook's own cells, computing
    in ``fast``."""
    namespace = {
        "torch": torch,
        "F": F,
        "extractor": extractor,
        "cfg": SimpleNamespace(precision=fast),
    }
    code = [
        source
        for source in code_cells("style_transfer")
        if any(d in source for d in DEFINITIONS)
    ]
    if not code:
        raise RuntimeError(
            f"no cell of book/style_transfer.ipynb defines {DEFINITIONS}"
        )
    for source in code:
        exec(compile(source, "style_transfer.ipynb", "exec"), namespace)  # noqa: S102 -- our own notebook
    return namespace["StyleTransferLoss"](content, style, style_weight=1.0)


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target.detach()
        self.loss = torch.tensor(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(x, self.target)
        return x


def tutorial_gram(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    features = x.view(b * c, h * w)
    return torch.mm(features, features.t()).div(h * w)


class StyleLoss(nn.Module):
    def __init__(self, target_feature: torch.Tensor):
        super().__init__()
        self.target = tutorial_gram(target_feature).detach()
        self.loss = torch.tensor(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(tutorial_gram(x), self.target)
        return x


def reference_model(
    extractor: vgg.VGG19Features, content_x: torch.Tensor, style_x: torch.Tensor
):
    """The tutorial's construction: copy layers into a new Sequential, inserting loss
    modules."""
    style_names = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    content_target = extractor(content_x, ["relu4_2"])["relu4_2"]
    # images of different sizes: targets computed apart
    style_targets = extractor(style_x, style_names)
    model, content_losses, style_losses = nn.Sequential(), [], []
    for index, layer in enumerate(extractor.features[: vgg.LAYER_INDEX["relu5_1"] + 1]):
        name = vgg.LAYER_NAME[index]
        model.add_module(name, layer)
        if name == "relu4_2":
            loss = ContentLoss(content_target)
            model.add_module(f"content_{name}", loss)
            content_losses.append(loss)
        if name in style_names:
            loss = StyleLoss(style_targets[name])
            model.add_module(f"style_{name}", loss)
            style_losses.append(loss)
    return model, content_losses, style_losses


def steps(
    device: torch.device, size: int
) -> tuple[dict[str, Callable[[], torch.Tensor]], tuple[int, ...]]:
    """One closure evaluation with the chapter's loss in plain fp32 ("chapter"), on the
    device's fast path ("fast"), and with the reference's loss modules ("plain"), on the
    same images. Each returns its loss (detached); also returns the image size
    (height, width)."""
    plain_fp32 = precision.Precision(device, False, False, "reference")
    fast = precision.choose(device)
    extractor = vgg.vgg19_features(device)
    content = images.load_image("grace_hopper", size).to(device)
    style = images.load_image("starry_night", size).to(device)

    def chapter_step(prec: precision.Precision) -> Callable[[], torch.Tensor]:
        # .to() works in place
        net = (
            prec.prepare(copy.deepcopy(extractor)) if prec.channels_last else extractor
        )
        loss_fn = chapter_loss(net, content, style, prec)
        x = net.preprocess(content).detach().requires_grad_(True)

        def step() -> torch.Tensor:
            x.grad = None
            # x stays NCHW, as in the chapter
            content_loss, style_loss = loss_fn(prec.prepare(x))
            loss = content_loss + style_loss
            loss.backward()
            return loss.detach()

        return step

    with torch.no_grad():
        model, content_losses, style_losses = reference_model(
            extractor, extractor.preprocess(content), extractor.preprocess(style)
        )
    x2 = extractor.preprocess(content).detach().requires_grad_(True)

    def reference_step() -> torch.Tensor:
        x2.grad = None
        model(x2)
        loss = sum(m.loss for m in content_losses) + sum(m.loss for m in style_losses)
        loss.backward()
        return loss.detach()

    chapter = chapter_step(plain_fp32)
    fast_step = chapter_step(fast) if (fast.channels_last or fast.bf16) else chapter
    return {"chapter": chapter, "fast": fast_step, "plain": reference_step}, tuple(
        content.shape[2:]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=int, default=256, help="shorter side of the images (default 256)"
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed evaluations of each (default 10)"
    )
    args = parser.parse_args()
    runtime.seed_everything(0)
    device = runtime.get_device()
    fast = precision.choose(device)
    timed, shape = steps(device, args.size)
    medians = median_times(timed, args.repeats, device)
    flops = count_flops(timed["chapter"])
    peaks = {
        False: conv_peak_gflops(device, precision.fp32(device, "fp32")),
        True: conv_peak_gflops(device, fast),
    }
    print(
        f"device {runtime.device_description(device)}, "
        f"image {shape}, {args.repeats} evaluations each"
    )
    print(f"fast path: {fast.describe()}")
    print(f"{'closure':34s}{'median s':>10s}{'GFLOP/s':>9s}{'of peak':>9s}")
    rows = (
        ("chapter, plain fp32", "chapter", False),
        ("chapter, fast path", "fast", True),
        ("reference (tutorial modules)", "plain", False),
    )
    for label, key, on_fast_path in rows:
        rate = flops / medians[key] / 1e9
        print(
            f"{label:34s}{medians[key]:10.3f}{rate:9.0f}"
            f"{rate / peaks[on_fast_path]:9.0%}"
        )
    print(
        f"convolution peak (3x3, 256 channels, fwd+bwd): {peaks[False]:.0f} GFLOP/s in "
        f"fp32, {peaks[True]:.0f} on the fast path"
    )
    print(
        f"ratio chapter / reference: {medians['chapter'] / medians['plain']:.3f}; "
        f"fast path / chapter: {medians['fast'] / medians['chapter']:.3f}"
    )


if __name__ == "__main__":
    main()
