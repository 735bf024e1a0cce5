"""transferlab's benchmarks, one module each; ``scripts/bench.py`` runs them all in one process.

- ``overhead``: training throughput of tl-train's module + Trainer against a plain PyTorch loop
  doing the same work (target: ratio >= 0.95).
- ``probe``: ``fit_seconds`` of a linear probe without and with cached backbone features (target:
  uncached / cached >= 10).
- ``loading``: the train DataLoader alone for ``num_workers`` in (0, 1, 2).
- ``gpu``: large models in bf16 + channels_last on CUDA, images/s and the fraction of peak FLOP/s.

``common`` holds the settings, the environment and the timing helpers; ``report`` prints the table.
They use transferlab's public functions only (``run.build``, ``run.create_trainer``, ``run.train``,
``plan.resolve``, the factories), as a user's script would.
"""
from . import common  # noqa: F401 - sets the environment (offline, quiet) before torch and transferlab load
