"""One code style everywhere: ruff's formatter and linter, with the settings of
pyproject.toml (88 characters a line, the width the rendered book's code column shows).

Python modules and notebooks are checked apart, so a notebook that still needs
``ruff format`` does not hide a module that does, and the other way round.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The ruff of this environment (requirements.txt pins it), next to the interpreter.
RUFF = Path(sys.executable).parent / ("ruff.exe" if sys.platform == "win32" else "ruff")


def _ruff_problems(folder: str) -> list[str]:
    """What ``ruff format --check`` and ``ruff check`` report on ``folder``, one entry
    per command that failed (empty when both pass)."""
    if not RUFF.is_file():
        pytest.skip(
            f"ruff is not installed next to {sys.executable} (pip install ruff)"
        )
    problems = []
    for command, fix in (
        (["format", "--check", "--output-format", "concise"], f"ruff format {folder}"),
        (["check", "--output-format", "concise"], f"ruff check --fix {folder}"),
    ):
        # --no-cache: the test writes nothing into the checkout
        done = subprocess.run(
            [str(RUFF), *command, "--no-cache", folder],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            problems.append(
                f"$ ruff {' '.join(command)} {folder} (exit {done.returncode}; "
                f"fix with: {fix}, then by hand)\n{done.stdout}{done.stderr}"
            )
    return problems


@pytest.mark.parametrize(
    "folder", ["utils", "benchmarks", "tools", "scripts", "tests", "_ext"]
)
def test_python_modules_are_formatted_and_lint_clean(folder):
    problems = _ruff_problems(folder)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", ["book", "templates"])
def test_notebooks_are_formatted_and_lint_clean(folder):
    problems = _ruff_problems(folder)
    assert not problems, "\n".join(problems)
