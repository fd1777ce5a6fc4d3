"""What breaks only on a GPU or on Apple silicon, checked in the chapters' code where no
such device is at hand (these tests stand in for a run there):

- MPS has no float64: a tensor on the chosen device is never made float64, and never
  turned into numpy, before it is moved to the CPU;
- every model a chapter trains is moved to the chosen device (on a GPU, a model left on
  the CPU trains there, while its record says cuda);
- no function or loop reseeds the global generator: that would repeat the same shuffle
  order and the same noise in every epoch after the first, on every device.

Each rule is also run on a small piece of code that breaks it, so that it cannot pass
by finding nothing.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb")) + [ROOT / "templates/chapter.ipynb"]
PYTHON = sorted((ROOT / "utils").glob("*.py")) + [ROOT / "scripts/train_diffusion.py"]
#: Calls that reseed a global generator (torch's, CUDA's, numpy's, Python's).
RESEEDS = {"manual_seed", "manual_seed_all", "seed"}
_MAGIC = re.compile(r"^(\s*)[%!].*$", re.M)


def code_cells(path: Path) -> list[str]:
    """The notebook's code cells as Python: IPython's ``%`` and ``!`` lines become
    ``pass``."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [
        _MAGIC.sub(r"\1pass", "".join(c["source"]))
        for c in cells
        if c["cell_type"] == "code"
    ]


def _chain(node: ast.AST) -> list[str]:
    """The method names of a call chain, innermost first: ``x.cpu().double()`` gives
    ``["cpu", "double"]``."""
    names = []
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            names.append(node.func.attr)
            node = node.func.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            node = node.value
    return names[::-1]


def _float64(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in ("float64", "double")


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _to_cpu(value: ast.AST) -> bool:
    """Whether an expression ends on the CPU or outside torch (``.cpu()``, ``.item()``,
    ``.tolist()`` in its outer chain)."""
    return bool({"cpu", "item", "tolist"} & set(_chain(value)))


class _DeviceFlow(ast.NodeVisitor):
    """Walks code in execution order, keeping the names that may hold something on the
    chosen device: ``device`` itself, a name assigned from an expression that uses one
    of them (unless the expression ends on the CPU), and, inside a function, its
    parameters; a later plain assignment clears a name. Collects the float64 and numpy
    conversions applied to such names."""

    def __init__(self) -> None:
        self.marked = {"device"}
        self.found: list[str] = []

    def _assign(self, targets: list[ast.AST], value: ast.AST, keep: bool) -> None:
        self.visit(value)
        names = set().union(*(_names(t) for t in targets))
        if _names(value) & self.marked and not _to_cpu(value):
            self.marked |= names
        elif not keep:
            self.marked -= names - {"device"}

    def visit_Assign(self, node: ast.Assign) -> None:  # noqa: N802
        self._assign(node.targets, node.value, keep=False)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:  # noqa: N802
        if node.value is not None:
            self._assign([node.target], node.value, keep=False)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:  # noqa: N802
        self._assign([node.target], node.value, keep=True)

    def visit_For(self, node: ast.For) -> None:  # noqa: N802
        self._assign([node.target], node.iter, keep=False)
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:  # noqa: N802
        outer = set(self.marked)
        arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        self.marked |= {a.arg for a in arguments if a.arg != "self"}
        for stmt in node.body:
            self.visit(stmt)
        self.marked = outer

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        if isinstance(node.func, ast.Attribute):
            name = node.func.attr
            to_float64 = name == "to" and any(_float64(a) for a in node.args)
            receiver = node.func.value
            if (name in ("double", "numpy") or to_float64) and not _to_cpu(receiver):
                if _names(receiver) & self.marked:
                    self.found.append(ast.unparse(node))
        keywords = {k.arg: k.value for k in node.keywords}
        if "dtype" in keywords and _float64(keywords["dtype"]):
            if "device" in keywords and _names(keywords["device"]) & self.marked:
                self.found.append(ast.unparse(node))
        self.generic_visit(node)


def float64_on_device(cells: list[str]) -> list[str]:
    """``.double()``, ``.numpy()`` or ``.to(torch.float64)`` applied to something that
    may be on the chosen device (:class:`_DeviceFlow`) with no ``.cpu()`` before it in
    the same chain, and tensors made float64 with a ``device=`` on the device."""
    flow = _DeviceFlow()
    for source in cells:
        flow.visit(ast.parse(source))
    return flow.found


def models_left_behind(cells: list[str]) -> list[str]:
    """Models whose parameters an optimizer trains, but which no statement of the
    notebook before it moves ``.to(device)`` (or makes there, ``device=device``). A
    function's parameter is its caller's to move."""
    moved: set[str] = set()
    found = []
    for source in cells:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Assign) and "device" in ast.unparse(node.value):
                if re.search(r"\.to\(\s*device|device=device", ast.unparse(node.value)):
                    moved |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "to" and "device" in ast.unparse(node):
                    if isinstance(node.func.value, ast.Name):
                        moved.add(node.func.value.id)
        tree = ast.parse(source)
        parameters = {
            a.arg
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for a in f.args.posonlyargs + f.args.args + f.args.kwonlyargs
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "parameters"
                and isinstance(node.func.value, ast.Name)
                and "optim" in source
            ):
                name = node.func.value.id
                if name not in moved | parameters and re.search(
                    rf"optim\.\w+\(\s*{name}\.parameters", source
                ):
                    found.append(name)
    return found


#: Functions of utils and the scripts whose job is to seed once, at a run's start: the
#: chapters' seeding helper and the diffusion script's run.
SEEDING_FUNCTIONS = {"runtime.py": "seed_everything", "train_diffusion.py": "train"}


def reseeding_inside(source: str, seeder: str | None = None) -> list[str]:
    """Calls that reseed a global generator inside a function or a loop, except in
    the function named ``seeder`` and under ``torch.random.fork_rng`` (which restores
    the generators afterwards); a ``torch.Generator`` of one's own may be seeded
    anywhere."""
    found = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name == seeder:
                    continue
            if isinstance(child, ast.With) and any(
                "fork_rng" in ast.unparse(item.context_expr) for item in child.items
            ):
                continue
            deeper = inside or isinstance(
                child,
                (ast.FunctionDef, ast.AsyncFunctionDef, ast.For, ast.While, ast.Lambda),
            )
            if (
                inside
                and isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in RESEEDS
                and not re.search(r"[Gg]enerator", ast.unparse(child.func.value))
            ):
                found.append(ast.unparse(child))
            visit(child, deeper)

    visit(ast.parse(source), False)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_float64_and_no_numpy_on_the_device(path):
    found = float64_on_device(code_cells(path))
    assert not found, f"{path.name}: float64 or numpy on the device: {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_trained_model_is_on_the_chosen_device(path):
    assert not models_left_behind(code_cells(path)), path.name


@pytest.mark.parametrize("path", NOTEBOOKS + PYTHON, ids=lambda p: p.stem)
def test_no_function_or_loop_reseeds_the_global_generator(path):
    sources = code_cells(path) if path.suffix == ".ipynb" else [path.read_text("utf-8")]
    seeder = SEEDING_FUNCTIONS.get(path.name)
    found = [f for source in sources for f in reseeding_inside(source, seeder)]
    assert not found, f"{path.name}: reseeds inside a function or loop: {found}"


def test_the_rules_find_what_they_look_for():
    # the flow and PixelCNN chapters' evaluations before the fix
    model = "model = Flow().to(device)"
    assert float64_on_device([model, "d = [nll_nats(model, x).double()]"])
    assert float64_on_device(["n = nll_nats(m, x.to(device)).double().cpu()"])
    assert float64_on_device(["w = torch.zeros(3, dtype=torch.float64, device=device)"])
    assert float64_on_device([model, "y = model(x)", "a = (y + 1).numpy()"])
    assert not float64_on_device(["n = nll_nats(m, x.to(device)).cpu().double()"])
    assert not float64_on_device(["t = torch.zeros(3, dtype=torch.float64)"])
    assert not float64_on_device([model, "tiny = Flow().double()"])
    assert not float64_on_device([model, "y = model(x).cpu()", "a = y.numpy()"])
    assert float64_on_device(["def f(model, x):\n    return model(x).double()"])
    setup = "cfg, device = runtime.setup()"
    assert float64_on_device([setup, "n = nll_nats(m, x.to(device)).double().cpu()"])
    # the LSTM basics chapter before the fix, and after it
    left = ["model = TextLSTM(5, 3)\nopt = torch.optim.Adam(model.parameters())"]
    assert models_left_behind(left) == ["model"]
    moved = (
        "model = TextLSTM(5, 3).to(device)\nopt = torch.optim.Adam(model.parameters())"
    )
    assert not models_left_behind([moved])
    # the VAE chapter's evaluation before the fix
    assert reseeding_inside("def evaluate(m):\n    torch.manual_seed(1)\n")
    assert reseeding_inside("for e in range(3):\n    np.random.seed(e)\n")
    assert not reseeding_inside("torch.manual_seed(0)\n")
    assert not reseeding_inside("def f():\n    g = torch.Generator().manual_seed(1)\n")
    forked = (
        "def f():\n    with torch.random.fork_rng():\n        torch.manual_seed(1)\n"
    )
    assert not reseeding_inside(forked)
