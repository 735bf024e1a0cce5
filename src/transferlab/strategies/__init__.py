"""Transfer strategies, one small module each, registered under the ``strategy.kind`` they answer to."""
from transferlab.strategies.base import STRATEGIES, Strategy
from transferlab.strategies.finetune import Finetune
from transferlab.strategies.gradual import Gradual
from transferlab.strategies.linear_probe import LinearProbe
from transferlab.strategies.lp_ft import LPFT
from transferlab.strategies.partial import Partial

__all__ = ["STRATEGIES", "Strategy", "Finetune", "LinearProbe", "Partial", "Gradual", "LPFT", "create_strategy",
           "strategy_settings"]


def strategy_settings(cfg) -> dict:
    """The constructor arguments of ``conf/strategy/<name>.yaml``: everything but ``kind``."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return {k: v for k, v in plain.items() if k != "kind"}


def create_strategy(cfg) -> Strategy:
    settings = strategy_settings(cfg)
    STRATEGIES.check_settings(cfg.kind, settings)
    return STRATEGIES.create(cfg.kind, **settings)
