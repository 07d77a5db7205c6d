"""Overrides for the typed configs (`RoiConfig`, `LocalizerConfig`, `TrainConfig`), written once.

Values arrive as strings (command line `--set`, papermill) or YAML scalars; each is cast to the type the
dataclass field declares. A misspelt key is an error that names the closest field, a value that does not
cast is an error that names the field and the type: a run never starts with a setting silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class UnknownSettingError(KeyError, ValueError):
    """A key that is not a field of the config (a KeyError and a ValueError, so either catch works)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def unknown_setting(owner: str, key: str, known: Iterable[str]) -> UnknownSettingError:
    """The error for `key`, suggesting the closest known field."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UnknownSettingError(f"{owner}: unknown setting {key!r}{hint}")


def _scalar(value: Any, kind: type, where: str) -> Any:
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            word = str(value).strip().lower()
            if word in TRUE_WORDS or word in FALSE_WORDS:
                return word in TRUE_WORDS
            raise ValueError
        if kind is str:
            return "" if value is None else str(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                text = value.strip()
                return int(text) if text.lstrip("+-").isdigit() else _scalar(float(text), int, where)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}") from None


def cast_setting(owner: str, name: str, value: Any, hint: Any) -> Any:
    """`value` cast to the field type `hint`.

    Tuples take a list or a comma-separated string ("40,24,24,24"); a fixed-length tuple type checks the
    count. Mappings take a dict or a YAML string ("{pool: attn}").
    """
    where = f"{owner}.{name}"
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        if args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_scalar(v, args[0] if args else str, where) for v in value)
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return _scalar(value, hint, where)


def cast_overrides(cls: type, overrides: Mapping[str, Any], owner: str | None = None) -> dict[str, Any]:
    """`overrides` with keys checked against the dataclass `cls` and values cast to its field types.

    Dashes in keys read as underscores (command-line spelling).
    """
    owner = owner or cls.__name__
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in overrides.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise unknown_setting(owner, str(key), names)
        out[name] = cast_setting(owner, name, value, hints[name])
    return out


def apply_overrides(base: T, overrides: Mapping[str, Any] | None = None, owner: str | None = None) -> T:
    """A copy of the dataclass instance `base` with `overrides` cast and applied (`__post_init__` re-runs)."""
    return dataclasses.replace(base, **cast_overrides(type(base), overrides or {}, owner))


def parse_assignments(items: Iterable[str] | None) -> dict[str, str]:
    """`["lr=1e-3", "augment=none"]` (a command line's `--set`) -> {"lr": "1e-3", "augment": "none"}."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


class StaleRunError(ValueError):
    """A step would reuse results made with other settings or inputs; the message names them and the way out."""


def setting_changes(saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """`name: saved -> current` for every setting that differs (keys of either side, less `ignore`).

    Values are compared as JSON would hold them (tuples and lists alike).
    """
    import json

    ignore = set(ignore)
    norm = lambda v: json.loads(json.dumps(v, default=str))
    keys = [k for k in dict.fromkeys([*saved, *current]) if k not in ignore]
    return [f"{k}: {saved.get(k, '(unset)')!r} -> {current.get(k, '(unset)')!r}" for k in keys
            if norm(saved.get(k)) != norm(current.get(k))]  # fmt: skip
