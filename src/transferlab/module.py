"""The LightningModule: backbone + heads, losses and metrics per task. Nothing else.

It does not know which strategy runs (a callback), how the optimizer groups are scaled (a factory
it is handed), or where batches come from. Metric names: ``<split>/<metric>`` for a single task;
``<split>/<task>/<metric>`` per task plus the monitored task under ``<split>/<metric>`` for several.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from transferlab.errors import TrainingError
from transferlab.models import TransferModel
from transferlab.tasks import Task


def _metrics(num_classes: int) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "precision": MulticlassPrecision(num_classes, average="macro"),
        "recall": MulticlassRecall(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    })


class TransferModule(LightningModule):
    def __init__(self, model: TransferModel, tasks: list[Task], loss_weighting: torch.nn.Module,
                 optimizer_factory: Callable, scheduler_factory: Callable, monitor_task: str | None = None,
                 config: dict | None = None):
        super().__init__()
        self.model, self.tasks, self.loss_weighting = model, tasks, loss_weighting
        self.optimizer_factory, self.scheduler_factory = optimizer_factory, scheduler_factory
        self.monitor_task = monitor_task or tasks[0].name
        self.inputs_are_features = False  # set when the datamodule serves cached backbone features
        self.channels_last = bool((config or {}).get("model", {}).get("channels_last"))
        self.sources = list(dict.fromkeys(t.source for t in tasks))
        self.metrics = torch.nn.ModuleDict({f"{split}_{t.name}": _metrics(t.num_classes)
                                            for split in ("val", "test") for t in tasks})
        self.register_buffer("val_acc_best", torch.tensor(float("-inf")))
        self.first_bad = torch.tensor([-1.0, 0.0])  # (step, loss) of the first non-finite loss
        # A plain dict (no OmegaConf objects) so checkpoints load with weights_only=True.
        self.save_hyperparameters({"config": config or {}, "tasks": [
            {"name": t.name, "label": t.label, "num_classes": t.num_classes, "class_names": t.class_names}
            for t in tasks]}, logger=False)

    def prefix(self, split: str, task: str) -> str:
        return f"{split}/" if len(self.tasks) == 1 else f"{split}/{task}/"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)

    def _task_losses(self, source: str, x, labels, only=None) -> tuple[dict, dict]:
        tasks = [t for t in self.tasks if t.source == source and (only is None or t.name in only)]
        if not tasks:
            return {}, {}
        if self.inputs_are_features:
            features = x
        else:
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            features = self.model.backbone(x)
        logits = {t.name: self.model.heads[t.name](features) for t in tasks}
        losses = {t.name: F.cross_entropy(logits[t.name], labels[t.label]) for t in tasks}
        return losses, logits

    def training_step(self, batch, batch_idx):
        losses = {}
        for source, item in batch.items():
            if item is not None:  # CombinedLoader's max_size mode pads exhausted sources with None
                losses.update(self._task_losses(source, *item, only=self.loss_weighting.active)[0])
        loss = self.loss_weighting(losses)
        self._check_finite(loss, batch_idx)
        batch_size = next(item[0].shape[0] for item in batch.values() if item is not None)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if len(self.tasks) > 1:
            for name, value in losses.items():
                self.log(f"train/{name}/loss", value, batch_size=batch_size)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop at a NaN/inf loss, naming the first bad step. The flag is kept on the device and read
        every step on CPU but only every ``log_every_n_steps`` on a GPU, so training does not wait
        for a device sync each step."""
        first = (~torch.isfinite(loss.detach())) & (self.first_bad[0] < 0)
        # new_full fills on the device; torch.tensor(step, device=cuda) would copy from the host and wait
        step = loss.detach().float().new_full((), float(self.global_step))
        self.first_bad = torch.where(first, torch.stack([step, loss.detach().float()]), self.first_bad.to(loss.device))
        if loss.device.type != "cpu" and (self.global_step + 1) % max(1, self.trainer.log_every_n_steps):
            return
        step, value = self.first_bad.tolist()
        if step >= 0:
            raise TrainingError(f"loss became {value} at step {int(step)} (epoch {self.current_epoch}); "
                                f"lower optimizer.lr, check the data, or set trainer.gradient_clip_val")

    def _eval_step(self, split: str, batch, dataloader_idx: int):
        x, labels = batch
        losses, logits = self._task_losses(self.sources[dataloader_idx], x, labels)
        for name, value in losses.items():
            self.log(f"{self.prefix(split, name)}loss", value, batch_size=x.shape[0], add_dataloader_idx=False,
                     sync_dist=True)
            task = next(t for t in self.tasks if t.name == name)
            self.metrics[f"{split}_{name}"].update(logits[name], labels[task.label])

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("test", batch, dataloader_idx)

    def _log_epoch_metrics(self, split: str) -> None:
        for t in self.tasks:
            values = self.metrics[f"{split}_{t.name}"].compute()
            self.metrics[f"{split}_{t.name}"].reset()
            for key, value in values.items():
                self.log(f"{self.prefix(split, t.name)}{key}", value)
                if t.name == self.monitor_task and len(self.tasks) > 1:
                    self.log(f"{split}/{key}", value)
            if t.name == self.monitor_task and split == "val" and not self.trainer.sanity_checking:
                self.val_acc_best = torch.maximum(self.val_acc_best, values["acc"].to(self.val_acc_best))
                self.log("val/acc_best", self.val_acc_best)

    def on_validation_epoch_end(self):
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self):
        self._log_epoch_metrics("test")

    def on_train_epoch_end(self):
        if len(self.tasks) > 1:
            for name, w in self.loss_weighting.effective_weights().items():
                self.log(f"train/{name}/loss_weight", w)

    def configure_model(self):
        """``model.compile=true``: compile the backbone in place (state-dict keys stay the same)."""
        if (self.hparams.config or {}).get("model", {}).get("compile"):
            self.model.backbone.compile()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.model, extra=list(self.loss_weighting.parameters()))
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer, total_steps=total,
                                                                               steps_per_epoch=per_epoch)}
