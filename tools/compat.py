"""Whether the book runs on an older PyTorch: a fresh virtual environment with the given
torch (and its torchvision), the unit tests and every chapter's smoke profile.

README's "Supported PyTorch versions" lists the releases tried with this script. It
installs several GB (a CUDA build of torch from PyPI, with its nvidia-* libraries) and
runs for 5-15 minutes on a 2-core CPU, so it is run by hand, not in CI:

``OMP_NUM_THREADS=1 nice -n 19 python -m tools.compat --torch 2.4.1``

The environment is made outside the repository (``--venv-root``) and removed at the end
unless ``--keep``. It gets requirements.txt without its torch and torchvision pins and
without the tools the test run does not need (the book builder, the browser driver, the
linter), and the repository on ``PYTHONPATH``. The last line printed is the summary; the
exit status is 0 only when every test and every notebook passed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: requirements.txt entries the compatibility run leaves out: the two it pins itself and
#: what only builds, renders or lints the book (their own tests skip without them).
LEFT_OUT = {
    "torch",
    "torchvision",
    "jupyter-book",
    "playwright",
    "ruff",
    "django-static-mathjax",
}
#: What the unit tests import besides requirements.txt's packages (jupyter-book brings
#: them in the book's own environment).
EXTRA = ["pyyaml", "nbclient"]
#: Where the environments go unless ``--venv-root`` says otherwise (outside the
#: repository, so neither pytest nor ruff walks into them).
DEFAULT_VENV_ROOT = Path.home() / ".cache" / "gdl-compat"
#: Asks the environment's ``python3`` Jupyter kernel, the one nbval starts, which torch
#: it imports; prints ``<torch version> <kernel's interpreter>``.
KERNEL_CHECK = """
import nbformat
from nbclient import NotebookClient
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell(
    "import sys, torch; print(torch.__version__, sys.executable)")]
NotebookClient(nb, kernel_name="python3", timeout=300).execute()
print(nb.cells[0].outputs[0]["text"].strip())
"""
#: Counts in pytest's closing line ("3 failed, 210 passed, 2 skipped in 61.2s").
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")


@dataclass(frozen=True)
class Pins:
    """The torch and torchvision releases asked for, and what that torch needs besides
    (:func:`implied`), as pip requirement specifiers."""

    torch: str
    torchvision: str
    implied: tuple[str, ...] = ()


def _release(version: str, what: str) -> tuple[int, ...]:
    """``"2.4.1"`` -> ``(2, 4, 1)``; a readable error for anything but 2 or 3
    numbers."""
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", version):
        raise ValueError(
            f"{what} {version!r} is not a release number like 2.4 or 2.4.1"
        )
    return tuple(int(part) for part in version.split("."))


def _spec(name: str, version: str) -> str:
    """A pip specifier: ``torch==2.4.1`` for a full release, ``torch==2.4.*`` for a
    major.minor (the newest patch release of that line)."""
    return f"{name}=={version}" + (".*" if version.count(".") == 1 else "")


def matching_torchvision(torch_version: str) -> str:
    """The torchvision line built for a torch release, by PyTorch's compatibility
    table: torch 2.N pairs with torchvision 0.(N+15), torch 1.N with 0.(N+1). Only the
    major.minor is returned: torchvision pins its torch exactly, so pip picks the patch
    release that matches."""
    major, minor, *_ = _release(torch_version, "--torch")
    if major == 2:
        return f"0.{minor + 15}"
    if major == 1 and minor >= 8:
        return f"0.{minor + 1}"
    raise ValueError(
        f"no known torchvision for torch {torch_version}; pass --torchvision"
    )


def pins(torch_version: str, torchvision_version: str | None = None) -> Pins:
    """The specifiers to install: the given torchvision, or the matching one, and the
    implied pins."""
    _release(torch_version, "--torch")
    vision = torchvision_version or matching_torchvision(torch_version)
    _release(vision, "--torchvision")
    return Pins(
        _spec("torch", torch_version),
        _spec("torchvision", vision),
        tuple(implied(torch_version)),
    )


def implied(torch_version: str) -> list[str]:
    """Pins an older torch needs besides its torchvision: numpy 1.x before torch 2.3.1
    (2.2.2 is built against numpy 1 and says "Numpy is not available" beside numpy 2;
    2.3.1 runs with numpy 2)."""
    release = _release(torch_version, "--torch")
    return ["numpy<2"] if release < (2, 3, 1) and release != (2, 3) else []


def requirement_name(line: str) -> str:
    """The package a requirements.txt line names, lower-cased (``""`` for a comment, a
    blank line or an option such as ``-e .``)."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return ""
    return re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower()


def other_requirements(requirements: Path = ROOT / "requirements.txt") -> list[str]:
    """requirements.txt's lines less torch, torchvision and the tools in
    :data:`LEFT_OUT`, plus :data:`EXTRA`."""
    kept = [
        line.split("#", 1)[0].strip()
        for line in requirements.read_text().splitlines()
        if requirement_name(line) and requirement_name(line) not in LEFT_OUT
    ]
    return kept + EXTRA


def counts(pytest_output: str) -> dict[str, int]:
    """The outcome counts of pytest's closing line (empty when there is none)."""
    closing = [line for line in pytest_output.splitlines() if COUNT.search(line)]
    if not closing:
        return {}
    found = COUNT.findall(closing[-1])
    return {word.rstrip("s") if word == "errors" else word: int(n) for n, word in found}


def _run(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``command`` in the repository root, echo its output as it comes, and return
    its exit status and the output."""
    shown = (word if "\n" not in word else "<script>" for word in command)
    print("$", " ".join(shown), flush=True)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return process.wait(), "".join(lines)


def _describe(result: dict[str, int], status: int) -> str:
    """``"210 passed, 2 skipped"``, or the exit status when pytest printed no
    counts."""
    if not result:
        return f"no result (exit {status})"
    return ", ".join(f"{n} {word}" for word, n in result.items())


def check(
    chosen: Pins, venv: Path, python: str, notebooks: bool, extra: list[str]
) -> bool:
    """Make the environment at ``venv``, install, check the kernel, run the tests and
    (when ``notebooks``) the smoke profiles; print the summary line and return whether
    everything passed."""
    label = f"{chosen.torch} {chosen.torchvision}"
    status, _ = _run([python, "-m", "venv", "--clear", str(venv)])
    py = str(venv / "bin" / "python")
    if status == 0:
        status, _ = _run(
            [py, "-m", "pip", "install", chosen.torch, chosen.torchvision]
            + other_requirements()
            + list(chosen.implied)
            + extra
        )
    if status != 0:
        print(f"compat: {label}: the install failed (exit {status}): FAIL")
        return False
    env = dict(os.environ, GDL_SMOKE="1", PYTHONPATH=str(ROOT))
    status, versions = _run(
        [
            py,
            "-c",
            "import platform, numpy, torch, torchvision; print("
            "f'torch {torch.__version__}, torchvision {torchvision.__version__}, "
            "numpy {numpy.__version__}, Python {platform.python_version()}')",
        ],
        env,
    )
    label = versions.strip().splitlines()[-1] if status == 0 else label
    if status != 0:
        print(f"compat: {label}: torch does not import: FAIL")
        return False
    status, kernel = _run([py, "-c", KERNEL_CHECK], env)
    # the kernel's own log lines (stderr) may follow the printed line
    if status != 0 or not any(line.endswith(py) for line in kernel.splitlines()):
        print(f"compat: {label}: the python3 kernel is not {py}: FAIL")
        return False
    parts, passed = [], True
    suites = [("tests", ["tests"])] + (
        [("notebooks", ["book", "templates"])] if notebooks else []
    )
    for name, paths in suites:
        status, output = _run([py, "-m", "pytest", "-q", *paths], env)
        result = counts(output)
        parts.append(f"{name} {_describe(result, status)}")
        passed = passed and status == 0
    verdict = "PASS" if passed else "FAIL"
    print(f"compat: {label}: {'; '.join(parts)}: {verdict}")
    return passed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see the module's docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--torch", required=True, help="torch release: 2.4.1, or 2.4 for its newest"
    )
    parser.add_argument(
        "--torchvision", help="torchvision release (default: the one built for torch)"
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="SPEC",
        help="another pip requirement, e.g. 'numpy<2' (repeatable)",
    )
    parser.add_argument(
        "--venv-root",
        type=Path,
        default=DEFAULT_VENV_ROOT,
        help=f"where the environment is made (default {DEFAULT_VENV_ROOT})",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter that makes the venv"
    )
    parser.add_argument(
        "--tests-only", action="store_true", help="skip the notebooks' smoke profiles"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the environment afterwards"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the check the command line asks for; 0 when everything passed."""
    args = parse_args(argv)
    try:
        chosen = pins(args.torch, args.torchvision)
    except ValueError as error:
        raise SystemExit(f"compat: {error}") from None
    root = args.venv_root.resolve()
    if root == ROOT or ROOT in root.parents:
        raise SystemExit(
            f"compat: --venv-root {root} is inside the repository; pick a folder "
            "outside it (pytest and ruff would walk into the environment)"
        )
    venv = root / f"venv-{args.torch}"
    try:
        return (
            0
            if check(chosen, venv, args.python, not args.tests_only, args.extra)
            else 1
        )
    finally:
        if not args.keep:
            shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
