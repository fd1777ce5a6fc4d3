"""One training step of every chapter's model: time, peak memory and fast-path speed-up,
measured in one run.

For each chapter the model classes, loss functions and, wherever the chapter defines
one, its own ``train_step`` function are executed from the chapter's notebook (not
copied), sized by its full-profile settings. Three steps run on the same random batch,
rotating which goes first:

- **chapter**: the chapter's code in plain fp32, the default memory format
  (``GDL_PRECISION=fp32``);
- **fast**: the same code on the device's fast path (``utils.precision``: channels_last
  for convolutional models, bf16 autocast where the device has bf16 matrix units);
- **plain**: the same computation as a minimal PyTorch loop on a copy of the model
  (inner layers called directly, losses inline, no checks or bookkeeping). From the same
  seed, chapter and plain give the same losses (``tests/test_benchmarks.py`` checks it),
  so the comparison is of equal work.

It prints the medians, the ratios fast/chapter (what the fast path buys) and
chapter/plain (what the book's structure costs), the peak memory of a step (CUDA peak,
or on a CPU the growth of the peak resident memory in a fresh process), and for the
convolutional DCGAN and style-transfer steps the achieved GFLOP/s (``FlopCounterMode``)
as a share of a convolution peak measured in the same run.

Usage: ``python -m benchmarks.training_steps [--repeats 10] [--only vae,gan]``
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from benchmarks.common import (
    chapter_precision,
    conv_peak_gflops,
    count_flops,
    definitions,
    full_settings,
    matmul_peak_gflops,
    median_times,
    sync,
    uses_convolutions,
)
from utils import precision, runtime, text, training

Step = Callable[[], torch.Tensor]  # one training step; returns its losses, detached
Steps = dict[str, Step]  # "chapter", "fast" and "plain"


def _precisions(device: torch.device) -> dict[str, precision.Precision]:
    return {
        "chapter": precision.Precision(device, False, False, "fp32 eager"),
        "fast": precision.choose(device),
    }


def _loss_steps(
    model: nn.Module,
    optimizer: Callable,
    chapter_loss: Callable,
    plain_loss: Callable,
    device: torch.device,
    record: Callable[[float], None] | None = None,
) -> Steps:
    """One optimiser step on ``chapter_loss(model, fast)`` in fp32 and on the fast path
    (handing ``loss.item()`` to ``record`` where the chapter keeps it), and the plain
    twin ``plain_loss`` of a copy of the model, without bookkeeping."""

    def make(m: nn.Module, loss_fn: Callable, bookkeeping: bool) -> Step:
        opt = optimizer(m.parameters())

        def step() -> torch.Tensor:
            loss = loss_fn(m)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if bookkeeping and record is not None:
                record(loss.item())
            return loss.detach()

        return step

    steps = {}
    for label, prec in _precisions(device).items():
        m = prec.prepare(copy.deepcopy(model))
        steps[label] = make(m, lambda m, prec=prec: chapter_loss(m, prec), True)
    steps["plain"] = make(copy.deepcopy(model), plain_loss, False)
    return steps


def autoencoder(device: torch.device) -> Steps:
    cfg, ns = (
        full_settings("autoencoder"),
        definitions("autoencoder", {"Encoder", "Decoder", "AutoEncoder", "add_noise"}),
    )
    model = ns["AutoEncoder"](cfg.latent_dim).to(device)
    clean = torch.rand(cfg.batch_size, 1, 28, 28, device=device)

    def chapter_loss(m, prec):
        batch = prec.prepare(clean)
        with prec.autocast():
            outputs = m(ns["add_noise"](batch, cfg.noise_factor))
        return F.mse_loss(outputs.float(), batch)

    # the chapter adds loss.item() to its epoch total
    return _loss_steps(
        model,
        lambda params: torch.optim.Adam(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay
        ),
        chapter_loss,
        lambda m: F.mse_loss(
            m.decoder(
                m.encoder(
                    (clean + cfg.noise_factor * torch.randn_like(clean)).clamp(0, 1)
                )
            ),
            clean,
        ),
        device,
        record=lambda value: None,
    )


def vae(device: torch.device) -> Steps:
    cfg, ns = (
        full_settings("vae"),
        definitions("vae", {"Encoder", "Decoder", "VAE", "vae_loss"}),
    )
    model = ns["VAE"](cfg.latent_dim, cfg.hidden_dim).to(device)
    x = torch.rand(cfg.batch_size, 784, device=device)

    def chapter_loss(m, prec):
        reconstruction, kl = ns["vae_loss"](x, *m(x))
        reconstruction.item(), kl.item()
        return (reconstruction + kl) / len(x)

    def plain_loss(m):
        mean, log_var = m.encoder(x)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        x_hat = m.decoder(z)
        kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp())
        return (F.binary_cross_entropy(x_hat, x, reduction="sum") + kl) / len(x)

    return _loss_steps(
        model,
        lambda params: torch.optim.AdamW(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay
        ),
        chapter_loss,
        plain_loss,
        device,
    )


def _plain_gan_step(
    G: nn.Module,
    D: nn.Module,
    real: torch.Tensor,
    noise: Callable[[], torch.Tensor],
    lr: float,
    betas: tuple[float, float],
    conditioning: tuple = (),
    wrong: Callable[[], tuple] | None = None,
    ema_decay: float | None = None,
) -> Step:
    """The GAN chapters' discriminator-then-generator step as a minimal loop:
    ``G(z, *conditioning)``, ``D(x, *conditioning)``; with ``wrong`` D also rejects real
    images with mismatched conditioning; with ``ema_decay`` a moving average of G's
    weights is updated with ``_foreach_lerp_``."""
    d_opt, g_opt = (
        torch.optim.Adam(m.parameters(), lr=lr, betas=betas) for m in (D, G)
    )
    ones, zeros = (
        torch.ones(len(real), 1, device=real.device),
        torch.zeros(len(real), 1, device=real.device),
    )
    ema = (
        [p.detach().clone() for p in G.parameters()] if ema_decay is not None else None
    )

    def step() -> torch.Tensor:
        fake = G(noise(), *conditioning)
        # drawn before D runs, as in the chapter
        mismatched = wrong() if wrong is not None else None
        d_real = F.binary_cross_entropy(D(real, *conditioning), ones)
        d_fake = F.binary_cross_entropy(D(fake.detach(), *conditioning), zeros)
        if mismatched is None:
            d_loss = d_real + d_fake
        else:
            d_loss = (
                d_real
                + (d_fake + F.binary_cross_entropy(D(real, *mismatched), zeros)) / 2
            )
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        g_loss = F.binary_cross_entropy(D(fake, *conditioning), ones)
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        if ema is not None:
            torch._foreach_lerp_(
                ema, [p.detach() for p in G.parameters()], 1 - ema_decay
            )
        return torch.stack([d_loss.detach(), g_loss.detach()])

    return step


def _chapter_gan_steps(
    chapter: str,
    make_models: Callable,
    batch: Callable,
    plain: Callable,
    device: torch.device,
    lr: float,
    betas: tuple[float, float],
    ema_decay: float | None,
    extra_names: set[str],
    ema_buffers: bool = False,
) -> Steps:
    """The chapter's own ``train_step`` (and its loop's average of G, where it keeps
    one), in fp32 and on the fast path, from the same initial weights, and the plain
    twin on copies."""
    torch.manual_seed(0)
    G0, D0 = make_models(definitions(chapter, extra_names, {"bce": nn.BCELoss()}))
    steps = {}
    for label, prec in _precisions(device).items():
        ns = definitions(
            chapter, extra_names | {"train_step"}, {"bce": nn.BCELoss(), "fast": prec}
        )
        G, D = prec.prepare(copy.deepcopy(G0)), prec.prepare(copy.deepcopy(D0))
        d_opt, g_opt = (
            torch.optim.Adam(m.parameters(), lr=lr, betas=betas) for m in (D, G)
        )
        average = (
            AveragedModel(
                G, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=ema_buffers
            )
            if ema_decay
            else None
        )
        history = training.History()

        def step(
            ns=ns,
            G=G,
            D=D,
            d_opt=d_opt,
            g_opt=g_opt,
            average=average,
            history=history,
            prec=prec,
        ):
            values = ns["train_step"](G, D, d_opt, g_opt, *batch(prec))
            if average is not None:
                average.update_parameters(G)
            # the loop's .item() calls
            history.log(**{f"v{i}": v for i, v in enumerate(values.tolist())})
            return values

        steps[label] = step
    steps["plain"] = plain(copy.deepcopy(G0), copy.deepcopy(D0))
    return steps


def gan(device: torch.device) -> Steps:
    cfg = full_settings("gan")
    real = torch.rand(cfg.batch_size, 784, device=device) * 2 - 1
    noise = lambda: torch.randn(cfg.batch_size, cfg.latent_dim, device=device)  # noqa: E731
    return _chapter_gan_steps(
        "gan",
        lambda ns: (
            ns["make_generator"](cfg.latent_dim, cfg.hidden_dim).to(device),
            ns["make_discriminator"](cfg.hidden_dim).to(device),
        ),
        lambda prec: (real, cfg.latent_dim),
        lambda G, D: _plain_gan_step(
            G, D, real, noise, cfg.lr, (cfg.beta1, 0.999), ema_decay=cfg.ema_decay
        ),
        device,
        cfg.lr,
        (cfg.beta1, 0.999),
        cfg.ema_decay,
        {"make_generator", "make_discriminator"},
    )


def cgan(device: torch.device) -> Steps:
    cfg = full_settings("cgan")
    real = torch.rand(cfg.batch_size, 784, device=device) * 2 - 1
    labels = torch.randint(0, 10, (cfg.batch_size,), device=device)
    noise = lambda: torch.randn(cfg.batch_size, cfg.latent_dim, device=device)  # noqa: E731
    wrong = lambda: ((labels + torch.randint(1, 10, labels.shape, device=device)) % 10,)  # noqa: E731

    return _chapter_gan_steps(
        "cgan",
        lambda ns: (
            ns["Generator"](cfg.latent_dim, cfg.embed_dim).to(device),
            ns["Discriminator"](cfg.embed_dim).to(device),
        ),
        lambda prec: (real, labels, cfg.latent_dim),
        lambda G, D: _plain_cgan(G, D, real, labels, noise, wrong, cfg),
        device,
        cfg.lr,
        (cfg.beta1, 0.999),
        cfg.ema_decay,
        {"Generator", "Discriminator"},
    )


def _plain_cgan(G: nn.Module, D: nn.Module, real, labels, noise, wrong, cfg) -> Step:
    """The cGAN's plain step: the networks' inner layers called directly (no input
    checks)."""

    class Call(
        nn.Module
    ):  # a module view of "inner layers on (x, embedded label)", for the optimiser
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x, y):
            return self.net.model(torch.cat([x, self.net.embed(y)], 1))

    return _plain_gan_step(
        Call(G),
        Call(D),
        real,
        noise,
        cfg.lr,
        (cfg.beta1, 0.999),
        conditioning=(labels,),
        wrong=wrong,
        ema_decay=cfg.ema_decay,
    )


def dcgan(device: torch.device) -> Steps:
    cfg = full_settings("dcgan")
    real = torch.rand(cfg.batch_size, 3, 64, 64, device=device) * 2 - 1
    noise = lambda: torch.randn(cfg.batch_size, cfg.latent_dim, 1, 1, device=device)  # noqa: E731

    def make(ns):
        G, D = (
            ns["Generator"](cfg.latent_dim, cfg.ngf).to(device),
            ns["Discriminator"](cfg.ndf).to(device),
        )
        G.apply(ns["weights_init"])
        D.apply(ns["weights_init"])
        return G, D

    class Inner(nn.Module):  # the plain loop calls the networks' layers directly
        def __init__(self, net: nn.Module, flatten: bool):
            super().__init__()
            self.net, self.flatten = net, flatten

        def forward(self, x):
            out = self.net.main(x)
            return out.view(-1, 1) if self.flatten else out

    return _chapter_gan_steps(
        "dcgan",
        make,
        lambda prec: (prec.prepare(real), cfg.latent_dim),
        lambda G, D: _plain_gan_step(
            Inner(G, False),
            Inner(D, True),
            real,
            noise,
            cfg.lr,
            (cfg.beta1, 0.999),
            ema_decay=cfg.ema_decay,
        ),
        device,
        cfg.lr,
        (cfg.beta1, 0.999),
        cfg.ema_decay,
        {"Generator", "Discriminator", "weights_init"},
        ema_buffers=True,
    )


def lstm_basics(device: torch.device) -> Steps:
    cfg, ns = full_settings("lstm_basics"), definitions("lstm_basics", {"TextLSTM"})
    n_class = 7  # the vocabulary of the six sentences
    model = ns["TextLSTM"](n_class, cfg.n_hidden).to(device)
    inputs = F.one_hot(torch.randint(0, n_class, (6, 2)), n_class).float().to(device)
    targets = torch.randint(0, n_class, (6,), device=device)

    def chapter_loss(m, prec):
        with prec.autocast():
            scores = m(inputs)
        return F.cross_entropy(scores.float(), targets)

    history = training.History()
    return _loss_steps(
        model,
        lambda params: torch.optim.Adam(params, lr=cfg.lr),
        chapter_loss,
        lambda m: F.cross_entropy(m.out(m.lstm(inputs)[0][:, -1]), targets),
        device,
        record=lambda value: history.log(loss=value),
    )


def _bptt_steps(
    chapter: str,
    model_name: str,
    make_model: Callable,
    source: torch.Tensor,
    bptt: int,
    clip: float,
    call: Callable,
    plain_update: Callable,
    device: torch.device,
) -> Steps:
    """The chapter's own truncated-BPTT ``train_step`` in fp32 and on the fast path, and
    a plain twin."""
    torch.manual_seed(0)
    model0 = make_model(definitions(chapter, {model_name}))
    steps = {}
    for label, prec in _precisions(device).items():
        ns = definitions(
            chapter,
            {model_name, "train_step"},
            {"cfg": SimpleNamespace(precision=prec)},
        )
        m = copy.deepcopy(model0)
        state, position, extra = [None], [0], call(m)

        def step(
            ns=ns, m=m, state=state, position=position, extra=extra
        ) -> torch.Tensor:
            i = position[0]
            position[0] = (i + bptt) % (len(source) - bptt - 1)
            loss, state[0] = ns["train_step"](
                m, *extra(text.get_batch(source, i, bptt), state[0])
            )
            loss.item()  # the chapter's bookkeeping
            return loss

        steps[label] = step

    m = copy.deepcopy(model0)
    state, position, update = [None], [0], plain_update(m)

    def plain() -> torch.Tensor:
        i = position[0]
        position[0] = (i + bptt) % (len(source) - bptt - 1)
        inputs, targets = source[i : i + bptt], source[i + 1 : i + 1 + bptt]
        previous = None if state[0] is None else tuple(s.detach() for s in state[0])
        logits, state[0] = m(inputs, previous)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        m.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), clip)
        update()
        return loss.detach()

    steps["plain"] = plain
    return steps


def text_generation(device: torch.device) -> Steps:
    cfg = full_settings("text_generation")
    vocab_size = 59  # the characters of the Nietzsche text
    source = torch.randint(
        0, vocab_size, (20 * cfg.bptt, cfg.batch_size), device=device
    )

    def call(m):
        optimizer = torch.optim.Adam(m.parameters(), lr=cfg.max_lr)
        return lambda batch, state: (optimizer, *batch, state, cfg.clip)

    return _bptt_steps(
        "text_generation",
        "CharLSTM",
        lambda ns: ns["CharLSTM"](
            vocab_size, cfg.embedding, cfg.hidden, cfg.dropout
        ).to(device),
        source,
        cfg.bptt,
        cfg.clip,
        call,
        lambda m: torch.optim.Adam(m.parameters(), lr=cfg.max_lr).step,
        device,
    )


def language_model(device: torch.device) -> Steps:
    cfg = full_settings("language_model")
    vocab_size = 33_278  # WikiText-2
    source = torch.randint(
        0, vocab_size, (20 * cfg.bptt, cfg.batch_size), device=device
    )
    lr = cfg.lr / 100  # a smaller rate: random tokens, many steps

    def plain_update(m: nn.Module) -> Callable[[], None]:
        @torch.no_grad()
        def apply() -> None:
            for p in m.parameters():
                p.add_(p.grad, alpha=-lr)

        return apply

    return _bptt_steps(
        "language_model",
        "RNNModel",
        lambda ns: ns["RNNModel"](vocab_size, cfg.size, cfg.layers, cfg.dropout).to(
            device
        ),
        source,
        cfg.bptt,
        cfg.clip,
        lambda m: lambda batch, state: (*batch, state, lr, cfg.clip),
        plain_update,
        device,
    )


def _chapter_namespaces(
    chapter: str, names: set[str], cfg: SimpleNamespace, device: torch.device, **known
) -> dict[str, dict]:
    """The chapter's definitions once per precision label, each reading its own
    ``cfg.precision`` (and the globals in ``known``)."""
    return {
        label: definitions(
            chapter,
            names,
            {**known, "cfg": SimpleNamespace(**vars(cfg), precision=prec)},
        )
        for label, prec in _precisions(device).items()
    }


def _train_steps(
    namespaces: dict[str, dict],
    model0: nn.Module,
    lr: float,
    device: torch.device,
    *batch: torch.Tensor,
) -> Steps:
    """The chapter's own ``train_step(model, optimizer, *batch)`` with Adam, in fp32 and
    on the fast path from copies of ``model0``, reading the loss as its loop does."""
    steps = {}
    for label, prec in _precisions(device).items():
        ns, m = namespaces[label], prec.prepare(copy.deepcopy(model0))
        optimizer = torch.optim.Adam(m.parameters(), lr=lr)

        def step(ns=ns, m=m, optimizer=optimizer) -> torch.Tensor:
            loss = ns["train_step"](m, optimizer, *batch)
            loss.item()  # the loop's .item() call
            return loss

        steps[label] = step
    return steps


def pixelcnn(device: torch.device) -> Steps:
    """The chapter's own ``train_step`` (the gated PixelCNN under autocast, the 256-way
    cross-entropy in fp32), in fp32 and on the fast path from the same weights; the
    plain twin runs the same layers without the input checks."""
    cfg = full_settings("pixelcnn")
    names = {
        "raster_mask",
        "vertical_mask",
        "horizontal_mask",
        "MaskedConv2d",
        "GatedLayer",
        "GatedPixelCNN",
        "check_digits",
        "nll_nats",
        "train_step",
    }
    x = torch.randint(0, 256, (cfg.batch_size, 1, 28, 28), device=device)
    labels = torch.randint(0, 10, (cfg.batch_size,), device=device)
    namespaces = _chapter_namespaces("pixelcnn", names, cfg, device)
    torch.manual_seed(0)
    model0 = namespaces["chapter"]["GatedPixelCNN"](
        cfg.channels, tuple(cfg.dilations)
    ).to(device)
    steps = _train_steps(namespaces, model0, cfg.lr, device, x, labels)
    m = copy.deepcopy(model0)
    plain_optimizer = torch.optim.Adam(m.parameters(), lr=cfg.lr)

    def plain() -> torch.Tensor:
        v = h = x.float() * (2 / 255) - 1
        for layer in m.layers:
            v, h = layer(v, h, labels)
        loss = F.cross_entropy(m.head(h), x[:, 0].long())
        plain_optimizer.zero_grad()
        loss.backward()
        plain_optimizer.step()
        return loss.detach()

    steps["plain"] = plain
    return steps


def flow(device: torch.device) -> Steps:
    """The chapter's own ``train_step`` (dequantization, RealNVP's coupling networks
    under autocast, log-determinants in fp32, clipping), in fp32 and on the fast path
    from the same weights; the plain twin writes the bound inline, drawing the
    dequantization noise in the same order."""
    cfg = full_settings("flow")
    names = {
        "check_digits",
        "dequantize",
        "squeeze",
        "unsqueeze",
        "AffineCoupling",
        "RealNVP",
        "nll_nats",
        "train_step",
    }
    x = torch.randint(0, 256, (cfg.batch_size, 1, 28, 28), device=device)
    namespaces = _chapter_namespaces("flow", names, cfg, device, math=math)
    torch.manual_seed(0)
    model0 = namespaces["chapter"]["RealNVP"](
        tuple(cfg.hidden), tuple(cfg.couplings)
    ).to(device)
    steps = _train_steps(namespaces, model0, cfg.lr, device, x)
    m = copy.deepcopy(model0)
    plain_optimizer = torch.optim.Adam(m.parameters(), lr=cfg.lr)

    def plain() -> torch.Tensor:
        y = (x.float() + torch.rand(x.shape, device=device)) / 256
        log_density = m.log_density(y)
        loss = (784 * math.log(256) - log_density).mean() / (784 * math.log(2))
        plain_optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        plain_optimizer.step()
        return loss.detach()

    steps["plain"] = plain
    return steps


def energy_based(device: torch.device) -> Steps:
    """The chapter's own ``train_step`` (its Langevin chains continued from a replay
    buffer, the energy network under autocast, energies and the loss in fp32), in fp32
    and on the fast path from the same weights and the same buffer; the plain twin
    writes the sampler, the buffer and the loss inline, drawing the same random numbers
    in the same order."""
    cfg = full_settings("energy_based")
    names = {
        "check_digits",
        "Energy",
        "energy",
        "langevin",
        "ReplayBuffer",
        "train_step",
    }
    namespaces = _chapter_namespaces("energy_based", names, cfg, device)
    real = torch.rand(cfg.batch_size, 1, 28, 28, device=device) * 2 - 1
    torch.manual_seed(0)
    model0 = namespaces["chapter"]["Energy"](cfg.width).to(device)
    steps = {}
    for label, prec in _precisions(device).items():
        ns, m = namespaces[label], prec.prepare(copy.deepcopy(model0))
        torch.manual_seed(0)  # the same buffer for every step
        buffer = ns["ReplayBuffer"](cfg.buffer_size, cfg.fresh, device)
        optimizer = torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=cfg.betas)

        def step(ns=ns, m=m, optimizer=optimizer, buffer=buffer) -> torch.Tensor:
            stats = ns["train_step"](m, optimizer, real, buffer)
            stats.tolist()  # the loop's history reads each value
            return stats

        steps[label] = step
    m = copy.deepcopy(model0)
    plain_optimizer = torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=cfg.betas)
    torch.manual_seed(0)
    stored = torch.rand(cfg.buffer_size, 1, 28, 28, device=device) * 2 - 1

    def plain() -> torch.Tensor:
        n = len(real)
        slots = torch.randint(0, len(stored), (n,), device=device)
        x = stored[slots].clone()
        renew = torch.rand(n, device=device) < cfg.fresh
        x[renew] = torch.rand_like(x[renew]) * 2 - 1
        for _ in range(cfg.steps):
            x = (x + cfg.noise * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
            (grad,) = torch.autograd.grad(m.net(x).sum(), x)
            x = (x - cfg.step_size * grad.clamp(-cfg.grad_clip, cfg.grad_clip)).clamp(
                -1, 1
            )
            x = x.detach()
        stored[slots] = x
        noisy = (real + cfg.data_noise * torch.randn_like(real)).clamp(-1, 1)
        e_real, e_fake = m.net(noisy).squeeze(1), m.net(x).squeeze(1)
        cd = e_real.mean() - e_fake.mean()
        loss = cd + cfg.alpha * (e_real.pow(2) + e_fake.pow(2)).mean()
        plain_optimizer.zero_grad()
        loss.backward()
        plain_optimizer.step()
        return torch.stack([loss, cd, e_real.mean(), e_fake.mean()]).detach()

    steps["plain"] = plain
    return steps


def _plain_blocks(blocks: nn.ModuleList, h: torch.Tensor, heads: int, p: float):
    """The Transformer chapters' pre-LayerNorm blocks written out through ``F``, on
    (B, T, C): causal attention and the MLP, each added to the residual stream after
    its dropout, the masks drawn in the blocks' own order."""
    B, T, C = h.shape
    for b in blocks:
        x = F.layer_norm(h, (C,), b.ln1.weight, b.ln1.bias)
        qkv = F.linear(x, b.attn.qkv.weight, b.attn.qkv.bias)  # (B, T, 3C)
        qkv = qkv.view(B, T, 3, heads, C // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # three (B, H, T, d)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)
        h = h + F.dropout(F.linear(y, b.attn.proj.weight, b.attn.proj.bias), p)
        x = F.layer_norm(h, (C,), b.ln2.weight, b.ln2.bias)
        x = F.gelu(F.linear(x, b.mlp[0].weight, b.mlp[0].bias))
        h = h + F.dropout(F.linear(x, b.mlp[2].weight, b.mlp[2].bias), p)
    return h


def _plain_gpt_step(
    m: nn.Module,
    cfg: SimpleNamespace,
    device: torch.device,
    embed: Callable[[], torch.Tensor],
    targets: torch.Tensor,
) -> Step:
    """The Transformer chapters' update written out: ``embed()`` (the input sum,
    (B, T, C)) under dropout, :func:`_plain_blocks`, the final LayerNorm and the tied
    output layer, the loss, clipping, and AdamW with decay on the matrices only."""
    optimizer = torch.optim.AdamW(
        [
            {
                "params": [q for q in m.parameters() if q.dim() >= 2],
                "weight_decay": cfg.weight_decay,
            },
            {"params": [q for q in m.parameters() if q.dim() < 2], "weight_decay": 0.0},
        ],
        lr=cfg.max_lr,
        betas=(0.9, 0.99),
        fused=precision.fused_adam(device),
    )

    def plain() -> torch.Tensor:
        h = F.dropout(embed(), cfg.dropout)
        h = _plain_blocks(m.blocks, h, cfg.heads, cfg.dropout)
        C = h.shape[-1]
        logits = F.linear(F.layer_norm(h, (C,), m.ln.weight, m.ln.bias), m.tok.weight)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), cfg.clip)
        optimizer.step()
        return loss.detach()

    return plain


def transformer(device: torch.device) -> Steps:
    """The chapter's own ``make_optimizer`` and ``train_step`` (the model under
    autocast, the loss in fp32, clipping, AdamW fused where torch has it), in fp32 and
    on the fast path from the same weights; the plain twin runs the same modules'
    layers through ``F``, drawing the dropout masks in the same order."""
    cfg = full_settings("transformer")
    vocab_size = 59  # the characters of the Nietzsche text
    names = {
        "causal_sdpa",
        "CausalSelfAttention",
        "Block",
        "CharGPT",
        "make_optimizer",
        "train_step",
    }
    namespaces = _chapter_namespaces("transformer", names, cfg, device)
    torch.manual_seed(0)
    model0 = namespaces["chapter"]["CharGPT"](
        vocab_size, cfg.block_size, cfg.layers, cfg.channels, cfg.heads, cfg.dropout
    ).to(device)
    B, T = cfg.batch_size, cfg.block_size
    inputs = torch.randint(0, vocab_size, (B, T), device=device)
    targets = torch.randint(0, vocab_size, (B, T), device=device)
    steps = {}
    for label, ns in namespaces.items():
        # a deep copy keeps the output layer tied to the embedding
        m = copy.deepcopy(model0)
        optimizer = ns["make_optimizer"](m, cfg.max_lr, cfg.weight_decay)

        def step(ns=ns, m=m, optimizer=optimizer) -> torch.Tensor:
            # the chapter's loop sums the detached losses, reading them at evaluations
            return ns["train_step"](m, optimizer, inputs, targets, cfg.clip)

        steps[label] = step

    m = copy.deepcopy(model0)
    steps["plain"] = _plain_gpt_step(
        m, cfg, device, lambda: m.tok(inputs) + m.pos.weight[:T], targets
    )
    return steps


def music(device: torch.device) -> Steps:
    """The chapter's own ``make_optimizer`` and ``train_step`` (ChoraleGPT under
    autocast with its voice and beat embeddings, the loss in fp32, clipping, AdamW), in
    fp32 and on the fast path from the same weights; the plain twin runs the same
    modules' layers through ``F``, drawing the dropout masks in the same order."""
    from utils import music as chorales

    cfg = full_settings("music")
    names = {"Attention", "Block", "ChoraleGPT", "make_optimizer", "train_step"}
    # the chapter's make_optimizer reads the global ``device``, a name
    # _chapter_namespaces keeps for its own argument
    namespaces = {
        label: definitions(
            "music",
            names,
            {"device": device, "cfg": SimpleNamespace(**vars(cfg), precision=prec)},
        )
        for label, prec in _precisions(device).items()
    }
    torch.manual_seed(0)
    model0 = namespaces["chapter"]["ChoraleGPT"](
        cfg.block_size, cfg.layers, cfg.channels, cfg.heads, cfg.dropout
    ).to(device)
    B, T = cfg.batch_size, cfg.block_size
    inputs = torch.randint(0, chorales.VOCAB_SIZE, (B, T), device=device)
    beats = torch.randint(0, chorales.BEATS + 1, (B, T), device=device)
    targets = torch.randint(0, chorales.VOCAB_SIZE, (B, T), device=device)
    steps = {}
    for label, ns in namespaces.items():
        m = copy.deepcopy(model0)  # a deep copy keeps the output layer tied
        optimizer = ns["make_optimizer"](m)

        def step(ns=ns, m=m, optimizer=optimizer) -> torch.Tensor:
            return ns["train_step"](m, optimizer, inputs, beats, targets)

        steps[label] = step

    m = copy.deepcopy(model0)
    at = torch.arange(T, device=device)
    steps["plain"] = _plain_gpt_step(
        m,
        cfg,
        device,
        lambda: m.tok(inputs) + m.voice(at % 4) + m.beat(beats) + m.pos(at),
        targets,
    )
    return steps


def diffusion(device: torch.device) -> Steps:
    """The chapter's own ``train_step`` (label dropout, min-SNR loss) and its loop's
    weight average, in fp32 and on the fast path from the same weights; the plain twin
    writes the loss inline."""
    cfg = full_settings("diffusion")
    names = {
        "cosine_alpha_bar",
        "add_noise",
        "timestep_embedding",
        "ResidualBlock",
        "UNet",
        "diffusion_loss",
        "train_step",
    }
    x0 = torch.rand(cfg.batch_size, 1, 28, 28, device=device) * 2 - 1
    labels = torch.randint(0, 10, (cfg.batch_size,), device=device)
    namespaces = _chapter_namespaces("diffusion", names, cfg, device, math=math)
    alpha_bar = namespaces["chapter"]["cosine_alpha_bar"](cfg.T).to(device)
    torch.manual_seed(0)
    model0 = namespaces["chapter"]["UNet"](tuple(cfg.channels)).to(device)
    steps = {}
    for label, prec in _precisions(device).items():
        ns = namespaces[label]
        ns["alpha_bar"] = alpha_bar  # the global the chapter's functions read
        model = prec.prepare(copy.deepcopy(model0))
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
        batch = prec.prepare(x0)
        history = training.History()

        def step(
            ns=ns,
            model=model,
            optimizer=optimizer,
            average=average,
            batch=batch,
            history=history,
        ) -> torch.Tensor:
            loss = ns["train_step"](model, optimizer, batch, labels)
            average.update_parameters(model)
            history.log(loss=loss.item())  # the loop's .item() call
            return loss

        steps[label] = step

    plain_model = copy.deepcopy(model0)
    plain_optimizer = torch.optim.Adam(plain_model.parameters(), lr=cfg.lr)

    def plain() -> torch.Tensor:
        dropped = torch.rand(len(labels), device=device) < cfg.label_dropout
        y = labels.masked_fill(dropped, plain_model.null_label)
        t = torch.randint(1, cfg.T + 1, (len(x0),), device=device)
        noise = torch.randn_like(x0)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        error = (
            (plain_model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y) - noise)
            .pow(2)
            .mean(dim=(1, 2, 3))
        )
        snr = alpha_bar[t] / (1 - alpha_bar[t])
        loss = (snr.clamp(max=cfg.min_snr) / snr * error).mean()
        plain_optimizer.zero_grad()
        loss.backward()
        plain_optimizer.step()
        return loss.detach()

    steps["plain"] = plain
    return steps


def style_transfer(device: torch.device) -> Steps:
    """One L-BFGS closure evaluation, against the PyTorch tutorial's loss modules (see
    style_transfer.py)."""
    from benchmarks import style_transfer as closure

    return closure.steps(device, full_settings("style_transfer").size)[0]


CASES = {
    f.__name__: f
    for f in (
        autoencoder,
        vae,
        pixelcnn,
        flow,
        gan,
        cgan,
        dcgan,
        energy_based,
        diffusion,
        lstm_basics,
        text_generation,
        language_model,
        transformer,
        music,
        style_transfer,
    )
}
#: Chapters whose step is convolution-bound: their GFLOP/s is compared with the
#: convolution peak.
CONV_BOUND = {
    "pixelcnn",
    "flow",
    "energy_based",
    "dcgan",
    "diffusion",
    "style_transfer",
}


#: Steps made of matrix products: GFLOP/s against a matmul peak. Not the LSTM chapters:
#: FlopCounterMode does not count nn.LSTM's fused kernel, so their rate would read ~1%.
MATMUL_BOUND = {"transformer"}
#: fast/fp32 above this is a loss beyond this machine's run-to-run noise.
LOSS_RATIO = 1.05


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(name: str, repeats: int, memory_of: str = "") -> dict:
    """Median step times of one chapter (all three steps, rotating), or the peak memory
    of one step.

    On the CPU the peak memory can only be read per process, so each step's memory is
    measured in a fresh process of its own (``memory_of`` = "chapter" or "plain").
    """
    runtime.seed_everything(0)
    device = runtime.get_device()
    steps = CASES[name](device)
    if memory_of:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            steps[memory_of]()
            sync(device)
            return {"peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}
        before = max(_rss_mb(), _peak_rss_mb())
        steps[memory_of]()
        return {"peak_mb": max(0.0, _peak_rss_mb() - before)}

    medians = median_times(steps, repeats, device)
    fast = precision.choose(device)
    result = {
        "device": runtime.device_description(device),
        "fast_path": fast.describe(),
        "fast_bf16": fast.bf16,
        **{f"{label}_ms": seconds * 1000 for label, seconds in medians.items()},
    }
    peak = (
        conv_peak_gflops
        if name in CONV_BOUND
        else matmul_peak_gflops
        if name in MATMUL_BOUND
        else None
    )
    if peak is not None:
        flops = count_flops(steps["chapter"])
        result["peak_kind"] = "conv" if name in CONV_BOUND else "matmul"
        result["gflops_chapter"] = flops / medians["chapter"] / 1e9
        result["gflops_fast"] = flops / medians["fast"] / 1e9
        result["peak_gflops"] = peak(device, _precisions(device)["chapter"])
        result["peak_gflops_fast"] = peak(device, fast)
    return result


def _child(name: str, repeats: int, memory_of: str = "") -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.training_steps",
        "--child",
        name,
        "--repeats",
        str(repeats),
    ]
    done = subprocess.run(
        command + (["--memory-of", memory_of] if memory_of else []),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed steps of each kind (default 10)"
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated chapters (default all: {','.join(CASES)})",
    )
    parser.add_argument(
        "--json", default="", help="also write every row to this JSON file"
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory-of",
        default="",
        choices=("", "chapter", "plain"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.repeats, args.memory_of)))
        return
    chosen = [c.strip() for c in args.only.split(",") if c.strip()] or list(CASES)
    unknown = sorted(set(chosen) - set(CASES))
    if unknown:
        parser.error(f"unknown chapter(s) {unknown}; choose from {list(CASES)}")
    header = (
        f"{'chapter':16s}{'fp32 ms':>9s}{'fast ms':>9s}{'plain ms':>9s}"
        f"{'fast/fp32':>10s}{'fp32/plain':>11s}{'uses':>9s}{'peak MB':>9s}"
        f"{'plain MB':>9s}  GFLOP/s fp32 / fast (share of the same run's peak)"
    )
    printed_device = False
    losers, same, rows = [], [], {}
    for name in chosen:
        try:
            r = _child(name, args.repeats)
            peak, plain_peak = (
                _child(name, 0, which)["peak_mb"] for which in ("chapter", "plain")
            )
        except RuntimeError as err:
            print(f"{name:16s} failed: {err}")
            continue
        if not printed_device:
            print(f"device: {r['device']}; fast path: {r['fast_path']}\n{header}")
            printed_device = True
        rate = ""
        if "gflops_chapter" in r:
            rate = (
                f"  {r['gflops_chapter']:.0f} "
                f"({r['gflops_chapter'] / r['peak_gflops']:.0%} of "
                f"{r['peak_gflops']:.0f}) / {r['gflops_fast']:.0f} "
                f"({r['gflops_fast'] / r['peak_gflops_fast']:.0%} of "
                f"{r['peak_gflops_fast']:.0f}) {r['peak_kind']}"
            )
        uses = chapter_precision(name)
        ratio = r["fast_ms"] / r["chapter_ms"]
        # no convolutions and no bf16: the fast step is the fp32 step, computed twice
        identical = not r["fast_bf16"] and not uses_convolutions(name)
        if identical:
            same.append(name)
        elif ratio > LOSS_RATIO and uses == "fast":
            losers.append(f"{name} ({ratio:.2f})")
        rows[name] = {**r, "uses": uses, "same_computation": identical}
        rows[name].update(peak_mb=peak, plain_peak_mb=plain_peak)
        print(
            f"{name:16s}{r['chapter_ms']:9.1f}{r['fast_ms']:9.1f}{r['plain_ms']:9.1f}"
            f"{ratio:9.3f}{'*' if identical else ' '}"
            f"{r['chapter_ms'] / r['plain_ms']:11.3f}{uses:>9s}"
            f"{peak:9.1f}{plain_peak:9.1f}{rate}"
        )
    if same:
        print(
            "* the same computation twice: no convolutions and no bf16 here, so the "
            f"fast path is the fp32 step itself ({', '.join(same)}); fast/fp32 is "
            "this run's noise"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if losers:
        print(
            f"slower on the fast path than in fp32 (fast/fp32 > {LOSS_RATIO}) yet "
            f"using it: {', '.join(losers)}; give their runtime.setup "
            "bf16_on_cpu=False, or fast_path=False"
        )


if __name__ == "__main__":
    main()
