"""Metrics the chapters share: the Frechet distance between two sets of features, and
bits per dimension for likelihood models beside what real compressors and a per-pixel
histogram need for the same images."""

from __future__ import annotations

import bz2
import io
import lzma
import math

import torch


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix, via its
    eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets of shape (N, D).

    d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}), the
    quantity behind FID (there with Inception features). Computed in float64; 0 for
    identical distributions.
    """
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        if f.dim() != 2 or len(f) < 2:
            raise ValueError(
                f"{name} must have shape (N >= 2, D), got {tuple(f.shape)}"
            )
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"feature sizes differ: {features_a.shape[1]} and {features_b.shape[1]}"
        )
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    distance = (
        (mu_a - mu_b).square().sum()
        + torch.trace(cov_a)
        + torch.trace(cov_b)
        - 2 * torch.trace(cross)
    )
    return float(distance.clamp(min=0))


def bits_per_dim(nll_nats: float | torch.Tensor, dims: int) -> float:
    """A negative log-likelihood in nats per image -> bits per dimension:
    ``nll / (dims * ln 2)``.

    For a density on [0, 1)^D of uniformly dequantized 8-bit data pass
    ``-log p(y) + D * log 256`` (see :func:`dequantized_nll`): only that is the code
    length of the discrete image.
    """
    if dims <= 0:
        raise ValueError(f"dims must be positive, got {dims}")
    value = float(torch.as_tensor(nll_nats, dtype=torch.float64).mean())
    if not math.isfinite(value):
        raise ValueError(f"the negative log-likelihood is not finite ({value})")
    return value / (dims * math.log(2))


def dequantized_nll(
    log_density: torch.Tensor, dims: int, levels: int = 256
) -> torch.Tensor:
    """The discrete negative log-likelihood (nats) bounded by a continuous density of
    ``y = (x + u) / levels``, u ~ U[0, 1)^D: ``-log p(y) + D * log(levels)``.

    The change of scale from the integer cube [x, x + 1) to [0, 1) costs
    ``log(levels)`` nats per dimension; leaving it out makes a flow look ~8 bits/dim
    better than it is.
    """
    return -log_density + dims * math.log(levels)


def _uint8_images(images: torch.Tensor) -> torch.Tensor:
    """Checks that ``images`` is an (N, H, W) or (N, 1, H, W) uint8 batch; returns
    (N, H, W)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        kind = images.dtype if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a uint8 tensor of 0..255 values, got {kind}")
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3 or len(images) == 0:
        raise ValueError(
            f"images must have shape (N, H, W) or (N, 1, H, W), got "
            f"{tuple(images.shape)}"
        )
    return images


def png_bits_per_dim(images: torch.Tensor, whole_file: bool = True) -> float:
    """Mean size of each image as its own greyscale PNG (Pillow, ``optimize=True``), in
    bits per pixel.

    ``whole_file=False`` counts only the compressed pixel data (the IDAT chunks'
    contents), leaving out the 57 bytes of signature, header and chunk framing that a
    28x28 file also carries.
    """
    return png_bits(images, whole_file).mean().item()


def png_bits(images: torch.Tensor, whole_file: bool = True) -> torch.Tensor:
    """Each image's size as its own greyscale PNG, in bits per pixel (N,): the code
    length of a general-purpose compressor, scored image by image."""
    from PIL import Image

    images = _uint8_images(images)
    sizes = []
    for image in images.numpy():
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG", optimize=True)
        data = buffer.getvalue()
        sizes.append(len(data) if whole_file else _idat_bytes(data))
    return 8 * torch.tensor(sizes, dtype=torch.float64) / images[0].numel()


def _idat_bytes(png: bytes) -> int:
    """Bytes of compressed pixel data in a PNG file (the sum of its IDAT payloads)."""
    position, size = 8, 0
    while position < len(png):
        length = int.from_bytes(png[position : position + 4], "big")
        if png[position + 4 : position + 8] == b"IDAT":
            size += length
        position += 12 + length
    return size


def stream_bits_per_dim(images: torch.Tensor) -> dict[str, float]:
    """The whole batch as one raw byte stream (N x H x W bytes), compressed by xz
    (preset 9, extreme) and bz2 (level 9), in bits per pixel."""
    raw = _uint8_images(images).contiguous().numpy().tobytes()
    sizes = {
        "xz": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
        "bz2": len(bz2.compress(raw, 9)),
    }
    return {name: 8 * size / len(raw) for name, size in sizes.items()}


def pixel_histogram_bits_per_dim(
    train: torch.Tensor, test: torch.Tensor, smoothing: float = 1.0
) -> float:
    """Bits per pixel of the test images under independent per-position categorical
    distributions, each the (add-``smoothing``) histogram of that pixel position in the
    training images: the best code that ignores every other pixel."""
    return pixel_histogram_bits(train, test, smoothing).mean().item()


def pixel_histogram_bits(
    train: torch.Tensor, test: torch.Tensor, smoothing: float = 1.0
) -> torch.Tensor:
    """Each test image's bits per pixel (N_test,) under the per-position histograms of
    :func:`pixel_histogram_bits_per_dim`: an exact likelihood model, scored image by
    image."""
    train, test = _uint8_images(train), _uint8_images(test)
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(
            f"train and test images differ in size: {tuple(train.shape[1:])} and "
            f"{tuple(test.shape[1:])}"
        )
    if smoothing <= 0:
        raise ValueError(f"smoothing must be positive, got {smoothing}")
    flat_train = train.reshape(len(train), -1).long()  # (N, D)
    dims = flat_train.shape[1]
    counts = torch.full((dims, 256), float(smoothing), dtype=torch.float64)
    counts.scatter_add_(
        1, flat_train.T, torch.ones(dims, len(train), dtype=torch.float64)
    )
    log_probs = counts.log() - counts.sum(1, keepdim=True).log()  # (D, 256)
    flat_test = test.reshape(len(test), -1).long()
    nll = -log_probs.gather(1, flat_test.T).sum(0)  # (N_test,) nats
    return nll / (dims * math.log(2))


def auroc(inliers: torch.Tensor, outliers: torch.Tensor) -> float:
    """The area under the ROC curve of a score that should be higher on ``outliers``
    than on ``inliers`` (two 1-d tensors): the chance that a random outlier scores
    above a random inlier, ties counted half (the Mann-Whitney statistic). 0.5 is
    chance, 1.0 a perfect separation."""
    inliers = torch.as_tensor(inliers).detach().double().cpu()
    outliers = torch.as_tensor(outliers).detach().double().cpu()
    if (
        inliers.dim() != 1
        or outliers.dim() != 1
        or not len(inliers)
        or not len(outliers)
    ):
        raise ValueError(
            "auroc needs two non-empty 1-d tensors of scores, got shapes "
            f"{tuple(inliers.shape)} and {tuple(outliers.shape)}"
        )
    if not (torch.isfinite(inliers).all() and torch.isfinite(outliers).all()):
        raise ValueError("auroc got a score that is NaN or infinite")
    scores = torch.cat([inliers, outliers])
    # average ranks (1-based), ties sharing the mean of their ranks
    _, inverse, counts = torch.unique(
        scores, sorted=True, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    outlier_ranks = mean_rank[inverse[len(inliers) :]].sum().item()
    n_in, n_out = len(inliers), len(outliers)
    return (outlier_ranks - n_out * (n_out + 1) / 2) / (n_in * n_out)


def compressor_baselines(train: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    """Bits per pixel that real compressors and the per-pixel histogram need for the
    test images: the physical baselines a likelihood model must beat."""
    return {
        "png": png_bits_per_dim(test),
        "png_pixel_data": png_bits_per_dim(test, whole_file=False),
        **stream_bits_per_dim(test),
        "pixel_histogram": pixel_histogram_bits_per_dim(train, test),
        "raw": 8.0,
    }
