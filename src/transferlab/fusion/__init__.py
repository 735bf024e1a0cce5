"""Fusion methods (the ``fusion`` group): combine finished runs into one model without training.

One module per method, registered under its ``fusion.kind``; ``fuse`` (in ``fusion/act.py``) is
``tl-fuse``: it reads the ingredients, checks they can be combined, scores every candidate through the
run path's own test loop, and leaves a run directory the report reads as a row.
"""
from transferlab.registry import Registry

FUSIONS = Registry("fusion", "fusion method", package="transferlab.fusion", support=("base", "evaluate", "act"))

__all__ = ["FUSIONS"]
