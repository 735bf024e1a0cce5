"""User-facing errors: each carries one paragraph that names the bad value and what would be valid.

The command-line entry points print these without a traceback and exit non-zero; anything else
is a bug and keeps its traceback.
"""
import difflib
import os
from pathlib import Path


class TransferlabError(Exception):
    """Base class: a problem with the user's input, not with transferlab."""

    exit_code = 2


class ConfigError(TransferlabError):
    pass


class DataError(TransferlabError):
    pass


class CheckpointError(TransferlabError):
    pass


class TrainingError(TransferlabError):
    exit_code = 3


def suggest(value: str, valid, n: int = 5) -> str:
    """'did you mean' text for an unknown name, listing close matches or a sample of what is valid."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(value), valid, n=n, cutoff=0.5)
    if close:
        return "did you mean: " + ", ".join(close) + "?"
    shown = ", ".join(valid[:12]) + (" …" if len(valid) > 12 else "")
    return f"valid: {shown}"


def unwritable_cache(folder, error: OSError, what: str, key: str, instead: str) -> str:
    """Why a cache folder cannot take a new entry: the file in its way or the OS's reason, and whether
    TRANSFERLAB_CACHE or the group's own setting ``key`` (the cache root, the folder's parent) put it there."""
    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    why = f"'{blocker}' is a file, not a folder" if blocker is not None else (error.strerror or str(error))
    env = os.environ.get("TRANSFERLAB_CACHE")
    if env and folder.is_relative_to(Path(env).expanduser()):
        where = f"it lies under TRANSFERLAB_CACHE={env}: point TRANSFERLAB_CACHE at a writable folder"
    else:
        where = (f"{key}={folder.parent} (by default under TRANSFERLAB_CACHE, else ~/.cache/transferlab): point "
                 f"TRANSFERLAB_CACHE or {key} at a writable folder")
    return f"cannot write the {what} cache folder {folder}: {why}; {where}, or {instead}"
