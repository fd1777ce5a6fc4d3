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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from .sources import atomic_path

#: Written into every checkpoint, so a file from elsewhere is told apart.
CHECKPOINT_FORMAT = "gdl-pytorch ddp checkpoint 2"
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
    store = attempt_store(env, world_size, restart)
    # device_id: NCCL binds the process group to this GPU at once (no guessing)
    cuda = device if device.type == "cuda" else None
    if store is None:  # the environment's rendezvous (env://), as torch has it
        dist.init_process_group(backend, device_id=cuda)
    else:
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, device_id=cuda
        )
    return Launch(rank, local_rank, world_size, restart, device, backend)


#: The setting that makes torchrun's c10d rendezvous give each attempt a store of its
#: own (pytorch/pytorch#135712).
FRESH_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"


def attempt_store(
    env: Mapping[str, str], world_size: int, restart: int
) -> dist.Store | None:
    """The store through which the processes find each other, where torch's own
    (``init_process_group``'s env:// rendezvous) would fail; None elsewhere.

    torchrun's agent shares one store with its workers for all attempts of a job: with
    a static rendezvous (``--master-addr``) always, with the c10d one (``--standalone``,
    ``--rdzv-backend=c10d``) unless ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``. A
    restarted group may then read the addresses that the failed group left there, and
    fail to connect to peers that are gone (pytorch/pytorch#135712; how often is
    measured by ``tools/rendezvous_restarts.py``, and reported in the scaling chapter).
    With the setting each attempt's rank 0 hosts a store of its own, and torch's
    rendezvous is used as it is. Without it, on one machine the keys of each attempt go
    under a prefix of their own (the restart count); across machines the agents count
    restarts each for themselves, so no prefix is safe, and a launch that may restart
    is a :class:`LaunchError` that says what to set.
    """
    shared = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    restarts = int(env.get("TORCHELASTIC_MAX_RESTARTS") or 0)
    if not shared or restarts == 0:
        return None
    if int(env.get("GROUP_WORLD_SIZE") or 1) > 1:
        raise LaunchError(
            f"torchrun may restart this job (--max-restarts={restarts}) on several "
            "machines with one store for all attempts, where a restarted group can "
            "read the failed group's addresses and hang (pytorch/pytorch#135712): "
            f"start torchrun with {FRESH_STORE} in its environment and "
            "--rdzv-backend=c10d, or with --max-restarts=0"
        )
    store = dist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), world_size, is_master=False
    )
    return dist.PrefixStore(f"attempt-{restart}", store)


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


def stop(launch: Launch, wait: bool = True) -> None:
    """Leave the process group: after every rank has finished (``wait``), or at once,
    after an error, when a peer may never arrive."""
    if launch.distributed and dist.is_initialized():
        if wait:
            barrier(launch)
        dist.destroy_process_group()


@contextmanager
def gradient_sync_paused(net: torch.nn.Module) -> Iterator[None]:
    """No gradient exchange in the backward passes inside: DDP's ``no_sync``, or
    FSDP2's ``set_requires_gradient_sync(False)``; the gradients accumulate locally
    until a backward pass outside exchanges their sum."""
    if hasattr(net, "set_requires_gradient_sync"):  # a module under fully_shard
        net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            net.set_requires_gradient_sync(True)
    else:
        with net.no_sync():
            yield


def count_all_reduces(ddp: torch.nn.Module) -> list[int]:
    """Make DDP count its gradient all-reduces (one per bucket and synchronised
    backward pass) in the returned one-element list, through a communication hook
    that then averages the bucket over the ranks. (DDP's built-in averaging multiplies
    by 1/N while copying into the bucket, the hook divides the bucket by N: the same
    bits for N = 2, not always otherwise; a check, not for timed runs.)"""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
        allreduce_hook,
    )

    count = [0]

    def counted(state, bucket):
        count[0] += 1
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counted)
    return count


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


#: The random functions the chapter's step calls, which :class:`StepDraws` provides.
DRAWN = ("rand", "randint", "randn_like")
#: torch's other random functions: a step that calls one through :class:`StepDraws`
#: is an error, not a silent draw from the global generator (seeded alike on every
#: rank, so its noise would be the same on every rank).
UNCOVERED = frozenset(
    {
        "randn",
        "randperm",
        "rand_like",
        "randint_like",
        "normal",
        "bernoulli",
        "multinomial",
        "poisson",
        "manual_seed",
        "seed",
        "initial_seed",
        "get_rng_state",
        "set_rng_state",
    }
)
#: How :class:`StepDraws` keys its generators.
DRAW_MODES = ("rank", "sample")


class StepDraws:
    """Stands in for the ``torch`` module in a chapter's namespace: its ``rand``,
    ``randint`` and ``randn_like`` draw from generators keyed by (seed, step, call),
    so a resumed run draws what the uninterrupted run drew; every other name is
    torch's, except the module's other random functions, which are an error (tensor
    methods such as ``uniform_``, and ``F.dropout``, do not pass through here).

    ``mode="rank"`` (the default of the training script): one generator per process
    and micro-batch (keyed by the position of its first image, so also by the rank),
    on its device; each process draws only its own images' values, and the ranks'
    draws are independent, as in any data-parallel script.
    ``mode="sample"`` (a verification mode): one generator per image, keyed by its
    position in the global batch, so an image gets the same draws whichever process
    holds it, and N processes (or M micro-batches) compute the step of one process to
    fp32 rounding; it costs a small draw per image on the CPU. Call :meth:`select`
    before each step.
    """

    def __init__(
        self, global_batch: int, seed: int, mode: str = "rank", rank: int = 0
    ) -> None:
        if mode not in DRAW_MODES:
            raise ValueError(f"mode must be one of {DRAW_MODES}, got {mode!r}")
        if not 0 < global_batch <= 1 << 20:
            raise ValueError(f"global_batch must be 1 to 2**20, got {global_batch}")
        self.global_batch, self.seed, self.mode, self.rank = (
            global_batch,
            seed,
            mode,
            rank,
        )
        self._step, self._calls = 0, 0
        self._rows: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        if name in UNCOVERED:
            raise AttributeError(
                f"the training step calls torch.{name}, which StepDraws does not key "
                f"by step and rank (it provides {', '.join(DRAWN)}): add it to "
                "utils.distributed.StepDraws, or every rank would draw the same values "
                "from the global generator"
            )
        return getattr(torch, name)

    def select(self, step: int, rows: torch.Tensor) -> None:
        """The draws that follow are step ``step``'s, for the global-batch positions
        ``rows``."""
        if len(rows) == 0 or rows.max() >= self.global_batch or rows.min() < 0:
            raise ValueError(
                f"rows must be positions in the global batch of {self.global_batch}"
            )
        self._step, self._calls, self._rows = step, 0, rows

    def _key(self, who: int) -> int:
        """A generator seed for (seed, step, call, who): ``who`` is the rank or the
        image's position in the global batch."""
        if self._calls >= 64:
            raise RuntimeError("a step may draw at most 64 times through StepDraws")
        key = ((self.seed * 1_000_003 + self._step) * 64 + self._calls) * (1 << 20)
        return (key + who) % (1 << 63)

    def _draw(self, n: int, device, draw) -> torch.Tensor:
        """``draw(generator, count, device)`` for this process's ``n`` images."""
        if self._rows is None:
            raise RuntimeError("call StepDraws.select(step, rows) before a step")
        if n != len(self._rows):
            raise ValueError(
                f"the step drew {n} values, but this process holds {len(self._rows)} "
                "samples of the global batch"
            )
        device = torch.device("cpu" if device is None else device)
        if self.mode == "rank":
            # keyed by the first image's position: one generator per rank and
            # micro-batch (a rank's micro-batches must not repeat each other's draws)
            generator = torch.Generator(device=device).manual_seed(
                self._key(int(self._rows[0]))
            )
            drawn = draw(generator, n, device)
        else:  # one generator per image, on the CPU (the same on every device)
            drawn = torch.cat(
                [
                    draw(torch.Generator().manual_seed(self._key(int(row))), 1, None)
                    for row in self._rows
                ]
            ).to(device)
        self._calls += 1
        return drawn

    def rand(self, n: int, *, device=None, dtype=None) -> torch.Tensor:
        return self._draw(
            n,
            device,
            lambda g, k, d: torch.rand(k, generator=g, device=d, dtype=dtype),
        )

    def randint(
        self, low: int, high: int, size: tuple[int, ...], *, device=None, dtype=None
    ) -> torch.Tensor:
        return self._draw(
            size[0],
            device,
            lambda g, k, d: torch.randint(
                low,
                high,
                (k, *size[1:]),
                generator=g,
                device=d,
                dtype=dtype or torch.int64,
            ),
        )

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        full = self._draw(
            len(x),
            x.device,
            lambda g, k, d: torch.randn(
                (k, *x.shape[1:]), generator=g, device=d, dtype=x.dtype
            ),
        )
        return torch.empty_like(x).copy_(full)  # x's memory layout


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
    processes exactly when they hold the same weights (a sharded model's whole weights,
    gathered: call it on every rank)."""
    crc = 0
    for name, tensor in sorted(model.state_dict().items()):
        crc = zlib.crc32(name.encode(), crc)
        if isinstance(tensor, DTensor):  # sharded: the whole tensor (a collective)
            tensor = tensor.full_tensor()
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        crc = zlib.crc32(data.numpy().tobytes(), crc)
    return crc


def agree_on_resume(
    launch: Launch, step: int, model: torch.nn.Module | None, checkpoint: Path
) -> None:
    """Check that every process starts from the same step (and, given the model, the
    same weights); a :class:`CheckpointError` on every rank names those that differ.

    A rank that could not see the checkpoint (a path on a machine's local disk, a
    network file system's stale cache) would otherwise start at step 0 with a fresh
    optimizer and schedule: DDP re-broadcasts only the weights, so the ranks would
    drift apart and then hang. Call it once with the step read from the file before
    loading it (loading a sharded model is itself a collective, which a rank without
    the file would skip), and once with the model after. (A sharded model's loaded
    weights come from rank 0's file on every rank, so after loading only the step and
    unsharded tensors can still differ.)
    """
    if not launch.distributed:
        return
    checksum = weights_checksum(model) if model is not None else 0
    mine = torch.tensor([step, checksum], dtype=torch.int64, device=launch.device)
    every = [torch.zeros_like(mine) for _ in range(launch.world_size)]
    dist.all_gather(every, mine)
    seen = [(int(t[0]), int(t[1])) for t in every]
    if len(set(seen)) > 1:
        where = ", ".join(
            f"rank {rank} at step {s}"
            + (f" (weights {c:08x})" if model is not None else "")
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
        # on the CPU: loading onto the GPU would hold a second copy of everything there
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch.load raises many kinds
        raise CheckpointError(
            f"{path.name} is not a readable checkpoint ({type(exc).__name__}); delete "
            "it or choose another checkpoint path"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path.name} was not written by this training script (or by an older "
            "version of it); delete it or choose another checkpoint path"
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
