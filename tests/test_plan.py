"""The plan and the model: resolving decides and writes nothing, a command resolves once, and a model
comes back from its checkpoint alone (no dataset on disk) with the logits its run had."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST, SOURCE, compose
from PIL import Image
from pytorch_lightning import Callback

from transferlab import plan as planning

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tree(*roots: Path) -> dict[str, int]:
    """Every file and folder under ``roots`` with its size: what a step would have written."""
    return {str(p): (p.stat().st_size if p.is_file() else -1) for root in roots if root.exists()
            for p in [root, *root.rglob("*")]}


def test_resolving_a_run_whose_source_and_tokenizer_are_not_cached_trains_and_writes_nothing(tmp_path, monkeypatch):
    """A text run with a tokenizer to train and an MLM source run to train first: resolve names both as
    steps (with the folders they will fill) and does neither; run.prepare is what performs them."""
    cache, cwd = tmp_path / "cache", Path.cwd()
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "default-cache"))  # its own: other test files share one
    (tmp_path / "default-cache").mkdir()
    cfg = compose(*SOURCE, f"paths.cache_dir={cache}", f"paths.output_dir={tmp_path / 'out'}",
                  run_dir=tmp_path / "run")
    roots = (tmp_path, Path(os.environ["TRANSFERLAB_CACHE"]))
    before, top = tree(*roots), sorted(os.listdir(cwd))
    plan = planning.resolve(cfg)
    assert tree(*roots) == before and sorted(os.listdir(cwd)) == top  # no file, no folder, no lock
    assert [type(s).__name__ for s in plan.steps] == ["TrainTokenizer", "SourceRun"]
    assert not any(s.done() for s in plan.steps)
    assert all(str(s.folder if hasattr(s, "folder") else s.file).startswith(str(cache)) for s in plan.steps)
    assert plan.source_run.checkpoint.parent.parent == plan.source_run.folder  # where build will load it from
    assert [str(s) for s in planning.resolve(cfg).steps] == [str(s) for s in plan.steps]  # pure cache keys


def test_tl_train_resolves_its_config_once(tmp_path, monkeypatch):
    """The command line is resolved into one plan, and everything after takes that plan: counted by
    wrapping ``plan.resolve`` wherever a transferlab module holds it. In-process: the count is the test."""
    calls = []
    original = planning.resolve

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    for module in [m for name, m in sys.modules.items() if name.startswith("transferlab") and m is not None]:
        if getattr(module, "resolve", None) is original:
            monkeypatch.setattr(module, "resolve", counted)
    monkeypatch.setattr(planning, "resolve", counted)
    from transferlab.cli import train as tl_train

    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["tl-train", *FAST, "source=none", "trainer.max_epochs=1",
                                      f"hydra.run.dir={run_dir}"])
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    tl_train.main()
    assert (run_dir / "metrics.json").is_file()
    assert len(calls) == 1


class TestLogits(Callback):
    """The logits of the run's own module, with the weights its test metrics were computed with."""

    def __init__(self, inputs):
        self.inputs, self.logits = inputs, None

    def on_test_start(self, trainer, pl_module):
        pl_module.eval()
        with torch.no_grad():
            self.logits = {k: v.detach().clone() for k, v in pl_module(self.inputs).items()}


def write_images(folder: Path, classes=("cat", "dog", "owl"), per_class=8, size=24) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tint = np.array([60 * (classes.index(c) + 1), 80, 120], dtype=np.int64)  # learnable by colour
            pixels = np.clip(rng.integers(0, 120, (size, size, 3)) + tint, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")
            paths.append(folder / c / f"{i}.png")
    return paths


def test_a_model_comes_back_from_its_checkpoint_alone_with_the_logits_of_its_run(tmp_path):
    """Train on images the test writes, delete them, rebuild the model from best.ckpt (no dataset, no
    source run) and get the run's logits; then predict on new unlabelled images through the datamodule."""
    import shutil
    from functools import partial

    from transferlab import run
    from transferlab.data import KINDS
    from transferlab.data.base import Unlabelled
    from transferlab.data.datamodule import TransferDataModule
    from transferlab.data.image_folder import decode
    from transferlab.models import from_checkpoint

    images = tmp_path / "images"
    write_images(images)
    probe = {"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    watch = TestLogits(probe)
    cfg = compose("model=tiny", "data=image_folder", f"data.root={images}", "data.input_size=32",
                  "data.batch_size=8", "data.num_workers=0", "source=none", "logger=csv", "trainer.max_epochs=2",
                  "trainer.enable_progress_bar=false", run_dir=tmp_path / "run")
    metrics = run.train(planning.resolve(cfg), callbacks=(watch,))
    shutil.rmtree(images)

    loaded = from_checkpoint(Path(metrics["best_checkpoint"]))
    assert [(t.name, t.class_names) for t in loaded.tasks] == [("main", ["cat", "dog", "owl"])]
    loaded.model.eval()
    with torch.no_grad():
        logits = loaded.model(probe)
    assert logits.keys() == watch.logits.keys()
    for name, expected in watch.logits.items():  # same weights, same arithmetic: equal up to float rounding
        assert torch.allclose(logits[name], expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))

    new = write_images(tmp_path / "new", classes=("cat", "owl"), per_class=2)
    data = KINDS.parse(compose(*cfg_overrides(loaded), run_dir="unused").data, "data")
    family = loaded.model.family
    served = TransferDataModule({}, partial(family.create_transform, loaded.preprocessing), data)
    served.serve(Unlabelled([str(p) for p in new], lambda p: decode(Image.open(p))))
    batches = list(served.predict_dataloader())
    assert sum(len(b[0]["pixel_values"]) for b in batches) == len(new) and all(b[1] == {} for b in batches)
    with torch.no_grad():
        predicted = torch.cat([loaded.model(inputs)["main"] for inputs, _ in batches])
    assert predicted.shape == (len(new), 3) and torch.isfinite(predicted).all()


def cfg_overrides(loaded) -> list[str]:
    """The saved run's data as overrides (its root is gone: parsing settings reads no file)."""
    data = loaded.config["data"]
    return ["data=image_folder", f"data.root={data['root']}", f"data.input_size={data['input_size']}",
            f"data.batch_size={data['batch_size']}", "data.num_workers=0"]
