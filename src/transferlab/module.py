"""The LightningModule: backbone + heads, losses and metrics per task. Nothing else.

It does not know which strategy runs (a callback), how the optimizer groups are scaled (a factory
it is handed), which model family encodes the inputs, or where batches come from. Metric names
come from ``transferlab.metrics``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule

from transferlab import metrics as names
from transferlab.data import batch_size
from transferlab.errors import TrainingError
from transferlab.evaluation import Evaluation, calibration, create_outputs
from transferlab.models.network import TransferModel
from transferlab.tasks import Task


class TransferModule(LightningModule):
    def __init__(self, model: TransferModel, tasks: list[Task], loss_weighting: torch.nn.Module,
                 optimizer_factory: Callable, scheduler_factory: Callable, monitor_task: str | None = None,
                 compile_backbone: bool = False, hparams: dict | None = None, evaluation: Evaluation | None = None,
                 regularizer: torch.nn.Module | None = None):
        super().__init__()
        self.model, self.tasks, self.loss_weighting = model, tasks, loss_weighting
        self.regularizer = regularizer  # a term added to the training loss (``regularizers``), or None
        self.optimizer_factory, self.scheduler_factory = optimizer_factory, scheduler_factory
        self.monitor_task = monitor_task or tasks[0].name
        self.compile_backbone = compile_backbone
        self.streams = list(dict.fromkeys(t.stream for t in tasks))
        # What a test pass is named and which streams its loaders hold: an evaluation set is tested
        # as split ``eval/<set>`` on the streams it replaces (``testing_as``).
        self.test_split, self.test_streams = "test", self.streams
        self._evaluated: set[str] = set()  # tasks that saw a batch in this validation/test pass
        self.metrics = torch.nn.ModuleDict({f"{split}_{t.name}": names.create_metrics(t.num_classes)
                                            for split in ("val", "test") for t in tasks})
        self.register_buffer("val_acc_best", torch.tensor(float("-inf")))
        self.evaluation = evaluation or Evaluation()
        self.outputs = torch.nn.ModuleDict({t.name: create_outputs() for t in tasks if t.reads_labels})  # classes
        self.collect: str | None = None  # None | "also" (and log as usual) | "only" (log nothing): see collecting
        self.collected: dict[str, dict] = {}  # split -> task -> (logits, labels) of its last collecting pass
        self.first_bad = torch.tensor([-1.0, 0.0])  # (step, loss) of the first non-finite loss
        # Plain values (the config, the tasks, the family's record) so checkpoints load with weights_only=True
        # and models.from_checkpoint rebuilds the model from them alone.
        self.save_hyperparameters(hparams or {"tasks": [t.record() for t in tasks]}, logger=False)

    def metric(self, split: str, metric: str, task: str) -> str:
        """A task's metric name: per task only when there are several."""
        return names.name(split, metric, task if len(self.tasks) > 1 else None)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(inputs)

    def _task_losses(self, stream: str, inputs: Mapping, labels, only=None) -> tuple[dict, dict, dict]:
        """Losses and logits per task of one stream, and its features per level (True: token level)."""
        tasks = [t for t in self.tasks if t.stream == stream and (only is None or t.name in only)]
        if not tasks:
            return {}, {}, {}
        features = {}  # per level: cached backbone features (frozen backbone) or the family's own encoding
        for t in tasks:
            if t.token_level not in features:
                features[t.token_level] = (self.model.encode_tokens(inputs) if t.token_level else
                                           inputs["features"] if "features" in inputs else self.model.encode(inputs))
        logits = {t.name: self.model.heads[t.name](features[t.token_level]) for t in tasks}
        losses = {t.name: F.cross_entropy(logits[t.name], labels[t.column]) for t in tasks}
        return losses, logits, features

    def training_step(self, batch, batch_idx):
        losses, pooled = {}, []
        for stream, item in batch.items():
            if item is not None:  # CombinedLoader's max_size mode pads exhausted streams with None
                stream_losses, _, features = self._task_losses(stream, *item, only=self.loss_weighting.active)
                losses.update(stream_losses)
                pooled += [f for level, f in features.items() if not level]
        loss = self.loss_weighting(losses)
        size = next(batch_size(item[0]) for item in batch.values() if item is not None)
        if self.regularizer is not None:
            term = self.regularizer(self.model, pooled)
            self.log(names.REG_LOSS, term, batch_size=size)
            loss = loss + term
        self._check_finite(loss, batch_idx)
        self.log(names.LOSS, loss, prog_bar=True, batch_size=size)
        if len(self.tasks) > 1:
            for name, value in losses.items():
                self.log(names.name("train", "loss", name), value, batch_size=size)
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

    @contextmanager
    def testing_as(self, split: str, streams: list[str]):
        """``trainer.test`` inside logs ``<split>/...`` (e.g. ``eval/noisy/acc``) for the tasks of ``streams``."""
        self.test_split, self.test_streams = split, streams
        try:
            yield
        finally:
            self.test_split, self.test_streams = "test", self.streams

    @contextmanager
    def collecting(self, only: bool = False):
        """Inside, evaluation passes also keep every task's logits and labels, for what needs a pass whole:
        the confusion matrix (``collected``) and calibration (ECE and NLL, logged with the pass's metrics;
        with a temperature when a validation pass was collected before). ``only``: a pass collects and logs
        nothing (validation for the temperature, after training)."""
        self.collect, self.collected = "only" if only else "also", {} if only else self.collected
        try:
            yield self.collected
        finally:
            self.collect = None

    def _collected(self, split: str) -> None:
        """The end of a collecting pass: its outputs gathered over ranks; a test pass logs its calibration."""
        done = {name: self.outputs[name].compute() for name in self.outputs if name in self._evaluated}
        for outputs in self.outputs.values():
            outputs.reset()
        self.collected[split] = done
        if split == "val" or not self.evaluation.calibration:
            return
        for name, (logits, labels) in done.items():
            values = calibration(logits, labels, self.evaluation.bins, self.collected.get("val", {}).get(name))
            for key, value in values.items():
                self.log(self.metric(split, key, name), value)
                if name == self.monitor_task and len(self.tasks) > 1:
                    self.log(names.name(split, key), value)

    def _metrics(self, split: str, task: str):
        return self.metrics[f"{'val' if split == 'val' else 'test'}_{task}"]  # evaluation sets: the test ones

    def _eval_step(self, split: str, batch, dataloader_idx: int):
        inputs, labels = batch
        stream = (self.test_streams if split == self.test_split else self.streams)[dataloader_idx]
        losses, logits, _ = self._task_losses(stream, inputs, labels)
        self._evaluated.update(losses)
        for name in [n for n in losses if n in self.outputs] if self.collect else ():
            self.outputs[name].update(logits[name], labels[next(t.column for t in self.tasks if t.name == name)])
        if self.collect == "only":
            return
        for name, value in losses.items():
            self.log(self.metric(split, "loss", name), value, batch_size=batch_size(inputs),
                     add_dataloader_idx=False, sync_dist=True)
            task = next(t for t in self.tasks if t.name == name)
            self._metrics(split, name).update(logits[name], labels[task.column])

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step(self.test_split, batch, dataloader_idx)

    def _log_epoch_metrics(self, split: str) -> None:
        for t in [t for t in self.tasks if t.name in self._evaluated]:
            values = self._metrics(split, t.name).compute()
            self._metrics(split, t.name).reset()
            for key, value in values.items():
                self.log(self.metric(split, key, t.name), value)
                if t.name == self.monitor_task and len(self.tasks) > 1:
                    self.log(names.name(split, key), value)
            if t.name == self.monitor_task and split == "val" and not self.trainer.sanity_checking:
                self.val_acc_best = torch.maximum(self.val_acc_best, values["acc"].to(self.val_acc_best))
                self.log(names.BEST, self.val_acc_best)

    def on_validation_epoch_end(self):
        if self.collect != "only":
            self._log_epoch_metrics("val")
        if self.collect:
            self._collected("val")
        self._evaluated.clear()

    def on_test_epoch_end(self):
        self._log_epoch_metrics(self.test_split)
        if self.collect:
            self._collected(self.test_split)
        self._evaluated.clear()

    def on_train_epoch_end(self):
        if len(self.tasks) > 1:
            for name, w in self.loss_weighting.effective_weights().items():
                self.log(names.name("train", "loss_weight", name), w)

    def configure_model(self):
        """``model.compile=true``: compile the backbone in place (state-dict keys stay the same)."""
        if self.compile_backbone:
            self.model.backbone.compile()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.model, extra=list(self.loss_weighting.parameters()))
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer, total_steps=total,
                                                                               steps_per_epoch=per_epoch)}
