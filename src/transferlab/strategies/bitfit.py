"""BitFit (Ben Zaken et al., 2022): only the backbone's biases train (and the heads); BatchNorm follows
the ``bn`` policy (``frozen``: its biases stay too)."""
from dataclasses import dataclass

from transferlab.errors import ConfigError
from transferlab.strategies import STRATEGIES
from transferlab.strategies.adapters import ParameterEfficient


@STRATEGIES.register("bitfit")
@dataclass(kw_only=True)
class BitFit(ParameterEfficient):
    kind: str = "bitfit"
    label: str = "bitfit"

    def trains(self, name):
        return name.rpartition(".")[2] == "bias"

    def check_fits(self, model, max_epochs):
        super().check_fits(model, max_epochs)
        if not any(self.trains(n) for n, _ in model.backbone.named_parameters()):
            raise ConfigError(f"strategy=bitfit trains the backbone's biases, and model '{model.family.name}' has "
                              f"none; use strategy=lora or linear_probe")
