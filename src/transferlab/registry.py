"""One way to choose an implementation: a config key names it, a registry maps the name to a factory.

Every config group that picks code (model family, data kind, strategy, optimizer, scheduler, loss
weighting, logger) has one ``Registry``; an unknown name is the same one-paragraph error everywhere,
and a saved config can only ever name something registered here (never an import path).
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from transferlab.errors import ConfigError


class Registry:
    def __init__(self, what: str, key: str):
        """``what`` names the choice in errors ("strategy"), ``key`` is the config key that makes it."""
        self.what, self.key = what, key
        self._entries: dict[str, Callable] = {}

    def register(self, name: str, factory: Callable | None = None):
        """``REG.register("x", f)``, or ``@REG.register("x")`` on a class or function."""
        def add(obj):
            if name in self._entries:
                raise ValueError(f"{self.what} '{name}' is registered twice")
            self._entries[name] = obj
            return obj
        return add if factory is None else add(factory)

    def names(self) -> list[str]:
        """In registration order (the order the docs list them in)."""
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def get(self, name, key: str | None = None) -> Callable:
        """``key``: the config key that holds ``name`` when it is not always the same (one per logger)."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(f"unknown {self.what} '{name}' ({key or self.key}={name}); {hint}"
                              f"valid: {', '.join(self.names())}")
        return self._entries[name]

    def check_settings(self, name, settings: dict) -> None:
        """Refuse settings the factory does not take, naming the ones it does (no object is built)."""
        factory = self.get(name)
        accepted = []
        for cls in (factory.__mro__ if inspect.isclass(factory) else (factory,)):
            if cls is object:
                continue
            params = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters.values()
            accepted += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"]
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            prefix = self.key.rsplit(".", 1)[0]
            raise ConfigError(f"{prefix} setting(s) {', '.join(f'{prefix}.{k}' for k in unknown)} are not valid "
                              f"for {self.what} '{name}'; its settings are: {', '.join(dict.fromkeys(accepted))}")

    def create(self, name, /, *args, **kwargs):
        return self.get(name)(*args, **kwargs)
