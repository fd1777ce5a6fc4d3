"""The likelihood chapters' models, built from their notebooks' own cells
(``benchmarks.common.definitions``), on tiny sizes: what the notebooks assert inside a
full run, checked here in the tests too.

- The PixelCNN is causal: the logits at a pixel depend on no pixel at or after it in
  raster order (a mask that lets the centre through is caught).
- RealNVP inverts: x -> z -> x round-trips, and squeeze and unsqueeze are inverses.
- RealNVP's log-determinant, summed from its layers, is that of its Jacobian computed
  by autograd (a flow that miscounts it is caught).
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.common import definitions

PIXELCNN = {
    "raster_mask",
    "vertical_mask",
    "horizontal_mask",
    "MaskedConv2d",
    "GatedLayer",
    "GatedPixelCNN",
    "PlainPixelCNN",
    "check_digits",
}
FLOW = {
    "check_digits",
    "dequantize",
    "squeeze",
    "unsqueeze",
    "AffineCoupling",
    "RealNVP",
    "randomised",
}
#: Output positions checked: corners, the first row and column, the centre.
POSITIONS = [(0, 0), (0, 27), (1, 0), (13, 6), (14, 14), (27, 27)]


def leaks(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Output positions whose logits depend on an input pixel at or after them in
    raster order (the gradient of their logits, at random weights and inputs)."""
    order = torch.arange(784).view(28, 28)
    found = []
    for row, col in POSITIONS:
        x = torch.randint(0, 256, (1, 1, 28, 28)).float().requires_grad_()
        model(x, torch.zeros(1, dtype=torch.long))[0, :, row, col].sum().backward()
        if ((x.grad[0, 0] != 0) & (order >= order[row, col])).any():
            found.append((row, col))
    return found


@pytest.fixture(scope="module")
def pixelcnn() -> dict:
    return definitions("pixelcnn", PIXELCNN)


def test_the_pixelcnn_reads_only_earlier_pixels(pixelcnn):
    torch.manual_seed(0)
    assert leaks(pixelcnn["GatedPixelCNN"](8, (1, 2, 4))) == []
    assert leaks(pixelcnn["PlainPixelCNN"](channels=8, layers=3)) == []


def test_a_mask_that_lets_the_centre_through_is_caught():
    broken = definitions("pixelcnn", PIXELCNN)
    chapter_mask = broken["horizontal_mask"]
    broken["horizontal_mask"] = lambda kernel, centre: chapter_mask(kernel, True)
    torch.manual_seed(0)
    assert leaks(broken["GatedPixelCNN"](8, (1, 2))) == POSITIONS


@pytest.fixture(scope="module")
def flow() -> dict:
    return definitions("flow", FLOW, {"math": math})


def test_realnvp_inverts_its_forward_pass(flow):
    torch.manual_seed(0)
    z = torch.randn(3, 4, 6, 8)
    assert torch.equal(flow["unsqueeze"](flow["squeeze"](z)), z)
    model = flow["randomised"](flow["RealNVP"]((8, 8, 8), (2, 1, 2))).eval()
    x = torch.randint(0, 256, (4, 1, 28, 28))
    y = flow["dequantize"](x)
    with torch.no_grad():
        (fine, coarse), _ = model(y)
        y_back = model.inverse(fine, coarse)
    assert (y_back - y).abs().max() < 1e-4
    assert torch.equal((y_back * 256).floor().clamp(0, 255), x.float())


def log_det_gap(model: torch.nn.Module) -> float:
    """|log|det J| from the layers - log|det J| from autograd's Jacobian| of a flow on
    a 1x4x4 input, in float64."""
    y = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 0.9 + 0.05

    def flat_map(flat: torch.Tensor) -> torch.Tensor:
        (fine, coarse), _ = model(flat.view(1, 1, 4, 4))
        return torch.cat([fine.flatten(), coarse.flatten()])

    jacobian = torch.autograd.functional.jacobian(flat_map, y.flatten())  # (16, 16)
    _, from_layers = model(y)
    return abs(from_layers.item() - torch.linalg.slogdet(jacobian).logabsdet.item())


def test_realnvps_log_determinant_is_its_jacobians(flow):
    torch.manual_seed(0)
    tiny = flow["randomised"](flow["RealNVP"]((4, 4, 4), (2, 2, 2)), std=0.5)
    assert log_det_gap(tiny.double()) < 1e-8

    class Miscounted(flow["RealNVP"]):  # a flow that overcounts by 1%
        def forward(self, y):
            latents, log_det = super().forward(y)
            return latents, 1.01 * log_det

    torch.manual_seed(0)
    wrong = flow["randomised"](Miscounted((4, 4, 4), (2, 2, 2)), std=0.5)
    assert log_det_gap(wrong.double()) > 1e-3
