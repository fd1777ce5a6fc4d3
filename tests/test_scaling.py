"""The scaling chapter's training script (``scripts/train_diffusion.py``),
``utils.distributed`` and ``utils.sharding``: two gloo processes on loopback compute the
step of one process, replicated (DDP) or sharded (FSDP2), with gradient accumulation
too; a killed run resumes from its checkpoint, also across an epoch and under torchrun
itself; and a bad launch or a foreign checkpoint gets a clear error.

Most ranks are forked from the test process, with the environment torchrun gives its
workers, so they start in a fraction of a second; one test goes through torchrun's
agent, its store, its SIGTERM and its restart, as the chapter does.
"""

import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from utils import chapter_code, data, distributed, training

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "train_diffusion.py"
#: A small U-Net on a few images: a step takes milliseconds. One warm-up step: the
#: first step has the full learning rate.
RANK_DRAWS = [
    "--batch-size",
    "8",
    "--train-size",
    "64",
    "--channels",
    "16,16,16",
    "--warmup-steps",
    "1",
]
#: The same, with draws keyed by image: any layout computes the one-process step.
SMALL = [*RANK_DRAWS, "--draws", "sample"]
LR = 2e-3  # the chapter's
#: fp32 agreement of gradients summed in another order, relative to the largest
#: gradient of the same parameter (measured: 3.3e-6 at most).
GRADIENT_TOLERANCE = 1e-5
#: Adam's first step moves a weight by lr * g / (|g| + eps), eps = 1e-8: by about lr
#: wherever the gradient is well above eps, so there the weights agree to rounding
#: (measured: 3e-5 of lr where |g| > 100 eps). Where the gradient is itself rounding
#: noise below eps (a bias before a normalisation), the step is lr * g / eps, and the
#: weights differ by up to lr / eps times the gradients' difference (measured: 5% of
#: lr), which is what the test allows there.
EPS = 1e-8
WEIGHT_TOLERANCE = 1e-3 * LR
LAUNCH = (*distributed.LAUNCH_VARIABLES, "TORCHELASTIC_RESTART_COUNT")


@pytest.fixture(scope="module")
def script():
    try:
        data.fashion_mnist(train=True)
    except data.DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not in the data folder or cache")
    spec = importlib.util.spec_from_file_location("train_diffusion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def plain_process(monkeypatch):
    """No launch variables, plain fp32: the test process is one plain process."""
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GDL_PRECISION", "fp32")


def _rank(module, env: dict, argv: list[str], folder: Path | None) -> None:
    os.environ.update(env)
    if folder is not None:
        os.chdir(folder)
    torch.set_num_threads(1)  # a forked child must not use the parent's thread pool
    os._exit(module.main(argv))


def run_ranks(
    module,
    argv: list[str],
    world: int = 2,
    restart: int = 0,
    folders: list[Path] | None = None,
) -> list:
    """Run the script's ``main`` on ``world`` forked ranks, as torchrun would (each in
    its folder of ``folders``, if given): when one fails, the others are stopped.
    Returns their exit codes."""
    port = distributed.free_port()
    context = multiprocessing.get_context("fork")
    ranks = []
    for rank in range(world):
        env = {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "TORCHELASTIC_RESTART_COUNT": str(restart),
            "GLOO_SOCKET_IFNAME": "lo",
        }
        folder = folders[rank] if folders else None
        process = context.Process(target=_rank, args=(module, env, argv, folder))
        process.start()
        ranks.append(process)
    deadline, stopping = time.monotonic() + 120, None
    while any(p.is_alive() for p in ranks):
        wait([p.sentinel for p in ranks if p.is_alive()], timeout=1.0)
        if any(p.exitcode not in (None, 0) for p in ranks) or (
            time.monotonic() > deadline
        ):
            stopping = stopping or time.monotonic()
            # SIGTERM, as torchrun; SIGKILL for a rank stuck in a collective
            hard = time.monotonic() - stopping > 5
            for p in ranks:
                if p.is_alive():
                    p.kill() if hard else p.terminate()
    for p in ranks:
        p.join()
    return [p.exitcode for p in ranks]


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def largest_difference(a: dict, b: dict, part: str = "model") -> float:
    return max(
        (a[part][name] - b[part][name]).abs().max().item()
        for name in a[part]
        if a[part][name].is_floating_point()
    )


def assert_same_first_step(run: dict, reference: dict) -> None:
    """One Adam step from the same weights: the gradients agree to fp32 rounding; the
    weights (and their average) agree to rounding where the gradient is well above
    Adam's eps, and elsewhere within lr / eps times the gradients' difference."""
    assert_gradients_agree(run, reference)
    g_run, g_ref = gradient(run), gradient(reference)
    allowed = WEIGHT_TOLERANCE + LR * (g_run - g_ref).abs() / EPS
    clear = g_ref.abs() > 100 * EPS
    assert clear.float().mean() > 0.95  # nearly every weight has a real gradient
    for part in ("model", "ema"):
        names = list(reference["optimizer"]["state"])  # the parameters
        w_run = torch.cat([run[part][name].flatten() for name in names])
        w_ref = torch.cat([reference[part][name].flatten() for name in names])
        difference = (w_run - w_ref).abs()
        assert len(difference) == len(g_ref), part
        assert difference[clear].max() < WEIGHT_TOLERANCE, part
        assert (difference <= allowed).all(), part


def gradients(state: dict) -> dict[str, torch.Tensor]:
    """The gradient of each parameter in a checkpoint of one step: Adam's first moment
    is then (1 - beta1) g."""
    beta1 = state["optimizer"]["param_groups"][0]["betas"][0]
    moments = state["optimizer"]["state"]  # keyed by parameter name
    return {name: moment["exp_avg"] / (1 - beta1) for name, moment in moments.items()}


def assert_gradients_agree(run: dict, reference: dict) -> None:
    """Each parameter's gradient agrees to fp32 rounding with the reference, relative to
    that parameter's largest gradient (not the model's: a small parameter's gradient,
    wrong by far more than rounding, would hide under the largest one)."""
    g_run = gradients(run)
    for name, g_ref in gradients(reference).items():
        scale = g_ref.abs().max()
        assert (g_run[name] - g_ref).abs().max() <= GRADIENT_TOLERANCE * scale, name


def gradient(state: dict) -> torch.Tensor:
    """The gradient of a checkpoint's one step, all parameters in one vector."""
    return torch.cat([g.flatten() for g in gradients(state).values()])


@pytest.fixture(scope="module")
def one_process(script, tmp_path_factory):
    """The reference: one plain process, the whole batch, one step."""
    folder = tmp_path_factory.mktemp("one")
    checkpoint = folder / "one.pt"
    argv = SMALL + ["--steps", "1", "--checkpoint", str(checkpoint)]
    argv += ["--log-dir", str(folder / "log")]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GDL_PRECISION", "fp32")
        for name in LAUNCH:
            env.delenv(name, raising=False)
        assert script.main(argv) == 0
    return weights(checkpoint)


def test_two_processes_and_accumulation_compute_the_step_of_one(
    script, one_process, tmp_path
):
    summaries = {}
    for name, world, micro, shard in (
        ("accumulated", 1, 2, False),
        ("ddp", 2, 1, False),
        ("ddp_no_sync", 2, 2, False),
        ("fsdp2", 2, 1, True),
        ("fsdp2_accumulated", 2, 2, True),
    ):
        checkpoint = tmp_path / f"{name}.pt"
        argv = (
            SMALL
            + ["--shard"] * shard
            + [
                "--steps",
                "1",
                "--accumulate",
                str(micro),
                "--checkpoint",
                str(checkpoint),
                "--log-dir",
                str(tmp_path / name),
                "--summary",
                str(tmp_path / f"{name}.json"),
                "--count-all-reduces",
            ]
        )
        if world == 1:
            assert script.main(argv) == 0
        else:
            assert run_ranks(script, argv, world) == [0, 0]
        run = weights(checkpoint)
        summary = json.loads((tmp_path / f"{name}.json").read_text())
        assert (summary["world_size"], summary["accumulate"]) == (world, micro)
        assert summary["sharded"] is shard
        assert run["step"] == 1
        assert_same_first_step(run, one_process)
        summaries[name] = summary
    # with accumulation, the first micro-batch's backward pass all-reduces nothing
    # (no_sync): as many all-reduces as without accumulation
    counts = [summaries[n]["gradient_all_reduces"] for n in ("ddp", "ddp_no_sync")]
    assert counts[0] >= 1 and counts[1] == counts[0]
    # sharded: each of 2 ranks holds half the bytes (rank 0 a few more: the extra row
    # of a parameter whose first dimension is odd)
    for part, ddp_bytes in summaries["ddp"]["bytes_per_rank"].items():
        fsdp_bytes = summaries["fsdp2"]["bytes_per_rank"][part]
        assert ddp_bytes / 2 <= fsdp_bytes < 0.51 * ddp_bytes, part
    # the check resolves a step: from the initial weights (the script's seed), the
    # step moved weights by about lr
    ns = chapter_code.tagged_definitions(
        script.NOTEBOOK, {"UNet"}, {"cfg": SimpleNamespace(min_snr=5.0)}
    )
    torch.manual_seed(0)
    start = {"model": ns["UNet"]((16, 16, 16)).state_dict()}
    assert largest_difference(one_process, start) > 0.5 * LR


@pytest.mark.parametrize("shard", [False, True], ids=["ddp", "fsdp2"])
def test_a_killed_run_resumes_exactly(script, tmp_path, shard):
    runs = {}
    for name in ("uninterrupted", "killed"):
        checkpoint = tmp_path / f"{name}.pt"
        argv = [*RANK_DRAWS, *["--shard"] * shard] + [
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--checkpoint",
            str(checkpoint),
            "--log-dir",
            str(tmp_path / name),
        ]
        if name == "killed":
            argv += ["--fail-at-step", "3"]
            # attempt 1: the last rank exits as step 3 begins; the checkpoint of
            # step 2 stays
            codes = run_ranks(script, argv)
            assert codes[1] == 1 and codes[0] != 0
            assert weights(checkpoint)["step"] == 2
            # attempt 2 (torchrun's restart count 1) resumes at step 2
            assert run_ranks(script, argv, restart=1) == [0, 0]
        else:
            assert run_ranks(script, argv) == [0, 0]
        runs[name] = weights(checkpoint)
    assert runs["killed"]["step"] == 4
    # the same ranks, the same order of sums: equal to the last bit
    for part in ("model", "ema"):
        assert largest_difference(runs["killed"], runs["uninterrupted"], part) == 0
    moments = [run["optimizer"]["state"] for run in runs.values()]
    assert runs["killed"]["ema_count"] == 4
    assert all(
        torch.equal(moments[0][i][key], moments[1][i][key])
        for i in moments[0]
        for key in ("exp_avg", "exp_avg_sq")
    )
    # each attempt logged to its own folder: the first one up to the step before the
    # failure (rank 0, stopped, closes its log on the way out), the second one from
    # the checkpoint on
    logs = tmp_path / "killed"
    assert sorted(p.name for p in logs.iterdir()) == ["attempt-1", "attempt-2"]
    steps = {
        attempt: training.read_scalars(logs / attempt)["loss/train"][0]
        for attempt in ("attempt-1", "attempt-2")
    }
    assert list(steps["attempt-1"]) == [1, 2] and list(steps["attempt-2"]) == [3, 4]


def test_another_notebook_is_named_when_it_is_not_there(script, tmp_path, capsys):
    missing = tmp_path / "edited.ipynb"
    assert script.main([*SMALL, "--notebook", str(missing)]) == 2
    assert f"no notebook at {missing}" in capsys.readouterr().err


def test_a_bad_launch_is_named(script, monkeypatch, capsys):
    with pytest.raises(distributed.LaunchError, match="MASTER_ADDR, MASTER_PORT are"):
        distributed.read_launch({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    launch = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "LOCAL_RANK": "0"}
    with pytest.raises(distributed.LaunchError, match="RANK='one' is not an integer"):
        distributed.read_launch({**launch, "WORLD_SIZE": "2", "RANK": "one"})
    with pytest.raises(distributed.LaunchError, match="not a rank of WORLD_SIZE=2"):
        distributed.read_launch({**launch, "WORLD_SIZE": "2", "RANK": "2"})
    assert distributed.read_launch({}) == (0, 0, 1, 0)
    # the script says it before any work
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert script.main(SMALL) == 2
    error = capsys.readouterr().err
    assert error.startswith("train_diffusion.py: error: WORLD_SIZE=2 is set, but")
    assert "Start the script with torchrun" in error


def test_a_checkpoint_of_another_model_is_refused(
    script, one_process, tmp_path, capsys
):
    checkpoint = tmp_path / "other.pt"
    torch.save(one_process, checkpoint)
    argv = SMALL + ["--steps", "1", "--checkpoint", str(checkpoint)]
    argv += ["--log-dir", str(tmp_path)]
    assert script.main([*argv, "--channels", "8,16,16"]) == 2
    error = capsys.readouterr().err
    assert "other.pt was written by another run (channels [16, 16, 16] there, " in error
    assert "[8, 16, 16] here)" in error
    checkpoint.write_bytes(b"not a checkpoint")
    assert script.main(argv) == 2
    assert "other.pt is not a readable checkpoint" in capsys.readouterr().err
    assert checkpoint.read_bytes() == b"not a checkpoint"  # never overwritten


def test_batches_that_do_not_split_are_refused(script, capsys):
    assert script.main([*SMALL, "--accumulate", "3"]) == 2
    assert "--batch-size 8 does not split into 1 process(es) x 3 micro-batch(es)" in (
        capsys.readouterr().err
    )


def _draw(draws, step: int, rows: torch.Tensor) -> tuple:
    draws.select(step, rows)
    n = len(rows)
    return (
        draws.rand(n),
        draws.randint(1, 100, (n,)),
        draws.randn_like(torch.zeros(n, 1, 2, 2)),
    )


def test_sample_draws_give_each_image_its_draws_on_any_process():
    whole = _draw(distributed.StepDraws(8, 3, "sample"), 5, torch.arange(8))
    seen = []
    for rank in range(2):
        launch = distributed.Launch(rank, rank, 2, 0, torch.device("cpu"), "gloo")
        for rows in distributed.shard_rows(4, launch).chunk(2):  # 2 micro-batches
            got = _draw(distributed.StepDraws(8, 3, "sample", rank), 5, rows)
            assert all(torch.equal(g, w[rows]) for g, w in zip(got, whole))
            seen += rows.tolist()
    assert sorted(seen) == list(range(8))
    # another step, other draws
    other = _draw(distributed.StepDraws(8, 3, "sample"), 6, torch.arange(8))
    assert not torch.equal(other[2], whole[2])


def test_rank_draws_differ_between_ranks_and_repeat_on_resume():
    def rows(rank: int) -> torch.Tensor:
        launch = distributed.Launch(rank, rank, 2, 0, torch.device("cpu"), "gloo")
        return distributed.shard_rows(4, launch)

    first, second = (
        _draw(distributed.StepDraws(8, 3, "rank", rank), 5, rows(rank))
        for rank in (0, 1)
    )
    assert not torch.equal(first[2], second[2])  # independent noise on each rank
    again = _draw(distributed.StepDraws(8, 3, "rank", 0), 5, rows(0))  # on resume
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    later = _draw(distributed.StepDraws(8, 3, "rank", 0), 6, rows(0))
    assert not torch.equal(later[2], first[2])


def test_rank_draws_differ_between_micro_batches():
    launch = distributed.Launch(1, 1, 2, 0, torch.device("cpu"), "gloo")
    first, second = (
        _draw(distributed.StepDraws(8, 3, "rank", 1), 5, rows)
        for rows in distributed.shard_rows(4, launch).chunk(2)
    )
    assert all(not torch.equal(a, b) for a, b in zip(first[::2], second[::2]))


def _sync_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: a sharded Linear, a backward pass with the gradient
    exchange paused, then one without; writes whether a sharded gradient existed after
    each."""
    from utils import sharding

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        torch.manual_seed(0)
        model = sharding.shard(torch.nn.Sequential(torch.nn.Linear(4, 4)))
        x = torch.randn(3, 4)
        with distributed.gradient_sync_paused(model):
            model(x).sum().backward()
        paused = model[0].weight.grad is not None
        model(x).sum().backward()
        synced = model[0].weight.grad is not None
        Path(out, f"rank{rank}.txt").write_text(f"{paused} {synced}")
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp2_exchanges_no_gradient_while_paused(tmp_path):
    torch.multiprocessing.spawn(
        _sync_worker, args=(distributed.free_port(), str(tmp_path)), nprocs=2
    )
    # no reduce-scatter under the pause: the sharded gradient appears only after the
    # backward pass outside it
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "False True"


def test_a_sharded_checkpoint_resumes_replicated(script, tmp_path):
    """The checkpoint holds whole tensors: 2 sharded steps, then 2 more under DDP, end
    where 4 DDP steps end (to fp32 rounding)."""
    common = SMALL + ["--steps", "4", "--checkpoint-every", "2"]
    common += ["--log-dir", str(tmp_path)]
    whole = [*common, "--checkpoint", str(tmp_path / "whole.pt")]
    assert run_ranks(script, whole) == [0, 0]
    mixed = [*common, "--checkpoint", str(tmp_path / "mixed.pt")]
    assert run_ranks(script, [*mixed, "--shard", "--fail-at-step", "3"])[1] == 1
    assert weights(tmp_path / "mixed.pt")["step"] == 2
    summary = tmp_path / "mixed.json"
    assert run_ranks(script, [*mixed, "--summary", str(summary)], restart=1) == [0, 0]
    resumed = json.loads(summary.read_text())
    assert (resumed["sharded"], resumed["start_step"]) == (False, 2)
    mixed_state, whole_state = (
        weights(tmp_path / "mixed.pt"),
        weights(tmp_path / "whole.pt"),
    )
    assert mixed_state["step"] == 4
    for part in ("model", "ema"):
        assert largest_difference(mixed_state, whole_state, part) < 1e-6


def test_step_draws_refuse_what_they_do_not_key():
    draws = distributed.StepDraws(8, 3)
    with pytest.raises(RuntimeError, match="select"):
        draws.rand(2)
    draws.select(0, torch.arange(2))
    with pytest.raises(ValueError, match="drew 3 values, but this process holds 2"):
        draws.rand(3)
    # a random function it does not key is an error, not the global generator
    with pytest.raises(AttributeError, match="calls torch.randn, which StepDraws"):
        draws.randn(2)
    assert draws.cat is torch.cat  # every other name is torch's
    with pytest.raises(ValueError, match="mode must be one of"):
        distributed.StepDraws(8, 3, "global")


def test_batches_reshuffle_each_epoch_and_resume_mid_epoch(script):
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    dataset = TensorDataset(torch.arange(16))
    order = {}
    for rank in range(2):
        sampler = DistributedSampler(dataset, 2, rank, seed=0, drop_last=True)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler)  # 4 per epoch
        source = script.batches(loader, sampler, 0)
        order[rank] = [next(source)[0].tolist() for _ in range(12)]  # 3 epochs
        # a run resumed at step 6 (epoch 1, its third batch) goes on as the
        # uninterrupted one
        resumed = script.batches(loader, sampler, 6)
        assert [next(resumed)[0].tolist() for _ in range(6)] == order[rank][6:]
    for epoch in range(3):
        images = [
            i for r in (0, 1) for b in order[r][4 * epoch : 4 * epoch + 4] for i in b
        ]
        assert sorted(images) == list(range(16))  # each epoch: every image once
    # set_epoch: every epoch in another order
    assert order[0][0:4] != order[0][4:8] != order[0][8:12]


def test_the_gradient_check_is_per_parameter():
    torch.manual_seed(0)
    reference = {
        "model": {"big": torch.zeros(3), "small": torch.zeros(3)},
        "optimizer": {
            "param_groups": [{"betas": (0.5, 0.999)}],
            "state": {
                "big": {"exp_avg": torch.tensor([0.5, -0.2, 0.1])},
                "small": {"exp_avg": torch.tensor([1e-4, -2e-4, 5e-5])},
            },
        },
    }
    run = {
        "model": reference["model"],
        "optimizer": {
            "param_groups": reference["optimizer"]["param_groups"],
            "state": {
                name: {"exp_avg": moment["exp_avg"].clone()}
                for name, moment in reference["optimizer"]["state"].items()
            },
        },
    }
    assert_gradients_agree(run, reference)
    # the small parameter's gradient 0.1% off: far above rounding for it, yet below
    # 1e-5 of the model's largest gradient
    run["optimizer"]["state"]["small"]["exp_avg"] *= 1.001
    g_run, g_ref = gradient(run), gradient(reference)
    assert (g_run - g_ref).abs().max() < GRADIENT_TOLERANCE * g_ref.abs().max()
    with pytest.raises(AssertionError, match="small"):
        assert_gradients_agree(run, reference)


def test_shard_needs_several_processes(script, capsys):
    assert script.main([*SMALL, "--shard"]) == 2
    assert "--shard needs several processes" in capsys.readouterr().err


def test_a_store_shared_by_all_attempts_is_handled(monkeypatch):
    base = {"MASTER_ADDR": "127.0.0.1", "TORCHELASTIC_RESTART_COUNT": "1"}
    # torch's own rendezvous where it works: no agent store, or no restart
    assert distributed.attempt_store(base, 2, 0) is None
    shared = {**base, "TORCHELASTIC_USE_AGENT_STORE": "True"}
    assert distributed.attempt_store(shared, 2, 0) is None  # max restarts unset: 0
    shared["TORCHELASTIC_MAX_RESTARTS"] = "3"
    # several machines: no safe prefix, a clear error
    with pytest.raises(distributed.LaunchError, match="TORCH_DISABLE_SHARE_RDZV"):
        distributed.attempt_store({**shared, "GROUP_WORLD_SIZE": "2"}, 16, 1)
    # one machine: the attempt's keys under a prefix of their own
    port = distributed.free_port()
    server = torch.distributed.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False
    )
    store = distributed.attempt_store({**shared, "MASTER_PORT": str(port)}, 2, 1)
    store.set("address", "new")
    assert server.get("attempt-1/address") == b"new"


def test_torchrun_restarts_a_failed_group_which_resumes(script, tmp_path):
    """Through torchrun itself: its c10d rendezvous with a store per attempt, the
    agent's SIGTERM to the surviving rank, its restart, and the resume."""

    def run(name: str, *extra: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "--max-restarts=1",
            str(SCRIPT),
            *SMALL,
            "--steps=4",
            "--checkpoint-every=2",
            f"--checkpoint={tmp_path / name}.pt",
            f"--log-dir={tmp_path / name}",
            f"--summary={tmp_path / name}.json",
            *extra,
        ]
        env = {
            **os.environ,
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo",
            "GDL_TEXT_PROGRESS": "0",
        }
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=120
        )

    done = run("killed", "--fail-at-step=3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exiting at step 3 (--fail-at-step)" in done.stdout
    assert "attempt 2: resumed from the checkpoint of step 2" in done.stdout
    summary = json.loads((tmp_path / "killed.json").read_text())
    assert (summary["attempt"], summary["start_step"]) == (2, 2)
    logs = sorted(p.name for p in (tmp_path / "killed").iterdir())
    assert logs == ["attempt-1", "attempt-2"]
    # the same run uninterrupted (forked ranks): equal to the last bit
    argv = SMALL + ["--steps", "4", "--checkpoint-every", "2"]
    argv += ["--checkpoint", str(tmp_path / "whole.pt"), "--log-dir", str(tmp_path)]
    assert run_ranks(script, argv) == [0, 0]
    killed, whole = weights(tmp_path / "killed.pt"), weights(tmp_path / "whole.pt")
    assert largest_difference(killed, whole) == 0


def test_tagged_definitions_name_what_is_missing(tmp_path):
    cell = {
        "cell_type": "code",
        "metadata": {"tags": ["export"]},
        "source": [
            "import math\n",
            "import a_plotting_library_not_installed  # read by no definition\n",
            "def area(r):\n",
            "    return math.pi * r * r\n",
        ],
        "outputs": [],
    }
    path = tmp_path / "chapter.ipynb"
    path.write_text(json.dumps({"cells": [cell, {**cell, "metadata": {}}]}))
    ns = chapter_code.tagged_definitions(path, {"area"})
    assert ns["area"](1.0) == pytest.approx(3.14159, abs=1e-5)
    # an import no definition reads is not run: a training process does not load a
    # chapter's plotting libraries
    assert "a_plotting_library_not_installed" not in ns
    with pytest.raises(chapter_code.ChapterCodeError, match=r"define none of \['UNet'"):
        chapter_code.tagged_definitions(path, {"UNet"})
    with pytest.raises(chapter_code.ChapterCodeError, match="no code cell tagged 'x'"):
        chapter_code.tagged_definitions(path, {"area"}, tag="x")
    with pytest.raises(chapter_code.ChapterCodeError, match="no runtime.setup"):
        chapter_code.setup_settings(path)


def _resume_worker(rank: int, port: int, steps: tuple, seeds: tuple, out: str) -> None:
    """One of two gloo processes: a model seeded by ``seeds[rank]``, at
    ``steps[rank]``. Writes what agree_on_resume said."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    launch = distributed.Launch(rank, rank, 2, 0, torch.device("cpu"), "gloo")
    torch.manual_seed(seeds[rank])
    model = torch.nn.Linear(3, 2)
    try:
        distributed.agree_on_resume(launch, steps[rank], model, Path("ckpt.pt"))
        said = "agreed"
    except distributed.CheckpointError as err:
        said = str(err)
    finally:
        torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.txt").write_text(said)


@pytest.mark.parametrize(
    "steps, seeds",
    [((40, 40), (0, 0)), ((40, 0), (0, 1)), ((40, 40), (0, 1))],
    ids=["same", "one-rank-blind", "other-weights"],
)
def test_ranks_that_would_resume_from_different_states_stop_on_every_rank(
    steps, seeds, tmp_path
):
    torch.multiprocessing.spawn(
        _resume_worker,
        args=(distributed.free_port(), steps, seeds, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    if (steps, seeds) == ((40, 40), (0, 0)):
        assert said == ["agreed", "agreed"]
        return
    for text in said:
        assert "rank 0 at step 40 (weights" in text
        assert f"rank 1 at step {steps[1]} (weights" in text
        assert "must see the same checkpoint ckpt.pt" in text


@pytest.mark.parametrize("shard", [False, True], ids=["ddp", "fsdp2"])
def test_a_rank_blind_to_the_checkpoint_stops_the_run(script, tmp_path, shard, capfd):
    """A relative --checkpoint that resolves to another folder on each rank (as on two
    machines' local disks): one error on every rank, not a rank starting afresh (or,
    sharded, a hang in mismatched collectives)."""
    folders = [tmp_path / "rank0", tmp_path / "rank1"]
    for folder in folders:
        folder.mkdir()
    argv = SMALL + ["--steps", "4", "--checkpoint-every", "2"] + ["--shard"] * shard
    argv += ["--checkpoint", "run.pt", "--log-dir", str(tmp_path / "log")]
    assert run_ranks(script, [*argv, "--fail-at-step", "3"], folders=folders)[1] == 1
    # only rank 0's folder holds the checkpoint of step 2
    assert [(f / "run.pt").exists() for f in folders] == [True, False]
    assert run_ranks(script, argv, restart=1, folders=folders) == [2, 2]
    error = capfd.readouterr().err
    assert "would resume from different states: rank 0 at step 2, rank 1 at step 0" in (
        error
    )


def test_the_weights_checksum_sees_one_changed_value():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    before = distributed.weights_checksum(model)
    assert distributed.weights_checksum(model) == before
    with torch.no_grad():
        model.bias[0] += 1e-6
    assert distributed.weights_checksum(model) != before
