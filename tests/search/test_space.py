"""Search spaces: shipped spaces load; malformed ones fail naming the file and key."""

import math
from pathlib import Path

import pytest

from oialr_search.search import SpaceError, load_space
from oialr_search.search._dimension import Dimension
from oialr_search.training import config_from_dict

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


@pytest.mark.parametrize("name", ["mnist_quick", "cifar10_mini_vit", "imagenet_vit_b16"])
def test_shipped_spaces_load(name):
    space = load_space(SPACES / f"{name}.yaml")
    keys = {d.key for d in space.dimensions}
    assert {"oialr.delay", "oialr.update_frequency", "oialr.beta", "oialr.layer_fraction", "optim.lr",
            "schedule.warmup", "schedule.min_lr", "schedule.k_decay", "schedule.trainable_lr_alpha",
            "optim.weight_decay"} <= keys


def test_encoding_round_trip_and_config():
    space = load_space(SPACES / "mnist_quick.yaml")
    for d in space.dimensions:
        lo, hi = d.propulate_limits()
        assert type(lo) is type(hi)
        assert isinstance(lo, float) or d.kind in ("int", "categorical")
        value = d.decode((lo + hi) / 2 if isinstance(lo, float) else lo)
        assert d.decode(d.encode(value)) == pytest.approx(value)
    cfg = config_from_dict(space.config_for({"oialr.beta": 0.3, "optim.lr": 1e-3}))
    assert cfg.oialr.beta == 0.3 and cfg.model.kwargs["embed_dim"] == 48 and cfg.train.epochs == 4


def test_log_floats_written_by_the_user_come_back_exact():
    """The first trial is the base config's values, seeded into Propulate in its log10 encoding: a
    stored weight decay of 0.049999999999999996 for a config that says 0.05 was a sweep's finding."""
    d = Dimension("optim.weight_decay", "float", 1e-4, 0.3, log=True)
    for value in (0.05, 0.3, 0.0025, 3e-4, 1e-4):
        assert d.decode(d.encode(value)) == value
    # every 1- to 4-digit value over many decades (15 significant digits missed 0.0091 and 6.2e-07: a review)
    wide = Dimension("x", "float", 1e-12, 1e12, log=True)
    values = [float(f"{m}e{e}") for e in range(-12, 12) for m in (1, 2.5, 6.2, 9.1, 8.688, 1.234, 3.3333)]
    assert [v for v in values if wide.decode(wide.encode(v)) != v] == []
    # and a value no short decimal was written for still encodes back to what the backend proposed
    raw = math.log10(0.05) + 1e-13
    assert wide.encode(wide.decode(raw)) == raw and wide.decode(raw) == pytest.approx(10**raw, rel=1e-14)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("params: {oialr.bta: {type: float, low: 0.1, high: 0.2}}", r"params\.oialr\.bta: value 0\.1 is not valid"),
        ("params: {oialr.beta: {type: float, low: 0.3, high: 0.2}}", r"params\.oialr\.beta: low must be below high"),
        ("params: {oialr.beta: {type: float, low: 0.0, high: 0.2, log: true}}", r"needs low > 0"),
        ("params: {oialr.beta: {type: flaot, low: 0.1, high: 0.2}}", r"params\.oialr\.beta\.type: must be float"),
        ("params: {oialr.min_rank: {type: int, low: 1.5, high: 3}}", r"needs integer low and high"),
        ("params: {model.name: {type: categorical, choices: []}}", r"choices: expected a non-empty list"),
        ("params: {oialr.beta: {type: float, low: 0.1, high: 0.2, step: 1}}", r"unknown field\(s\) step"),
        ("params: {oialr.beta: {type: float, low: 0.1, high: 1.5}}", r"value 1\.5 is not valid: oialr\.beta"),
        ("params: {}", r"params: expected a non-empty mapping"),
        ("objective: {metric: f1}\nparams: {oialr.beta: {type: float, low: 0.1, high: 0.2}}", r"objective\.metric"),
        ("base: nowhere_config\nparams: {oialr.beta: {type: float, low: 0.1, high: 0.2}}", r"base: 'nowhere_config'"),
        ("set: {train.epochs: 0}\nparams: {oialr.beta: {type: float, low: 0.1, high: 0.2}}",
         r"base/set: train\.epochs"),
        ("trial_timeout: -1\nparams: {oialr.beta: {type: float, low: 0.1, high: 0.2}}", r"trial_timeout"),
        ("paramz: {}", r"paramz: unknown key"),
        ("params: [unclosed", r"not valid YAML"),
    ],
)
def test_malformed_spaces_name_file_and_key(tmp_path, body, message):
    path = tmp_path / "space.yaml"
    path.write_text(body)
    with pytest.raises(SpaceError, match=message) as err:
        load_space(path)
    assert str(err.value).startswith(str(path))


def test_missing_file():
    with pytest.raises(SpaceError, match="no such search-space file"):
        load_space("/nonexistent/space.yaml")
