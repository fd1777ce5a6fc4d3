"""Data-parallel training with PyTorch's own engine (torch.distributed, DDP, torchrun):
the launch checked, the process group, shared random draws, gradient accumulation and
resumable checkpoints.

A script built on these runs unchanged as one plain process, as N processes under
``torchrun --nproc_per_node=N`` (gloo on CPUs, NCCL on GPUs) and across machines
(``torchrun --nnodes``), and computes the same step in each case (see
``scripts/train_diffusion.py`` and the scaling chapter).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist

from .sources import atomic_path

#: Written into every checkpoint, so a file from elsewhere is told apart.
CHECKPOINT_FORMAT = "gdl-pytorch ddp checkpoint 1"
#: What torchrun sets for every worker (static and c10d rendezvous alike).
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(RuntimeError):
    """The environment of a distributed launch is incomplete or inconsistent."""


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from: unreadable, or written by another model or
    run."""


@dataclass(frozen=True)
class Launch:
    """Who this process is: its rank among ``world_size`` processes, its rank on its
    machine, torchrun's restart count, its device, and the process group's backend
    (None for one plain process)."""

    rank: int
    local_rank: int
    world_size: int
    restart: int
    device: torch.device
    backend: str | None

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes checkpoints."""
        return self.rank == 0


def _integer(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer") from None


def read_launch(env: Mapping[str, str] | None = None) -> tuple[int, int, int, int]:
    """(rank, local rank, world size, restart count) from torchrun's environment, or
    (0, 0, 1, 0) for a plain process; a partial or inconsistent launch is a
    :class:`LaunchError` that says how to start the script."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return 0, 0, 1, 0
    missing = [name for name in LAUNCH_VARIABLES if not env.get(name)]
    if missing:
        present = ", ".join(
            f"{name}={env[name]}" for name in LAUNCH_VARIABLES if env.get(name)
        )
        raise LaunchError(
            f"{present} is set, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: a process group "
            "needs every process's rank, their number and the address and port of "
            "rank 0. Start the script with torchrun (it sets all five), or unset "
            "WORLD_SIZE and RANK to train in one process"
        )
    rank, local_rank, world_size = (
        _integer(env, name) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    )
    if world_size < 1 or not 0 <= rank < world_size:
        raise LaunchError(
            f"RANK={rank} is not a rank of WORLD_SIZE={world_size} processes "
            "(0 to WORLD_SIZE - 1)"
        )
    if not 0 <= local_rank <= rank:
        raise LaunchError(f"LOCAL_RANK={local_rank} does not fit RANK={rank}")
    _integer(env, "MASTER_PORT")
    # torchrun counts the restarts of the worker group (0 on the first attempt)
    restart = (
        _integer(env, "TORCHELASTIC_RESTART_COUNT")
        if env.get("TORCHELASTIC_RESTART_COUNT")
        else 0
    )
    return rank, local_rank, world_size, restart


def start(env: Mapping[str, str] | None = None) -> Launch:
    """Read the launch, choose the device (GPU ``LOCAL_RANK`` where there are GPUs,
    else the CPU) and, under torchrun, join the process group: NCCL on GPUs, gloo on
    CPUs."""
    env = os.environ if env is None else env
    rank, local_rank, world_size, restart = read_launch(env)
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise LaunchError(
                f"LOCAL_RANK={local_rank}, but this machine has "
                f"{torch.cuda.device_count()} GPU(s): start at most that many "
                "processes per machine (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if "WORLD_SIZE" not in env:  # one plain process: no process group
        return Launch(0, 0, 1, 0, device, None)
    if "TORCHELASTIC_RUN_ID" in env:  # started by torchrun's agent
        exit_with_launcher()
    store = attempt_store(env, rank, world_size, restart)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    return Launch(rank, local_rank, world_size, restart, device, backend)


def attempt_store(
    env: Mapping[str, str], rank: int, world_size: int, restart: int
) -> dist.Store:
    """The key-value store at ``MASTER_ADDR:MASTER_PORT`` through which the processes
    find each other; on one machine, with each attempt's keys under a prefix of their
    own.

    With a static rendezvous (``--master-addr``), torchrun's agent keeps one store for
    all attempts of a job (its ``TORCHELASTIC_USE_AGENT_STORE``), so without the prefix
    a restarted group may read the addresses that the failed group left there and wait
    for peers that are gone (measured with torch 2.14 on one machine: 3 restarts in 8
    failed with gloo's "Connection refused"). The prefix is the restart count, which
    each machine's agent counts for itself, so across machines (where the counts can
    disagree) the keys stay unprefixed, as torch has them. Without torchrun's store,
    rank 0 hosts one.
    """
    agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        world_size,
        is_master=not agent and rank == 0,
        multi_tenant=not agent,
    )
    one_machine = int(env.get("LOCAL_WORLD_SIZE") or world_size) == world_size
    return dist.PrefixStore(f"attempt-{restart}", store) if one_machine else store


def exit_with_launcher(poll_seconds: float = 2.0) -> None:
    """Under torchrun, end this worker when its launcher ends: a worker whose agent has
    died would otherwise wait in a collective, for peers that never come, until the
    process group's time-out (30 minutes for gloo)."""
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-launcher", daemon=True).start()


def barrier(launch: Launch) -> None:
    """Wait until every process gets here (nothing to wait for in one process)."""
    if launch.distributed:
        dist.barrier()


def stop(launch: Launch) -> None:
    """Leave the process group (after every rank has finished)."""
    if launch.distributed and dist.is_initialized():
        barrier(launch)
        dist.destroy_process_group()


def mean_over_ranks(value: torch.Tensor, launch: Launch) -> float:
    """The mean of a scalar over all processes (an all-reduce): the loss of the whole
    global batch, for the log."""
    if not launch.distributed:
        return value.item()
    total = value.detach().float().reshape(1).clone()
    dist.all_reduce(total)  # a sum: gloo has no average
    return total.item() / launch.world_size


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the system picks it when binding port
    0), for a rendezvous on one machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def shard_rows(local_batch: int, launch: Launch) -> torch.Tensor:
    """The positions in the global batch of this process's ``local_batch`` samples.

    ``DistributedSampler`` deals the shuffled indices out in turn, so sample ``k`` of
    rank ``r`` is sample ``k * world_size + r`` of the global batch that one process
    would take from the same permutation.
    """
    return torch.arange(local_batch) * launch.world_size + launch.rank


class SharedDraws:
    """Stands in for the ``torch`` module in a chapter's namespace: its ``rand``,
    ``randint`` and ``randn_like`` return this process's rows of draws made for the
    whole global batch; every other name is torch's.

    The draws of a step come from a generator seeded by (seed, step, call), so N
    processes (and M micro-batches) give each image the timestep, noise and label
    dropout that one process with the whole batch gives it, and a resumed run draws
    what the uninterrupted run drew. Call :meth:`select` before each step.
    """

    def __init__(self, global_batch: int, seed: int) -> None:
        self.global_batch, self.seed = global_batch, seed
        self._step, self._calls = 0, 0
        self._rows: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def select(self, step: int, rows: torch.Tensor) -> None:
        """The draws that follow are step ``step``'s, for the global-batch positions
        ``rows``."""
        if len(rows) == 0 or rows.max() >= self.global_batch or rows.min() < 0:
            raise ValueError(
                f"rows must be positions in the global batch of {self.global_batch}"
            )
        self._step, self._calls, self._rows = step, 0, rows

    def _share(self, n: int, draw) -> torch.Tensor:
        if self._rows is None:
            raise RuntimeError("call SharedDraws.select(step, rows) before a step")
        if n != len(self._rows):
            raise ValueError(
                f"the step drew {n} values, but this process holds {len(self._rows)} "
                "samples of the global batch"
            )
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self._step) * 64 + self._calls
        )
        self._calls += 1
        return draw(generator)[self._rows]

    def rand(self, n: int, *, device=None, dtype=None) -> torch.Tensor:
        full = self._share(
            n, lambda g: torch.rand(self.global_batch, generator=g, dtype=dtype)
        )
        return full.to(device)

    def randint(
        self, low: int, high: int, size: tuple[int, ...], *, device=None, dtype=None
    ) -> torch.Tensor:
        shape = (self.global_batch, *size[1:])
        full = self._share(
            size[0],
            lambda g: torch.randint(
                low, high, shape, generator=g, dtype=dtype or torch.int64
            ),
        )
        return full.to(device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        shape = (self.global_batch, *x.shape[1:])
        full = self._share(
            len(x), lambda g: torch.randn(shape, generator=g, dtype=x.dtype)
        )
        return torch.empty_like(x).copy_(full)  # x's device and memory layout


class Accumulation:
    """Stands in for an optimizer in a training step that calls ``zero_grad``,
    ``backward`` and ``step`` once per batch: over ``micro_batches`` calls it sums the
    gradients and then steps once, with their mean (gradient accumulation)."""

    def __init__(self, optimizer: torch.optim.Optimizer, micro_batches: int) -> None:
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be at least 1, got {micro_batches}")
        self.optimizer, self.micro_batches, self.calls = optimizer, micro_batches, 0

    @property
    def steps_next(self) -> bool:
        """Whether the next call steps: the one micro-batch whose backward pass
        DistributedDataParallel lets all-reduce (the others run under ``no_sync``)."""
        return self.calls == self.micro_batches - 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.calls == 0:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.calls += 1
        if self.calls < self.micro_batches:
            return
        if self.micro_batches > 1:  # the sum of the micro-batch means -> their mean
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.div_(self.micro_batches)
        self.optimizer.step()
        self.calls = 0


def save_checkpoint(path: Path, config: Mapping[str, Any], state: dict) -> None:
    """Write ``state`` with the run's ``config`` to ``path`` atomically (call it on
    rank 0 only): a crash while writing leaves the previous checkpoint intact."""
    with atomic_path(Path(path)) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "config": dict(config), **state}, tmp)


def weights_checksum(model: torch.nn.Module) -> int:
    """A CRC-32 of the model's parameters and buffers, byte for byte: equal on two
    processes exactly when they hold the same weights."""
    crc = 0
    for name, tensor in sorted(model.state_dict().items()):
        crc = zlib.crc32(name.encode(), crc)
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        crc = zlib.crc32(data.numpy().tobytes(), crc)
    return crc


def agree_on_resume(
    launch: Launch, step: int, model: torch.nn.Module, checkpoint: Path
) -> None:
    """Check that every process starts from the same step and the same weights; a
    :class:`CheckpointError` on every rank names those that differ. A rank that could
    not see the checkpoint (a path on a machine's local disk, a network file system's
    stale cache) would otherwise start at step 0 with a fresh optimizer and schedule:
    DDP re-broadcasts only the weights, so the ranks would drift apart and then
    hang."""
    if not launch.distributed:
        return
    mine = torch.tensor(
        [step, weights_checksum(model)], dtype=torch.int64, device=launch.device
    )
    every = [torch.zeros_like(mine) for _ in range(launch.world_size)]
    dist.all_gather(every, mine)
    seen = [(int(t[0]), int(t[1])) for t in every]
    if len(set(seen)) > 1:
        where = ", ".join(
            f"rank {rank} at step {s} (weights {c:08x})"
            for rank, (s, c) in enumerate(seen)
        )
        raise CheckpointError(
            f"the processes would resume from different states: {where}. Every "
            f"machine must see the same checkpoint {checkpoint} (a path on storage all "
            "of them share, given as an absolute path)"
        )


def load_checkpoint(
    path: Path, config: Mapping[str, Any], device: torch.device
) -> dict | None:
    """The checkpoint at ``path`` (None when there is none yet), checked: a file this
    module did not write, or one written for another ``config`` (another model, batch
    or seed), is a :class:`CheckpointError` that names the difference."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch.load raises many kinds
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint ({type(exc).__name__}); delete "
            "it or choose another checkpoint path"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path.name} was not written by this training script; delete it or "
            "choose another checkpoint path"
        )
    saved = state.get("config", {})
    differences = [
        f"{key} {saved.get(key)!r} there, {value!r} here"
        for key, value in config.items()
        if saved.get(key) != value
    ]
    if differences:
        raise CheckpointError(
            f"{path.name} was written by another run ({'; '.join(differences)}): "
            "resume with its settings, or choose another checkpoint path"
        )
    return state
