"""What run and resume refuse before a search because every trial would fail: a model no trial can build
(judged on the meta device, never leaving a user's module with meta tensors) and a compile mode this rank's
GPUs cannot run OIALR with."""

import sys
import textwrap

import pytest

from oialr_search.exceptions import OIALRSearchError
from oialr_search.search import load_space
from oialr_search.search._study_checks import compile_problem, model_problem

BASE = """\
base:
  model: %(model)s
  data: {name: digits, val_fraction: 0.2}
  train: {epochs: 1, batch_size: 64, compile: %(compile)s}
  oialr: {enabled: %(oialr)s}
objective: {metric: val_loss}
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
%(params)s
"""


def space(tmp_path, *, model="{name: mlp, kwargs: {hidden: 24, depth: 1}}", compile="none", oialr="true",
          params=""):
    path = tmp_path / "space.yaml"
    path.write_text(BASE % {"model": model, "compile": compile, "oialr": oialr, "params": params})
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
        """))
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


def test_nested_model_kwargs_that_a_search_varies_reach_the_model_as_it_takes_them(tmp_path):
    """timm's ResNet takes block_args={'attn_layer': ...}: not a keyword named 'block_args.attn_layer'."""
    nested = space(tmp_path, model="{name: resnet18, kwargs: {}}",
                   params="  model.kwargs.block_args.attn_layer: {type: categorical, choices: [se, eca]}")
    assert model_problem(nested) is None
    typo = space(tmp_path, model="{name: resnet18, kwargs: {}}",
                 params="  model.kwargs.blok_args.attn_layer: {type: categorical, choices: [se, eca]}")
    assert "params: model.kwargs: ResNet.__init__() got an unexpected keyword argument 'blok_args'" in \
        model_problem(typo)


@pytest.mark.parametrize(("compile", "oialr", "params", "cuda", "refused"), [
    ("reduce-overhead", "true", "", True, "space.yaml: base/set: train.compile: reduce-overhead runs the step as "
                                           "CUDA graphs, which fail at OIALR's first rank change on GPUs"),
    ("max-autotune", "true", "", True, "train.compile: max-autotune runs the step as CUDA graphs"),
    ("reduce-overhead", "true", "", False, None),  # no GPU on this rank: no CUDA graphs
    ("reduce-overhead", "false", "", True, None),  # full rank: the shapes never change
    ("default", "true", "", True, None),
    ("none", "true", "  train.compile: {type: categorical, choices: [none, default, reduce-overhead]}", True,
     "space.yaml: params.train.compile: reduce-overhead run the step as CUDA graphs, which fail at OIALR's first "
     "rank change on GPUs; drop it from the choices"),
    ("none", "true", "  train.compile: {type: categorical, choices: [none, reduce-overhead]}", False, None),
])
def test_cuda_graphs_for_oialr_on_this_ranks_gpus_are_refused_before_the_search(tmp_path, compile, oialr, params,
                                                                                  cuda, refused):
    problem = compile_problem(space(tmp_path, compile=compile, oialr=oialr, params=params), cuda=cuda)
    if refused is None:
        assert problem is None
    else:
        assert refused in problem and "\n" not in problem


def test_run_and_resume_judge_the_compile_mode_by_this_ranks_gpus(tmp_path, monkeypatch):
    import torch

    from oialr_search.cli import _search

    refused = space(tmp_path, compile="reduce-overhead")
    _search._refuse_unrunnable(refused)  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(OIALRSearchError, match="reduce-overhead runs the step as CUDA graphs"):
        _search._refuse_unrunnable(refused)
