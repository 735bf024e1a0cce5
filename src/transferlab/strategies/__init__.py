"""Transfer strategies, one small module each; ``conf/strategy/<name>.yaml`` names its class."""
from transferlab.strategies.base import Strategy
from transferlab.strategies.finetune import Finetune
from transferlab.strategies.gradual import Gradual
from transferlab.strategies.linear_probe import LinearProbe
from transferlab.strategies.lp_ft import LPFT
from transferlab.strategies.partial import Partial

__all__ = ["Strategy", "Finetune", "LinearProbe", "Partial", "Gradual", "LPFT"]
