"""Speed of the style-transfer chapter's loss against a plain reference implementation.

Times one L-BFGS closure evaluation (forward and backward through VGG19 up to relu5_1, content loss
at relu4_2, Gram-matrix style losses at relu1_1..relu5_1) with

- the chapter's own code, executed from the cells of ``book/style_transfer.ipynb`` that define it, and
- a reference written as in the PyTorch neural-style tutorial: loss modules inserted after the chosen
  layers of a truncated ``nn.Sequential``, each storing its loss during the forward pass,

at the same image size, in the same process, alternating the two (and which goes first), and prints the ratio of the
median times (chapter / reference; below 1 means the chapter's code is faster).

Usage: ``python benchmarks/style_transfer.py [--size 256] [--repeats 10]``
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import nbformat
import torch
import torch.nn.functional as F
from torch import nn

from training_steps import median_times  # the same alternating timer as the other benchmarks
from utils import images, runtime, vgg

NOTEBOOK = Path(__file__).resolve().parent.parent / "book" / "style_transfer.ipynb"
DEFINITIONS = ("STYLE_LAYERS =", "def gram_matrix", "class StyleTransferLoss")


def chapter_loss(extractor: vgg.VGG19Features, content: torch.Tensor, style: torch.Tensor):
    """The chapter's StyleTransferLoss, built from the notebook's own cells."""
    namespace = {"torch": torch, "F": F, "extractor": extractor}
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    code = [c.source for c in cells if c.cell_type == "code" and any(d in c.source for d in DEFINITIONS)]
    if not code:
        raise RuntimeError(f"no cell of {NOTEBOOK} defines {DEFINITIONS}")
    for source in code:
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)  # noqa: S102 -- our own notebook
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


def reference_model(extractor: vgg.VGG19Features, content_x: torch.Tensor, style_x: torch.Tensor):
    """The tutorial's construction: copy layers into a new Sequential, inserting loss modules."""
    style_names = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    content_target = extractor(content_x, ["relu4_2"])["relu4_2"]
    style_targets = extractor(style_x, style_names)  # images of different sizes: targets computed apart
    model, content_losses, style_losses = nn.Sequential(), [], []
    for index, layer in enumerate(extractor.features[:vgg.LAYER_INDEX["relu5_1"] + 1]):
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


def steps(device: torch.device, size: int) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor], tuple[int, ...]]:
    """One closure evaluation with the chapter's loss and one with the reference's, on the same images.

    Each returns its loss (detached); also returns the image size (height, width).
    """
    extractor = vgg.vgg19_features(device)
    content = images.load_image("grace_hopper", size).to(device)
    style = images.load_image("starry_night", size).to(device)
    loss_fn = chapter_loss(extractor, content, style)
    x1 = extractor.preprocess(content).detach().requires_grad_(True)
    with torch.no_grad():
        model, content_losses, style_losses = reference_model(
            extractor, extractor.preprocess(content), extractor.preprocess(style))
    x2 = extractor.preprocess(content).detach().requires_grad_(True)

    def chapter_step() -> torch.Tensor:
        x1.grad = None
        content_loss, style_loss = loss_fn(x1)
        loss = content_loss + style_loss
        loss.backward()
        return loss.detach()

    def reference_step() -> torch.Tensor:
        x2.grad = None
        model(x2)
        loss = sum(m.loss for m in content_losses) + sum(m.loss for m in style_losses)
        loss.backward()
        return loss.detach()

    return chapter_step, reference_step, tuple(content.shape[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="shorter side of the images (default 256)")
    parser.add_argument("--repeats", type=int, default=10, help="timed evaluations of each (default 10)")
    args = parser.parse_args()
    runtime.seed_everything(0)
    device = runtime.get_device()
    chapter_step, reference_step, shape = steps(device, args.size)
    medians = median_times({"chapter": chapter_step, "reference": reference_step}, args.repeats, device)
    chapter, reference = medians["chapter"], medians["reference"]
    print(f"device {device}, {torch.get_num_threads()} threads, image {shape}, {args.repeats} evaluations each")
    print(f"{'implementation':32s}{'median s / evaluation':>24s}")
    print(f"{'chapter (StyleTransferLoss)':32s}{chapter:24.3f}")
    print(f"{'reference (tutorial modules)':32s}{reference:24.3f}")
    print(f"ratio chapter / reference: {chapter / reference:.3f}")


if __name__ == "__main__":
    main()
