"""One way to choose an implementation: a config key names it, a registry maps the name to a factory.

Every config group that picks code (model family, data kind, strategy, optimizer, scheduler, loss
weighting, logger, fusion method) has one ``Registry``; an unknown name is the same one-paragraph
error everywhere, and a saved config can only ever name something registered here (never an import
path). The built-in entries are declared by path in ``transferlab.choices`` and imported on first use,
so names, "did you mean" and settings checks answer before torch, timm or Lightning is imported.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable

from transferlab.errors import ConfigError


class Registry:
    def __init__(self, what: str, key: str):
        """``what`` names the choice in errors ("strategy"), ``key`` is the config key that makes it."""
        self.what, self.key = what, key
        self._entries: dict[str, Callable | str] = {}  # a str is "module:attr", imported by ``get``
        self._settings: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, factory: Callable | str | None = None, *, settings: Iterable[str] | None = None):
        """``REG.register("x", f)``, ``@REG.register("x")`` on a class or function, or
        ``REG.register("x", "module:attr")``: imported when first used. ``settings``: the keyword
        arguments the factory takes, declared so ``check_settings`` needs no import."""
        def add(obj):
            if name in self._entries:
                raise ValueError(f"{self.what} '{name}' is registered twice")
            self._entries[name] = obj
            if settings is not None:
                self._settings[name] = tuple(settings)
            return obj
        return add if factory is None else add(factory)

    def names(self) -> list[str]:
        """In registration order (the order the docs list them in)."""
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def get(self, name, key: str | None = None) -> Callable:
        """``key``: the config key that holds ``name`` when it is not always the same (one per logger)."""
        self.check(name, key)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, attr = entry.split(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def check(self, name, key: str | None = None) -> None:
        """Refuse a name that is not registered, without importing any implementation."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(f"unknown {self.what} '{name}' ({key or self.key}={name}); {hint}"
                              f"valid: {', '.join(self.names())}")

    def settings(self, name) -> tuple[str, ...]:
        """The keyword arguments the factory of ``name`` takes: declared, or read from its signature."""
        self.check(name)
        if name in self._settings:
            return self._settings[name]
        factory, accepted = self.get(name), []
        for cls in (factory.__mro__ if inspect.isclass(factory) else (factory,)):
            if cls is object:
                continue
            params = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters.values()
            accepted += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"]
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
        return tuple(dict.fromkeys(accepted))

    def check_settings(self, name, settings: dict) -> None:
        """Refuse settings the factory does not take, naming the ones it does (no object is built)."""
        accepted = self.settings(name)
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            prefix = self.key.rsplit(".", 1)[0]
            raise ConfigError(f"{prefix} setting(s) {', '.join(f'{prefix}.{k}' for k in unknown)} are not valid "
                              f"for {self.what} '{name}'; its settings are: {', '.join(accepted)}")

    def create(self, name, /, *args, **kwargs):
        return self.get(name)(*args, **kwargs)
