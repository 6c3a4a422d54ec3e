"""Run configs: defaults, YAML round trip, overrides and errors that name the key."""

import pytest

from oialr_search.exceptions import ConfigError
from oialr_search.training import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = RunConfig().validate()
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_int_delay_stays_steps_and_float_delay_is_a_fraction():
    assert config_from_dict({"oialr": {"delay": 500}}).oialr.delay == 500
    assert isinstance(config_from_dict({"oialr": {"delay": 500}}).oialr.delay, int)
    assert config_from_dict({"oialr": {"delay": 0.25}}).oialr.delay == 0.25
    assert config_from_dict({"optim": {"lr": 1}}).optim.lr == 1.0


def test_overrides():
    data = apply_overrides({}, ["oialr.beta=0.3", "model.kwargs.embed_dim=48", "train.grad_clip=null"])
    cfg = config_from_dict(data)
    assert cfg.oialr.beta == 0.3 and cfg.model.kwargs == {"embed_dim": 48} and cfg.train.grad_clip is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"oialr": {"bta": 0.1}}, r"^oialr\.bta: unknown key \(did you mean 'beta'\?\)"),
        ({"oialr": {"beta": 1.5}}, r"^oialr\.beta: must be in \[0, 1\)"),
        ({"oialr": {"beta": "high"}}, r"^oialr\.beta: expected a number"),
        ({"oialr": {"delay": 1.5}}, r"^oialr\.delay: a fraction must be in \[0, 1\)"),
        ({"oialr": {"delay": -3}}, r"^oialr\.delay: must be >= 0"),
        ({"oialr": {"update_frequency": 0}}, r"^oialr\.update_frequency"),
        ({"oialr": {"layer_fraction": 0}}, r"^oialr\.layer_fraction"),
        ({"oialr": {"enabled": "yes please"}}, r"^oialr\.enabled: expected true or false"),
        ({"optim": {"lr": -1}}, r"^optim\.lr: must be > 0"),
        ({"train": {"epochs": 0}}, r"^train\.epochs: must be >= 1"),
        ({"train": {"device": "tpu"}}, r"^train\.device"),
        ({"data": {"name": "imagenet22k"}}, r"^data\.name: unknown data set"),
        ({"data": {"name": "cifar10"}}, r"^data\.path: .*set data\.path"),
        ({"schedule": {"k_decay": 0}}, r"^schedule\.k_decay"),
        ({"schedule": 3}, r"^schedule: expected a mapping"),
        ({"wat": {}}, r"^wat: unknown key"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("oialr: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML \(line"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("oialr:\n  beta: 2\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml: oialr\.beta"):
        load_config(wrong)
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["oialr.beta"])


def test_to_dict_is_plain_data():
    d = config_to_dict(RunConfig())
    assert d["oialr"]["beta"] == 0.1 and isinstance(d["model"]["kwargs"], dict)


def test_a_key_under_a_shorthand_section_says_how_to_set_the_section():
    """data.augment: false is the shorthand of a whole section: a key under it cannot be set alone, and the
    error says what to type instead, which works."""
    from oialr_search.training import apply_overrides

    with pytest.raises(ConfigError) as err:
        apply_overrides({"data": {"augment": False}}, ["data.augment.hflip=0.5"])
    assert str(err.value) == ("data.augment.hflip: data.augment is False in this config, not a section; set the "
                              "section as a whole, e.g. data.augment={hflip: 0.5}")
    fixed = apply_overrides({"data": {"augment": False}}, ["data.augment={hflip: 0.5}"])
    assert config_from_dict(fixed).data.augment.hflip == 0.5 and config_from_dict(fixed).data.augment.enabled


def test_numbers_with_an_exponent_and_no_dot_are_numbers(tmp_path):
    """`1e-3` is a number in YAML 1.2 and to every user; PyYAML (YAML 1.1) read it as a string, which the
    config then refused as "expected a number" (found by a sweep), in files, --set and search spaces."""
    from oialr_search.search import load_space

    (tmp_path / "run.yaml").write_text("model: {name: mlp}\ndata: {name: digits}\noptim: {lr: 1e-3}\n")
    config = load_config(tmp_path / "run.yaml", ["optim.weight_decay=5E-2", "oialr.beta=+2e-1"])
    assert (config.optim.lr, config.optim.weight_decay, config.oialr.beta) == (1e-3, 5e-2, 0.2)
    assert load_config(tmp_path / "run.yaml", ["data.path=1e3x"]).data.path == "1e3x"  # still a string
    # a dot and an unsigned exponent, which YAML 1.1 reads as a string too (found in review)
    assert load_config(tmp_path / "run.yaml", ["optim.lr=2.5e-3", "optim.weight_decay=.5e-1"]).optim.lr == 2.5e-3
    assert load_config(tmp_path / "run.yaml", ["train.grad_clip=1.5E1"]).train.grad_clip == 15.0
    # and what is dumped reads back as it was: a string that looks like such a number is quoted
    config = load_config(tmp_path / "run.yaml", ["data.path='1e5'"])
    assert config.data.path == "1e5"
    (tmp_path / "dumped.yaml").write_text(dump_config(config))
    assert load_config(tmp_path / "dumped.yaml") == config
    (tmp_path / "space.yaml").write_text("base: {model: {name: mlp}, data: {name: digits}}\n"
                                         "params: {optim.lr: {type: float, low: 1e-4, high: 1e-2, log: true}}\n")
    (dim,) = load_space(tmp_path / "space.yaml").dimensions
    assert (dim.low, dim.high) == (1e-4, 1e-2)


def test_an_error_that_a_set_makes_names_the_set_not_the_file(tmp_path):
    (tmp_path / "run.yaml").write_text("model: {name: mlp}\ndata: {name: digits}\n")
    with pytest.raises(ConfigError, match=r"^--set optim.lr: expected a number, got 'abc'$"):
        load_config(tmp_path / "run.yaml", ["optim.lr=abc"])
    (tmp_path / "bad.yaml").write_text("model: {name: mlp}\ndata: {name: digits}\noptim: {lr: abc}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: optim.lr: expected a number"):
        load_config(tmp_path / "bad.yaml", ["train.epochs=1"])
    assert load_config(tmp_path / "bad.yaml", ["optim.lr=0.1"]).optim.lr == 0.1  # a --set may mend the file


@pytest.mark.parametrize(("key", "hint"), [("img_size", "data.img_size: set that instead"),
                                           ("num_classes", "its classes"), ("in_chans", "its image channels")])
def test_model_kwargs_the_data_gives_are_refused(key, hint):
    """The builder gets them from the data too: 'got multiple values' was a traceback (found by a sweep)."""
    with pytest.raises(ConfigError, match=rf"^model.kwargs.{key}: comes from the data \({hint}\); remove it$"):
        config_from_dict({"model": {"name": "vit_tiny_patch16_224", "kwargs": {key: 16}}})
