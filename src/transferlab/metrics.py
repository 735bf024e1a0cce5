"""Metric names and the metrics behind them: the one place that spells them.

``<split>/<metric>`` for a single task; ``<split>/<task>/<metric>`` per task when there are several,
plus the monitored task under ``<split>/<metric>``. W&B, the CSV log, metrics.json, checkpoints,
the report and tl-reproduce all ask here.
"""
from __future__ import annotations

SPLITS = ("train", "val", "test")
EVAL = "eval"  # ``eval/<set>/<metric>``: a run or fusion tested on one of its ``eval_sets`` (shifted data)
CLASSIFICATION = ("acc", "precision", "recall", "f1")  # per evaluated task and split
# eval.calibration: per task and test pass; *_calibrated after dividing the logits by the temperature fitted on val
CALIBRATION = ("ece", "nll", "temperature", "ece_calibrated", "nll_calibrated")

MONITOR = "val/acc"  # selects best.ckpt
BEST = "val/acc_best"  # the best MONITOR value of a run (metrics.json; the default sweep objective)
LOSS = "train/loss"
REG_LOSS = "train/reg_loss"  # a regulariser's term (``regularizers``), already in LOSS
PRIMARY = "test/acc"  # what the report ranks by
HEADLINE = ("test/acc", "test/f1", BEST)  # printed at the end of a run
SHOWN = ("test/acc", "test/f1")  # report.md columns
COMPARED = ("test/acc", "test/f1", "test/precision", "test/recall", BEST)  # report.csv, tl-reproduce
CALIBRATED = ("test/ece", "test/nll", "test/ece_calibrated")  # report columns of runs that have them


def name(split: str, metric: str, task: str | None = None) -> str:
    """``val/acc``, or ``val/<task>/acc`` for one task of several (``task=None``: the run as a whole)."""
    return f"{split}/{metric}" if task is None else f"{split}/{task}/{metric}"


def lr(group: str, when: str) -> str:
    """The learning rate a parameter group trained at: ``when`` is first | last (a step) or peak (over
    the run; ``group`` backbone or heads). A frozen group trains at 0."""
    return f"lr/{group}/{when}"


LR_KINDS = ("backbone", "heads")  # first part of every optimizer group name (``optim.param_groups``)
ADAPTERS = "adapters"  # the optimizer groups of a strategy's own tensors (LoRA, (IA)³, BitFit's biases)


def eval_split(eval_set: str) -> str:
    """The split name of an evaluation set: its metrics read ``eval/<set>/acc``."""
    return f"{EVAL}/{eval_set}"


def is_test(key: str) -> bool:
    return key.startswith("test/")


def is_eval(key: str) -> bool:
    """A metric of an evaluation set (``eval/<set>/<metric>``)."""
    return key.startswith(f"{EVAL}/")


def create_metrics(num_classes: int):
    """The classification metrics of one task and split (torchmetrics, imported only when a run starts).
    A task of fewer than 2 classes is refused earlier, naming it (``tasks.create_tasks``)."""
    if num_classes < 2:
        from transferlab.errors import DataError

        raise DataError(f"classification metrics need at least 2 classes, not {num_classes}: a task of one "
                        f"class has nothing to tell apart; give it two or more classes")
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision,
                                             MulticlassRecall)

    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "precision": MulticlassPrecision(num_classes, average="macro"),
        "recall": MulticlassRecall(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    })


def accuracies(columns) -> list[str]:
    """The accuracies among ``columns`` (val, test and every evaluation set): what a fusion figure draws."""
    return [k for k in columns if k.endswith("/acc") and k.count("/") <= 2 and k.split("/")[0] in ("val", "test", EVAL)]


def per_epoch(objective: str) -> str:
    """What a run logs every epoch for a final ``objective``: ``val/acc`` for ``val/acc_best`` (a
    ``<metric>_best`` is the best of ``<metric>``), else the objective itself (``val/loss``)."""
    return objective.removesuffix("_best")


LOWER_IS_BETTER = ("loss", "ece", "nll", "ece_calibrated", "nll_calibrated")  # the last part of a metric name; every other metric here is better higher


def higher_is_better(metric: str) -> bool:
    """A metric's direction: losses fall as models improve, accuracy, precision, recall and F1 rise."""
    return metric.removesuffix("_best").rsplit("/", 1)[-1] not in LOWER_IS_BETTER


def check_selection(metric, key: str) -> str:
    """A metric that chooses between models: a validation metric this project computes (never a test
    one, so test metrics stay unbiased). Returns it; a ConfigError names what is valid otherwise."""
    from transferlab.errors import ConfigError

    valid = [f"val/{m}" for m in (*CLASSIFICATION, "loss")]
    if not isinstance(metric, str) or not (metric in valid or metric == BEST or
                                           (metric.startswith("val/") and metric.count("/") == 2 and
                                            metric.rsplit("/", 1)[1] in (*CLASSIFICATION, "loss"))):
        hint = " (test metrics never choose: they would no longer be unbiased)" if str(metric).startswith(
            ("test/", "eval/")) else ""
        raise ConfigError(f"{key}={metric} is not a validation metric{hint}; valid: {', '.join(valid)} "
                          f"(or val/<task>/<metric> of a multi-task run)")
    return metric
