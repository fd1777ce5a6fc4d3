"""Train the diffusion chapter's U-Net with DistributedDataParallel (or sharded with
FSDP2): on one process, on N processes of one machine, or on several machines, with the
same file.

The model, its loss and its training step are the chapter's own: the cells of
``book/diffusion.ipynb`` tagged ``export`` are executed (their functions and classes,
and the imports these read) by :func:`utils.chapter_code.tagged_definitions`, never
copied. The batch size, learning rate, warm-up and widths default to the chapter's
full-profile settings; ``--steps`` defaults to 500 (the chapter trains 5 epochs, 2,340
steps).

One process (CPU or one GPU)::

    python scripts/train_diffusion.py --steps 2000 --checkpoint runs/one.pt

N processes on one machine (N GPUs with NCCL, or N CPU processes with gloo); the
setting gives each restart a store of its own (pytorch/pytorch#135712)::

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone --nproc_per_node=N \\
        scripts/train_diffusion.py --steps 2000 --checkpoint runs/n.pt

Several machines: the same command on each, with the address of one of them::

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nnodes=2 --nproc_per_node=8 \\
        --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 --rdzv-id=diffusion \\
        --max-restarts=3 scripts/train_diffusion.py --steps 2000 \\
        --checkpoint /shared/diffusion.pt

Each run needs a checkpoint of its own (a launch that finds one resumes it); on several
machines, at a path all of them see.

``--batch-size`` is the global batch, split over the processes (and ``--accumulate``
micro-batches on each). ``--shard`` shards the weights, gradients and Adam's state over
the processes with FSDP2 (``fully_shard``) instead of replicating them (DDP). Each
process draws its images' timesteps and noise from its own generator;
``--draws=sample`` keys them by image instead, so that every launch computes the step of
one process to fp32 rounding (a verification mode). Rank 0 logs the loss to
TensorBoard and writes a checkpoint of whole tensors every ``--checkpoint-every`` steps
(atomically), the same file sharded or not;
a launch that finds the checkpoint resumes from it, so ``torchrun --max-restarts``
continues a run after a worker fails. ``--fail-at-step`` makes the last rank exit at
that step on the first attempt, to see it happen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from utils import (
    chapter_code,
    data,
    distributed,
    precision,
    sharding,
    sources,
    training,
)

NOTEBOOK = Path(__file__).resolve().parent.parent / "book" / "diffusion.ipynb"
#: What the script takes from the chapter's cells tagged "export".
CHAPTER_NAMES = {
    "cosine_alpha_bar",
    "add_noise",
    "UNet",
    "diffusion_loss",
    "train_step",
}


def arguments(argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    """The options, and the chapter's full-profile settings they default to (read from
    the notebook that ``--notebook`` names)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument(
        "--notebook",
        type=Path,
        default=NOTEBOOK,
        help="the chapter whose cells tagged 'export' define the model (default: "
        "book/diffusion.ipynb; an edited copy tries a change)",
    )
    chapter = chapter_code.setup_settings(first.parse_known_args(argv)[0].notebook)
    parser = argparse.ArgumentParser(
        parents=[first],
        prog="train_diffusion.py",
        description=(
            "Train the diffusion chapter's U-Net, on one process or under torchrun "
            "with DistributedDataParallel."
        ),
    )
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=chapter["batch_size"],
        help="the global batch, split over all processes (default: the chapter's)",
    )
    parser.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="micro-batches per process and step (gradient accumulation)",
    )
    parser.add_argument("--lr", type=float, default=chapter["lr"])
    parser.add_argument("--warmup-steps", type=int, default=chapter["warmup_steps"])
    parser.add_argument(
        "--channels",
        default=",".join(map(str, chapter["channels"])),
        help="the U-Net's widths, e.g. 16,32,64 (default: the chapter's)",
    )
    parser.add_argument(
        "--train-size", type=int, default=None, help="the first N training images"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shard",
        action="store_true",
        help="shard weights, gradients and optimizer state over the processes "
        "(FSDP2's fully_shard) instead of replicating them (DDP)",
    )
    parser.add_argument(
        "--draws",
        choices=distributed.DRAW_MODES,
        default="rank",
        help="rank: each process draws its images' timesteps and noise from its own "
        "generator (default); sample: one generator per image of the global batch, "
        "so any number of processes computes the step of one (to verify it)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("checkpoints/train_diffusion.pt")
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="TensorBoard folder (default runs/train_diffusion/<time>)",
    )
    parser.add_argument(
        "--summary", type=Path, default=None, help="write a JSON summary here"
    )
    parser.add_argument(
        "--count-all-reduces",
        action="store_true",
        help="count DDP's gradient all-reduces (through a communication hook) into the "
        "--summary, to check no_sync",
    )
    parser.add_argument(
        "--fail-at-step",
        type=int,
        default=None,
        help="the last rank exits when this step begins, on the first attempt only",
    )
    args = parser.parse_args(argv)
    try:
        args.channels = [int(c) for c in args.channels.split(",")]
    except ValueError:
        parser.error(
            f"--channels takes three integers, e.g. 16,32,64, not {args.channels!r}"
        )
    if (
        len(args.channels) != 3
        or min(args.channels) < 8
        or any(c % 8 for c in args.channels)
    ):
        parser.error(
            "--channels takes three multiples of 8 (GroupNorm's 8 groups), got "
            f"{args.channels}"
        )
    for name in ("steps", "batch_size", "accumulate", "checkpoint_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args, chapter


def warmup_cosine(steps: int, warmup: int):
    """The chapter's schedule: linear warm-up, then a half cosine to zero."""

    def factor(step: int) -> float:
        return (
            min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        )

    return factor


def batches(loader: DataLoader, sampler: DistributedSampler, step: int):
    """The loader's batches from global step ``step`` on, epoch after epoch; each epoch
    reshuffles (``set_epoch``), and a resumed run skips the batches already done."""
    epoch, skip = divmod(step, len(loader))
    while True:
        sampler.set_epoch(epoch)  # the same permutation on every rank, new each epoch
        for index, batch in enumerate(loader):
            if index >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def train(args: argparse.Namespace, chapter: dict, launch: distributed.Launch) -> dict:
    world, micro = launch.world_size, args.accumulate
    if args.batch_size % (world * micro):
        raise ValueError(
            f"--batch-size {args.batch_size} does not split into {world} "
            f"process(es) x {micro} micro-batch(es): choose a multiple of "
            f"{world * micro}"
        )
    local_batch = args.batch_size // world
    device = launch.device
    cfg = SimpleNamespace(
        T=chapter["T"],
        label_dropout=chapter["label_dropout"],
        min_snr=chapter["min_snr"],
        # as the chapter computes (its runtime.setup switches: no bf16 on a CPU)
        precision=precision.for_chapter(
            device, **chapter_code.precision_switches(args.notebook)
        ),
    )
    ns = chapter_code.tagged_definitions(args.notebook, CHAPTER_NAMES, {"cfg": cfg})
    draws = distributed.StepDraws(args.batch_size, args.seed, args.draws, launch.rank)
    ns["torch"] = draws  # the chapter's step draws its randomness through this
    ns["alpha_bar"] = ns["cosine_alpha_bar"](cfg.T).to(device)  # a global it reads

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = cfg.precision.prepare(ns["UNet"](tuple(args.channels)).to(device))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(chapter["ema_decay"]))
    if args.shard:
        if not launch.distributed:
            raise ValueError("--shard needs several processes: start it with torchrun")
        # the average is copied before sharding (a sharded module cannot be copied)
        # and sharded alike, so that each process averages its own slices
        sharding.shard(model)
        sharding.shard(ema.module)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(args.steps, args.warmup_steps)
    )
    # what a checkpoint must share with this run to be resumed (not the number of
    # processes: a run may resume on another number of workers)
    config = {
        "model": "diffusion UNet",
        "channels": list(args.channels),
        "T": cfg.T,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "train_size": args.train_size,
        "seed": args.seed,
        "draws": args.draws,
    }
    state = distributed.load_checkpoint(args.checkpoint, config, device)
    # every rank must resume from the same step, not only the ones that saw the file;
    # checked before loading, which is a collective for a sharded model
    start = state["step"] if state is not None else 0
    distributed.agree_on_resume(launch, start, None, args.checkpoint)
    if state is not None:
        try:
            sharding.load_model_state(model, state["model"])
            sharding.load_model_state(ema.module, state["ema"])
            ema.n_averaged.copy_(state["ema_count"])
            sharding.load_optimizer_state(model, optimizer, state["optimizer"])
            schedule.load_state_dict(state["schedule"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise distributed.CheckpointError(
                f"{args.checkpoint.name} does not fit this model ({str(err)[:200]})"
            ) from None
        torch.set_rng_state(state["rng"].cpu())
    # and from the same weights
    distributed.agree_on_resume(launch, start, model, args.checkpoint)

    net, all_reduces = model, None
    if launch.distributed and not args.shard:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        net.null_label = model.null_label  # the chapter's step reads it
        if args.count_all_reduces:
            all_reduces = distributed.count_all_reduces(net)

    x, y = data.mnist_tensors(train=True, fashion=True, limit=args.train_size)
    dataset = TensorDataset(x * 2 - 1, y)  # in [-1, 1], as in the chapter
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=launch.rank, seed=args.seed, drop_last=True
    )
    loader = DataLoader(
        dataset, batch_size=local_batch, sampler=sampler, drop_last=True
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(dataset)} training images give no batch of {args.batch_size}"
        )
    rows = distributed.shard_rows(local_batch, launch).chunk(micro)
    stepper = distributed.Accumulation(optimizer, micro)

    writer = None
    if launch.is_main:
        threads = torch.get_num_threads()
        print(
            f"{world} process(es) ({launch.backend or 'no process group'}"
            f"{', FSDP2' if args.shard else ', DDP' if launch.distributed else ''}, "
            f"{device.type}, {threads} thread(s) each), "
            f"{cfg.precision.describe().split(' (')[0]}: global "
            f"batch {args.batch_size} = {world} x {micro} micro-batch(es) x "
            f"{local_batch // micro} images; {len(loader)} steps per epoch",
            flush=True,
        )
        if start:
            print(
                f"attempt {launch.restart + 1}: resumed from the checkpoint of step "
                f"{start}",
                flush=True,
            )
        log_dir = args.log_dir or training.log_dir("train_diffusion")
        writer = training.tensorboard_writer(
            "train_diffusion", log_dir / f"attempt-{launch.restart + 1}"
        )

    history = training.History()
    steps = range(start, args.steps)
    if launch.is_main:
        steps = training.progress(steps, desc=f"rank 0 of {world}")
    source = batches(loader, sampler, start)
    timed_from, clock = None, 0.0
    model.train()
    try:
        for step in steps:
            if (
                step + 1 == args.fail_at_step
                and launch.restart == 0
                and launch.rank == world - 1
            ):
                print(
                    f"rank {launch.rank}: exiting at step {step + 1} "
                    "(--fail-at-step), as a crashed worker would",
                    flush=True,
                )
                os._exit(1)
            x0, labels = next(source)
            x0 = cfg.precision.prepare(x0.to(device))
            labels = labels.to(device)
            losses = []
            parts = zip(x0.chunk(micro), labels.chunk(micro))
            for part, (x_part, y_part) in enumerate(parts):
                draws.select(step, rows[part])
                # no gradient exchange until the last micro-batch (DDP's no_sync)
                quiet = launch.distributed and not stepper.steps_next
                with distributed.gradient_sync_paused(net) if quiet else nullcontext():
                    losses.append(ns["train_step"](net, stepper, x_part, y_part))
            schedule.step()
            ema.update_parameters(model)
            loss = distributed.mean_over_ranks(torch.stack(losses).mean(), launch)
            if timed_from is None:  # the first step of an attempt warms up: not timed
                timed_from, clock = step + 1, time.perf_counter()
            if launch.is_main:
                history.log(loss=loss)
                writer.add_scalar("loss/train", loss, step + 1)
            if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
                # whole tensors, gathered on rank 0 where the model is sharded: one
                # format for every launch, so a run may resume on another one
                whole = {
                    "model": sharding.model_state(model),
                    "ema": sharding.model_state(ema.module),
                    "optimizer": sharding.optimizer_state(model, optimizer),
                }
                if launch.is_main:
                    distributed.save_checkpoint(
                        args.checkpoint,
                        config,
                        {
                            "step": step + 1,
                            **whole,
                            "ema_count": ema.n_averaged.clone(),
                            "schedule": schedule.state_dict(),
                            "rng": torch.get_rng_state(),
                        },
                    )
                # no rank runs ahead of a checkpoint that is not yet on disk
                distributed.barrier(launch)
    finally:
        if writer is not None:  # also when a failed peer ends the run: keep the log
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no second exit in close
            writer.close()
    seconds = time.perf_counter() - clock
    timed = args.steps - timed_from if timed_from is not None else 0
    summary = {
        "world_size": world,
        "accumulate": micro,
        "sharded": args.shard,
        "draws": args.draws,
        # between steps, on this rank (rank 0)
        "bytes_per_rank": sharding.held_bytes(model, optimizer),
        # the gradient all-reduces of rank 0's DDP (one per bucket and synchronised
        # backward pass), with --count-all-reduces
        "gradient_all_reduces": all_reduces[0] if all_reduces else None,
        "backend": launch.backend or "none",
        "device": device.type,
        "threads_per_process": torch.get_num_threads(),
        "global_batch": args.batch_size,
        "start_step": start,
        "steps": args.steps,
        "attempt": launch.restart + 1,
        "parameters": sum(p.numel() for p in model.parameters()),
        "timed_steps": timed,
        "seconds": seconds,
        "steps_per_s": timed / seconds if timed else None,
        "images_per_s": timed * args.batch_size / seconds if timed else None,
        "last_loss": history.last("loss") if history["loss"] else None,
    }
    if launch.is_main:
        if timed:
            print(
                f"steps {timed_from + 1}-{args.steps} timed: "
                f"{summary['steps_per_s']:.2f} steps/s, "
                f"{summary['images_per_s']:.0f} images/s; last loss "
                f"{summary['last_loss']:.4f}",
                flush=True,
            )
        if args.summary:
            sources.write_bytes_atomic(
                args.summary, (json.dumps(summary, indent=1) + "\n").encode()
            )
    return summary


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    launch, code, finished = None, 0, False
    try:
        args, chapter = arguments(argv)
        launch = distributed.start()
        if launch.distributed:
            # when a worker fails, torchrun stops the others with SIGTERM: leave through
            # Python's exit, so that finally blocks run (rank 0 writes out its log)
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        train(args, chapter, launch)
        finished = True
    except (
        distributed.LaunchError,
        distributed.CheckpointError,
        chapter_code.ChapterCodeError,
        sources.DatasetNotFoundError,
        sources.DiskFullError,
        ValueError,
    ) as err:
        print(f"train_diffusion.py: error: {err}", file=sys.stderr, flush=True)
        code = 2
    finally:
        if launch is not None:
            # leave the process group on every exit; after an error, without waiting
            # for peers that may have failed
            distributed.stop(launch, wait=finished)
    return code


if __name__ == "__main__":
    sys.exit(main())
