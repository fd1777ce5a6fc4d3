"""How often does a torchrun restart reconnect? The evidence behind
``utils.distributed.attempt_store`` (pytorch/pytorch#135712).

Each trial starts 2 gloo workers under ``torchrun --max-restarts=1``; in the first
attempt both join the process group and all-reduce, then the last rank exits with an
error, torchrun stops the other one and starts the group again, and the second attempt
must join and all-reduce. A trial passes when torchrun ends with status 0. Launch
styles:

- ``static``: ``--master-addr`` and a free port, ``init_process_group`` (env://);
- ``static-prefix``: the same, through ``utils.distributed.start`` (each attempt's keys
  under a prefix of their own);
- ``standalone``: ``--standalone`` (the c10d rendezvous on this machine);
- ``standalone-fresh``: the same with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``;
- ``c10d`` and ``c10d-fresh``: ``--rdzv-backend=c10d`` at a free port, as across
  machines, without and with the setting.

Usage: ``python tools/rendezvous_restarts.py [--trials 10] [STYLE ...]``. A failed trial
ends with an error after gloo's connection retries, or hangs and is stopped after
60 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: A trial that has not ended by then has hung: its restart failed.
TIMEOUT_S = 60
STYLES = (
    "static",
    "static-prefix",
    "standalone",
    "standalone-fresh",
    "c10d",
    "c10d-fresh",
)


def worker() -> int:
    """One rank of one attempt (run under torchrun)."""
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT))
    from utils import distributed

    restart = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    # torchrun starts its workers in sessions of their own: a worker must end when the
    # torchrun that a hung trial's timeout kills ends
    distributed.exit_with_launcher(poll_seconds=0.5)
    if os.environ.get("PROBE_PREFIX") == "1":
        distributed.start()
    else:
        dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)
    if restart == 0 and dist.get_rank() == dist.get_world_size() - 1:
        os._exit(1)  # as a crashed worker would
    if restart == 0:
        time.sleep(30)  # torchrun stops this rank
    dist.barrier()
    dist.destroy_process_group()
    return 0


def trial(style: str, port: int, index: int) -> bool:
    launch = {
        "static": ["--master-addr=127.0.0.1", f"--master-port={port}"],
        "standalone": ["--standalone"],
        "c10d": [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id=probe{index}",
        ],
    }[style.removesuffix("-fresh").removesuffix("-prefix")]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    env["PROBE_WORKER"] = "1"
    if style.endswith("-fresh"):
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    if style.endswith("-prefix"):
        env["PROBE_PREFIX"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--max-restarts=1", *launch, __file__]
    # a session of its own, so that a hung attempt's workers are stopped with torchrun
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return process.wait(timeout=TIMEOUT_S) == 0
    except subprocess.TimeoutExpired:  # a restart that hangs has failed too
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return False


def main() -> int:
    if os.environ.get("PROBE_WORKER") == "1":
        return worker()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("styles", nargs="*", help=f"some of {', '.join(STYLES)}")
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    unknown = set(args.styles) - set(STYLES)
    if unknown:
        parser.error(f"unknown launch styles {sorted(unknown)}: choose from {STYLES}")
    sys.path.insert(0, str(ROOT))
    import torch

    from utils.distributed import free_port

    print(f"torch {torch.__version__}, {args.trials} trials per launch style")
    for style in args.styles or STYLES:
        passed = sum(trial(style, free_port(), i) for i in range(args.trials))
        print(f"{style:18} restarts that reconnected: {passed} of {args.trials}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
