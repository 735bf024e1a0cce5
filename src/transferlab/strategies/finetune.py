"""Full fine-tuning: every parameter trains (from the source weights, or from scratch without any)."""
from dataclasses import dataclass

from transferlab.strategies import STRATEGIES
from transferlab.strategies.base import Strategy


@STRATEGIES.register("finetune")
@dataclass(kw_only=True)
class Finetune(Strategy):
    kind: str = "finetune"
    label: str = "finetune"
