"""Model zoos: "any timm model" must be true. Every timm family builds under the default config and
trains a step with a partial freeze, or is refused by name before any training; never a traceback."""
from __future__ import annotations

import gc
from contextlib import contextmanager
from functools import lru_cache

import pytest
import torch
from helpers import compose, torch_threads, train

from transferlab.errors import ConfigError, TransferlabError
from transferlab.models import from_checkpoint
from transferlab.plan import resolve

# The smallest model of each timm module (timm 1.0.31, by parameter count on the meta device); a
# module timm adds later falls back to a name that sounds small.
SMALLEST = {
    "beit": "beit_base_patch16_224", "byoanet": "halonet_h1", "byobnet": "test_byobnet", "cait": "cait_xxs24_224",
    "coat": "coat_tiny", "convit": "convit_tiny", "convmixer": "convmixer_768_32", "convnext": "test_convnext",
    "cpubone": "cpubone_nano", "crossvit": "crossvit_tiny_240", "csatv2": "csatv2", "cspnet": "cs3darknet_focus_s",
    "cspnext": "cspnext_tiny", "davit": "davit_tiny", "deepseek_vit": "deepseek_vit_412m", "deit": "deit_tiny_patch16_224",
    "densenet": "densenet121", "dla": "dla46x_c", "dpn": "dpn48b", "edgenext": "edgenext_xx_small",
    "efficientformer": "efficientformer_l1", "efficientformer_v2": "efficientformerv2_s0",
    "efficientnet": "test_efficientnet", "efficientvim": "efficientvim_m1", "efficientvit_mit": "efficientvit_b0",
    "efficientvit_msra": "efficientvit_m0", "eva": "test_eva", "fasternet": "fasternet_t0", "fastvit": "fastvit_t8",
    "focalnet": "focalnet_tiny_lrf", "gcvit": "gcvit_xxtiny", "gemma4_vit": "gemma4_vit_167m",
    "ghostnet": "ghostnet_050", "hardcorenas": "hardcorenas_a", "hgnet": "hgnetv2_b0", "hiera": "hiera_tiny_224",
    "hieradet_sam2": "sam2_hiera_tiny", "iformer": "iformer_t", "inception_next": "inception_next_atto",
    "inception_resnet_v2": "inception_resnet_v2", "inception_v3": "inception_v3", "inception_v4": "inception_v4",
    "lcnetv2": "lcnetv2_small", "levit": "levit_128s", "lowformer": "lowformer_b0", "mambaout": "test_mambaout",
    "maxxvit": "test_maxvit", "metaformer": "poolformer_s12", "mlp_mixer": "mixer_s32_224",
    "mobilenetv3": "lcnet_035", "mobilenetv5": "mobilenetv5_base", "mobilevit": "mobilevit_xxs",
    "mvitv2": "mvitv2_tiny", "naflexvit": "naflexvit_base_patch16_parfac_gap", "nasnet": "nasnetalarge",
    "nest": "nest_tiny", "nextvit": "nextvit_small", "nfnet": "test_nfnet", "pit": "pit_ti_224",
    "pnasnet": "pnasnet5large", "pvt_v2": "pvt_v2_b0", "qwen3_vit": "qwen3_vit_88m", "rdnet": "rdnet_tiny",
    "regnet": "regnetx_002", "repghost": "repghostnet_050", "repvit": "repvit_m0_9", "res2net": "res2net50_26w_4s",
    "resnest": "resnest14d", "resnet": "test_resnet", "resnetv2": "resnetv2_18", "rexnet": "rexnetr_100",
    "selecsls": "selecsls42", "senet": "legacy_seresnet18", "sequencer": "sequencer2d_s", "shvit": "shvit_s1",
    "sknet": "skresnet18", "starnet": "starnet_s050", "swiftformer": "swiftformer_xs",
    "swin_transformer": "swin_tiny_patch4_window7_224", "swin_transformer_v2": "swinv2_tiny_window8_256",
    "swin_transformer_v2_cr": "swinv2_cr_tiny_224", "tiny_vit": "tiny_vit_5m_224", "tnt": "tnt_s_legacy_patch16_224",
    "tresnet": "tresnet_m", "twins": "twins_svt_small", "vgg": "vgg11", "visformer": "visformer_tiny",
    "vision_transformer": "test_vit", "vision_transformer_hybrid": "vit_tiny_r_s16_p8_224",
    "vision_transformer_relpos": "test_vit_relpos", "vision_transformer_sam": "samvit_base_patch16_224",
    "vitamin": "vitamin_small_224", "volo": "volo_d1_224", "vovnet": "ese_vovnet19b_slim_dw",
    "xception": "legacy_xception", "xception_aligned": "xception41p", "xcit": "xcit_nano_12_p8_224",
}
_SMALL_WORDS = ("test_", "atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "small", "b0", "18")
ONE_STEP = ["source=none", "strategy=partial", "strategy.freeze_stages=1", "data=digits", "data.train_per_class=2",
            "data.batch_size=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=csv"]


def smallest(module: str) -> str | None:
    import timm

    names = timm.list_models(module=module)
    if module in SMALLEST and SMALLEST[module] in names:
        return SMALLEST[module]
    score = {n: next((i for i, w in enumerate(_SMALL_WORDS) if w in n), len(_SMALL_WORDS)) for n in names}
    return min(names, key=lambda n: (score[n], len(n), n)) if names else None


@lru_cache(maxsize=8)
def composed(*overrides):
    """Hydra composes a config in about 0.1 s: a zoo test composes its overrides once and sets each model's
    keys when it resolves the plan (``resolve`` copies the config, so the cached one stays as it is)."""
    return compose(*overrides)


def one_step(run_dir, name: str, *overrides, values: dict | None = None):
    """The tl-train path up to the module (plan, data, model, strategy), then one optimisation step with
    the strategy applied; returns (parameters before, module) so a test can see what moved. ``model.name``
    and ``values`` (dotted keys) are set on the composed config as tl-eval sets a saved one's: the same
    config as their overrides would compose (compared for every model of both zoos), composed once."""
    import pytorch_lightning as pl

    from transferlab import run
    from transferlab.callbacks import ApplyStrategy

    plan = resolve(composed("model=tiny", *ONE_STEP, *overrides),
                   {"model.name": name, **(values or {}), "paths.run_dir": str(run_dir)})
    run.prepare(plan)
    pl.seed_everything(0)
    module, datamodule, _ = run.build(plan)
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", callbacks=[ApplyStrategy(plan.strategy)], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(run_dir))
    trainer.fit(module, datamodule=datamodule)
    return before, module


def check_trained(before: dict, module) -> None:
    """Stage 0 did not move, the head did: the partial freeze applied and the head fits the features."""
    model = module.model
    for name, p in model.backbone.named_parameters():
        if model.stage_of[name] == 0:
            assert torch.equal(p, before[f"backbone.{name}"]), f"frozen {name} moved"
    head = [k for k in before if k.startswith("heads.")]
    assert any(not torch.equal(before[k], dict(model.named_parameters())[k]) for k in head), "the head did not train"


@contextmanager
def collecting_new_objects_only():
    """A zoo frees each model's cycles (its model, trainer and optimizer hold each other) before the next;
    with torch, timm, Lightning and transformers loaded a full ``gc.collect()`` walks over 600k objects
    (0.2 s a model, over a quarter of the timm zoo's time). What survives a collection (modules, registries,
    caches the models import or fill) is frozen, so each collection walks only what the last model made."""
    def free():
        gc.collect()
        gc.freeze()

    free()
    try:
        yield free
    finally:
        gc.unfreeze()


@pytest.mark.slow
def test_every_timm_family_trains_a_partial_step_or_is_refused_by_name(tmp_path):
    import timm

    outcome, tracebacks = {}, {}
    with torch_threads(1), collecting_new_objects_only() as free:
        for i, module in enumerate(timm.list_modules()):
            name = smallest(module)
            if name is None:
                continue
            try:
                check_trained(*one_step(tmp_path / str(i), name))
                outcome[module] = "runs"
            except TransferlabError as e:
                assert name in str(e), f"{module}: the refusal does not name the model: {e}"
                assert not list((tmp_path / str(i)).rglob("*.ckpt")), f"{module}: refused after training"
                outcome[module] = "refused"
            except Exception as e:  # noqa: BLE001 - the point: collect every family's traceback
                tracebacks[module] = f"{name}: {type(e).__name__}: {str(e)[:200]}"
            free()
    print({k: sum(v == k for v in outcome.values()) for k in ("runs", "refused")}, "failing:", len(tracebacks))
    assert not tracebacks, "\n".join(f"{m}: {t}" for m, t in tracebacks.items())
    assert list(outcome.values()).count("runs") >= 0.8 * len(outcome)  # 91 of 98 ran with timm 1.0.31, 7 refused


def test_a_model_without_stochastic_depth_builds_and_a_rate_set_for_it_is_refused_by_key(tmp_path):
    # DLA's constructor takes no drop_path_rate: the default (null) passes none
    check_trained(*one_step(tmp_path / "a", "dla46x_c"))
    with pytest.raises(ConfigError, match=r"'dla46x_c' does not take model.drop_path_rate=0.1.*unset"):
        one_step(tmp_path / "b", "dla46x_c", "model.drop_path_rate=0.1")


def test_heads_read_the_width_after_a_conv_head(tmp_path):
    # LCNet pools 128 features, then a 1x1 conv head widens them to 1280: the head must read 1280
    before, module = one_step(tmp_path, "lcnet_035")
    backbone = module.model.backbone
    assert backbone.head_hidden_size != backbone.num_features
    assert module.model.heads["main"][-1].in_features == backbone.head_hidden_size
    check_trained(before, module)


def test_a_fixed_size_model_is_built_for_the_data_size_and_rebuilt_from_its_checkpoint(tmp_path):
    # DeiT is built for 224 px; digits are fed at 32 px: its patch grid is rebuilt for 32 (2x2 patches)
    metrics = train(tmp_path, "model=tiny", "model.name=deit_tiny_patch16_224", "source=none", "strategy=finetune",
                    "trainer.max_epochs=1")
    loaded = from_checkpoint(tmp_path / "checkpoints" / "best.ckpt")  # the same grid, from the checkpoint alone
    assert loaded.model.backbone.patch_embed.img_size == (32, 32)
    assert 0 <= metrics["test/acc"] <= 1


def test_a_model_that_cannot_read_the_data_size_is_refused_naming_both_sizes(tmp_path):
    with pytest.raises(ConfigError, match=r"'efficientformer_l1' cannot read 32x32 images \(it is built for 224x224.*"
                                          r"data.input_size=224"):
        one_step(tmp_path, "efficientformer_l1")
    assert not list(tmp_path.rglob("*.ckpt"))


# --- transformers encoders built from a config (model.config.model_type=...) ------------------------------

TEXT = ["model=tiny_bert", "data=synthetic_text", "data.num_samples=40", "data.batch_size=4", "tasks.main.column=topic",
        "model.tokenizer.train_on=['data=synthetic_text','data.domain=source','data.num_samples=400']",
        "source=none", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=csv"]


def text_step(run_dir, *overrides, values: dict | None = None):
    """``one_step`` for a text model of tiny_bert's sizes and another model type."""
    return one_step(run_dir, "tiny_bert", *TEXT, *overrides, values=values)


@pytest.mark.slow
def test_every_encoder_type_trains_a_partial_step_or_is_refused_by_name(tmp_path):
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES as ENCODERS

    outcome, tracebacks = {}, {}
    with torch_threads(1), collecting_new_objects_only() as free:
        for i, model_type in enumerate(sorted(ENCODERS)):
            try:
                check_trained(*text_step(tmp_path / str(i), "strategy.freeze_stages=1",
                                         values={"model.config.model_type": model_type}))
                outcome[model_type] = "runs"
            except TransferlabError as e:
                assert model_type in str(e) or "tiny_bert" in str(e), f"{model_type}: not about the model: {e}"
                assert not list((tmp_path / str(i)).rglob("*.ckpt")), f"{model_type}: refused after training"
                outcome[model_type] = "refused"
            except Exception as e:  # noqa: BLE001 - the point: collect every type's traceback
                tracebacks[model_type] = f"{type(e).__name__}: {str(e)[:200]}"
            free()
    print({k: sum(v == k for v in outcome.values()) for k in ("runs", "refused")}, "failing:", len(tracebacks))
    assert not tracebacks, "\n".join(f"{m}: {t}" for m, t in tracebacks.items())
    assert list(outcome.values()).count("runs") >= 0.75 * len(outcome)  # 41 of 51 ran with transformers 5.25.0


def test_albert_shares_its_layers_in_groups_and_still_freezes_by_stage(tmp_path):
    # ALBERT's parameters live in encoder.albert_layer_groups.<g>: one group of shared layers
    before, module = text_step(tmp_path, "model.config.model_type=albert", "+model.config.embedding_size=32",
                               "strategy=partial", "strategy.freeze_stages=1")
    assert module.model.num_stages == 2  # the embeddings, then the layer group
    check_trained(before, module)


def test_a_special_token_id_outside_the_vocabulary_is_refused_by_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model.config.pad_token_id=5000 outside the vocabulary \(vocab_size=1024\)"):
        text_step(tmp_path, "+model.config.pad_token_id=5000")
    with pytest.raises(ConfigError, match=r"model.config \(model_type=funnel\) is not a valid transformers config"):
        text_step(tmp_path / "b", "model.config.model_type=funnel")


def test_a_model_of_several_parts_is_refused_before_it_is_built(tmp_path):
    # UltraVBERT's sizes would reach neither its text nor its vision part: built, it needed over 20 GB
    with pytest.raises(ConfigError, match=r"model_type=ultravbert\) is a model of several parts \(text_config, "
                                          r"vision_config\)"):
        text_step(tmp_path, "model.config.model_type=ultravbert")


def test_a_model_with_language_adapters_is_refused_until_its_language_is_set(tmp_path):
    # X-MOD routes each batch through one language's adapters: without one set it fails in the first step
    with pytest.raises(ConfigError, match=r"model_type=xmod\) needs .* \+model.config.default_language to one of "
                                          r"\['en_XX'\]"):
        text_step(tmp_path, "model.config.model_type=xmod")
    check_trained(*text_step(tmp_path / "b", "model.config.model_type=xmod", "+model.config.default_language=en_XX"))
