"""Tasks (``tasks.<name>``): what a run learns. A single-task run is the one-task case of the same code.

A task is a head on the shared backbone and what it predicts: ``classification`` (a label column of
a dataset) or ``mlm`` (masked-language modelling: the ids of tokens the text inputs mask). Tasks that
read the run's own ``data`` share one data stream (several label columns of the same items); a task
with ``data`` overrides gets a stream of its own (e.g. digits 0-4 as an auxiliary task next to
few-shot digits 5-9). Their losses add up in ``multitask``'s loss weighting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from transferlab.errors import ConfigError, DataError
from transferlab.registry import Registry
from transferlab.settings import POSITIVE_INT, Settings, optional, setting

TASKS = Registry("tasks", "task kind", modules=("transferlab.tasks",))


class _Reads:
    """Where a task's batches come from, for its spec and for the complete task alike."""

    @property
    def reads_labels(self) -> bool:
        """Whether its labels are a column of the dataset (else the inputs make them)."""
        return not self.token_level

    @property
    def stream(self) -> str:
        """Tasks with identical data overrides read the same batches."""
        return stream_of(self.data, self.name)


@dataclass(kw_only=True)
class TaskSpec(Settings, _Reads):
    kind: str
    weight: float = 1.0  # loss weight
    data: dict = setting(factory=dict)  # overrides of the run's data for a dataset of its own; {} = the run's
    name: str = field(default="", init=False)  # its key in ``tasks``
    column = "label"
    token_level = False  # predicts single tokens (the family's ``encode_tokens``), not whole inputs

    def check(self, where):
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"task '{where.removeprefix('tasks.')}' has weight {w!r}; loss weights must be finite "
                              f"numbers >= 0")


@TASKS.register("classification")
@dataclass(kw_only=True)
class Classification(TaskSpec):
    kind: str = "classification"
    column: str = "label"  # the label column of the task's dataset
    num_classes: int | None = setting(None, optional(POSITIVE_INT))  # null = read from the data


@TASKS.register("mlm")
@dataclass(kw_only=True)
class MaskedLM(TaskSpec):
    """Masked-language modelling on the data's texts (labels unused): BERT's masking of ``probability``
    of the tokens; its classes are the model's vocabulary."""
    kind: str = "mlm"
    column: Literal["token"] = "token"  # the masked tokens' ids, made by the text inputs
    num_classes: int = setting(rule=POSITIVE_INT)  # the model's vocabulary size
    probability: float = setting(0.15, (lambda v: 0 < v < 1, "a number in (0, 1)"))
    token_level = True


@dataclass(frozen=True)
class Task(_Reads):
    """A task complete with its classes, as the module and the checkpoint hold it."""
    name: str
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    column: str = "label"  # label column of the task's dataset
    weight: float = 1.0
    data: dict = field(default_factory=dict)  # overrides of the run's data config; {} = the run's data
    kind: str = "classification"
    probability: float | None = None  # mlm: share of tokens masked

    @property
    def token_level(self) -> bool:
        return TASKS.entry(self.kind).cls.token_level

    def record(self) -> dict:
        """What a checkpoint keeps (plain values)."""
        return {"name": self.name, "kind": self.kind, "column": self.column, "num_classes": self.num_classes,
                "class_names": list(self.class_names), "probability": self.probability, "weight": self.weight,
                "data": dict(self.data)}

    @classmethod
    def from_record(cls, record: dict) -> "Task":
        return cls(name=record["name"], num_classes=int(record["num_classes"]),
                   class_names=list(record.get("class_names") or []), column=record.get("column", "label"),
                   kind=record.get("kind", "classification"), probability=record.get("probability"),
                   weight=record.get("weight", 1.0), data=dict(record.get("data") or {}))


def stream_of(data: dict, task_name: str) -> str:
    return "data" if not data else f"data:{task_name}"


def task_specs(tasks_cfg, monitor: str | None = None) -> list[TaskSpec]:
    """The ``tasks`` mapping (name -> spec) checked before any data is read; ``null`` entries dropped."""
    specs = []
    for name, node in (tasks_cfg or {}).items():
        if node is None:  # `tasks.main=null` removes an inherited task
            continue
        plain = dict(node) if hasattr(node, "items") else node
        if isinstance(plain, dict) and plain.get("kind") is None:
            plain = {**plain, "kind": "classification"}
        spec = TASKS.parse(plain, f"tasks.{name}")
        spec.name = str(name)
        specs.append(spec)
    if not specs:
        raise ConfigError("no tasks declared: `tasks` needs at least one entry, e.g. tasks.main.column=label")
    if all(t.weight == 0 for t in specs):
        raise ConfigError(f"all task weights are zero ({', '.join(t.name for t in specs)}): nothing would train")
    names = [t.name for t in specs]
    if monitor is not None and monitor not in names:
        raise ConfigError(f"multitask.monitor='{monitor}' is not a declared task; declared: {', '.join(names)}")
    return specs


def create_tasks(specs: list[TaskSpec], class_names: dict[str, list[str]]) -> list[Task]:
    """Complete tasks: ``class_names[task]`` are the classes its data has in its label column."""
    tasks = []
    for spec in specs:
        if spec.reads_labels:
            names = list(class_names[spec.name])
            if spec.num_classes is not None and spec.num_classes != len(names):
                raise DataError(f"task '{spec.name}' declares num_classes={spec.num_classes} but its data has "
                                f"{len(names)} classes in column '{spec.column}' ({', '.join(names[:10])}); "
                                f"drop num_classes or fix it")
            if len(names) < 2:
                data = f"tasks.{spec.name}.data" if spec.data else "data"
                counted = f"{len(names)} class" + ("" if len(names) == 1 else "es")
                raise DataError(f"task '{spec.name}' ({spec.kind}) has {counted} "
                                f"in column '{spec.column}' ({', '.join(names) or 'none'}): a classifier needs at "
                                f"least 2 classes; give {data}.classes two or more classes, or use a label column "
                                f"with two or more values")
        else:
            names = [str(i) for i in range(spec.num_classes)]
        tasks.append(Task(name=spec.name, num_classes=len(names), class_names=names, column=spec.column,
                          weight=spec.weight, data=spec.data, kind=spec.kind,
                          probability=getattr(spec, "probability", None)))
    return tasks
