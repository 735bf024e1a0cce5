"""Feature extraction: the backbone stays exactly the source model; only the new head trains."""
from dataclasses import dataclass
from typing import Literal

from transferlab.strategies import STRATEGIES
from transferlab.strategies.base import Strategy


@STRATEGIES.register("linear_probe")
@dataclass(kw_only=True)
class LinearProbe(Strategy):
    kind: str = "linear_probe"
    label: str = "linear_probe"
    bn: Literal["train", "frozen"] = "frozen"

    def frozen_stages(self, epoch, num_stages):
        return set(range(num_stages))
