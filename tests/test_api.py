"""The Python API a notebook calls: the same run as the command line, call after call in one process,
with nothing the caller had (threads, random state, logging, Hydra) changed by a call."""
from __future__ import annotations

import json
import logging
import random

import pytest
import torch
from helpers import FAST, ONE_THREAD, process, torch_threads

import transferlab

SETTINGS = {"finetune": ["strategy=finetune", "seed=1"], "linear_probe": ["strategy=linear_probe", "seed=2"]}


@pytest.mark.slow
def test_two_calls_in_one_process_give_what_the_command_line_gives_for_each(tmp_path):
    """The command line runs in a process of its own, as a user types it: its metrics are what the API must
    match."""
    from hydra.core.global_hydra import GlobalHydra

    with torch_threads(1):  # the command lines below run with one thread too (float sums depend on it)
        random.seed(7)
        before = random.getstate(), torch.get_rng_state(), len(logging.getLogger().handlers)
        results = {name: transferlab.train(*FAST, *overrides, run_dir=tmp_path / "api" / name)
                   for name, overrides in SETTINGS.items()}
        after = random.getstate(), torch.get_rng_state(), len(logging.getLogger().handlers)
        assert torch.get_num_threads() == 1
    assert before[0] == after[0] and torch.equal(before[1], after[1]) and before[2] == after[2]
    assert not GlobalHydra.instance().is_initialized()  # the next call composes from scratch

    for name, overrides in SETTINGS.items():
        out = tmp_path / "cli" / name
        done = process("tl-train", *FAST, *overrides, f"hydra.run.dir={out}", cwd=tmp_path, env=ONE_THREAD)
        assert done.returncode == 0, done.stderr[-3000:]
        expected = json.loads((out / "metrics.json").read_text())
        result = results[name]
        assert result.run_dir == tmp_path / "api" / name and result.checkpoint.is_file()
        assert result.metrics["strategy"] == name
        for key in ("test/acc", "test/f1", "val/acc_best", "trainable_params"):
            assert result[key] == expected[key], (name, key)  # CPU, one thread, same seed: the same run
