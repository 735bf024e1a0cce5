"""``tl-export``: a finished model (``deploy.load``) into a new folder another tool opens, checked by
loading it back. The folder is written beside its target as ``.<name>.partial`` and renamed into place
only when the check passed, so a folder of that name is always a finished export; an existing one is
never written over."""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

from transferlab import runs
from transferlab.errors import ConfigError

log = logging.getLogger(__name__)


def export(cfg) -> dict:
    """Export ``cfg.ckpt_path`` (or ``cfg.fusion``) as ``cfg.format`` into ``cfg.out`` (null: ``<run_dir>/<format>``);
    returns the export's record (``transferlab.json``)."""
    from transferlab.deploy import check_source, load
    from transferlab.formats import FORMATS

    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "format"):
        raise ConfigError(f"format is required; valid: {', '.join(e.name for e in FORMATS.entries())}")
    fmt = FORMATS.entry(cfg.get("format"), "format").cls()
    if cfg.get("task_name") is not None and not fmt.one_task:
        raise ConfigError(f"task={cfg.task_name} is not taken by format={cfg.format}, which holds every task of the "
                          f"model; task= chooses the one task of: "
                          f"{', '.join(e.name for e in FORMATS.entries() if e.cls.one_task)}")
    missing = [m for m in fmt.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"format={cfg.format} needs {', '.join(missing)}, which are not installed: "
                          f"pip install 'transferlab[deploy]'")
    check_source(cfg.get("ckpt_path"), cfg.get("fusion_dir"))
    model = load(cfg.get("ckpt_path"), cfg.get("fusion_dir"))
    if model.modality not in fmt.modalities:
        valid = [e.name for e in FORMATS.entries() if model.modality in e.cls.modalities]
        raise ConfigError(f"format={cfg.format} holds {' or '.join(fmt.modalities)} models, and this model "
                          f"({model.source.get('model') or model.family.name}) reads {model.modality}s; valid formats "
                          f"for it: {', '.join(valid)}")
    if len(model.members) > 1 and not fmt.ensembles:
        valid = [e.name for e in FORMATS.entries() if e.cls.ensembles]
        raise ConfigError(f"format={cfg.format} holds one model, and fusion={cfg.fusion_dir} is an ensemble of "
                          f"{len(model.members)}; valid formats for an ensemble: {', '.join(valid)} (or export each "
                          f"member's checkpoint)")
    task = model.task(cfg.get("task_name")) if fmt.one_task else None
    out = Path(cfg.out).expanduser() if cfg.get("out") else runs.RunDir(cfg.paths.run_dir).file(str(cfg.format))
    if out.exists():
        raise ConfigError(f"out={out} exists; an export is never written over another (or over anything else): "
                          f"choose a new folder, or leave out= unset for <run_dir>/{cfg.format}")
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    staging.mkdir(parents=True)
    record = {"format": str(cfg.format), "task": task.name if task else None, "source": model.source,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "preprocessing": model.input_recipe(),
              **_rebuild(model)}
    try:
        runs.write_json(staging / runs.EXPORTED, record)  # first: the safetensors check reads it back
        check = fmt.write(model, task, staging)
        if check["max_abs_diff"] > fmt.tolerance:
            raise ConfigError(f"format={cfg.format}: the exported model, loaded back with {check.get('loaded_with')}, "
                              f"gives probabilities {check['max_abs_diff']:.3g} away from transferlab's (more than "
                              f"the tolerance {fmt.tolerance:g}); nothing was exported")
        record["check"] = {**check, "tolerance": fmt.tolerance}
        runs.write_json(staging / runs.EXPORTED, record)
        runs.write_atomic(staging / "README.md", model_card(record, model, fmt.usage.format(folder=out)))
        staging.rename(out)  # fails rather than replace a folder that appeared meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s to %s (largest probability difference %.3g)", cfg.format, out, check["max_abs_diff"])
    return {**record, "folder": str(out)}


def _rebuild(model) -> dict:
    """What rebuilds the model without its checkpoint (a safetensors export is read back through it)."""
    from transferlab.redact import scrub

    loaded = model.members[0]
    if len(model.members) > 1:
        return {}
    return {"config": scrub(loaded.config),
            "hyper_parameters": {k: loaded.hparams[k] for k in ("tasks", "family", "fusion") if k in loaded.hparams}}


def model_card(record: dict, model, usage: str) -> str:
    """A short README.md: where the model came from, what it scored, how to load it."""
    source = record["source"]
    metrics = source.get("metrics") or {}
    which = f" (task {record['task']})" if record["task"] else ""
    lines = [f"# {source.get('model') or model.family.name} — exported by transferlab ({record['format']})", "",
             f"- classes{which}: "
             + "; ".join(f"{t.name}: {', '.join(map(str, t.class_names))}" for t in model.tasks
                         if record["task"] in (None, t.name)),
             f"- data: {source.get('data', model.data.label)}; strategy: {source.get('strategy') or source.get('fusion')}; "
             f"seed: {source.get('seed')}",
             f"- from: {source.get('checkpoint') or source.get('fusion_dir')}"
             + (f" (setting {source['setting']})" if source.get("setting") else ""),
             "- test metrics: " + (", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) or "none recorded"),
             f"- checked: loaded back with {record['check']['loaded_with']}, largest probability difference "
             f"{record['check']['max_abs_diff']:.3g} (tolerance {record['check']['tolerance']:g})", "",
             "## Load", "", "```python", usage, "```", ""]
    return "\n".join(lines)
