"""Typed settings: a config node checked against a dataclass, so each registry entry owns its keys.

``Settings.parse(node, where)`` refuses a key the class does not declare (with "did you mean"), checks
every value against its type and the field's own rule, then the class's ``check`` (rules between
fields), and returns the instance. A field made with ``setting(..., tune=True)`` is a hyperparameter a
sweep may tune: reports collect those keys from the registries instead of a list of their own.
"""
from __future__ import annotations

import dataclasses
import difflib
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from transferlab.errors import ConfigError


def setting(default=dataclasses.MISSING, rule: tuple[Callable, str] | None = None, *, tune: bool = False,
            factory=None, choose=None):
    """A field with a rule ``(check(value) -> bool, what is valid)``; ``tune``: a sweep may tune it;
    ``choose``: a registry whose entry (named by the value's ``kind``) parses the value."""
    meta = {"rule": rule, "tune": tune, "choose": choose}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Rules used across groups: (check, what is valid).
INTEGER = (_integer, "an integer")
POSITIVE_INT = (lambda v: _integer(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT = (lambda v: _integer(v) and v >= 0, "an integer >= 0")
POSITIVE = (lambda v: _number(v) and v > 0, "a positive number")
NON_NEGATIVE = (lambda v: _number(v) and v >= 0, "a number >= 0")
FRACTION = (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
UNIT = (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")


def optional(rule: tuple[Callable, str]) -> tuple[Callable, str]:
    check, valid = rule
    return (lambda v: v is None or check(v), f"null or {valid}")


def one_of(*values) -> tuple[Callable, str]:
    return (lambda v: v in values, f"one of {', '.join(map(str, values))}")


@dataclass(kw_only=True)
class Settings:
    """Base of every entry's settings. Subclasses are ``@dataclass(kw_only=True)``."""

    @classmethod
    def parse(cls, node, where: str):
        plain = _plain(node)
        if not isinstance(plain, Mapping):
            raise ConfigError(f"{where}={plain!r} is not valid: it must be a mapping of settings")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [k for k in plain if k not in fields]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1, cutoff=0.6)
            hint = f"did you mean {where}.{close[0]}? " if close else ""
            raise ConfigError(f"{where}.{unknown[0]} is not a setting of {cls.describe()}; {hint}its settings are: "
                              f"{', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, f in fields.items():
            if name in plain:
                values[name] = _checked(plain[name], hints[name], f, f"{where}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{name} is not set; {cls.describe()} needs it (pass {where}.{name}=...)")
        obj = cls(**values)
        obj.check(where)
        return obj

    @classmethod
    def describe(cls) -> str:
        """How errors name it: "strategy 'lp_ft'" for a registry entry (set by ``Registry.register``)."""
        return cls.__dict__.get("_what", cls.__name__)

    @classmethod
    def tunable(cls) -> list[str]:
        """Keys (relative to the node, dotted for nested settings) a sweep may tune."""
        out = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("tune"):
                out.append(f.name)
            kind = hints.get(f.name)
            if isinstance(kind, type) and issubclass(kind, Settings):
                out += [f"{f.name}.{k}" for k in kind.tunable()]
        return out

    def check(self, where: str) -> None:
        """Rules between fields; raise ConfigError naming the keys."""

    def get(self, key: str, default=None):
        """Read like a config node (``settings.get("subset")``), for code that takes either."""
        return getattr(self, key, default)

    def __contains__(self, key: str) -> bool:
        return hasattr(self, key)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _plain(node):
    """Plain Python all the way down (a checkpoint loads with weights_only=True only then)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _checked(value, kind, f, where: str):
    if f.metadata.get("choose") is not None:
        return f.metadata["choose"].parse(value, where)
    rule = f.metadata.get("rule")
    valid = rule[1] if rule else _describe(kind)
    try:
        value = _typed(value, kind, where)
    except _Mismatch:
        raise ConfigError(f"{where}={value!r} is not valid: it must be {valid}") from None
    if rule and not rule[0](value):
        raise ConfigError(f"{where}={value!r} is not valid: it must be {valid}")
    return value


class _Mismatch(Exception):
    pass


def _typed(value, kind, where: str):
    """``value`` as ``kind`` (a list for a tuple, a nested Settings parsed), or _Mismatch."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any or kind is object:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch
    if isinstance(kind, type) and issubclass(kind, Settings):
        return kind.parse(value, where)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if kind is int:
        if _integer(value):
            return value
        raise _Mismatch
    if kind is float:
        if _number(value):
            return value
        raise _Mismatch
    if kind is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (list, tuple) or kind in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item = args[0] if args else Any
        items = [_typed(v, item, where) for v in value]
        return tuple(items) if (origin or kind) is tuple else items
    if origin is dict or kind is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        return dict(value)
    return value


def _describe(kind) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        text = " or ".join(_describe(a) for a in options)
        return f"null or {text}" if type(None) in args else text
    if origin is Literal:
        return f"one of {', '.join(map(str, args))}"
    if isinstance(kind, type) and issubclass(kind, Settings):
        return f"a mapping of {kind.describe()} settings"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    if kind in names:
        return names[kind]
    if origin in (list, tuple) or kind in (list, tuple):
        return "a list" + (f" (each item {_describe(args[0])})" if args and args[0] is not Any else "")
    return str(kind)
