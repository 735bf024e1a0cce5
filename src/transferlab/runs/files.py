"""Writing result files so that a crash never leaves half a file where a good one was.

Every file goes to a temporary name beside its target and is renamed into place; JSON is strict
(a non-finite number is ``null``) and nothing that looks like a secret is written (``redact``).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import yaml

from transferlab.redact import scrub


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 would hide the run from the user's group
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def strict_json(obj):
    """JSON has no NaN or infinity (Python writes them, most readers refuse them): null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(strict_json(scrub(obj)), indent=2, sort_keys=True, default=str,
                                  allow_nan=False) + "\n")


def write_yaml(path: Path, obj) -> None:
    write_atomic(path, yaml.safe_dump(scrub(obj), sort_keys=False))


def write_csv(path: Path, columns: list[str], rows: list[list]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())
