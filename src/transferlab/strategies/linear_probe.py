"""Feature extraction: the backbone stays exactly the source model; only the new head trains."""
from transferlab.strategies.base import Strategy


class LinearProbe(Strategy):
    name = "linear_probe"

    def __init__(self, bn: str = "frozen", **kwargs):
        super().__init__(bn=bn, **kwargs)

    def frozen_stages(self, epoch, num_stages):
        return set(range(num_stages))
