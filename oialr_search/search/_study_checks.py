"""What a new study may not be: a name that is not a plain folder name, a seed out of range, a space that
searches a key the search sets itself, or a base config whose model every trial would fail to build.
A stored study, which an earlier release may have taken with any of them, is not judged by them; but no
search starts, new study or not, while its data set is missing (data_problem)."""

from __future__ import annotations

from ..exceptions import ConfigError, DataError
from ..training import RunConfig, config_from_dict
from ..training._data_checks import check_data_source
from ..training._model_sizes import check_model_sizes
from ._space import PLACED_KEYS, SearchSpace

MAX_SEED = 2**31 - 1  # the study's seed column is a 32-bit integer on PostgreSQL
MAX_NAME_BYTES = 200  # a study names its work folder: within a file name's 255 bytes, with room to spare


def new_study_problem(name: str, seed: int, space: SearchSpace) -> str | None:
    """What is wrong with the name, the seed or the space of a new study, or None. The name names the study's
    work folder: one plain folder name, no path; the seed is stored in a 32-bit column on PostgreSQL. A stored
    study, which an earlier release may have taken with any of them, is not judged by them."""
    problem = ("is empty" if not name.strip() else
               "is a path (it names the study's work folder: use no / or \\)" if "/" in name or "\\" in name else
               "is not a folder name" if name in (".", "..") else
               "has control characters" if any(ord(c) < 32 or ord(c) == 127 for c in name) else
               f"is longer than {MAX_NAME_BYTES} bytes" if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
               else None)
    if problem is not None:
        return f"--study {name!r}: the name {problem}; e.g. --study cifar_beta"
    if not 0 <= seed <= MAX_SEED:
        return f"--seed {seed}: must be from 0 to {MAX_SEED}"
    return placed_problem(space) or model_problem(space) or data_problem(space)


def placed_problem(space: SearchSpace) -> str | None:
    """Why a new study may not search ``space``: a key the search sets itself for every rank. (An earlier
    release took them, and its studies go on: the ranks' own values win, whatever the params say.)"""
    placed = next((d.key for d in space.dimensions if d.key in PLACED_KEYS), None)
    if placed is None:
        return None
    return f"{space.path}: params.{placed}: cannot be searched: the search sets it for every rank " \
           f"({PLACED_KEYS[placed]})"


def model_problem(space: SearchSpace) -> str | None:
    """Why every trial of ``space`` would fail to build its model, or None: a size of one of our models in the
    base config (with its ``--set``) that its builder refuses and no searched value changes, an unknown
    model name, or a model.kwargs key (searched or not) the model does not take. Judged for
    a new study and for new ``--set`` items, before anything is written (a sweep found the trials failing
    one by one, the budget spent on them)."""
    dims = {d.key: d for d in space.dimensions}
    if dims.keys() & {"model", "model.name", "model.kwargs"}:
        return None
    model = config_from_dict(space.base).model
    searched = {k.removeprefix("model.kwargs."): d for k, d in dims.items() if k.startswith("model.kwargs.")}
    try:
        check_model_sizes(model.name, model.kwargs, skip=searched)
    except ConfigError as exc:
        return f"{space.path}: {_where(space)}: {exc} (every trial would fail building its model)"
    # one build on the meta device, as the first trial would build it (the base config's own values where
    # they lie in the space, else each range's first value): a typo in model.name or in a kwarg's name fails
    # every trial (found by a sweep: the budget spent on FAILED trials, exit 0)
    params = space.start_params() or {d.key: d.choices[0] if d.choices else d.low for d in space.dimensions}
    trial = _first_valid(space, [params, {k: v for k, v in params.items() if k.startswith("model.kwargs.")}, {}])
    if trial is None:
        return None
    from ..training._models import unbuildable  # torch: here only, so the query verbs' imports stay light

    problem = unbuildable(trial.model.name, trial.model.kwargs, img_size=trial.data.img_size or 224)
    if problem is not None:
        named = {part for key in searched for part in key.split(".")}  # nested kwargs name their own keywords
        where = "params" if any(f"'{key}'" in problem for key in named) else _where(space)
        return f"{space.path}: {where}: {problem} (every trial would fail building its model)"
    return None


def _first_valid(space: SearchSpace, candidates: list[dict]) -> RunConfig | None:
    """The run config of the first of these params that makes a valid one (or None): a combination that
    is not is judged per trial, and the model is checked with fewer of the searched values."""
    for params in candidates:
        try:
            return config_from_dict(space.config_for(params))
        except ConfigError:
            continue
    return None


def data_problem(space: SearchSpace, stored: str | None = None) -> str | None:
    """Why every trial of ``space`` would fail to load its data: an on-disk data set (data.path) that is not
    there in its layout, unless data.name or data.path is searched; None otherwise. Files are looked at,
    not read. Judged before every search (a sweep found a wrong --set data.path spending a new study's whole
    budget on failed trials, exit 0; a resumed study's data may have moved or not be staged yet).
    ``stored``: the name of the stored study ``space`` is, which the message tells how to point at its data."""
    searched = {d.key for d in space.dimensions}
    if searched & {"data", "data.name", "data.path"}:
        return None
    data = config_from_dict(space.base).data
    try:
        check_data_source(data.name, data.path)
    except DataError as exc:
        hint = "" if stored is None else \
            f"; point the study at it with 'oialr-search resume --study {stored} --set data.path=…'"
        return f"{space.path}: {_where(space)}: {exc} (every trial would fail loading its data){hint}"
    return None


def _where(space: SearchSpace) -> str:
    return f"with {' '.join(f'--set {item}' for item in space.overrides)}" if space.overrides else "base/set"
