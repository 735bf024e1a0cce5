"""The environment every test runs in, and pytest's shared fixtures. Helpers that test files share live in
helpers.py (``from helpers import ...``), not here."""
from __future__ import annotations

import os
import tempfile

import pytest

# Every test (and every subprocess it starts) shares one source-model cache and never touches the
# network or ~/.cache: scripts/test.sh hands every test file's process the same one (TL_TEST_CACHE; its
# entries are written under locks and published by rename, as for concurrent sweep jobs), a lone pytest
# makes its own. Set at import, before timm / huggingface_hub read their environment.
os.environ.update(TRANSFERLAB_CACHE=os.environ.get("TL_TEST_CACHE") or tempfile.mkdtemp(prefix="transferlab-cache-"),
                  WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
# transformers copies the model code of a trust_remote_code folder (tl-export format=hf) into its modules cache
os.environ["HF_MODULES_CACHE"] = os.path.join(os.environ["TRANSFERLAB_CACHE"], "hf_modules")

from helpers import torch_threads  # after the environment is set


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process runs of a module train with one thread, like the subprocesses."""
    with torch_threads(1):
        yield
