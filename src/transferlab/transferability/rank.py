"""``tl-rank``: which source will transfer best to this data? Candidate sources are scored by transferability
from one pass over the target's training split, thousands of times cheaper than fine-tuning them.

A candidate is what ``tl-train`` would start from with its overrides (a model, a checkpoint, a source run,
random initialisation), or a finished run / checkpoint given by its path. Its plan is resolved on tl-rank's
data, its source run trained first when the cache lacks it (as tl-train would), and its backbone's features
of the training split (evaluation transform) come from the shared feature cache, so ranking the same
candidates again extracts nothing. LEEP and NCE also read the source model's own head: a transferlab
checkpoint's first classification task. ``finetune`` then trains every candidate, and ``validate`` matches
candidates to fine-tuned runs: weighted Kendall's τ and Pearson between each score and mean test accuracy.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab import CONF_DIR, runs
from transferlab.config import compose_config, set_value, to_plain
from transferlab.errors import CheckpointError, ConfigError, TransferlabError
from transferlab.transferability import SCORES
from transferlab.transferability.base import pearson, weighted_tau

log = logging.getLogger(__name__)

RANKING, FIGURE = "ranking", "ranking.png"  # ranking.md / ranking.csv and the figure, in the output directory
SHARED = ("data", "eval_sets", "tasks", "paths", "hydra", "logger", "seed")  # tl-rank's, never a candidate's


@dataclass
class Candidate:
    """One source to rank: tl-train's overrides (group choices composed, other keys set) or a finished run's
    own model (``model``: its config's model node, the checkpoint it tested)."""
    label: str
    values: dict = field(default_factory=dict)  # dotted key -> value
    model: dict | None = None
    scores: dict = field(default_factory=dict)  # score -> value
    seconds: dict = field(default_factory=dict)  # score -> seconds; "features": the extraction (0 when cached)
    head: str | None = None  # where LEEP/NCE's source head came from, or why there is none
    accuracy: list = field(default_factory=list)  # test/acc of its fine-tuned runs
    fit_seconds: list = field(default_factory=list)  # and their fit_seconds: what a score saves
    dim: int = 0  # feature dimension
    key: tuple = ()  # the architecture and weights it starts from (``source_key``), to find its fine-tuned runs
    layer: int | None = None  # an intermediate output scored instead of the backbone's features (``layers=``)

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


def candidates_of(cfg: DictConfig) -> list[Candidate]:
    specs = cfg.candidates
    if not OmegaConf.is_list(specs):
        raise ConfigError(f"candidates={specs!r} is not a list; give two or more, e.g. candidates='[{{model: tiny}}, "
                          f"{{source: none}}]' (tl-train overrides each) or run directories")
    out = [_candidate(spec, i) for i, spec in enumerate(specs)]
    layers = list(cfg.get("layers") or [])
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in layers):
        raise ConfigError(f"layers={layers} is not valid: it must be a list of layer numbers >= 1 (1 = the output "
                          f"nearest the input), or null for the backbone's features")
    if layers:
        out = [Candidate(f"{c.label} @ layer {k}", c.values, c.model, layer=k) for c in out for k in layers]
    if len(out) < 2:
        raise ConfigError(f"tl-rank needs at least two candidates to rank, got {len(out)}"
                          f"{' (' + out[0].label + ')' if out else ''}; add others to compare it with, or "
                          f"layers=[...] to rank its layers")
    labels = [c.label for c in out]
    twice = next((x for x in labels if labels.count(x) > 1), None)
    if twice:
        raise ConfigError(f"candidate '{twice}' is given twice; each candidate must be a different source")
    return out


def _candidate(spec, i: int) -> Candidate:
    if isinstance(spec, str):
        return _path_candidate(Path(spec).expanduser())
    if not OmegaConf.is_dict(spec):
        raise ConfigError(f"candidates[{i}]={spec!r} is neither a mapping of tl-train overrides ({{model: tiny}}) nor "
                          f"a run directory or checkpoint path")
    values = _flatten(to_plain(spec))
    shared = [k for k in values if k.split(".")[0] in SHARED]
    if shared:
        raise ConfigError(f"candidates[{i}] sets {shared[0]}: every candidate is scored on tl-rank's own "
                          f"{shared[0].split('.')[0]} (set it for tl-rank, e.g. {shared[0].split('.')[0]}=...); a "
                          f"candidate differs only in its model or source (model, model.*, source, source.*)")
    label = str(values.pop("name", "")) or " ".join(f"{k}={_short(v)}" for k, v in values.items()) or "tl-train defaults"
    return Candidate(label, values)


def _flatten(node: dict, prefix: str = "") -> dict:
    """``{source: {overrides: [...]}}`` -> ``{source.overrides: [...]}``: each key sets one value, so a
    candidate changes what it names and keeps the rest of the group (``source.cache_dir``)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else f"{text[:28]}...{text[-28:]}"


def _path_candidate(path: Path) -> Candidate:
    """A finished run (its tested checkpoint) or a transferlab checkpoint file."""
    from transferlab.models.checkpoint import saved_plan

    folder = runs.RunDir(path)
    if path.is_dir():
        if not folder.finished():
            raise ConfigError(f"candidate '{path}' is a folder but not a finished run (no metrics.json); give a run "
                              f"directory, a .ckpt file, or a mapping of tl-train overrides")
        ckpt = folder.tested_checkpoint(folder.read_json(runs.METRICS))
    elif path.is_file():
        ckpt = path
    else:
        raise ConfigError(f"candidate '{path}' does not exist; give a run directory, a .ckpt file, or a mapping of "
                          f"tl-train overrides ({{model: resnet18, model.pretrained: true}})")
    config, _ = saved_plan(ckpt)
    model = {**config["model"], "checkpoint": str(ckpt.resolve()), "pretrained": False}
    return Candidate(str(path), {"source": "none"}, model=model)


def candidate_config(cfg: DictConfig, cand: Candidate, run_dir: Path, extra: list[str] = (),
                     seed: int | None = None) -> DictConfig:
    """tl-train's config of a candidate on tl-rank's data: its group choices composed, its values set."""
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    chosen = [f"{k}={v}" for k, v in cand.values.items() if k in groups and isinstance(v, str)]
    train = compose_config([*chosen, *extra])
    for key, value in cand.values.items():
        if f"{key}={value}" not in chosen:
            set_value(train, key, value)
    if cand.model is not None:
        set_value(train, "model", cand.model)
    for key in ("data", "paths"):
        set_value(train, key, to_plain(cfg[key]))
    set_value(train, "seed", cfg.seed if seed is None else seed)
    set_value(train, "tasks", {"main": {**to_plain(train.tasks.main), "column": cfg.column}})  # one task: the target's
    set_value(train, "paths.run_dir", str(run_dir))
    set_value(train, "eval_sets", {})
    return train


def plan_of(cfg: DictConfig, cand: Candidate, run_dir: Path, extra: list[str] = (), seed: int | None = None):
    from transferlab.plan import resolve

    try:
        return resolve(candidate_config(cfg, cand, run_dir, extra, seed), {"logger": None} if not extra else None)
    except ConfigError as e:
        raise ConfigError(f"candidate '{cand.label}': {e}") from None


def extract(plan, cand: Candidate):
    """The candidate's features of the training split, the target labels and (when its checkpoint has one)
    the source head's probabilities over the source classes."""
    import torch

    from transferlab import run
    from transferlab.data.datamodule import Transformed
    from transferlab.data.features import cached_features
    from transferlab.models import from_checkpoint

    run.prepare(plan, claim=False)  # its source run (and tokenizer) first, from the cache when there
    streams, tasks = run.build_tasks(plan)
    task = next(t for t in tasks if t.reads_labels)
    model, head = None, None
    if str(plan.model.checkpoint or "").endswith(".ckpt"):
        try:
            loaded = from_checkpoint(plan.model.checkpoint)
        except (CheckpointError, ConfigError):
            loaded = None  # plain weights in a .ckpt file: no source head
        if loaded is not None:
            model = loaded.model
            source = next((t for t in loaded.tasks if t.reads_labels), None)
            if source is not None:
                head = model.heads[source.name]
                cand.head = f"task '{source.name}' of {Path(plan.model.checkpoint).name} ({source.num_classes} classes)"
            else:
                cand.head = f"none: the tasks of {Path(plan.model.checkpoint).name} predict tokens, not classes"
    if model is None:
        model = run.build_model(plan, tasks)
        cand.head = "none: " + ("random initialisation" if not (plan.model.checkpoint or plan.model.pretrained)
                                else "no transferlab checkpoint with a classification head")
    model.eval()
    stream = streams[task.stream]
    transform = model.family.create_transform(model.family.preprocessing(model.backbone), stream["data"], False,
                                              stream["tasks"])
    start = time.perf_counter()
    encode, digest = model.encode, None
    if cand.layer is not None:
        from transferlab.data.features import backbone_digest

        available = model.family.layers(model.backbone)
        if not 1 <= cand.layer <= available:
            raise ConfigError(f"layers: model '{plan.model.name}' has {available} intermediate outputs to score "
                              f"(valid: 1..{available}), not {cand.layer}" if available else
                              f"layers: model '{plan.model.name}' gives no intermediate outputs to score")
        encode = partial(model.family.encode_layer, model.backbone, layer=cand.layer)
        digest = f"{backbone_digest(model.backbone)}/layer{cand.layer}"  # its own cache entry
    found = cached_features(model.backbone, encode, Transformed(stream["splits"]["train"], transform),
                            plan.data.batch_size, plan.data.num_workers, digest=digest,
                            cache_dir=plan.config.paths.get("feature_cache") and Path(plan.config.paths.feature_cache))
    cand.seconds["features"] = round(time.perf_counter() - start, 3)
    features = found.features.float()
    probs = None
    if head is not None and cand.layer is None:  # the head reads the backbone's features, not a layer's
        with torch.no_grad():
            probs = torch.softmax(head(features).double(), dim=1).numpy()
    cand.dim = features.shape[1]
    return features.double().numpy(), found.labels[task.column].numpy(), probs


def check_heads(scores: list, candidates: list[Candidate]) -> None:
    needing = [s for s in scores if s.needs_source_head]
    missing = [c for c in candidates if c.head.startswith("none")]
    if needing and missing:
        apply = ", ".join(sorted(e.name for e in SCORES.entries() if not e.cls.needs_source_head))
        raise ConfigError(f"{needing[0].title} needs the source model's own head, and candidate '{missing[0].label}' has "
                          f"{missing[0].head}; scores for every candidate: {apply} (scores=[{apply}]), or rank only "
                          f"transferlab checkpoints and source runs with {needing[0].kind}")


def rank(cfg: DictConfig) -> dict:
    """Score every candidate, fine-tune them when asked, validate, and write the ranking into
    ``cfg.paths.run_dir``; returns what ranking.csv holds, as a summary."""
    out = Path(cfg.paths.run_dir)
    scores = [SCORES.parse({"kind": name}, f"scores[{i}]") for i, name in enumerate(cfg.scores or [])]
    if not scores:
        raise ConfigError(f"scores is empty; valid: {', '.join(SCORES.names())}")
    candidates = candidates_of(cfg)
    seeds = list(cfg.finetune.seeds or [])
    if cfg.get("layers") and (seeds or cfg.get("validate")):
        raise ConfigError("layers= ranks the layers of each candidate, and a fine-tuned run starts from the whole "
                          "model, so there is nothing to validate a layer against; rank layers without "
                          "finetune.seeds and validate")
    if cfg.get("layers") and any(s.needs_source_head for s in scores):
        head = next(s for s in scores if s.needs_source_head)
        raise ConfigError(f"{head.title} reads the source head, the same for every layer; with layers= use scores "
                          f"that read features: {', '.join(sorted(e.name for e in SCORES.entries() if not e.cls.needs_source_head))}")
    given = [str(o) for o in cfg.finetune.overrides or []]
    if any(o.lstrip("+~").split("=")[0].split(".")[0] in SHARED for o in given):
        bad = next(o for o in given if o.lstrip("+~").split("=")[0].split(".")[0] in SHARED)
        raise ConfigError(f"finetune.overrides has {bad}: candidates are fine-tuned on tl-rank's own data, seed and "
                          f"paths (set them for tl-rank); the overrides change how they train (strategy, optimizer, "
                          f"trainer)")
    validate = Path(cfg.validate).expanduser() if cfg.get("validate") else None
    if validate is not None and seeds:
        raise ConfigError("finetune.seeds and validate are both set: the ranking is checked against one set of "
                          "fine-tuned runs, the ones fine-tuned here or those under validate; drop one")
    if validate is not None and not validate.is_dir():
        raise ConfigError(f"validate='{validate}' is not a directory; give the directory of fine-tuned runs of these "
                          f"candidates (a sweep), or finetune.seeds=[...] to fine-tune them here")
    import pytorch_lightning as pl  # once the config alone has nothing to refuse

    from transferlab import run, tracking

    loggers = tracking.parse_loggers(cfg.get("logger"))
    with run.session(out, loggers, to_plain(cfg)) as started:
        inputs = {}
        for i, cand in enumerate(candidates):
            pl.seed_everything(cfg.seed, workers=True)  # a randomly initialised candidate is the same in any order
            log.info("candidate %d/%d: %s", i + 1, len(candidates), cand.label)
            plan = plan_of(cfg, cand, out / "candidates" / str(i))  # nothing is written there
            cand.key = source_key(to_plain(plan.config.model))
            try:
                inputs[cand.label] = extract(plan, cand)
            except TransferlabError as e:
                raise type(e)(f"candidate '{cand.label}': {e}") from None
        check_heads(scores, candidates)
        for cand in candidates:
            features, labels, probs = inputs[cand.label]
            for s in scores:
                start = time.perf_counter()
                cand.scores[s.kind] = s.score(features, labels, probs)
                cand.seconds[s.kind] = round(time.perf_counter() - start, 4)
        fine_tuned = None
        if seeds:
            fine_tuned = out / "finetune"
            for i, cand in enumerate(candidates):
                for seed in seeds:
                    done = run.train(plan_of(cfg, cand, fine_tuned / f"candidate{i}" / f"seed{seed}",
                                             [*given, "logger=csv"], seed))
                    log.info("fine-tuned %s, seed %s: test/acc=%.4f", cand.label, seed, done["test/acc"])
        agreement = {}
        if fine_tuned or validate:
            agreement = match(candidates, fine_tuned or validate, scores)
        summary = write(out, candidates, scores, agreement)
        tracking.log_table(started, "ranking", *table(candidates, scores))
        tracking.summarize(started, summary)
    return summary


def source_key(model: dict) -> tuple:
    """What makes two runs start from the same source: the architecture and the weights it loads."""
    ckpt = model.get("checkpoint")
    return (model.get("name"), str(Path(ckpt).resolve()) if ckpt else None, bool(model.get("pretrained")))


def match(candidates: list[Candidate], folder: Path, scores: list) -> dict:
    """Each candidate's fine-tuned runs under ``folder`` (same architecture and source weights), then τ and
    Pearson of each score against their mean test accuracy."""
    from transferlab.runs import find_runs, setting_digest

    keys = {cand.key: cand for cand in candidates}
    seen, settings = [], {}
    for r in find_runs([folder]):
        if r.status != "finished" or "test/acc" not in r.metrics or "model" not in r.config:
            continue
        seen.append(str(r.config["model"].get("name")))
        cand = keys.get(source_key(r.config["model"]))
        if cand is not None:
            settings.setdefault(cand.label, set()).add(setting_digest(r.config))
            cand.accuracy.append(float(r.metrics["test/acc"]))
            cand.fit_seconds.append(float(r.metrics.get("fit_seconds", math.nan)))
    mixed = next((label for label, digests in settings.items() if len(digests) > 1), None)
    if mixed:  # a mean over other strategies or hyperparameters would be no one setting's accuracy
        raise ConfigError(f"validate: candidate '{mixed}' has finished runs of {len(settings[mixed])} different "
                          f"settings under '{folder}' (strategy, optimizer, epochs ...); give a folder holding one "
                          f"setting per candidate, seeds aside")
    matched = [c for c in candidates if c.accuracy]
    if len(matched) < 2:
        raise ConfigError(f"validate: {len(matched)} of the {len(candidates)} candidates have finished runs under "
                          f"'{folder}' (runs of models {', '.join(sorted(set(seen))) or 'none'}); a run matches a "
                          f"candidate when it starts from the same architecture and weights; at least two must match")
    accuracy = [statistics.fmean(c.accuracy) for c in matched]
    return {s.kind: {"weighted_tau": weighted_tau([c.scores[s.kind] for c in matched], accuracy),
                     "pearson": pearson([c.scores[s.kind] for c in matched], accuracy)} for s in scores} | {
        "_matched": len(matched)}


def table(candidates: list[Candidate], scores: list) -> tuple[list[str], list[list]]:
    columns = ["candidate", *(s.kind for s in scores), *(f"{s.kind}_seconds" for s in scores), "feature_seconds",
               "feature_dim", "finetuned_acc", "finetuned_acc_std", "finetuned_runs", "finetune_seconds", "source_head"]
    rows = []
    for c in candidates:
        acc = c.accuracy
        rows.append([c.label, *(c.scores[s.kind] for s in scores), *(c.seconds[s.kind] for s in scores),
                     c.seconds["features"], c.dim, statistics.fmean(acc) if acc else math.nan,
                     statistics.stdev(acc) if len(acc) > 1 else (0.0 if acc else math.nan), len(acc),
                     statistics.fmean(c.fit_seconds) if c.fit_seconds else math.nan, c.head])
    return columns, rows


def write(out: Path, candidates: list[Candidate], scores: list, agreement: dict) -> dict:
    from transferlab.reports.figure import plot_ranking
    from transferlab.runs.files import write_atomic, write_csv

    columns, rows = table(candidates, scores)
    write_csv(out / f"{RANKING}.csv", columns, rows)
    lines = ["# transferlab ranking", "", f"{len(candidates)} candidates scored on the target's training split "
             f"(higher = predicted to transfer better). Seconds: the score alone; features: "
             "one pass of the backbone (about 0 when the feature cache had them).", ""]
    for s in scores:
        ordered = sorted(candidates, key=lambda c: -c.scores[s.kind])
        lines += [f"## {s.title}", "", "| rank | candidate | score | seconds | fine-tuned test/acc |",
                  "|---:|---|---:|---:|---:|"]
        for i, c in enumerate(ordered, 1):
            acc = f"{statistics.fmean(c.accuracy):.4f} (n={len(c.accuracy)})" if c.accuracy else "n/a"
            lines.append(f"| {i} | {c.label} | {c.scores[s.kind]:.4f} | {c.seconds[s.kind]:.4f} | {acc} |")
        lines.append("")
    summary = {"candidates": len(candidates), "ranking": {
        s.kind: [[c.label, c.scores[s.kind]] for c in sorted(candidates, key=lambda c: -c.scores[s.kind])]
        for s in scores}}
    if agreement:
        tuned = [t for c in candidates for t in c.fit_seconds]
        spent = [c.seconds[s.kind] for c in candidates for s in scores]
        lines += [f"## Agreement with fine-tuning ({agreement['_matched']} candidates with fine-tuned runs)", "",
                  f"A score took {statistics.fmean(spent):.4f} s on average (features: "
                  f"{statistics.fmean(c.seconds['features'] for c in candidates):.3f} s per candidate); a fine-tuning "
                  f"run {statistics.fmean(tuned):.1f} s of fitting.", "",
                  "| score | weighted Kendall's τ | Pearson |", "|---|---:|---:|"]
        for s in scores:
            tau, r = agreement[s.kind]["weighted_tau"], agreement[s.kind]["pearson"]
            lines.append(f"| {s.title} | {tau:.3f} | {r:.3f} |")
            summary.update({f"{s.kind}/weighted_tau": tau, f"{s.kind}/pearson": r})
        lines.append("")
    lines += ["Sources of LEEP/NCE's head: " + "; ".join(f"{c.label}: {c.head}" for c in candidates), "",
              f"![ranking]({FIGURE})"]
    write_atomic(out / f"{RANKING}.md", "\n".join(lines) + "\n")
    plot_ranking(candidates, scores, out / FIGURE)
    return summary
