"""Run directories, written and read here only: no other module spells a run-directory file name.

A low floor: plain files, YAML and JSON, no torch. ``run``, ``fusion``, ``report``, the sweeper and
the command-line entry points all go through it.
"""
from transferlab.runs.directory import (ADAPTER, BEST, CANDIDATES, CHECKPOINTS, CONFIG, ENV, FAILED, FEATURES, FUSED,
                                        EXPORTED, FUSION_FIGURE, LAST, METRICS, PREDICTIONS, PRUNED, RECORD, SUMMARY, RunDir,
                                        adopt, claim, forget_claims, free_name, refuse_interpolation,
                                        register_resolvers, resume_command)
from transferlab.runs.files import strict_json, write_atomic, write_json, write_yaml
from transferlab.runs.find import (RUN_SPECIFIC, STATUSES, Run, check_sweep, find_runs, read_history, read_run,
                                  setting, setting_digest, setting_items, under)
from transferlab.runs.saved import (VERSION, absolute_paths, check_saved, read_config, require_complete, upgrade,
                                   upgrade_tasks)

__all__ = ["ADAPTER", "BEST", "CANDIDATES", "CHECKPOINTS", "CONFIG", "ENV", "FAILED", "EXPORTED", "FEATURES", "FUSED", "FUSION_FIGURE", "LAST", "METRICS", "PREDICTIONS", "PRUNED", "RECORD", "SUMMARY", "RUN_SPECIFIC", "STATUSES",
           "VERSION", "Run", "RunDir", "absolute_paths", "adopt", "check_saved", "check_sweep", "claim", "find_runs", "forget_claims", "free_name",
           "read_config", "read_history", "read_run", "refuse_interpolation", "register_resolvers", "require_complete", "resume_command", "setting", "setting_digest", "setting_items",
           "strict_json", "under", "upgrade", "upgrade_tasks", "write_atomic", "write_json", "write_yaml"]
