"""A chapter's own code outside its notebook: the definitions of its tagged cells, and
its settings.

A script that trains a chapter's model (``scripts/train_diffusion.py``) runs the
chapter's classes and functions, executed from the notebook, so the two cannot drift
apart. The chapter marks the cells it lends with a cell tag; only their imports,
functions and classes run, never their other statements (a training loop, a figure).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

#: The cell tag of the cells whose definitions scripts may use.
EXPORT_TAG = "export"


class ChapterCodeError(ValueError):
    """A notebook lacks the tagged cells, names or settings a script asks for."""


def _code_cells(path: Path) -> list[dict]:
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChapterCodeError(f"no notebook at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChapterCodeError(f"{path} is not a readable notebook ({exc})") from None
    return [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def tagged_definitions(
    path: Path,
    names: set[str],
    namespace: dict[str, Any] | None = None,
    tag: str = EXPORT_TAG,
) -> dict[str, Any]:
    """Execute the functions and classes of the code cells of ``path`` tagged ``tag``,
    and the imports they read, into ``namespace`` (which holds the globals they read,
    e.g. ``cfg``), and return it; every other statement is skipped.

    A notebook with no cell tagged ``tag``, or whose tagged cells define none of some
    of ``names``, is a :class:`ChapterCodeError` that says what to tag.
    """
    namespace = {} if namespace is None else namespace
    cells = [
        (index, _source(cell))
        for index, cell in enumerate(_code_cells(path))
        if tag in cell.get("metadata", {}).get("tags", [])
    ]
    if not cells:
        raise ChapterCodeError(
            f"{Path(path).name} has no code cell tagged {tag!r}: add the tag to the "
            f"cells that define {', '.join(sorted(names))} (cell metadata, tags)"
        )
    trees = []
    for index, source in cells:
        try:
            trees.append((index, ast.parse(source)))
        except SyntaxError as err:
            raise ChapterCodeError(
                f"code cell {index} of {Path(path).name} is tagged {tag!r} but is not "
                f"plain Python ({err.msg})"
            ) from None
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    # the names the definitions read: an import that binds none of them (a plotting
    # library, IPython's display) is not run, so a training process does not load it
    used = set(names) | {
        node.id
        for _, tree in trees
        for definition in tree.body
        if isinstance(definition, definitions)
        for node in ast.walk(definition)
        if isinstance(node, ast.Name)
    }
    for index, tree in trees:
        keep: list[ast.stmt] = []
        for node in tree.body:
            if isinstance(node, definitions):
                keep.append(node)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                aliases = [
                    alias
                    for alias in node.names
                    if (alias.asname or alias.name.split(".")[0]) in used
                ]
                if aliases:
                    node.names = aliases
                    keep.append(node)
        module = ast.Module(body=keep, type_ignores=[])
        exec(
            compile(module, f"{Path(path).name}, code cell {index}", "exec"), namespace
        )  # noqa: S102
    missing = names - set(namespace)
    if missing:
        raise ChapterCodeError(
            f"the cells of {Path(path).name} tagged {tag!r} define none of "
            f"{sorted(missing)}: tag the cells that define them"
        )
    return namespace


def _setup_call(path: Path) -> ast.Call:
    """The notebook's ``runtime.setup(...)`` call."""
    for source in (_source(cell) for cell in _code_cells(path)):
        if "runtime.setup(" not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "setup"
                and any(
                    k.arg == "full" and isinstance(k.value, ast.Call)
                    for k in node.keywords
                )
            ):
                return node
    raise ChapterCodeError(
        f"{Path(path).name} has no runtime.setup(full=dict(...)) call to read "
        "settings from"
    )


def setup_settings(path: Path) -> dict[str, Any]:
    """The full-profile settings of the notebook's ``runtime.setup(full=dict(...))``
    call, as a dict of Python literals."""
    full = next(k.value for k in _setup_call(path).keywords if k.arg == "full")
    return {k.arg: ast.literal_eval(k.value) for k in full.keywords if k.arg}


def _overrides(path: Path, profile: str) -> dict[str, Any]:
    for k in _setup_call(path).keywords:
        if k.arg == profile and isinstance(k.value, ast.Call):
            return {s.arg: ast.literal_eval(s.value) for s in k.value.keywords if s.arg}
    return {}


def short_settings(path: Path) -> dict[str, Any]:
    """The settings the notebook's short run lowers (its ``runtime.setup`` call's
    ``short=dict(...)``), or an empty dict where it offers none."""
    return _overrides(path, "short")


def gpu_settings(path: Path) -> dict[str, Any]:
    """The settings a full run on a CUDA GPU changes (the ``runtime.setup`` call's
    ``gpu=dict(...)``), or an empty dict where the chapter has none."""
    return _overrides(path, "gpu")


def precision_switches(path: Path) -> dict[str, bool]:
    """The notebook's ``runtime.setup`` switches of its precision (``fast_path``,
    ``bf16_on_cpu``, where it gives them), for ``precision.for_chapter``: a script
    then computes as the chapter does."""
    return {
        k.arg: ast.literal_eval(k.value)
        for k in _setup_call(path).keywords
        if k.arg in ("fast_path", "bf16_on_cpu")
    }
