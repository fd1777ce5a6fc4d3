"""Loaded by pytest for every test path, ``book/`` included: with several pytest-xdist
workers, each worker's share of the cores; and every chapter notebook that nbval runs,
runs as in Colab (``tests/colab.py``): alone, in an empty folder outside the checkout,
with ``utils`` installed from a git URL."""

import os
import sys
from pathlib import Path

from tests import colab

os.environ.setdefault("MPLBACKEND", "Agg")


def _share_the_cores() -> None:
    """With several workers (``-n auto`` in ``pyproject.toml``), give each worker, and
    the notebook kernels it starts (they inherit ``OMP_NUM_THREADS``), its share of the
    cores rather than all of them each: OpenMP threads that outnumber the cores wait on
    each other. pytest loads this file before any test or notebook."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # already imported: set its pool directly
        sys.modules["torch"].set_num_threads(threads)


_share_the_cores()


def _run_chapters_as_in_colab() -> None:
    """nbval starts a notebook's kernel in the notebook's folder, ``book/``, with this
    checkout's ``utils``. A chapter with a Colab cell runs instead where
    :func:`colab.working_folder` puts it (a fresh folder outside the checkout, after
    what its Colab cell does) with the ``utils`` installed from a git URL first on its
    path, so a chapter that needs a file of the checkout fails here as in Colab.
    Notebooks without a Colab cell (the results page) run in ``book/`` as before."""
    from nbval import kernel, plugin

    original_setup = plugin.IPyNbFile.setup
    original_start = kernel.start_new_kernel
    running: list[Path] = []

    def setup(self) -> None:
        running.append(Path(str(self.fspath)))
        try:
            original_setup(self)
        finally:
            running.pop()

    def start_new_kernel(*args, **kwargs):
        notebook = running[-1] if running else None
        if notebook is not None and colab.colab_lines(notebook) is not None:
            kwargs["cwd"] = str(colab.working_folder(notebook))
            kwargs["env"] = colab.kernel_env()
        return original_start(*args, **kwargs)

    plugin.IPyNbFile.setup = setup
    kernel.start_new_kernel = start_new_kernel


_run_chapters_as_in_colab()
