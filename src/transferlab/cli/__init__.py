"""Console scripts: compose a config, call ``transferlab.run``, report errors in one paragraph."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

from transferlab import runs
from transferlab.errors import TransferlabError

runs.register_resolvers()  # ${tl.run_dir:...} in conf/hydra/default.yaml, read as soon as @hydra.main composes

log = logging.getLogger("transferlab")


def _last_line(e: BaseException) -> str:
    """A DataLoader worker re-raises with its traceback in the message; the user needs the last line."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1].split(": ", 1)[-1] if len(lines) > 1 and "Traceback" in str(e) else str(e)


@contextmanager
def user_errors(in_sweep: bool = False):
    """Print a TransferlabError as ``error: ...`` and exit non-zero; a sweep job re-raises instead so
    the sweep can record it and go on."""
    try:
        yield
    except TransferlabError as e:
        if in_sweep:
            raise
        print(f"error: {_last_line(e)}", file=sys.stderr)
        sys.exit(e.exit_code)
