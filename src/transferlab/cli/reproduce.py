"""``tl-reproduce RUN_DIR``: run a finished run again from its saved config and compare the metrics.

Exit 0 when every metric matches: exactly for CPU runs (deterministic here), within ``--tolerance``
otherwise. A run made by another code version (env.json's git commit) is refused unless
``--allow-version-change``, because a difference would then say nothing about reproducibility.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from transferlab.cli import user_errors
from transferlab.errors import ConfigError
from transferlab.metrics import COMPARED
from transferlab.runs import ENV, METRICS, RunDir, resume_command


def _check_version(run: RunDir, allow: bool) -> None:
    from transferlab.tracking import git_state

    then = run.read_json(ENV).get("git", {}) if run.has(ENV) else {}
    now = git_state(Path(__file__).resolve().parent)
    if then.get("commit") != now.get("commit") and not allow:
        raise ConfigError(f"'{run.path}' was made by code version {then.get('commit') or 'unknown'}, this is "
                          f"{now.get('commit') or 'unknown'}; check out that commit, or pass "
                          f"--allow-version-change to compare anyway")


def reproduce(run_dir: Path, out: Path | None, allow_version_change: bool, tolerance: float | None):
    from omegaconf import OmegaConf

    from transferlab import run
    from transferlab.plan import resolve

    folder = RunDir(run_dir)
    saved = folder.read_config()
    source_overrides = saved.get("source", {}).get("overrides") if isinstance(saved.get("source"), dict) else None
    # a source checkpoint that cannot be found is trained again where the run says how (source.overrides)
    cfg = OmegaConf.create(folder.located_config("tl-reproduce", optional=("ckpt_path",) + (
        ("model.checkpoint",) if source_overrides else ())))
    if not folder.finished():
        raise ConfigError(f"'{run_dir}' has no metrics.json: it never finished, so there is nothing to compare "
                          f"(resume it with {resume_command(run_dir)})")
    old = folder.read_json(METRICS)
    _check_version(folder, allow_version_change)
    out = out or run_dir.parent / f"{run_dir.name}-reproduced-{time.strftime('%Y%m%d-%H%M%S')}"
    # Everything is computed again: no features from the shared cache either.
    # Not an Optuna trial again: the study has its result already.
    overrides = {"paths.run_dir": str(out), "ckpt_path": None, "resume": None, "paths.feature_cache": None,
                 "optuna_trial": None}
    if cfg.model.get("checkpoint") and not Path(cfg.model.checkpoint).is_file() and source_overrides:
        overrides["model.checkpoint"] = None  # the cached source run is gone: train it again
    if tolerance is None:  # CPU runs are deterministic here; GPU kernels may not be
        env = folder.read_json(ENV) if folder.has(ENV) else {}
        on_gpu = env.get("device", {}).get("cuda", True) and cfg.trainer.get("accelerator") != "cpu"
        tolerance = 0.01 if on_gpu else 0.0
    new = run.train(resolve(cfg, overrides))
    return old, new, tolerance, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tl-reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run directory")
    parser.add_argument("--out", type=Path, help="where the new run goes (default: beside RUN_DIR)")
    parser.add_argument("--allow-version-change", action="store_true", help="compare across code versions")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest accepted difference per metric (default: 0 on CPU, 0.01 otherwise)")
    args = parser.parse_args(argv)
    with user_errors():
        old, new, tol, out = reproduce(args.run_dir, args.out, args.allow_version_change, args.tolerance)
    rows = [(k, old.get(k), new.get(k)) for k in COMPARED if k in old or k in new]
    bad = [k for k, a, b in rows if a is None or b is None or abs(a - b) > tol]
    print(f"\n{'metric':<16}{'original':>12}{'reproduced':>12}  match (tolerance {tol:g})")
    for k, a, b in rows:
        print(f"{k:<16}{a if a is None else f'{a:.6f}':>12}{b if b is None else f'{b:.6f}':>12}  "
              f"{'no' if k in bad else 'yes'}")
    print(f"new run: {out}")
    if bad:
        print(f"error: not reproduced: {', '.join(bad)} differ by more than {tol:g}", file=sys.stderr)
        sys.exit(1)
    print("reproduced: every metric matches")


if __name__ == "__main__":
    main()
