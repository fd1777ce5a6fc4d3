"""Sample-quality metrics the chapters share: the Frechet distance between two sets of
features."""

from __future__ import annotations

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
