"""Settings, written once: how a value is cast, and which source wins.

Casting (`cast_setting`): values arrive as strings (command line `--set` and flags, papermill) or YAML
scalars; each is cast to the type its setting declares, a typed config's field (`RoiConfig`,
`LocalizerConfig`, `TrainConfig`) or a notebook parameter's default (`lumbar.pipeline`), by one rule: bool
takes true/false, 0/1 and the words yes/no, on/off; int an int or a string or float that is a whole number,
never a bool; float a number or a string float() reads (PyYAML reads `1e-3` as a string), never a bool; str
any scalar (null as ""); a list or tuple a list, a comma-separated string ("40,24,24,24") or one scalar, each
item cast to the item type (a fixed-length tuple checks the count); a mapping a mapping or a YAML string
("{pool: attn}"); no declared type (a notebook default of None or an expression) anything. A misspelt key is
an error that names the closest field, a value that does not cast is an error that names the setting and the
type: a run never starts with a setting silently ignored.

Precedence (`merge_layers`, `resolve_settings`, `command_settings`): defaults < YAML config < command-line
flags < `--set`, in every command and in the pipeline (notebook defaults < the config's top-level parameters <
a step's own < `--fresh` < `--set`): a later source wins, setting by setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping, Sequence
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
        if isinstance(value, (Mapping, list, tuple)):
            raise TypeError  # a container is no scalar, whatever str() would make of it
        if kind is str:
            return "" if value is None else str(value)
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError
        if kind is int:
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
    """`value` cast to the declared type `hint` (rules: module docstring); ValueError naming `owner.name`."""
    where = f"{owner}.{name}"
    if hint is None or hint is Any:
        return value
    origin = typing.get_origin(hint) or hint
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        elif isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        elif not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return origin(_scalar(v, args[0], where) if args else v for v in value)
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


def merge_layers(*layers: Mapping[str, Any] | None, bags: Iterable[str] = ()) -> dict[str, Any]:
    """The layers' settings, lowest first, each later layer winning key by key: the one merge of every
    command and the pipeline. A key of `bags` holds settings itself (a notebook's `EXTRA`), so its mappings
    merge key by key: `--set EXTRA={keep_last: true}` adds to a step's EXTRA instead of dropping the rest."""
    bags = set(bags)
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            both = key in bags and isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
            out[key] = {**out[key], **value} if both else value
    return out


def resolve_settings(base: T, layers: Sequence[tuple[str, Mapping[str, Any] | None]]) -> T:
    """`base` with `layers` (source, settings) over it in order, later ones winning (`merge_layers`).

    Each layer is checked and cast on its own, so an error names its source ("--set: ..."); the merged values
    are applied at once, so `__post_init__` judges only the result, not a combination half way.
    """
    cast = []
    for source, layer in layers:
        try:
            cast.append(cast_overrides(type(base), layer or {}))
        except ValueError as e:  # UnknownSettingError is one too
            raise type(e)(f"{source}: {e}") from None
    return dataclasses.replace(base, **merge_layers(*cast))


def given_flags(args: argparse.Namespace, fields: Mapping[str, str] | Iterable[str]) -> dict[str, Any]:
    """field -> value of the command-line flags given (argparse attribute -> field; None: not given)."""
    fields = fields if isinstance(fields, Mapping) else {name: name for name in fields}
    given = {field: getattr(args, attr, None) for attr, field in fields.items()}
    return {field: value for field, value in given.items() if value is not None}


def command_settings(
    base: T,
    flags: Mapping[str, Any],
    assignments: Iterable[str] | None = None,
    config: tuple[str, Mapping[str, Any]] | None = None,
) -> T:
    """A command's typed settings in the one precedence: `base` (the defaults, or what a run wires) < `config`
    ((source, settings) of a YAML file) < `flags` (`given_flags`) < `--set` (`assignments`, KEY=VALUE)."""
    layers = [config] if config else []
    layers += [("command line", flags), ("--set", parse_assignments(assignments))]
    return resolve_settings(base, layers)


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
    """A step would reuse results made with other settings or inputs; the message names them and the way
    out."""


def setting_changes(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[str]:
    """`name: saved -> current` for every setting that differs (keys of either side, less `ignore`).

    Values are compared as JSON would hold them (tuples and lists alike).
    """
    import json

    ignore = set(ignore)
    norm = lambda v: json.loads(json.dumps(v, default=str))
    keys = [k for k in dict.fromkeys([*saved, *current]) if k not in ignore]
    return [
        f"{k}: {saved.get(k, '(unset)')!r} -> {current.get(k, '(unset)')!r}"
        for k in keys
        if norm(saved.get(k)) != norm(current.get(k))
    ]
