"""Every built-in name a config key can choose code by, declared without importing that code.

Each registry here maps a name to "module:attr", imported when a run first uses it, so the names,
"did you mean" and settings checks of ``plan.validate`` answer before torch, timm or Lightning is
imported: a misspelt choice costs a second, not the twenty an import of the training stack takes.
A new implementation is its module plus one line here (or a ``register`` call of its own, for code
outside transferlab).
"""
from __future__ import annotations

from transferlab.registry import Registry

FAMILIES = Registry("model family", "model.family")  # model.family -> a Family subclass (models/base.py)
FAMILIES.register("timm", "transferlab.models.timm:TimmFamily")
FAMILIES.register("hf", "transferlab.models.hf:HfFamily")  # Hugging Face transformers (text)

KINDS = Registry("data kind", "data.kind")  # data.kind -> create(cfg) -> {split: LabeledImages} (data/base.py)
for _kind in ("digits", "synthetic", "image_folder", "csv"):
    KINDS.register(_kind, f"transferlab.data.{_kind}:create")
KINDS.register("torchvision", "transferlab.data.torchvision_sets:create")
for _kind in ("text_files", "hf_datasets", "synthetic_text"):  # text (data/text.py)
    KINDS.register(_kind, f"transferlab.data.{_kind}:create")

_STRATEGY = ("bn", "cache_features", "name")  # what every Strategy takes (strategies/base.py)
STRATEGIES = Registry("strategy", "strategy.kind")  # strategy.kind -> a Strategy subclass
STRATEGIES.register("finetune", "transferlab.strategies.finetune:Finetune", settings=_STRATEGY)
STRATEGIES.register("linear_probe", "transferlab.strategies.linear_probe:LinearProbe", settings=_STRATEGY)
STRATEGIES.register("partial", "transferlab.strategies.partial:Partial", settings=("freeze_stages", *_STRATEGY))
STRATEGIES.register("gradual", "transferlab.strategies.gradual:Gradual",
                    settings=("milestones", "stages_per_milestone", *_STRATEGY))
STRATEGIES.register("lp_ft", "transferlab.strategies.lp_ft:LPFT",
                    settings=("lp_epochs", "backbone_lr_mult", *_STRATEGY))

OPTIMIZERS = Registry("optimizer", "optimizer.name")  # optimizer.name -> (param groups, cfg) -> optimizer
SCHEDULERS = Registry("scheduler", "scheduler.name")  # scheduler.name -> (optimizer, cfg, warmup, total, per_epoch)
for _name in ("sgd", "adam", "adamw"):
    OPTIMIZERS.register(_name, f"transferlab.optim:{_name}")
for _name in ("cosine", "step", "onecycle", "constant"):
    SCHEDULERS.register(_name, f"transferlab.optim:{_name}")

LOSS_WEIGHTING = Registry("loss weighting", "multitask.loss_weighting")  # -> an nn.Module over the tasks' losses
LOSS_WEIGHTING.register("fixed", "transferlab.loss_weighting:FixedWeights")
LOSS_WEIGHTING.register("uncertainty", "transferlab.loss_weighting:UncertaintyWeights")

LOGGERS = Registry("logger", "logger.<entry>.kind")  # each takes save_dir= and its own keys
LOGGERS.register("csv", "pytorch_lightning.loggers:CSVLogger")
LOGGERS.register("wandb", "pytorch_lightning.loggers:WandbLogger")
LOGGERS.register("tensorboard", "pytorch_lightning.loggers:TensorBoardLogger")

FUSIONS = Registry("fusion method", "fusion.name")  # each: method(ingredients, score, cfg) -> Fused (fusion/base.py)
FUSIONS.register("wise_ft", "transferlab.fusion.wise_ft:WiseFT")
FUSIONS.register("uniform_soup", "transferlab.fusion.soup:UniformSoup")
FUSIONS.register("greedy_soup", "transferlab.fusion.soup:GreedySoup")
FUSIONS.register("ensemble", "transferlab.fusion.ensemble:OutputEnsemble")


def strategy_settings(cfg) -> dict:
    """The constructor arguments of ``conf/strategy/<name>.yaml``: everything but ``kind``."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return {k: v for k, v in plain.items() if k != "kind"}
