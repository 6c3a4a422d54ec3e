"""Search spaces: which run-config keys to search, over what ranges, and the objective.

A space file (YAML)::

    base: mnist_vit                 # a bundled run config, or a path relative to this file
    set: {train.epochs: 4}          # fixed overrides of the base
    objective: {metric: val_loss, direction: minimize}     # one objective, or several:
    # objectives: [{metric: top1}, {metric: trainable_fraction}]   (directions default per metric)
    constraints: {trainable_fraction: {max: 0.2}}           # optional: violators are infeasible
    pruner: {type: asha, min_epochs: 1, reduction: 3}       # optional: none (default), median, asha
    sampler: auto                                           # Optuna backend: auto (default: GP, then TPE), gp,
                                                            # tpe, nsga2, random
    trial_timeout: 600              # seconds; a trial running longer is stopped and FAILED
    trial_checkpoint_minutes: 15    # also checkpoint a running trial within an epoch this often
    params:
      oialr.beta: {type: float, low: 0.02, high: 0.5, log: true}
      oialr.update_frequency: {type: int, low: 10, high: 200}
      model.kwargs.mlp_ratio: {type: categorical, choices: [2.0, 4.0]}

``run``/``resume --set key=value`` overrides the base on top of ``set`` (:meth:`SearchSpace.with_overrides`);
the overrides are stored with the study in :meth:`SearchSpace.to_dict`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .._yaml import load_yaml
from ..exceptions import ConfigError, OIALRSearchError
from ..training import CONFIG_DIR, apply_overrides, apply_values, config_from_dict, config_to_dict, read_yaml
from ._dimension import Dimension
from ._objectives import METRICS, Constraint, Objective
from .pruners import BasePruner, create_pruner

SAMPLERS = {"auto": {"startup_trials"}, "gp": {"startup_trials"}, "tpe": {"startup_trials"},
            "nsga2": {"population_size"}, "random": set()}
LEGACY_SAMPLER = {"type": "tpe"}  # the default of the releases before ``auto``: their studies keep it
TOP_KEYS = ("base", "set", "objective", "objectives", "constraints", "pruner", "sampler", "params", "trial_timeout",
            "trial_checkpoint_minutes", "keep_weights", "description")
KEEP_WEIGHTS = ("front", "best", "none")  # which completed trials keep their trained weights (see _weights.py)


# Keys the search sets for every rank and trial itself (see SearchSpace.trial_config and run_trial).
PLACED_KEYS = {"train.threads": "OMP_NUM_THREADS, SLURM_CPUS_PER_TASK or the rank's cores",
               "train.device": "the rank's GPU, else the CPU"}


class SpaceError(OIALRSearchError):
    """A search space file is malformed; the message names the file and the key."""


class OverrideError(OIALRSearchError):
    """A ``--set key=value`` override of a search's base config is malformed, names an unknown key,
    makes the config invalid or overrides a key the search sets itself; the message starts with ``--set``."""


@dataclass
class SearchSpace:
    path: str
    base: dict
    dimensions: list[Dimension]
    objectives: tuple[Objective, ...] = (Objective("val_loss", "minimize"),)
    constraints: tuple[Constraint, ...] = ()
    pruner: BasePruner = field(default_factory=lambda: create_pruner(None))
    sampler: dict = field(default_factory=lambda: {"type": "auto"})
    trial_timeout: float | None = None
    raw: dict = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # "key=value" items (run/resume --set), applied to the base after `set`
    space_base: dict | None = None  # the base before the overrides (None: there are none)
    trial_checkpoint_minutes: float | None = None  # None: a running trial is checkpointed every epoch only
    keep_weights: str = "front"  # front | best | none: see KEEP_WEIGHTS

    @property
    def metric(self) -> str:
        """The first objective's metric ("best" on a multi-objective study means best on it)."""
        return self.objectives[0].metric

    @property
    def direction(self) -> str:
        return self.objectives[0].direction

    @property
    def minimize(self) -> bool:
        return self.objectives[0].minimize

    def start_params(self) -> dict[str, Any]:
        """The base config's own value of every dimension, when all lie in the space (else {}):
        the first trial of a fresh search, so it starts from the run config the user trusts."""
        params = {}
        resolved = config_to_dict(config_from_dict(self.base))
        for d in self.dimensions:
            value: Any = resolved
            for part in d.key.split("."):
                if not isinstance(value, dict) or part not in value:
                    return {}
                value = value[part]
            if d.kind == "categorical":
                if value not in d.choices:
                    return {}
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not d.low <= value <= d.high \
                    or (d.kind == "int" and value != int(value)):
                return {}
            params[d.key] = value
        return params

    def config_for(self, params: dict[str, Any]) -> dict:
        """The run config (as a dict) of a trial: the base with ``params`` applied."""
        return apply_values(self.base, params)

    def trial_config(self, params: dict[str, Any], *, threads: int) -> dict:
        """The resolved run config of a trial (every key explicit), with the torch thread count it
        runs with: CPU float reductions depend on it, so an exported config reproduces the trial.
        The device stays "auto". Raises ConfigError for an invalid combination of values."""
        data = self.config_for(params)
        data["train"] = {**data.get("train", {}), "threads": threads}
        return config_to_dict(config_from_dict(data))

    def with_overrides(self, overrides: Sequence[str]) -> SearchSpace:
        """This space with its base overridden by ``overrides`` ("key=value", values parsed as YAML
        like ``train --set``), replacing the overrides it had. Raises :class:`OverrideError` for a
        malformed item, an unknown key, an invalid resulting config, or a key the space searches."""
        base = self.space_base if self.space_base is not None else self.base
        return replace(_parse(self.raw, Path(self.path), base=base, overrides=overrides), sampler=self.sampler)

    def to_dict(self) -> dict:
        """What a study stores: the space file's content, its resolved base (overrides applied), the
        Optuna backend's sampler (so a later release's default does not change it) and, when there are
        overrides, them and the base before them."""
        data = {"path": self.path, "raw": self.raw, "base": self.base, "sampler": self.sampler}
        if self.overrides:
            data.update(overrides=list(self.overrides), space_base=self.space_base)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SearchSpace:
        overrides = tuple(data.get("overrides") or ())
        base = data.get("space_base", data["base"]) if overrides else data["base"]
        space = _parse(data["raw"], Path(data["path"]), base=base, overrides=overrides)
        return space.with_sampler_of(data)

    def with_sampler_of(self, data: dict) -> SearchSpace:
        """This space with the sampler of the study stored as ``data``: the one it stored, so a later
        release's default does not change it (one this release cannot run, a later release's, is refused
        whatever the backend: the study's searches stay as they began); for a study stored by a release
        before that (whose default was TPE), the one its file named, else TPE."""
        stored = data.get("sampler")
        if stored is not None:
            try:  # checked as a file's entry is: a later release's sampler or option would be run as another
                return replace(self, sampler=_sampler(Path(self.path), stored))
            except SpaceError as exc:
                raise SpaceError(f"the study's stored sampler {stored!r} is not one this release can run "
                                 f"({str(exc).partition('sampler')[2].lstrip('.: ')}); continue it with the release "
                                 f"that created it") from None
        if (data.get("raw") or {}).get("sampler") is not None:
            return self
        return replace(self, sampler=dict(LEGACY_SAMPLER))


def _split(item: str) -> tuple[str, str]:
    """(key, raw value) of one ``key=value`` override, checked with the train command's parser."""
    try:
        apply_overrides({}, [item])
    except ConfigError as exc:
        message = str(exc)
        raise OverrideError(message if message.startswith("--set") else f"--set {message}") from None
    key, _, raw = item.partition("=")
    return key.strip(), raw.strip()


def merge_overrides(old: Sequence[str], new: Sequence[str]) -> tuple[str, ...]:
    """``old`` then ``new`` "key=value" items, with keys normalized; a key given again drops its
    earlier item (the later one wins). Raises :class:`OverrideError` for a malformed item."""
    merged: dict[str, str] = {}
    for item in (*old, *new):
        key, raw = _split(item)
        merged.pop(key, None)
        merged[key] = f"{key}={raw}"
    return tuple(merged.values())


def same_overrides(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two lists of overrides set the same keys to the same (YAML) values."""
    return apply_overrides({}, list(a)) == apply_overrides({}, list(b))


def _check_override_keys(items: Sequence[str], dims: list[Dimension]) -> None:
    for item in items:
        key = item.partition("=")[0]
        for d in dims:
            if key == d.key or key.startswith(f"{d.key}.") or d.key.startswith(f"{key}."):
                raise OverrideError(f"--set {key}: {d.key} is searched (params: in the space); change its range in "
                                    f"the space instead of overriding it")
        if key in PLACED_KEYS:
            raise OverrideError(f"--set {key}: the search sets it for every rank ({PLACED_KEYS[key]}); "
                                f"drop this --set")


def _err(path: Path, key: str, message: str) -> SpaceError:
    return SpaceError(f"{path}: {key}: {message}")


def _number(path: Path, key: str, spec: dict, name: str) -> float | int:
    value = spec.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(path, f"params.{key}.{name}", f"expected a number, got {value!r}")
    return value


def _dimension(path: Path, key: str, spec: Any) -> Dimension:
    if not isinstance(spec, dict):
        raise _err(path, f"params.{key}", "expected a mapping like {type: float, low: 0.1, high: 0.5}")
    kind = spec.get("type")
    known = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "log"},
             "categorical": {"type", "choices"}}
    if kind not in known:
        raise _err(path, f"params.{key}.type", f"must be float, int or categorical, got {kind!r}")
    extra = set(spec) - known[kind]
    if extra:
        raise _err(path, f"params.{key}", f"unknown field(s) {', '.join(sorted(extra))} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(path, f"params.{key}.choices", "expected a non-empty list")
        if len({yaml.safe_dump(c) for c in choices}) != len(choices):
            raise _err(path, f"params.{key}.choices", "has duplicates")
        return Dimension(key, kind, choices=tuple(choices))
    low, high = _number(path, key, spec, "low"), _number(path, key, spec, "high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _err(path, f"params.{key}.log", f"expected true or false, got {log!r}")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise _err(path, f"params.{key}", "an int dimension needs integer low and high")
    if not low < high:
        raise _err(path, f"params.{key}", f"low must be below high, got low={low}, high={high}")
    if log and low <= 0:
        raise _err(path, f"params.{key}.low", f"a log-scale dimension needs low > 0, got {low}")
    return Dimension(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                     log)


def _resolve_base(path: Path, base: Any) -> dict:
    if base is None:
        return {}
    if isinstance(base, dict):
        return base
    if not isinstance(base, str):
        raise _err(path, "base", f"expected a bundled config name or a path, got {base!r}")
    candidate = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if candidate.is_file():
        return read_yaml(candidate)
    bundled = CONFIG_DIR / f"{base}.yaml"
    if bundled.is_file():
        return read_yaml(bundled)
    raise _err(path, "base", f"{base!r} is neither a file next to the space nor a bundled config")


def _objective(path: Path, key: str, spec: Any) -> Objective:
    if isinstance(spec, str):
        spec = {"metric": spec}
    if not isinstance(spec, dict):
        raise _err(path, key, "expected {metric: ..., direction: ...}")
    extra = set(spec) - {"metric", "direction"}
    if extra:
        raise _err(path, f"{key}.{sorted(extra)[0]}", "unknown field; expected metric and direction")
    metric = spec.get("metric", "val_loss")
    if metric not in METRICS:
        raise _err(path, f"{key}.metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    direction = spec.get("direction", METRICS[metric])
    if direction not in ("minimize", "maximize"):
        raise _err(path, f"{key}.direction", f"must be minimize or maximize, got {direction!r}")
    return Objective(metric, direction)


def _objectives(path: Path, raw: dict) -> tuple[Objective, ...]:
    if "objective" in raw and "objectives" in raw:
        raise _err(path, "objectives", "give either objective (one) or objectives (a list), not both")
    if "objectives" not in raw:
        return (_objective(path, "objective", raw.get("objective") or {}),)
    specs = raw["objectives"]
    if not isinstance(specs, list) or not specs:
        raise _err(path, "objectives", "expected a non-empty list like [{metric: top1}, {metric: trainable_fraction}]")
    objectives = tuple(_objective(path, f"objectives[{i}]", spec) for i, spec in enumerate(specs))
    metrics = [o.metric for o in objectives]
    for i, metric in enumerate(metrics):
        if metric in metrics[:i]:
            raise _err(path, f"objectives[{i}].metric", f"{metric} is listed twice")
    return objectives


def _bound(path: Path, key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(path, key, f"expected a number, got {value!r}")
    return float(value)


def _constraints(path: Path, spec: Any) -> tuple[Constraint, ...]:
    if spec is None:
        return ()
    if not isinstance(spec, dict):
        raise _err(path, "constraints", "expected a mapping like {trainable_fraction: {max: 0.2}}")
    out = []
    for metric, bounds in spec.items():
        key = f"constraints.{metric}"
        if metric not in METRICS:
            raise _err(path, key, f"unknown metric; expected one of {', '.join(METRICS)}")
        if not isinstance(bounds, dict) or not bounds or set(bounds) - {"min", "max"}:
            raise _err(path, key, f"expected {{min: x}}, {{max: y}} or both, got {bounds!r}")
        low, high = _bound(path, f"{key}.min", bounds.get("min")), _bound(path, f"{key}.max", bounds.get("max"))
        if low is not None and high is not None and low > high:
            raise _err(path, key, f"min must not exceed max, got min={low}, max={high}")
        out.append(Constraint(str(metric), low, high))
    return tuple(out)


def _pruner(path: Path, spec: Any) -> BasePruner:
    if spec is not None and not isinstance(spec, (str, dict)):
        raise _err(path, "pruner", f"expected none, median, asha or a mapping like {{type: asha, min_epochs: 1, "
                   f"reduction: 3}}, got {spec!r}")
    try:
        return create_pruner(spec)
    except ValueError as exc:  # "field: what is wrong"
        field, _, message = str(exc).partition(": ")
        raise _err(path, f"pruner.{field}", message) from None


def _sampler(path: Path, spec: Any) -> dict:
    spec = {"type": "auto"} if spec is None else ({"type": spec} if isinstance(spec, str) else spec)
    if not isinstance(spec, dict) or spec.get("type") not in SAMPLERS:
        got = spec.get("type") if isinstance(spec, dict) else spec
        raise _err(path, "sampler", f"must be one of {', '.join(SAMPLERS)} (or {{type: ..., ...}}), got {got!r}")
    for name, value in spec.items():
        if name == "type":
            continue
        if name not in SAMPLERS[spec["type"]]:
            known = ", ".join(sorted(SAMPLERS[spec["type"]])) or "no options"
            raise _err(path, f"sampler.{name}", f"unknown option for sampler {spec['type']}; it takes {known}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise _err(path, f"sampler.{name}", f"expected an integer >= 2, got {value!r}")
    return dict(spec)


def _parse(raw: Any, path: Path, base: dict | None = None, overrides: Sequence[str] = ()) -> SearchSpace:
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping with base, set, objective and params")
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise _err(path, sorted(unknown)[0], f"unknown key; expected {', '.join(TOP_KEYS)}")
    try:
        base_cfg = copy.deepcopy(base) if base is not None else _resolve_base(path, raw.get("base"))
        fixed = raw.get("set") or {}
        if not isinstance(fixed, dict):
            raise _err(path, "set", "expected a mapping of key: value")
        base_cfg = apply_values(base_cfg, {str(k): v for k, v in fixed.items()})
        config_from_dict(base_cfg)
    except ConfigError as exc:
        raise SpaceError(f"{path}: base/set: {exc}") from None
    objectives = _objectives(path, raw)
    constraints = _constraints(path, raw.get("constraints"))
    pruner = _pruner(path, raw.get("pruner"))
    sampler = _sampler(path, raw.get("sampler"))
    timeout = raw.get("trial_timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise _err(path, "trial_timeout", f"expected a positive number of seconds, got {timeout!r}")
    every = raw.get("trial_checkpoint_minutes")
    if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float)) or every <= 0):
        raise _err(path, "trial_checkpoint_minutes", f"expected a positive number of minutes, got {every!r}")
    keep = raw.get("keep_weights", "front")
    if keep not in KEEP_WEIGHTS:
        raise _err(path, "keep_weights", f"must be one of {', '.join(KEEP_WEIGHTS)}, got {keep!r}")
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise _err(path, "params", "expected a non-empty mapping of config keys to dimensions")
    dims = [_dimension(path, str(k), v) for k, v in params.items()]
    space = SearchSpace(str(path), base_cfg, dims, objectives, constraints, pruner, sampler, timeout, raw,
                        trial_checkpoint_minutes=every, keep_weights=keep)
    _check_dimensions(space, lambda key, message: _err(path, key, message))
    items = merge_overrides((), overrides)
    if not items:
        return space
    _check_override_keys(items, dims)
    try:
        overridden = apply_overrides(base_cfg, list(items))
        config_from_dict(overridden)
    except ConfigError as exc:
        raise OverrideError(f"--set {exc}") from None
    space = replace(space, base=overridden, overrides=items, space_base=base_cfg)
    shown = " ".join(f"--set {item}" for item in items)
    _check_dimensions(space, lambda key, message: OverrideError(f"{shown}: makes {key} invalid: {message}"))
    return space


def _check_dimensions(space: SearchSpace, error: Callable[[str, str], Exception]) -> None:
    """Every dimension must name a real config key with valid values: check both ends."""
    for d in space.dimensions:
        for value in (d.choices if d.kind == "categorical" else (d.low, d.high)):
            try:
                config_from_dict(space.config_for({d.key: value}))
            except ConfigError as exc:
                raise error(f"params.{d.key}", f"value {value!r} is not valid: {exc}") from None


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file (errors name the file and the key)."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such search-space file") from None
    except UnicodeDecodeError:
        raise SpaceError(f"{path}: not UTF-8 text (a YAML search space is expected)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpaceError(f"{path}: not valid YAML ({f'line {mark.line + 1}' if mark else exc})") from None
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read: {exc.strerror}") from None
    return _parse(raw, path)
