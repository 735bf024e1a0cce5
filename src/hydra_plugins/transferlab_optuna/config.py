"""The sweeper's config schema and its samplers, stored in Hydra's ConfigStore.

``hydra/sweeper: optuna`` selects ``OptunaSweeperConf``; ``hydra/sweeper/sampler: <name>`` one of
``SAMPLERS`` (plain mappings, so ``+hydra.sweeper.sampler.<arg>=...`` passes any other argument of
the Optuna sampler). conf/hparams_search/optuna.yaml documents every key.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.transferlab_optuna.sweeper.OptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = MISSING  # hydra/sweeper/sampler
    direction: str = "maximize"  # of the value tl-train returns (`objective`)
    study_name: Optional[str] = None  # null: the sweep directory's name
    storage: Optional[str] = None  # an Optuna RDB URL; null: sqlite:///<sweep dir>/optuna.db
    n_trials: int = 20  # finished (complete, pruned or failed) trials in the whole study
    n_jobs: int = 1  # trials handed to the launcher at once
    max_failure_rate: float = 1.0  # stop the search once more than this fraction of its trials failed
    pruner: Any = MISSING  # hydra/sweeper/pruner: {kind: a name of transferlab.studies.PRUNERS, its arguments}
    heartbeat_interval: int = 60  # seconds between the sweeper's "still running" marks of its trials
    grace_period: Optional[int] = None  # a RUNNING trial unmarked this long was lost (null: 2 x interval)
    max_retry: int = 2  # times a lost trial's parameters are run again (0: a lost trial is replaced by a new one)
    params: Optional[Dict[str, Any]] = None  # config key -> Hydra sweep syntax or an Optuna distribution


SAMPLERS = {  # name -> the Optuna sampler and the arguments the config shows
    # tpe: 4 random trials before modelling (Optuna's 10 would be all of a small search)
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 4, "multivariate": False,
            "constant_liar": True},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "grid": {"_target_": "optuna.samplers.GridSampler", "_partial_": True, "seed": None},  # grid: from params
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None, "n_startup_trials": 1, "sigma0": None,
              "restart_strategy": None},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None, "qmc_type": "sobol", "scramble": False},
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": None, "n_startup_trials": 10},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50},
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="transferlab")
store.store(group="hydra/sweeper/pruner", name="none", node={"kind": None}, provider="transferlab")  # never prunes
for name, node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="transferlab")
