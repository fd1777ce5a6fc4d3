"""The energy chapter's sampler and replay buffer, built from the notebook's own cells
(``benchmarks.common.definitions``), on a known energy: what its figures rely on,
checked on small sizes.

- Langevin dynamics walks *down* the energy: on a quadratic bowl around a target image,
  a noiseless chain ends at the target (a chain that climbs is caught), and the noise
  it adds has the size asked for.
- Bad input is refused with the chapter's message: a step size that is not positive, a
  negative noise, an image of the wrong shape.
- The replay buffer hands out stored images (a share ``fresh`` of them replaced by
  noise) and takes the chains' ends back into the same slots.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchmarks.common import definitions, full_settings
from utils import precision

CPU = torch.device("cpu")
NAMES = {"check_digits", "Energy", "energy", "langevin", "ReplayBuffer"}


@pytest.fixture(scope="module")
def chapter():
    cfg = full_settings("energy_based")
    cfg.precision = precision.Precision(CPU, False, False, "fp32")
    return SimpleNamespace(**definitions("energy_based", NAMES, {"cfg": cfg}))


class Bowl(nn.Module):
    """E(x) = |x - target|^2 / 2 per image: its minimum is the target."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x - self.target).pow(2).sum(dim=(1, 2, 3))


def test_a_noiseless_chain_walks_down_the_energy_to_its_minimum(chapter):
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(1, 1, 28, 28, generator=generator) - 0.5
    start = torch.rand(4, 1, 28, 28, generator=generator) * 2 - 1
    bowl = Bowl(target)
    trace = []
    end = chapter.langevin(
        bowl, start, 60, step_size=0.5, noise=0.0, grad_clip=1.0, trace=trace
    )
    distances = [(x - target).abs().max().item() for x in [start, *trace]]
    # steps of at most 0.5 per pixel (the clipped gradient), then halving the distance
    assert all(b <= a + 1e-7 for a, b in zip(distances, distances[1:]))
    assert distances[-1] < 1e-3 and len(trace) == 60
    assert torch.equal(end, trace[-1]) and not end.requires_grad


def test_the_noise_is_the_size_asked_for_and_the_image_stays_in_range(chapter):
    flat = Bowl(torch.zeros(1, 1, 28, 28))
    start = torch.zeros(64, 1, 28, 28)
    torch.manual_seed(0)
    # a tiny step: the move is the noise (the gradient at 0 is 0 for this bowl)
    end = chapter.langevin(flat, start, 1, step_size=1e-9, noise=0.1)
    assert end.std().item() == pytest.approx(0.1, rel=0.02)
    far = chapter.langevin(flat, torch.full((2, 1, 28, 28), 0.99), 3, noise=0.5)
    assert far.min() >= -1 and far.max() <= 1


def test_bad_input_gets_the_chapters_message(chapter):
    bowl = Bowl(torch.zeros(1, 1, 28, 28))
    x = torch.zeros(2, 1, 28, 28)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="step size must be positive"):
            chapter.langevin(bowl, x, 1, step_size=bad)
    with pytest.raises(ValueError, match="noise must be zero or positive"):
        chapter.langevin(bowl, x, 1, noise=-0.1)
    model = chapter.Energy(8)
    for shape in ((2, 28, 28), (2, 3, 28, 28), (2, 1, 32, 32)):
        with pytest.raises(ValueError, match=r"energy input must have shape"):
            chapter.energy(model, torch.zeros(shape))
    assert chapter.energy(model, x).shape == (2,)


def test_the_buffer_hands_out_its_images_and_takes_the_chains_back(chapter):
    torch.manual_seed(0)
    buffer = chapter.ReplayBuffer(50, 0.0, CPU)
    stored = buffer.images.clone()
    starts, slots = buffer.starts(20)
    assert torch.equal(starts, stored[slots])
    buffer.store(slots, torch.full_like(starts, 0.25))
    assert (buffer.images[slots] == 0.25).all()
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(buffer.images[untouched], stored[untouched])
    # with fresh = 1 every start is new noise, none a stored image
    fresh = chapter.ReplayBuffer(50, 1.0, CPU)
    starts, slots = fresh.starts(20)
    assert not (starts == fresh.images[slots]).all(dim=(1, 2, 3)).any()
    assert starts.min() >= -1 and starts.max() <= 1
