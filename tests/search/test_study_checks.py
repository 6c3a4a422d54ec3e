"""What run and resume refuse before a search because every trial would fail: a model no trial can build
(judged on the meta device, never leaving a user's module with meta tensors)."""

import sys
import textwrap

import pytest

from oialr_search.search import load_space
from oialr_search.search._study_checks import model_problem

BASE = """\
base:
  model: %(model)s
  data: {name: digits, val_fraction: 0.2}
  train: {epochs: 1, batch_size: 64}
objective: {metric: val_loss}
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
%(params)s
"""


def space(tmp_path, *, model="{name: mlp, kwargs: {hidden: 24, depth: 1}}", params=""):
    path = tmp_path / "space.yaml"
    path.write_text(BASE % {"model": model, "params": params})
    return load_space(path)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's model module that makes a tensor when it is imported, as normalization constants are."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""\
        import torch
        from torch import nn

        MEAN = torch.zeros(1)

        def build(*, num_classes, in_chans, img_size, width=8):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, num_classes))

        def pretrained(fn):
            @functools.wraps(fn)  # the signature seen through __wrapped__ is fn's, without this keyword
            def wrapper(*, pretrained=False, **kwargs):
                return fn(**kwargs)
            return wrapper

        decorated = pretrained(build)
        """).replace("import torch\n", "import functools\nimport torch\n", 1))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    yield
    sys.modules.pop("my_models", None)


def test_a_users_builder_is_imported_off_the_meta_device_and_its_keywords_checked(tmp_path, user_module):
    assert model_problem(space(tmp_path, model="{name: 'my_models:build', kwargs: {width: 4}}")) is None
    import my_models

    assert my_models.MEAN.device.type == "cpu"  # made on the meta device, every trial's model would use it there
    problem = model_problem(space(tmp_path, model="{name: 'my_models:build', kwargs: {widht: 4}}"))
    assert "model.kwargs: my_models:build: got an unexpected keyword argument 'widht'" in problem
    # a decorator's wrapper takes what it takes, whatever it wraps
    assert model_problem(space(tmp_path, model="{name: 'my_models:decorated', kwargs: {pretrained: true}}")) is None


def test_a_model_typo_is_found_when_the_first_values_of_the_ranges_make_no_valid_config(tmp_path):
    """The shift pipeline takes no color jitter, and the base's own values are outside the ranges: the model is
    built without them."""
    typo = space(tmp_path, model="{name: mlpp, kwargs: {}}",
                 params="  data.augment.pipeline: {type: categorical, choices: [shift, timm]}\n"
                        "  data.augment.color_jitter: {type: float, low: 0.1, high: 0.4}")
    assert "model.name: unknown model 'mlpp'" in model_problem(typo)


def test_nested_model_kwargs_that_a_search_varies_reach_the_model_as_it_takes_them(tmp_path):
    """timm's ResNet takes block_args={'attn_layer': ...}: not a keyword named 'block_args.attn_layer'."""
    nested = space(tmp_path, model="{name: resnet18, kwargs: {}}",
                   params="  model.kwargs.block_args.attn_layer: {type: categorical, choices: [se, eca]}")
    assert model_problem(nested) is None
    typo = space(tmp_path, model="{name: resnet18, kwargs: {}}",
                 params="  model.kwargs.blok_args.attn_layer: {type: categorical, choices: [se, eca]}")
    assert "params: model.kwargs: ResNet.__init__() got an unexpected keyword argument 'blok_args'" in \
        model_problem(typo)
