"""Transferability scores (the ``rank.scores`` group): guesses, from one pass of a pretrained model over the
target data, of how well it would transfer, so a zoo can be ranked before any of it is fine-tuned.

One module per score, registered under its name; ``base.py`` holds what they share (input checks) and the
rank correlations that judge a score against the accuracies fine-tuning really reached.
"""
from transferlab.registry import Registry

SCORES = Registry("rank.scores", "transferability score", package="transferlab.transferability", support=("base", "rank"))

__all__ = ["SCORES"]
