"""Transfer strategies, one small module each, declared under the ``strategy.kind`` they answer to (choices.py)."""
from transferlab.choices import STRATEGIES, strategy_settings
from transferlab.strategies.base import Strategy
from transferlab.strategies.finetune import Finetune
from transferlab.strategies.gradual import Gradual
from transferlab.strategies.linear_probe import LinearProbe
from transferlab.strategies.lp_ft import LPFT
from transferlab.strategies.partial import Partial

__all__ = ["STRATEGIES", "Strategy", "Finetune", "LinearProbe", "Partial", "Gradual", "LPFT", "create_strategy",
           "strategy_settings"]


def create_strategy(cfg) -> Strategy:
    settings = strategy_settings(cfg)
    STRATEGIES.check_settings(cfg.kind, settings)
    return STRATEGIES.create(cfg.kind, **settings)
