"""Full fine-tuning: every parameter trains (from the source weights, or from scratch without any)."""
from transferlab.strategies.base import Strategy


class Finetune(Strategy):
    name = "finetune"
