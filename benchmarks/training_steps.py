"""One training step of every chapter's model: time and peak memory, chapter code against a plain loop.

For each chapter, the model classes and loss functions are taken from the chapter's own notebook
(its top-level ``class``/``def`` statements, not copies) and sized by its full-profile settings. Two
steps are timed on the same random batch:

- **chapter**: one iteration of the chapter's training loop as the notebook writes it: its model's
  ``forward`` (with the input checks), its loss functions and helpers (``utils.text`` for the LSTMs),
  and its per-step bookkeeping (``.item()`` calls, ``training.History``);
- **plain**: the same computation in a minimal PyTorch loop on a deep copy of the model: the inner
  layers called directly, the loss written inline, no checks, no bookkeeping. From the same random
  seed both give the same losses (``tests/test_benchmarks.py`` checks it); for style transfer the
  plain step is the PyTorch tutorial's loss modules (see ``style_transfer.py``).

The ratio chapter / plain (median over alternating repeats) shows what the book's structure costs;
it should stay near 1. Peak memory is what one step allocates at its peak on CUDA, or on the CPU how
much the process's peak resident memory grows during the first step, in a fresh process per step.

Usage: ``python benchmarks/training_steps.py [--repeats 10] [--only vae,gan]``
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import nbformat
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from utils import runtime, text, training

BOOK = Path(__file__).resolve().parent.parent / "book"
Step = Callable[[], torch.Tensor]  # one training step; returns its loss(es), detached


def _code_cells(chapter: str) -> list[str]:
    """The sources of the code cells of ``book/<chapter>.ipynb``."""
    return [cell.source for cell in nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4).cells
            if cell.cell_type == "code"]


def definitions(chapter: str, names: set[str]) -> dict:
    """The notebook's imports and its top-level class/def statements named in ``names``, executed."""
    namespace: dict = {"torch": torch, "nn": nn, "F": F}
    for source in _code_cells(chapter):
        try:
            tree = ast.parse(source)
        except SyntaxError:  # the Colab cell's %pip line
            continue
        keep = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) or
                (isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in names)]
        exec(compile(ast.Module(body=keep, type_ignores=[]), f"{chapter}.ipynb", "exec"), namespace)  # noqa: S102
    missing = names - set(namespace)
    if missing:
        raise RuntimeError(f"book/{chapter}.ipynb defines none of {sorted(missing)}")
    return namespace


def full_settings(chapter: str) -> SimpleNamespace:
    """The ``full=dict(...)`` settings of the chapter's ``runtime.setup`` call."""
    for source in _code_cells(chapter):
        if "runtime.setup(" in source:
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.keyword) and node.arg == "full" and isinstance(node.value, ast.Call):
                    return SimpleNamespace(**{k.arg: ast.literal_eval(k.value) for k in node.value.keywords})
    raise RuntimeError(f"book/{chapter}.ipynb has no runtime.setup(full=dict(...)) call")


def _gan_steps(G: nn.Module, D: nn.Module, g_net: Callable, d_net: Callable, real: torch.Tensor,
               noise: Callable[[], torch.Tensor], lr: float, betas=(0.9, 0.999), extra=(),
               wrong: Callable[[], tuple] | None = None, ema_decay: float | None = None) -> tuple[Step, Step]:
    """The discriminator-then-generator step of the GAN chapters, and its plain twin.

    With ``wrong`` (a function drawing mismatched conditioning, as the cGAN's wrong labels) the
    discriminator also rejects real images paired with it; with ``ema_decay`` the step ends by
    updating a moving average of G's weights (``AveragedModel`` in the chapter, ``_foreach_lerp_`` plain).
    """
    def make(G, D, g_fn, d_fn, keep_history: bool) -> Step:
        d_opt = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
        g_opt = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
        bce, history = nn.BCELoss(), training.History()
        ones, zeros = torch.ones(len(real), 1, device=real.device), torch.zeros(len(real), 1, device=real.device)
        if ema_decay is None:
            average = None
        elif keep_history:
            ema = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
            average = lambda: ema.update_parameters(G)  # noqa: E731
        else:
            ema_params = [p.detach().clone() for p in G.parameters()]
            average = lambda: torch._foreach_lerp_(ema_params, [p.detach() for p in G.parameters()], 1 - ema_decay)  # noqa: E731

        def step() -> torch.Tensor:
            fake = g_fn(G, noise(), *extra)
            d_real, d_fake = d_fn(D, real, *extra), d_fn(D, fake.detach(), *extra)
            if wrong is None:
                d_loss = bce(d_real, ones) + bce(d_fake, zeros)
            else:
                d_wrong = d_fn(D, real, *wrong())
                d_loss = bce(d_real, ones) + (bce(d_fake, zeros) + bce(d_wrong, zeros)) / 2
            d_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
            g_loss = bce(d_fn(D, fake, *extra), ones)
            g_opt.zero_grad()
            g_loss.backward()
            g_opt.step()
            if average is not None:
                average()
            if keep_history:
                logged = dict(d_loss=d_loss.item(), g_loss=g_loss.item(), d_real=d_real.mean().item(),
                              d_fake=d_fake.mean().item())
                if wrong is not None:
                    logged["d_wrong"] = d_wrong.mean().item()
                history.log(**logged)
            return torch.stack([d_loss.detach(), g_loss.detach()])
        return step

    chapter = make(G, D, lambda g, z, *e: g(z, *e), lambda d, x, *e: d(x, *e), True)
    plain = make(copy.deepcopy(G), copy.deepcopy(D), g_net, d_net, False)
    return chapter, plain


def _loss_steps(model: nn.Module, optimizer: Callable, chapter_loss: Callable, plain_loss: Callable,
                record: Callable[[float], None] | None = None) -> tuple[Step, Step]:
    """One optimiser step on ``chapter_loss(model)``, handing ``loss.item()`` to ``record`` where the
    chapter keeps it, and its plain twin on ``plain_loss`` of a copy of the model, without bookkeeping."""
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

    return make(model, chapter_loss, True), make(copy.deepcopy(model), plain_loss, False)


def autoencoder(device: torch.device) -> tuple[Step, Step]:
    cfg, ns = full_settings("autoencoder"), definitions("autoencoder", {"Encoder", "Decoder", "AutoEncoder", "add_noise"})
    model = ns["AutoEncoder"](cfg.latent_dim).to(device)
    clean = torch.rand(cfg.batch_size, 1, 28, 28, device=device)

    return _loss_steps(
        model, lambda params: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        lambda m: F.mse_loss(m(ns["add_noise"](clean, cfg.noise_factor)), clean),
        lambda m: F.mse_loss(m.decoder(m.encoder((clean + cfg.noise_factor * torch.randn_like(clean)).clamp(0, 1))), clean),
        record=lambda value: None)  # the chapter adds loss.item() to its epoch total


def vae(device: torch.device) -> tuple[Step, Step]:
    cfg, ns = full_settings("vae"), definitions("vae", {"Encoder", "Decoder", "VAE", "vae_loss"})
    model = ns["VAE"](cfg.latent_dim, cfg.hidden_dim).to(device)
    x = torch.rand(cfg.batch_size, 784, device=device)

    def chapter_forward(m):
        reconstruction, kl = ns["vae_loss"](x, *m(x))
        reconstruction.item(), kl.item()
        return (reconstruction + kl) / len(x)

    def plain_forward(m):
        mean, log_var = m.encoder(x)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        x_hat = m.decoder(z)
        kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp())
        return (F.binary_cross_entropy(x_hat, x, reduction="sum") + kl) / len(x)

    return _loss_steps(model, lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
                       chapter_forward, plain_forward)


def gan(device: torch.device) -> tuple[Step, Step]:
    cfg, ns = full_settings("gan"), definitions("gan", {"make_generator", "make_discriminator"})
    G, D = ns["make_generator"](cfg.latent_dim, cfg.hidden_dim).to(device), ns["make_discriminator"](cfg.hidden_dim).to(device)
    real = torch.rand(cfg.batch_size, 784, device=device) * 2 - 1
    return _gan_steps(G, D, lambda g, z: g(z), lambda d, x: d(x), real,
                      lambda: torch.randn(cfg.batch_size, cfg.latent_dim, device=device), cfg.lr)


def cgan(device: torch.device) -> tuple[Step, Step]:
    cfg, ns = full_settings("cgan"), definitions("cgan", {"Generator", "Discriminator"})
    G, D = ns["Generator"](cfg.latent_dim, cfg.embed_dim).to(device), ns["Discriminator"](cfg.embed_dim).to(device)
    real = torch.rand(cfg.batch_size, 784, device=device) * 2 - 1
    labels = torch.randint(0, 10, (cfg.batch_size,), device=device)
    return _gan_steps(G, D, lambda g, z, y: g.model(torch.cat([z, g.embed(y)], 1)),
                      lambda d, x, y: d.model(torch.cat([x, d.embed(y)], 1)), real,
                      lambda: torch.randn(cfg.batch_size, cfg.latent_dim, device=device), cfg.lr,
                      betas=(cfg.beta1, 0.999), extra=(labels,), ema_decay=cfg.ema_decay,
                      wrong=lambda: ((labels + torch.randint(1, 10, labels.shape, device=device)) % 10,))


def dcgan(device: torch.device) -> tuple[Step, Step]:
    cfg, ns = full_settings("dcgan"), definitions("dcgan", {"Generator", "Discriminator", "weights_init"})
    G, D = ns["Generator"](cfg.latent_dim, cfg.ngf).to(device), ns["Discriminator"](cfg.ndf).to(device)
    G.apply(ns["weights_init"])
    D.apply(ns["weights_init"])
    real = torch.rand(cfg.batch_size, 3, 64, 64, device=device) * 2 - 1
    return _gan_steps(G, D, lambda g, z: g.main(z), lambda d, x: d.main(x).view(-1, 1), real,
                      lambda: torch.randn(cfg.batch_size, cfg.latent_dim, 1, 1, device=device), cfg.lr,
                      betas=(cfg.beta1, 0.999))


def lstm_basics(device: torch.device) -> tuple[Step, Step]:
    cfg, ns = full_settings("lstm_basics"), definitions("lstm_basics", {"TextLSTM"})
    n_class = 7  # the vocabulary of the six sentences
    model = ns["TextLSTM"](n_class, cfg.n_hidden).to(device)
    inputs = F.one_hot(torch.randint(0, n_class, (6, 2)), n_class).float().to(device)
    targets = torch.randint(0, n_class, (6,), device=device)

    history = training.History()
    return _loss_steps(model, lambda params: torch.optim.Adam(params, lr=cfg.lr),
                       lambda m: F.cross_entropy(m(inputs), targets),
                       lambda m: F.cross_entropy(m.out(m.lstm(inputs)[0][:, -1]), targets),
                       record=lambda value: history.log(loss=value))


def _bptt_steps(model: nn.Module, source: torch.Tensor, bptt: int, clip: float, update: Callable) -> tuple[Step, Step]:
    """A truncated-BPTT step with utils.text (batches, detached state) and its plain twin."""
    def make(m: nn.Module, use_helpers: bool) -> Step:
        state, position, apply_update = [None], [0], update(m)

        def step() -> torch.Tensor:
            i = position[0]
            position[0] = (i + bptt) % (len(source) - bptt - 1)
            if use_helpers:
                inputs, targets = text.get_batch(source, i, bptt)
                previous = text.detach_state(state[0])
            else:
                inputs, targets = source[i:i + bptt], source[i + 1:i + 1 + bptt]
                previous = None if state[0] is None else tuple(s.detach() for s in state[0])
            logits, state[0] = m(inputs, previous)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            m.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(m.parameters(), clip)
            apply_update()
            if use_helpers:
                loss.item()
            return loss.detach()
        return step

    return make(model, True), make(copy.deepcopy(model), False)


def text_generation(device: torch.device) -> tuple[Step, Step]:
    cfg, ns = full_settings("text_generation"), definitions("text_generation", {"CharLSTM"})
    vocab_size = 59  # the characters of the Nietzsche text
    model = ns["CharLSTM"](vocab_size, cfg.embedding, cfg.hidden, cfg.dropout).to(device)
    source = torch.randint(0, vocab_size, (20 * cfg.bptt, cfg.batch_size), device=device)
    return _bptt_steps(model, source, cfg.bptt, cfg.clip,
                       lambda m: torch.optim.Adam(m.parameters(), lr=cfg.max_lr).step)


def language_model(device: torch.device) -> tuple[Step, Step]:
    cfg, ns = full_settings("language_model"), definitions("language_model", {"RNNModel"})
    vocab_size = 33_278  # WikiText-2
    model = ns["RNNModel"](vocab_size, cfg.size, cfg.layers, cfg.dropout).to(device)
    source = torch.randint(0, vocab_size, (20 * cfg.bptt, cfg.batch_size), device=device)

    def sgd(m: nn.Module) -> Callable[[], None]:
        @torch.no_grad()
        def apply() -> None:
            for p in m.parameters():
                p.add_(p.grad, alpha=-cfg.lr / 100)  # a smaller rate: random tokens, many steps
        return apply

    return _bptt_steps(model, source, cfg.bptt, cfg.clip, sgd)


def style_transfer(device: torch.device) -> tuple[Step, Step]:
    """One L-BFGS closure evaluation, against the PyTorch tutorial's loss modules (see style_transfer.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import style_transfer as reference  # the chapter's own benchmark and its tutorial-style reference

    chapter, plain, _ = reference.steps(device, full_settings("style_transfer").size)
    return chapter, plain


CASES = {f.__name__: f for f in (autoencoder, vae, gan, cgan, dcgan, lstm_basics, text_generation,
                                   language_model, style_transfer)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(steps: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each step after one warm-up call each, alternating which goes first."""
    for step in steps.values():
        step()
        _sync(device)
    times: dict[str, list[float]] = {label: [] for label in steps}
    for repeat in range(repeats):
        order = list(steps.items()) if repeat % 2 == 0 else list(steps.items())[::-1]
        for label, step in order:
            start = time.perf_counter()
            step()
            _sync(device)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def measure(name: str, repeats: int, memory_of: str = "") -> dict:
    """Median step times of one chapter (both steps, alternating), or the peak memory of one step.

    On the CPU the peak memory can only be read per process, so each step's memory is measured in a
    fresh process of its own (``memory_of`` = "chapter" or "plain").
    """
    runtime.seed_everything(0)
    device = runtime.get_device()
    steps = dict(zip(("chapter", "plain"), CASES[name](device)))
    if memory_of:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            steps[memory_of]()
            _sync(device)
            return {"peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}
        before = max(_rss_mb(), _peak_rss_mb())
        steps[memory_of]()
        return {"peak_mb": max(0.0, _peak_rss_mb() - before)}

    medians = median_times(steps, repeats, device)
    return {"device": str(device), "threads": torch.get_num_threads(),
            "step_ms": medians["chapter"] * 1000, "plain_ms": medians["plain"] * 1000,
            "ratio": medians["chapter"] / medians["plain"]}


def _child(name: str, repeats: int, memory_of: str = "") -> dict:
    command = [sys.executable, __file__, "--child", name, "--repeats", str(repeats)]
    done = subprocess.run(command + (["--memory-of", memory_of] if memory_of else []), capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps of each kind (default 10)")
    parser.add_argument("--only", default="", help=f"comma-separated chapters (default all: {','.join(CASES)})")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--memory-of", default="", choices=("", "chapter", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.repeats, args.memory_of)))
        return
    chosen = [c.strip() for c in args.only.split(",") if c.strip()] or list(CASES)
    unknown = sorted(set(chosen) - set(CASES))
    if unknown:
        parser.error(f"unknown chapter(s) {unknown}; choose from {list(CASES)}")
    print(f"{'chapter':16s}{'step ms':>10s}{'plain ms':>10s}{'ratio':>8s}{'peak MB':>10s}{'plain MB':>10s}  device")
    for name in chosen:
        try:
            r = _child(name, args.repeats)
            peak, plain_peak = (_child(name, 0, which)["peak_mb"] for which in ("chapter", "plain"))
        except RuntimeError as err:
            print(f"{name:16s} failed: {err}")
            continue
        print(f"{name:16s}{r['step_ms']:10.1f}{r['plain_ms']:10.1f}{r['ratio']:8.3f}{peak:10.1f}"
              f"{plain_peak:10.1f}  {r['device']} ({r['threads']} threads)")


if __name__ == "__main__":
    main()
