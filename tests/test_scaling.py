"""The scaling chapter's training script (``scripts/train_diffusion.py``) and
``utils.distributed``: two gloo processes on loopback compute the step of one process
(with gradient accumulation under ``no_sync`` too), a killed run resumes from its
checkpoint, and a bad launch or a foreign checkpoint gets a clear error.

The two ranks are forked from the test process, with the environment torchrun gives
its workers, so they start in a fraction of a second; the chapter runs the same script
under torchrun itself.
"""

import importlib.util
import json
import multiprocessing
import os
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
SMALL = [
    "--batch-size",
    "8",
    "--train-size",
    "64",
    "--channels",
    "16,16,16",
    "--warmup-steps",
    "1",
]
LR = 2e-3  # the chapter's
#: fp32 agreement of gradients summed in another order, relative to the largest.
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


def _rank(module, env: dict, argv: list[str]) -> None:
    os.environ.update(env)
    torch.set_num_threads(1)  # a forked child must not use the parent's thread pool
    os._exit(module.main(argv))


def run_ranks(module, argv: list[str], world: int = 2, restart: int = 0) -> list:
    """Run the script's ``main`` on ``world`` forked ranks, as torchrun would: when one
    fails, the others are stopped. Returns their exit codes."""
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
        process = context.Process(target=_rank, args=(module, env, argv))
        process.start()
        ranks.append(process)
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in ranks):
        wait([p.sentinel for p in ranks if p.is_alive()], timeout=1.0)
        if any(p.exitcode not in (None, 0) for p in ranks) or (
            time.monotonic() > deadline
        ):
            for p in ranks:
                if p.is_alive():
                    p.terminate()
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
    g_run, g_ref = gradient(run), gradient(reference)
    assert (g_run - g_ref).abs().max() < GRADIENT_TOLERANCE * g_ref.abs().max()
    allowed = WEIGHT_TOLERANCE + LR * (g_run - g_ref).abs() / EPS
    clear = g_ref.abs() > 100 * EPS
    assert clear.float().mean() > 0.95  # nearly every weight has a real gradient
    for part in ("model", "ema"):
        # (AveragedModel also keeps its count, n_averaged, beside module.*)
        names = [name for name in reference[part] if name != "n_averaged"]
        w_run = torch.cat([run[part][name].flatten() for name in names])
        w_ref = torch.cat([reference[part][name].flatten() for name in names])
        difference = (w_run - w_ref).abs()
        assert len(difference) == len(g_ref), part
        assert difference[clear].max() < WEIGHT_TOLERANCE, part
        assert (difference <= allowed).all(), part


def gradient(state: dict) -> torch.Tensor:
    """The gradient of a checkpoint's one step: Adam's first moment is then
    (1 - beta1) g."""
    beta1 = state["optimizer"]["param_groups"][0]["betas"][0]
    moments = state["optimizer"]["state"]
    return torch.cat([moments[i]["exp_avg"].flatten() for i in sorted(moments)]) / (
        1 - beta1
    )


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
    for name, world, micro in (
        ("accumulated", 1, 2),
        ("ddp", 2, 1),
        ("ddp_no_sync", 2, 2),
    ):
        checkpoint = tmp_path / f"{name}.pt"
        argv = SMALL + [
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
        ]
        if world == 1:
            assert script.main(argv) == 0
        else:
            assert run_ranks(script, argv, world) == [0, 0]
        run = weights(checkpoint)
        summary = json.loads((tmp_path / f"{name}.json").read_text())
        assert (summary["world_size"], summary["accumulate"]) == (world, micro)
        assert run["step"] == 1
        assert_same_first_step(run, one_process)
    # the check resolves a step: from the initial weights (the script's seed), the
    # step moved weights by about lr
    ns = chapter_code.tagged_definitions(
        script.NOTEBOOK, {"UNet"}, {"cfg": SimpleNamespace(min_snr=5.0)}
    )
    torch.manual_seed(0)
    start = {"model": ns["UNet"]((16, 16, 16)).state_dict()}
    assert largest_difference(one_process, start) > 0.5 * LR


def test_a_killed_run_resumes_exactly(script, tmp_path):
    runs = {}
    for name in ("uninterrupted", "killed"):
        checkpoint = tmp_path / f"{name}.pt"
        argv = SMALL + [
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
    assert all(
        torch.equal(moments[0][i][key], moments[1][i][key])
        for i in moments[0]
        for key in ("exp_avg", "exp_avg_sq")
    )
    # each attempt logged to its own folder: the first one up to the step before the
    # failure (rank 0 was stopped by SIGTERM, with no time to close its log), the
    # second one from the checkpoint on
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


def test_shared_draws_give_each_sample_the_draws_of_one_process():
    whole = distributed.SharedDraws(8, seed=3)
    whole.select(5, torch.arange(8))
    expected = (
        whole.rand(8),
        whole.randint(1, 100, (8,)),
        whole.randn_like(torch.zeros(8, 1, 2, 2)),
    )
    shares = []
    for rank in range(2):
        launch = distributed.Launch(rank, rank, 2, 0, torch.device("cpu"), "gloo")
        for rows in distributed.shard_rows(4, launch).chunk(2):  # 2 micro-batches
            draws = distributed.SharedDraws(8, seed=3)
            draws.select(5, rows)
            got = (
                draws.rand(2),
                draws.randint(1, 100, (2,)),
                draws.randn_like(torch.zeros(2, 1, 2, 2)),
            )
            shares.append((rows, got))
    for i, full in enumerate(expected):
        assert all(torch.equal(got[i], full[rows]) for rows, got in shares)
    assert sorted(torch.cat([rows for rows, _ in shares]).tolist()) == list(range(8))
    with pytest.raises(ValueError, match="drew 3 values, but this process holds 2"):
        draws.rand(3)
    assert draws.cat is torch.cat  # every other name is torch's


def test_tagged_definitions_name_what_is_missing(tmp_path):
    cell = {
        "cell_type": "code",
        "metadata": {"tags": ["export"]},
        "source": ["import math\n", "def area(r):\n", "    return math.pi * r * r\n"],
        "outputs": [],
    }
    path = tmp_path / "chapter.ipynb"
    path.write_text(json.dumps({"cells": [cell, {**cell, "metadata": {}}]}))
    ns = chapter_code.tagged_definitions(path, {"area"})
    assert ns["area"](1.0) == pytest.approx(3.14159, abs=1e-5)
    with pytest.raises(chapter_code.ChapterCodeError, match=r"define none of \['UNet'"):
        chapter_code.tagged_definitions(path, {"UNet"})
    with pytest.raises(chapter_code.ChapterCodeError, match="no code cell tagged 'x'"):
        chapter_code.tagged_definitions(path, {"area"}, tag="x")
    with pytest.raises(chapter_code.ChapterCodeError, match="no runtime.setup"):
        chapter_code.setup_settings(path)


def _resume_worker(rank: int, port: int, steps: tuple, out: str) -> None:
    """One of two gloo processes: a seeded model, at ``steps[rank]``; the second rank
    draws other weights where its step differs, as a rank that found no checkpoint
    starts afresh. Writes what agree_on_resume said."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    launch = distributed.Launch(rank, rank, 2, 0, torch.device("cpu"), "gloo")
    torch.manual_seed(0 if steps[rank] == steps[0] else 1)
    model = torch.nn.Linear(3, 2)
    try:
        distributed.agree_on_resume(launch, steps[rank], model, Path("ckpt.pt"))
        said = "agreed"
    except distributed.CheckpointError as err:
        said = str(err)
    finally:
        torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.txt").write_text(said)


@pytest.mark.parametrize("steps", [(40, 40), (40, 0)], ids=["same", "one-rank-blind"])
def test_ranks_that_would_resume_from_different_states_stop_on_every_rank(
    steps, tmp_path
):
    torch.multiprocessing.spawn(
        _resume_worker,
        args=(distributed.free_port(), steps, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    if steps[0] == steps[1]:
        assert said == ["agreed", "agreed"]
    else:
        for text in said:
            assert "rank 0 at step 40" in text and "rank 1 at step 0" in text
            assert "must see the same checkpoint ckpt.pt" in text


def test_the_weights_checksum_sees_one_changed_value():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    before = distributed.weights_checksum(model)
    assert distributed.weights_checksum(model) == before
    with torch.no_grad():
        model.bias[0] += 1e-6
    assert distributed.weights_checksum(model) != before
