"""What ``tl-predict`` and ``tl-export`` ship: a finished model rebuilt from its checkpoint alone (or an
ensemble from its fusion folder), in evaluation mode, with the evaluation transform of its run.

Both commands take the same two sources — ``ckpt_path=`` (a run's best.ckpt, a fused.ckpt, or an
exported safetensors file with its sidecar) and ``fusion=`` (a ``tl-fuse method=ensemble`` folder, whose
members are averaged as that fusion scored them) — so a model predicts and exports alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transferlab.errors import ConfigError


@dataclass
class Deployed:
    """A model ready to serve: ``network(inputs) -> {task: logits}`` (an ensemble: log-probabilities),
    the tasks with their class names, the family and preprocessing its inputs need, and where it came from."""
    network: object  # torch.nn.Module, in eval mode
    tasks: list
    family: object
    preprocessing: dict
    data: object  # the run's data settings: the evaluation transform (input size, max_length) follows them
    members: list  # the Loaded checkpoints: one, or an ensemble's members
    source: dict = field(default_factory=dict)  # what an export records: checkpoint, run, setting, metrics
    combine: str | None = None  # an ensemble's: probs | logits

    @property
    def modality(self) -> str:
        return self.family.modality

    @property
    def pair_column(self) -> str | None:
        """A text-pair model's second text column (its run's ``data.text_pair_column``), else None."""
        return getattr(self.data, "text_pair_column", None)

    @property
    def loaded(self):
        """The one checkpoint of a single model (formats that hold one network)."""
        if len(self.members) != 1:
            raise ConfigError(f"this is an ensemble of {len(self.members)} models; this format holds one model "
                              f"(export each member run's best.ckpt, or use format=onnx, which averages them in one graph)")
        return self.members[0]

    def task(self, name: str | None):
        """The task ``name``, or the only one; a multi-task model must be told which (task=...)."""
        names = [t.name for t in self.tasks]
        if name is None and len(names) == 1:
            return self.tasks[0]
        if name is None:
            raise ConfigError(f"this model has tasks {', '.join(names)} and this format holds one: choose it with "
                              f"task=<name>")
        if name not in names:
            raise ConfigError(f"task={name} is not valid for this model; valid: {', '.join(names)}")
        return self.tasks[names.index(name)]

    def transform(self):
        """The evaluation transform of the run: raw item -> inputs (text: ``.collate`` tokenises a batch)."""
        return self.family.create_transform(self.preprocessing, self.data, train=False)

    def input_recipe(self) -> dict:
        """What a user of an export must do to raw inputs before the network, as JSON: the image size, mean,
        std and resizing, or the tokenisation's length (and whether it reads pairs of texts)."""
        pre = self.preprocessing
        if self.modality == "image":
            size = getattr(self.data, "input_size", None) or pre["input_size"][-1]
            return {"input_size": [3, size, size], "mean": list(pre["mean"]), "std": list(pre["std"]),
                    "interpolation": pre.get("interpolation", "bilinear"),
                    "crop_pct": 1.0 if self.data.input_size else pre.get("crop_pct", 0.875)}
        return {"max_length": self.data.max_length, "text_pair": bool(self.pair_column)}

    def sample(self, n: int = 4, seed: int = 0) -> dict:
        """A batch of ``n`` made-up inputs of the right shape and range: what exports are checked with
        (images: normalised pixels; texts: sentences of the tokenizer's own words, of different lengths)."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        if self.modality == "image":
            size = getattr(self.data, "input_size", None) or self.preprocessing["input_size"][-1]
            return {"pixel_values": torch.randn(n, 3, size, size, generator=generator)}
        tokenizer = self.preprocessing["tokenizer"]
        words = [w for w in tokenizer.get_vocab() if w.isalpha()] or ["a"]
        picks = torch.randint(0, len(words), (n, 12), generator=generator).tolist()
        texts = [" ".join(words[i] for i in row[: 3 + 3 * k]) for k, row in enumerate(picks)]
        if self.pair_column:  # a pair model reads (text, second text): token_type_ids tell them apart
            texts = [(t, " ".join(reversed(t.split()))) for t in texts]
        inputs, _ = self.transform().collate([(t, {}) for t in texts])
        return inputs


def load(ckpt_path=None, fusion=None) -> Deployed:
    """The model of a checkpoint, or of an ensemble's fusion folder; exactly one of the two."""
    check_source(ckpt_path, fusion)
    if ckpt_path is not None:
        return _single(ckpt_path)
    return _ensemble(Path(fusion))


def check_source(ckpt_path, fusion) -> None:
    if (ckpt_path is None) == (fusion is None):
        raise ConfigError("give exactly one model: ckpt_path=<a .ckpt or exported .safetensors> or "
                          "fusion=<a tl-fuse method=ensemble folder>"
                          + (f" (both given: ckpt_path={ckpt_path}, fusion={fusion})" if ckpt_path else ""))


def _single(path) -> Deployed:
    from transferlab.data import KINDS
    from transferlab.models import from_checkpoint

    loaded = from_checkpoint(path)
    loaded.model.eval()
    data = KINDS.parse(loaded.config["data"], "data")
    source = {"checkpoint": str(Path(path).resolve()), "model": loaded.config["model"].get("name"),
              "strategy": (loaded.config.get("strategy") or {}).get("label"), "data": data.label,
              "seed": loaded.config.get("seed"), "fusion": loaded.fusion}
    metrics = Path(path).resolve().parent.parent / "metrics.json"  # a run's or fusion's own, when it is there
    if metrics.is_file():
        import json

        from transferlab import runs

        source["run_dir"] = str(metrics.parent)
        source["setting"] = runs.setting_digest(loaded.config)
        source["metrics"] = {k: v for k, v in json.loads(metrics.read_text()).items()
                             if k.startswith("test/") and isinstance(v, (int, float))}
    return Deployed(loaded.model, loaded.tasks, loaded.model.family, loaded.preprocessing, data, [loaded], source)


def _ensemble(folder: Path) -> Deployed:
    """An ensemble's members, as ``tl-fuse`` chose them (its metrics.json), combined as it combined them."""
    from transferlab import runs
    from transferlab.fusion.base import read_ingredient
    from transferlab.fusion.ensemble import ensemble_model

    if not (folder / runs.METRICS).is_file() or not (folder / runs.CONFIG).is_file():
        raise ConfigError(f"fusion={folder} is not a finished tl-fuse folder (it has no {runs.METRICS} and "
                          f"{runs.CONFIG}); give the outputs/fuse/<time> folder of a tl-fuse method=ensemble")
    folder_ = runs.RunDir(folder)
    config, metrics = folder_.read_config(), folder_.read_json(runs.METRICS)
    kind = (config.get("fusion") or {}).get("kind")
    if kind is None:
        raise ConfigError(f"fusion={folder} is not a tl-fuse folder (a training run's, by its config); its model "
                          f"is its checkpoint: give ckpt_path={folder / runs.CHECKPOINTS / runs.BEST}")
    if kind != "ensemble":
        raise ConfigError(f"fusion={folder} is a {kind} fusion, whose model is its checkpoint: give "
                          f"ckpt_path={folder / runs.CHECKPOINTS / runs.FUSED} (fusion= takes ensembles)")
    members = [_single(read_ingredient(m).checkpoint) for m in metrics["members"]]
    first = members[0]
    combine = config["fusion"].get("combine", "probs")
    network = ensemble_model([m.network for m in members], combine).eval()
    source = {"fusion_dir": str(folder.resolve()), "fusion": "ensemble", "combine": combine,
              "members": [m.source for m in members],
              "metrics": {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, (int, float))}}
    return Deployed(network, first.tasks, first.family, first.preprocessing, first.data,
                    [m.members[0] for m in members], source, combine)
