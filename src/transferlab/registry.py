"""One way to choose an implementation: a config group's ``kind`` names it, a registry maps the name to
an entry, and the entry owns its group.

An entry is a ``Settings`` class (``transferlab.settings``): its fields are the keys the group takes,
with their types and rules, those a sweep may tune (``tune=True``), what the implementation does
(its methods) and what it can do (class attributes: a family's or data kind's ``modality``, a fusion
method's ``averages_weights`` and ``along_alpha``). Entries live one module
each (or a few per module) in the group's package and register themselves when it is imported; the
registry imports the package's entry modules on first use. Entry modules import nothing heavy at the
top (torch, timm, Lightning, transformers come inside the methods that need them), so names, "did you
mean" and settings checks answer in about a second, before the training stack loads. Adding a
strategy, a fusion method or a data kind is its module plus its YAML file.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass

from transferlab.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type  # a Settings subclass: settings, implementation and capabilities (class attributes)


class Registry:
    def __init__(self, group: str, what: str, *, package: str | None = None, modules: tuple[str, ...] = (),
                 support: tuple[str, ...] = ("base",), key: str = "kind"):
        """``group``: the config key of the group (``strategy``); ``what`` names it in errors; entries are
        found in every module of ``package`` except the ``support`` ones, or in ``modules``."""
        self.group, self.what, self.key = group, what, key
        self.package, self.modules, self.support = package, tuple(modules), tuple(support)
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str):
        """``@REG.register("x")`` on the entry's Settings class."""
        def add(cls):
            if name in self._entries and self._entries[name].cls is not cls:
                raise ValueError(f"{self.what} '{name}' is registered twice")
            self._entries[name] = Entry(name, cls)
            cls._what = f"{self.what} '{name}'"  # how its settings' errors name it
            return cls
        return add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        names = list(self.modules)
        if self.package:
            package = importlib.import_module(self.package)
            names += [f"{self.package}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                      if m.name not in self.support and not m.name.startswith("_")]
        for module in names:
            importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self.names()

    def entries(self) -> list[Entry]:
        self._load()
        return list(self._entries.values())

    def entry(self, name, where: str | None = None) -> Entry:
        """The entry of ``name``, or the one "unknown ..." error every group gives."""
        names = self.names()
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            where = where or f"{self.group}.{self.key}"
            raise ConfigError(f"unknown {self.what} '{name}' ({where}={name}); {hint}valid: {', '.join(names)}")
        return self._entries[name]

    def parse(self, node, where: str | None = None):
        """The typed settings of a group's node: its ``kind``'s entry checks every key and value."""
        where = where or self.group
        if node is None or not hasattr(node, "get"):
            raise ConfigError(f"{where}={node!r} is not valid: it must be a mapping with a {self.key} "
                              f"(one of {', '.join(self.names())})")
        if node.get(self.key) is None:
            raise ConfigError(f"{where}.{self.key} is not set; valid: {', '.join(self.names())}")
        return self.entry(node.get(self.key), f"{where}.{self.key}").cls.parse(node, where)

    def tunable(self) -> list[str]:
        """Every key a sweep may tune in this group, over all its entries (``strategy.lp_epochs``)."""
        keys = {f"{self.group}.{k}": None for e in self.entries() for k in e.cls.tunable()}
        return list(keys)
