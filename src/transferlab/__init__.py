"""transferlab: compose a source model, a target dataset, a transfer strategy and an optimizer.

The Python API (``transferlab.train``, ``evaluate``, ``fuse``, ``report``) is the path the command-line
tools take; it is imported on first use, so ``import transferlab`` stays light.
"""
import importlib
from pathlib import Path

__version__ = "0.1.0"

# Installed wheels carry the config tree inside the package; an editable checkout keeps it at the top.
_PACKAGED_CONF = Path(__file__).parent / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parents[2] / "conf"


def __getattr__(name):
    """``transferlab.train`` and the rest of ``api.__all__``, loaded on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    api = importlib.import_module("transferlab.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *importlib.import_module("transferlab.api").__all__])
