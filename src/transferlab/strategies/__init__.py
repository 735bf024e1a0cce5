"""Transfer strategies: one small module each, registered under the ``strategy.kind`` it answers to."""
from transferlab.registry import Registry

STRATEGIES = Registry("strategy", "strategy", package="transferlab.strategies",
                      support=("base", "adapters"))

__all__ = ["STRATEGIES"]
