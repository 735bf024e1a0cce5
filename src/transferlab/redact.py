"""Secrets never reach a file: what is redacted, in one place, without importing torch.

A secret is a value under a key named like one (``..._KEY``, ``api_key``, ``token``, ``client_secret``,
``db.password``; not ``tokenizer`` or ``sort_keys``):
an environment variable, a config key, or a ``key=value`` override on the command line. Once seen,
its value is redacted wherever it appears (config.yaml, .hydra/, env.json's argv, W&B's config and
metadata), because a value copied elsewhere (Hydra's ``override_dirname``) is still the secret.
The password of a URL (``postgresql://user:password@host/db``, an Optuna storage) is a secret too: it
is shown and written masked (``postgresql://user:***@host/db``, ``mask_url``).
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager

_WORD = r"(?:key|token|secret|password|passwd)"
SECRET_NAME = re.compile(rf"(?:^|[_.\-]|api){_WORD}$", re.IGNORECASE)
REDACTED = "<redacted>"
# `+db.password=X`, `hydra.job.override_dirname`'s `a=1,+db.password=X`: the value up to a comma or space
_OVERRIDE = re.compile(rf"((?:^|(?<=[,\s]))[+~]{{0,2}}(?:[\w./@-]*(?:[_.\-]|api))?{_WORD}=)([^,\s]*)", re.IGNORECASE)
_SEEN: set[str] = set()  # secret values met in configs and overrides of this process
MASK = "***"  # a URL's password as shown: postgresql://user:***@host/db
# scheme://user:password@ (the password: anything up to the last @ before the host, no space or slash)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/@\s'\"]*:)([^/\s'\"]*)(@)", re.IGNORECASE)


def _secret_values() -> set[str]:
    return {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 4} | _SEEN


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it masked: ``postgresql://user:***@host/db``."""
    return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), str(text))


def remember(obj) -> None:
    """Note the secret values of a config (mapping) or a list of overrides, so later writes redact them
    wherever they appear."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if SECRET_NAME.search(str(k)) and isinstance(v, (str, int, float)) and len(str(v)) >= 4:
                _SEEN.add(str(v))
            else:
                remember(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            remember(v)
    elif isinstance(obj, str):
        for m in _OVERRIDE.finditer(obj):
            value = m.group(2).strip("'\"")
            if len(value) >= 4:
                _SEEN.add(value)
        for m in _URL_PASSWORD.finditer(obj):
            if len(m.group(2)) >= 4 and m.group(2) != MASK:
                _SEEN.add(m.group(2))


def remember_value(value: str) -> None:
    """Note one secret value (a password parsed out of a URL the pattern above cannot read)."""
    if value and len(value) >= 4:
        _SEEN.add(value)


def scrub(obj, secrets: set[str] | None = None):
    """A copy with secret-named keys, secret ``key=value`` overrides and every known secret value
    replaced by a marker, and every URL's password masked."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: REDACTED if SECRET_NAME.search(str(k)) else scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v, secrets) for v in obj]
    if isinstance(obj, str):
        obj = mask_url(_OVERRIDE.sub(lambda m: m.group(1) + REDACTED, obj))
        for s in secrets:
            obj = obj.replace(s, REDACTED)
    return obj


@contextmanager
def argv_scrubbed():
    """``sys.argv`` without secrets while a library records it (W&B's run metadata); restored after,
    so Lightning's DDP launcher still starts the other ranks with the real command line."""
    original = sys.argv
    sys.argv = scrub(list(original))
    try:
        yield
    finally:
        sys.argv = original
