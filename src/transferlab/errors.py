"""User-facing errors: each carries one paragraph that names the bad value and what would be valid.

The command-line entry points print these without a traceback and exit non-zero; anything else
is a bug and keeps its traceback.
"""
import difflib


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
