"""Devices and nodes: ``trainer=ddp`` / ``multinode`` / ``fsdp``, on the CPU, as a user starts them.

Every distributed run here is a real ``tl-train`` in subprocesses (Lightning's launcher re-executes
the script for each extra rank; inside pytest it would re-run pytest), on loopback only, bounded by
timeouts, with every process group the test started killed afterwards.

How "the same as one process" can be exact: the training set (digits 5-9, 12 per class = 60
images) is one global batch per step (1 process x 60 = 2 ranks x 30), so the order the
DistributedSampler deals samples in does not matter; augmentation is off (each rank draws its own
random numbers); BatchNorm is in eval mode (a 30-image shard has other batch statistics than 60
images, and SyncBatchNorm needs a GPU); val/test have 170 images each (even: the DistributedSampler
pads an odd split by repeating a sample, which would change the metrics). Under those conditions the
averaged DDP gradient equals the single-process one up to float summation order, so:

* weights of ``last.ckpt`` agree to ``WEIGHT_ATOL`` = 1e-5 (measured: <= 6e-7). One missing or
  rank-local gradient moves a weight by about one Adam step, lr * 0.1 = 3e-4 for the LP-FT backbone,
  30x the tolerance;
* test predictions are then identical, so accuracy / F1 / precision / recall / val/acc_best agree to
  ``METRIC_ABS`` = 1e-6 (float32 rounding only);
* ``test/loss`` (a mean of per-sample losses) to 1e-5.

The strategy is LP-FT with one probing epoch: the backbone is frozen in epoch 0 and trains in epoch 1,
the known DDP trap of parameters that stop or start receiving gradients mid-run.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import (
    BIN,
    DIST_VARS,
    METRIC_ABS,
    WEIGHT_ATOL,
    checkpoint,
    clean_env,
    compose,
    csv_column,
    free_port,
    launch,
    metrics,
    tl_train,
)

from transferlab.plan import resolve

EPOCHS = 2
WORLD = 2                    # processes in every distributed run
TRAIN_IMAGES = 60            # digits 5-9, data.train_per_class=12
EVAL_IMAGES = 170            # val and test each with val_fraction = test_fraction = 0.19
PER_RANK_BATCH = TRAIN_IMAGES // WORLD
LOSS_ABS = 1e-5
EXACT_METRICS = ("test/acc", "test/f1", "test/precision", "test/recall", "val/acc_best")


def overrides(*extra, batch_size=PER_RANK_BATCH, epochs=EPOCHS, logger="csv",
              strategy=("strategy=lp_ft", "strategy.lp_epochs=1")):
    return ["source=none", f"logger={logger}", f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
            "data.train_per_class=12", "data.val_fraction=0.19", "data.test_fraction=0.19",
            "data.augment.enabled=false", f"data.batch_size={batch_size}",
            *strategy, "strategy.bn=frozen", *extra]


def check_ok(results):
    for i, (rc, output) in enumerate(results):
        assert rc == 0, f"process {i} exited with {rc}:\n{output[-4000:]}"


def only_child_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir())


def assert_complete(run_dir: Path):
    for name in ("config.yaml", "env.json", "metrics.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                 "csv/metrics.csv", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), f"{run_dir} has no {name}"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["paths"]["run_dir"] == str(run_dir)
    # one row per validation epoch and one test row: written by one logger, not once per rank
    assert len(csv_column(run_dir, "val/acc")) == EPOCHS and len(csv_column(run_dir, "test/acc")) == 1
    return config


def assert_same_training(run_dir: Path, reference: Path):
    """The distributed run trained the very model the single process did (see the module docstring)."""
    got, want = metrics(run_dir), metrics(reference)
    for key in EXACT_METRICS:
        assert got[key] == pytest.approx(want[key], abs=METRIC_ABS), key
    for key in ("trainable_params", "total_params", "epochs", "strategy"):
        assert got[key] == want[key], key
    assert csv_column(run_dir, "val/acc") == pytest.approx(csv_column(reference, "val/acc"), abs=METRIC_ABS)
    mine, single = checkpoint(run_dir), checkpoint(reference)
    # Each rank stepped over its own half: the DistributedSampler shards the 60 images (without it,
    # each rank would see all 60 in 2 batches of 30 and take twice the steps).
    assert mine["global_step"] == single["global_step"] == EPOCHS * TRAIN_IMAGES // (WORLD * PER_RANK_BATCH)
    assert mine["state_dict"].keys() == single["state_dict"].keys()
    worst = max(((mine["state_dict"][k].double() - v.double()).abs().max().item(), k)
                for k, v in single["state_dict"].items())
    assert worst[0] <= WEIGHT_ATOL, f"weights differ from the single-process run's by {worst[0]:.2e} ({worst[1]})"


# --- the runs (each once per module) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The reference: one process, one batch of 60."""
    cwd = tmp_path_factory.mktemp("single")
    tl_train(*overrides("trainer=cpu", batch_size=TRAIN_IMAGES), f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return cwd / "run"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """2 CPU processes by Lightning's own launcher, Hydra's default (timestamped) run directory, csv + W&B."""
    cwd = tmp_path_factory.mktemp("ddp")
    output = tl_train(*overrides("trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={WORLD}", logger="many"),
                      cwd=cwd)
    return cwd, output


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    """2 "nodes" of 1 process each, started by the test with torchrun, rendezvous on 127.0.0.1."""
    cwd = tmp_path_factory.mktemp("torchrun")
    port = free_port()
    results = launch([([BIN / "torchrun", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}",
                        "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "transferlab.cli.train",
                        *overrides("trainer=multinode", "trainer.accelerator=cpu"), f"hydra.run.dir={cwd / 'run'}"],
                       # a marker that only shows up in a config.yaml written by node 1
                       clean_env(TRANSFERLAB_OUTPUT_DIR=f"outputs-node{node}"))
                      for node in (0, 1)], cwd)
    return cwd, results


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """A linear probe on cached features (frozen backbone, no augmentation), in one process and in two
    DDP processes, each with an empty feature cache of its own: both ranks extract and publish."""
    cwd = tmp_path_factory.mktemp("probe")
    for name, extra, batch in (("single", ["trainer=cpu"], TRAIN_IMAGES),
                               ("ddp", ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={WORLD}"],
                                PER_RANK_BATCH)):
        tl_train(*overrides(*extra, f"paths.feature_cache={cwd / name}_features", batch_size=batch,
                            strategy=["strategy=linear_probe"]), f"hydra.run.dir={cwd / name}", cwd=cwd)
    return cwd


# --- Lightning's launcher: trainer=ddp trainer.accelerator=cpu trainer.devices=2 ----------------------

@pytest.mark.slow
def test_ddp_run_leaves_one_complete_run_directory(ddp):
    cwd, output = ddp
    (experiment,) = only_child_dirs(cwd / "outputs" / "runs")
    (run_dir,) = only_child_dirs(experiment)  # rank 1 reused rank 0's directory instead of making its own
    config = assert_complete(run_dir)
    assert list(run_dir.glob("*ddp_process_1.log"))  # rank 1's own Hydra log: its output dir is this one
    assert config["trainer"]["devices"] == WORLD and config["trainer"]["strategy"].startswith("ddp")
    assert len(list((cwd / "outputs").rglob("metrics.json"))) == 1
    env = json.loads((run_dir / "env.json").read_text())
    # Lightning starts rank 1 as `tl-train ... hydra.job.name=train_ddp_process_1`: env.json is rank 0's
    assert not [a for a in env["argv"] if "train_ddp_process" in a]
    assert str(run_dir) in output and "test/acc=" in output
    assert "distributed_backend=gloo" in (run_dir / "train.log").read_text()  # Lightning's banner: the log keeps it


@pytest.mark.slow
def test_ddp_run_trains_the_same_model_as_one_process_with_the_same_global_batch(ddp, single):
    cwd, _ = ddp
    (run_dir,) = [p.parent for p in (cwd / "outputs").rglob("metrics.json")]
    assert_same_training(run_dir, single)


@pytest.mark.slow
def test_only_rank_0_writes_a_wandb_run(ddp):
    cwd, _ = ddp
    (run_file,) = cwd.rglob("*.wandb")  # exactly one W&B run for the two processes
    (run_dir,) = [p.parent for p in (cwd / "outputs").rglob("metrics.json")]
    assert run_file.is_relative_to(run_dir / "wandb")


@pytest.mark.slow
def test_ddp_losses_are_averaged_over_all_ranks(ddp, single):
    cwd, _ = ddp
    (run_dir,) = [p.parent for p in (cwd / "outputs").rglob("metrics.json")]
    assert metrics(run_dir)["test/loss"] == pytest.approx(metrics(single)["test/loss"], abs=LOSS_ABS)
    assert csv_column(run_dir, "val/loss") == pytest.approx(csv_column(single, "val/loss"), abs=LOSS_ABS)


@pytest.mark.slow
def test_ddp_throughput_counts_the_samples_of_every_rank(ddp):
    cwd, _ = ddp
    (run_dir,) = [p.parent for p in (cwd / "outputs").rglob("metrics.json")]
    m = metrics(run_dir)
    assert m["train_samples_per_second"] * m["fit_seconds"] == pytest.approx(EPOCHS * TRAIN_IMAGES, rel=0.02)


# --- torchrun: 2 nodes x 1 process on loopback ----------------------------------------------------------

@pytest.mark.slow
def test_two_node_torchrun_run_finishes_in_one_run_directory(torchrun):
    cwd, results = torchrun
    check_ok(results)
    run_dir = cwd / "run"
    config = assert_complete(run_dir)
    assert config["trainer"]["num_nodes"] == 2
    assert config["paths"]["output_dir"] == "outputs-node0"  # written by node 0 (rank 0)
    assert only_child_dirs(cwd) == [run_dir]  # nothing else made a directory (no outputs-node*/)
    assert len(list(cwd.rglob("metrics.json"))) == 1


@pytest.mark.slow
def test_two_node_torchrun_run_trains_the_same_model_as_one_process(torchrun, single):
    cwd, results = torchrun
    check_ok(results)
    assert_same_training(cwd / "run", single)


@pytest.mark.slow
def test_the_lp_ft_comparison_is_not_vacuous(single):
    """The backbone really trained in epoch 1 (it moved far more than WEIGHT_ATOL from its
    initialisation), so the comparisons above check gradients that start flowing mid-run."""
    import pytorch_lightning as pl

    from transferlab.plan import resolve
    from transferlab.run import build

    cfg = compose(*overrides("trainer=cpu", batch_size=TRAIN_IMAGES), run_dir=single)
    pl.seed_everything(cfg.seed, workers=True)
    initial = build(resolve(cfg))[0].state_dict()
    trained = checkpoint(single)["state_dict"]
    moved = max((trained[k] - v).abs().max().item() for k, v in initial.items()
                if k.startswith("model.backbone.") and v.is_floating_point())
    assert moved > 10 * WEIGHT_ATOL


# --- multinode with Lightning's own launcher on each node (NODE_RANK) --------------------------------

@pytest.mark.slow
def test_two_nodes_started_with_node_rank_write_one_wandb_run(tmp_path):
    port = free_port()
    results = launch([([BIN / "tl-train", *overrides("trainer=multinode", "trainer.accelerator=cpu", epochs=1,
                                                     logger="many"),
                        f"hydra.run.dir={tmp_path / 'run'}"],
                       clean_env(NODE_RANK=str(node), MASTER_PORT=str(port), TRANSFERLAB_OUTPUT_DIR=f"outputs-node{node}"))
                      for node in (0, 1)], tmp_path)
    check_ok(results)
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert len(list(tmp_path.rglob("*.wandb"))) == 1
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["paths"]["output_dir"] == "outputs-node0"


# --- a sweep of DDP runs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    output = tl_train("-m", *overrides("trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={WORLD}", epochs=1),
                      "seed=1,2", cwd=cwd)
    return cwd, output


@pytest.mark.slow
def test_ddp_sweep_finishes_every_job_and_reports(ddp_sweep):
    cwd, _ = ddp_sweep
    sweep_dir = next(p.parent for p in (cwd / "outputs" / "multirun").rglob("multirun.yaml")
                     if (p.parent / "report.md").is_file())
    assert [metrics(sweep_dir / job)["seed"] for job in ("0", "1")] == [1, 2]
    assert "2 finished" in (sweep_dir / "report.md").read_text()


@pytest.mark.slow
def test_ddp_sweep_leaves_one_sweep_directory_reported_by_rank_0_only(ddp_sweep):
    cwd, output = ddp_sweep
    (experiment,) = only_child_dirs(cwd / "outputs" / "multirun")
    (sweep_dir,) = only_child_dirs(experiment)
    assert only_child_dirs(sweep_dir) == [sweep_dir / "0", sweep_dir / "1"]
    assert output.count("report of 2 runs") == 1 and "no report for" not in output


# --- the source-model cache when every rank starts at once (torchrun, SLURM) ---------------------------

def test_the_rank_that_takes_the_source_lock_leaves_a_usable_source(tmp_path, monkeypatch):
    import torch
    from pytorch_lightning.utilities import rank_zero_only

    from transferlab import run

    source = ("source.overrides=['data=digits','data.classes=[0,1,2,3,4]','source=none','strategy=finetune',"
              "'logger=csv','trainer.max_epochs=1','trainer.enable_progress_bar=false']")
    cfg = compose(source, f"paths.cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false",
                  run_dir=tmp_path / "run")
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # as in rank 1 of a torchrun/SLURM job (RANK / SLURM_PROCID)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = resolve(cfg)
        run.prepare(plan)
        path = plan.source_run.checkpoint
    finally:
        torch.set_num_threads(threads)
    assert path and Path(path).is_file()
    assert list((tmp_path / "cache").rglob("metrics.json"))


# --- config: which Trainer the trainer group asks for -------------------------------------------------

@pytest.fixture
def keep_rank(monkeypatch):
    """Building a distributed Trainer sets Lightning's global rank; put it back afterwards."""
    from pytorch_lightning.utilities import rank_zero_only

    for var in DIST_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)


@pytest.mark.parametrize("group, nodes, devices", [("ddp", 1, 2), ("multinode", 2, 1)])
def test_ddp_and_multinode_configs_ask_lightning_for_ddp(group, nodes, devices, tmp_path, keep_rank):
    from pytorch_lightning.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies import DDPStrategy

    from transferlab.run import create_trainer

    cfg = compose(f"trainer={group}", "trainer.accelerator=cpu", "source=none")
    assert cfg.trainer.get("num_nodes", 1) == nodes and cfg.trainer.devices == devices
    assert cfg.trainer.use_distributed_sampler is True and cfg.trainer.sync_batchnorm is False
    trainer = create_trainer(cfg, tmp_path)
    assert isinstance(trainer.strategy, DDPStrategy)
    # frozen stages get no gradients (linear probing, LP-FT, gradual): DDP must not wait for them
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (nodes, devices, nodes * devices)
    assert type(trainer.strategy.cluster_environment) is LightningEnvironment
    assert trainer._accelerator_connector.use_distributed_sampler is True


TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "test", "RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
SLURM_ENV = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7",
             "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_NODELIST": "node[1-2]"}


@pytest.mark.parametrize("launcher, env", [("TorchElasticEnvironment", TORCHRUN_ENV),
                                           ("SLURMEnvironment", SLURM_ENV)])
def test_multinode_takes_ranks_from_torchrun_or_slurm(launcher, env, tmp_path, keep_rank, monkeypatch):
    from transferlab.run import create_trainer

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    trainer = create_trainer(compose("trainer=multinode", "trainer.accelerator=cpu", "source=none"), tmp_path)
    assert type(trainer.strategy.cluster_environment).__name__ == launcher
    assert (trainer.global_rank, trainer.node_rank, trainer.local_rank, trainer.world_size) == (1, 1, 0, 2)


def test_fsdp_config_asks_lightning_for_sharded_bf16_training_on_every_gpu(tmp_path, keep_rank):
    import torch

    cfg = compose("trainer=fsdp", "source=none")
    assert (cfg.trainer.strategy, cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == \
        ("fsdp", "gpu", -1, "bf16-mixed")
    if torch.cuda.is_available():
        from pytorch_lightning.strategies import FSDPStrategy

        from transferlab.run import create_trainer

        trainer = create_trainer(cfg, tmp_path)
        assert isinstance(trainer.strategy, FSDPStrategy) and trainer.precision == "bf16-mixed"
        assert trainer.num_devices == torch.cuda.device_count()


def _needs_cpu_only(*marks):
    import torch

    return [pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"), *marks]


@pytest.mark.parametrize("extra", [
    pytest.param([], id="as-is", marks=_needs_cpu_only()),
    pytest.param(["trainer.accelerator=cpu"], id="accelerator=cpu", marks=_needs_cpu_only()),
    pytest.param(["trainer.accelerator=cpu", "trainer.devices=2"], id="accelerator=cpu,devices=2",
                 marks=_needs_cpu_only()),
])
def test_fsdp_on_cpu_is_a_clear_error_before_training(extra, tmp_path, keep_rank):
    from transferlab import run
    from transferlab.errors import ConfigError

    cfg = compose("trainer=fsdp", *extra, *overrides(), run_dir=tmp_path)
    with pytest.raises(ConfigError) as error:
        run.train(resolve(cfg))
    message = str(error.value).lower()
    assert "fsdp" in message and ("gpu" in message or "cuda" in message), message
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()



@pytest.mark.slow
def test_ddp_linear_probe_on_cached_features_trains_the_same_head_as_one_process(probes):
    for name in ("single", "ddp"):  # features were cached (train, val, test), no half-published entry left
        assert len(list((probes / f"{name}_features").iterdir())) == 3, name
    assert_complete(probes / "ddp")
    assert_same_training(probes / "ddp", probes / "single")
