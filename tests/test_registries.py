"""Every config group that chooses code answers a misspelt name with the same one-paragraph error:
the bad value, the key that holds it, the close names and every valid one. Checked while the plan
is resolved, i.e. before any data is read or any source run trains."""
from __future__ import annotations

import pytest
from helpers import REPO, cli, compose

from transferlab.errors import ConfigError
from transferlab.plan import resolve

CASES = {  # group -> (override, what, registered name it should suggest)
    "model family": ("model.kind=tim", "model family", "timm"),
    "data kind": ("data.kind=digit", "data kind", "digits"),
    "strategy": ("strategy.kind=linear_prob", "strategy", "linear_probe"),
    "optimizer": ("optimizer.kind=adamv", "optimizer", "adamw"),
    "scheduler": ("scheduler.kind=cosin", "scheduler", "cosine"),
    "loss weighting": ("multitask.loss_weighting.kind=uncertainity", "loss weighting", "uncertainty"),
    "task kind": ("tasks.main.kind=classify", "task kind", "classification"),
    "logger": ("logger.csv.kind=cvs", "logger", "csv"),
}


@pytest.mark.parametrize("group", CASES)
def test_an_unknown_name_in_each_registry_is_one_clear_error_with_a_suggestion(tmp_path, group):
    override, what, close = CASES[group]
    bad = override.split("=", 1)[1]
    with pytest.raises(ConfigError) as e:
        resolve(compose("source=none", override, run_dir=tmp_path))
    message = str(e.value)
    assert message.startswith(f"unknown {what} '{bad}'"), message
    assert override in message  # the key that holds the value
    suggested, valid = message.split("; ", 1)[1].split("? valid: ")
    assert suggested.startswith("did you mean ") and f"'{close}'" in suggested and close in valid.split(", ")
    assert "\n" not in message
    assert not any(tmp_path.iterdir())  # nothing was written


def test_the_cli_prints_the_registry_error_and_exits_nonzero_before_any_source_run(tmp_path):
    proc = cli("tl-train", "strategy.kind=lp-ft", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
               env={"PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode != 0
    assert "error: unknown strategy 'lp-ft' (strategy.kind=lp-ft); did you mean 'lp_ft'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # the source run never started


def test_a_setting_the_chosen_strategy_does_not_take_names_the_ones_it_does(tmp_path):
    with pytest.raises(ConfigError, match=r"strategy\.freeze_stages is not a setting of strategy 'finetune'; "
                                          r"its settings are: .*bn"):
        resolve(compose("source=none", "+strategy.freeze_stages=2", run_dir=tmp_path))


def test_a_backbone_without_a_stage_grouping_is_an_error_for_partial_and_gradual_not_one_stage():
    import torch

    from transferlab.models.network import TransferModel, create_head
    from transferlab.models.timm import TimmFamily
    from transferlab.strategies.finetune import Finetune
    from transferlab.strategies.gradual import Gradual
    from transferlab.strategies.partial import Partial

    class Ungrouped(TimmFamily):
        def groups(self, backbone, coarse):
            return None

    family = Ungrouped(name="test_resnet", pretrained=False)
    backbone = family.create_backbone()
    model = TransferModel(backbone, torch.nn.ModuleDict({"main": create_head(backbone.num_features, 3)}), family)
    assert not model.has_stages and model.num_stages == 1
    for strategy in (Partial(freeze_stages=1), Gradual()):
        with pytest.raises(ConfigError, match="has no stage grouping"):
            strategy.check_fits(model, max_epochs=5)
    Finetune().check_fits(model, max_epochs=5)  # strategies that treat the backbone whole still fit


def test_every_registry_names_and_checks_its_entries_without_loading_the_training_stack():
    """Names, "did you mean" and every group's settings answer before torch, timm, Lightning or
    transformers is imported: a fresh interpreter (the import state is what is tested) lists every
    registry and resolves the default plan, and none of them is loaded."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from transferlab.config import compose_config, set_value\n"
            "from transferlab.plan import resolve\n"
            "from transferlab.models import FAMILIES\n"
            "from transferlab.data import KINDS\n"
            "from transferlab.strategies import STRATEGIES\n"
            "from transferlab.optim import OPTIMIZERS, SCHEDULERS\n"
            "from transferlab.multitask import LOSS_WEIGHTING\n"
            "from transferlab.tracking import LOGGERS\n"
            "from transferlab.fusion import FUSIONS\n"
            "from transferlab.tasks import TASKS\n"
            "from transferlab.data.corruptions import CORRUPTIONS\n"
            "from transferlab.transferability import SCORES\n"
            "regs = [FAMILIES, KINDS, STRATEGIES, OPTIMIZERS, SCHEDULERS, LOSS_WEIGHTING, LOGGERS, FUSIONS, TASKS,"
            " CORRUPTIONS, SCORES]\n"
            "print(sum(len(r.names()) for r in regs))\n"
            "cfg = compose_config(['source=none'])\n"
            "set_value(cfg, 'paths.run_dir', '/nonexistent/run')\n"
            "resolve(cfg)\n"
            "print(sorted(m for m in ('torch', 'timm', 'pytorch_lightning', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    count, loaded = out.stdout.split("\n")[:2]
    assert int(count) >= 30 and loaded == "[]", out.stdout
