"""(IA)³ (Liu et al., 2022) through peft: a learned vector rescales each targeted layer's outputs (its
inputs, for feed-forward layers), starting at one, so the run starts at the source model."""
from dataclasses import dataclass

from transferlab.errors import ConfigError
from transferlab.settings import setting
from transferlab.strategies import STRATEGIES
from transferlab.strategies.adapters import TARGETS, PeftStrategy, _matches, exactly, unmatched

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

    def own_group(self):
        """Unless set, no weight decay: the scales start at one, and decay would pull them to zero."""
        return self.is_adapter, self.adapter_lr_mult, 0.0 if self.adapter_weight_decay is None else \
            self.adapter_weight_decay

    def peft_config(self, targets, backbone):
        from peft import IA3Config

        ff = self.feedforward_modules
        pattern = list(FEEDFORWARD) if ff is None else ff if isinstance(ff, str) else list(ff)
        missing = [] if ff is None else unmatched([n for n, _ in backbone.named_modules()], pattern)
        if missing:
            raise ConfigError(f"strategy.feedforward_modules: {missing[0]!r} matches no module of the backbone; give "
                              f"names among the targets (feed-forward layers are scaled on their input)")
        feedforward = [t for t in targets if _matches(t, pattern)]
        # peft requires the feed-forward layers to be among the targets; both as exact full names
        return IA3Config(target_modules=exactly(targets),
                         feedforward_modules=exactly(feedforward) if feedforward else [])
