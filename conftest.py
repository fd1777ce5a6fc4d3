"""Every pytest run of the repository (tests, chapters, template).

With several workers (pytest-xdist, ``-n auto`` in ``pyproject.toml``), each worker and
the notebook kernels it starts get their share of the cores rather than all of them
each: OpenMP threads that outnumber the cores wait on each other.
"""

import os
import sys


def _share_the_cores() -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # kernels and subprocesses inherit it
    if "torch" in sys.modules:  # already imported: set its pool directly
        sys.modules["torch"].set_num_threads(threads)


_share_the_cores()
