"""(IA)³ (Liu et al., 2022) through peft: a learned vector rescales each targeted layer's outputs (its
inputs, for feed-forward layers), starting at one, so the run starts at the source model."""
from dataclasses import dataclass

from transferlab.settings import setting
from transferlab.strategies import STRATEGIES
from transferlab.strategies.adapters import TARGETS, PeftStrategy, _matches

FEEDFORWARD = ("fc2", "output.dense")  # MLP second layers of timm ViTs and BERT-like encoders


@STRATEGIES.register("ia3")
@dataclass(kw_only=True)
class IA3(PeftStrategy):
    kind: str = "ia3"
    label: str = "ia3"
    feedforward_modules: list[str] | str | None = setting(None, (lambda v: v is None or isinstance(v, (str, list, tuple)),
                                                                 TARGETS))  # null: targets ending in fc2 / output.dense
    defaults = ({"qkv", "fc2"}, {"key", "value", "output.dense"})  # as peft's own defaults for ViTs and BERT
    marker = "ia3_"

    def peft_config(self, targets, backbone):
        from peft import IA3Config

        ff = self.feedforward_modules
        pattern = list(FEEDFORWARD) if ff is None else ff if isinstance(ff, str) else list(ff)
        return IA3Config(target_modules=targets, feedforward_modules=[t for t in targets if _matches(t, pattern)])
