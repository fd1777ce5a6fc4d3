"""Shared helpers for the book *Generative Deep Learning in PyTorch*.

One module per concern; importing the package has no side effects:

- :mod:`utils.switches`  -- the strict on/off environment switches (no torch import)
- :mod:`utils.runtime`   -- profiles (smoke/short/full), device choice, seeding
- :mod:`utils.precision` -- the CPU class and the fast path: channels_last, bf16
  autocast where the device has bf16 units
- :mod:`utils.budget`    -- a chapter's pace on this machine, and its short run where
  the full one would take too long
- :mod:`utils.sources`   -- where files come from, their verification, atomic writes;
  one clear error
- :mod:`utils.data`      -- the datasets (MNIST family, CelebA faces, texts) built on
  those files
- :mod:`utils.images`    -- loading images, image grids for figures
- :mod:`utils.training`  -- progress bars, loss history, TensorBoard writers and their
  logs
- :mod:`utils.metrics`   -- the Frechet distance between feature sets
- :mod:`utils.models`    -- models that measure others (the Fashion-MNIST and digit
  classifiers)
- :mod:`utils.vgg`       -- a frozen VGG19 that carries the preprocessing of its weights
- :mod:`utils.text`      -- vocabulary, batching for truncated BPTT, temperature
  sampling, the n-gram baseline
- :mod:`utils.music`     -- Bach's chorales as token grids (from music21, cached), the
  split by tune, and Bach's voice-leading rules counted on any grid
- :mod:`utils.audio`     -- notes to sound with numpy: additive synthesis, 8-bit WAV
- :mod:`utils.results`   -- the measured metrics each chapter records
- :mod:`utils.summary`   -- the results page: one short row per chapter, its goal
  checked, and one figure per family of models
- :mod:`utils.notebooks` -- executing a chapter for the book with clean stored outputs
- :mod:`utils.chapter_code` -- a chapter's own definitions (its cells tagged ``export``)
  and settings, for scripts
- :mod:`utils.distributed` -- DistributedDataParallel training: the launch, shared
  draws, gradient accumulation, resumable checkpoints
"""
