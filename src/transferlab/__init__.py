"""transferlab: compose a source model, a target dataset, a transfer strategy and an optimizer."""
from pathlib import Path

__version__ = "0.1.0"

# Installed wheels carry the config tree inside the package; an editable checkout keeps it at the top.
_PACKAGED_CONF = Path(__file__).parent / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parents[2] / "conf"
