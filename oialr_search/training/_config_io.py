"""Reading, overriding and writing run configs (YAML), with errors that name the key."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .._yaml import dump_yaml, load_yaml
from ..exceptions import ConfigError
from ._config import RunConfig


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        # int before float, so that 500 stays a step count and 0.3 a fraction
        for option in sorted((o for o in options if o is not type(None)), key=lambda o: o is float):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise ConfigError(f"{key}: expected {names}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    raise AssertionError(f"unsupported config type {hint} for {key}")


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """Type hints and fields of a config dataclass (resolving hints is slow; every trial does it)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints, fields = _schema(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"{dotted}: unknown key{hint}")
        if dataclasses.is_dataclass(hints[key]):
            shorthand = getattr(hints[key], "from_shorthand", None)  # a section written as a scalar (augment: true)
            if shorthand is not None:
                value = shorthand(value, dotted)
            kwargs[key] = _build(hints[key], value if value is not None else {}, dotted)
        else:
            kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a :class:`RunConfig`; missing keys take their defaults."""
    return _build(RunConfig, data or {}, "").validate()


def stored_run_config(data: dict) -> dict:
    """A resolved run config (every key explicit, as a trial's is stored) with, where an earlier release
    stored it, the values that release trained with where this release's defaults differ:
    ``train.precision`` came with default ``auto`` (bf16 on CUDA), and a trial from before it trained in
    fp32, which resuming it, or training its exported config, must go on doing."""
    train = data.get("train") if isinstance(data, dict) else None
    if isinstance(train, dict) and "precision" not in train:
        return {**data, "train": {**train, "precision": "fp32"}}
    return data


def config_to_dict(config: RunConfig) -> dict:
    """The config as plain dicts, lists and scalars: ``dataclasses.asdict`` without its deep copy of
    every leaf (the leaves are immutable scalars), which made it half of a trial's bookkeeping."""
    return _plain(config)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _schema(type(value))[1]}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _copy_tree(value: Any) -> Any:
    """A deep copy of parsed YAML/JSON (dicts, lists, scalars), ~10x faster than copy.deepcopy: the
    search copies its base config for every trial."""
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool, tuple)):
        return value
    return copy.deepcopy(value)


def apply_values(data: dict, values: dict[str, Any]) -> dict:
    """Set dotted keys (``oialr.beta``) of a config mapping to values, returning a copy."""
    data = _copy_tree(data)
    for key, value in values.items():
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # e.g. data.augment: false, the shorthand of a whole section
                section, rest = ".".join(parts[:i + 1]), ".".join(parts[i + 1:])
                raise ConfigError(f"{key}: {section} is {node!r} in this config, not a section; set the section "
                                  f"as a whole, e.g. {section}={{{rest}: {value!r}}}")
        node[parts[-1]] = _copy_tree(value)
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a config mapping, returning a copy."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. oialr.beta=0.2")
        try:
            values[key.strip()] = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc.problem if hasattr(exc, 'problem') else exc}") \
                from None
    return apply_values(data, values)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (a YAML run config is expected)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}: not valid YAML ({f'line {mark.line + 1}' if mark else exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides and validate. Errors name file and key."""
    source = read_yaml(path)
    data = apply_overrides(source, overrides or [])
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{'--set' if overrides and _valid(source) else f'{path}:'} {exc}") from None


def _valid(data: dict) -> bool:
    """Whether ``data`` is a valid run config (load_config's errors name the --set when the file alone is)."""
    try:
        config_from_dict(data)
    except ConfigError:
        return False
    return True


def dump_config(config: RunConfig) -> str:
    return dump_yaml(config_to_dict(config), sort_keys=False)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(dump_config(config))
