"""LoRA (Hu et al., 2021) through peft: each targeted weight W trains as W + (alpha / r) B A, with B
starting at zero, so the run starts exactly at the source model. The update merges into W after
training (``adapters.PeftStrategy.merge``)."""
from dataclasses import dataclass

from transferlab.errors import ConfigError
from transferlab.settings import FRACTION, POSITIVE, POSITIVE_INT, setting
from transferlab.strategies import STRATEGIES
from transferlab.strategies.adapters import PeftStrategy, _width, exactly


@STRATEGIES.register("lora")
@dataclass(kw_only=True)
class LoRA(PeftStrategy):
    kind: str = "lora"
    label: str = "lora"
    r: int = setting(8, POSITIVE_INT, tune=True)
    alpha: float = setting(16, POSITIVE, tune=True)
    dropout: float = setting(0.0, FRACTION, tune=True)
    rslora: bool = False  # scale by alpha / sqrt(r) (rank-stabilised LoRA)
    dora: bool = False  # weight-decomposed LoRA: a trained magnitude per output on top of the low-rank direction
    defaults = ({"qkv", "proj", "fc1", "fc2"}, {"query", "key", "value", "dense"})  # timm ViTs; BERT-like encoders
    marker = "lora_"

    def check_target(self, name, module):
        if getattr(module, "groups", 1) != 1:
            raise ConfigError(f"strategy.target_modules: '{name}' is a grouped convolution (groups={module.groups}); "
                              f"LoRA adapts Linear layers and ungrouped convolutions only, so leave it out")
        if not self.usable(module):
            raise ConfigError(f"strategy.r={self.r} is larger than '{name}' can use (its weight has rank at most "
                              f"{_width(module)}); valid: r <= {_width(module)}, or target other layers")

    def usable(self, module):
        return self.r <= _width(module)

    def peft_config(self, targets, backbone):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, use_rslora=self.rslora,
                          use_dora=self.dora, target_modules=exactly(targets), bias="none")
