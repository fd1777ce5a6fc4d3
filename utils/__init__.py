"""Shared helpers for the book *Generative Deep Learning in PyTorch*.

One module per concern; importing the package has no side effects:

- :mod:`utils.runtime`  -- profiles (smoke/full), device choice, seeding
- :mod:`utils.data`     -- datasets that load from a local folder, online, or offline registries
- :mod:`utils.images`   -- image grids for figures
- :mod:`utils.training` -- progress bars, loss history, TensorBoard writers
- :mod:`utils.results`  -- the measured metrics each chapter records
"""
