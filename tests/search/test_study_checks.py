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


@pytest.mark.parametrize(("compile", "oialr", "params", "cuda", "refused"), [
    ("reduce-overhead", "true", "", True, "space.yaml: base/set: train.compile: reduce-overhead runs the step as "
                                           "CUDA graphs, which fail at OIALR's first rank change on GPUs"),
    ("max-autotune", "true", "", True, "train.compile: max-autotune runs the step as CUDA graphs"),
    ("reduce-overhead", "true", "", False, None),  # no GPU on this rank: no CUDA graphs
    ("reduce-overhead", "false", "", True, None),  # full rank: the shapes never change
    ("default", "true", "", True, None),
    ("none", "true", "  train.compile: {type: categorical, choices: [none, default, reduce-overhead]}", True,
     "space.yaml: params.train.compile: reduce-overhead runs the step as CUDA graphs, which fail at OIALR's first "
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


@pytest.mark.parametrize(("compile", "params", "refused"), [
    # a stored study's searched choices cannot change: it goes on while one of them can run
    ("none", "  train.compile: {type: categorical, choices: [none, reduce-overhead]}", None),
    ("none", "  train.compile: {type: categorical, choices: [reduce-overhead, max-autotune]}",
     "params.train.compile: reduce-overhead, max-autotune run the step as CUDA graphs, which fail at OIALR's first "
     "rank change on GPUs; run study 's' on nodes without GPUs, or start a new study"),
    ("reduce-overhead", "", "study 's': train.compile: reduce-overhead runs the step as CUDA graphs, which fail at "
                            "OIALR's first rank change on GPUs; use default or max-autotune-no-cudagraphs (CUDA "
                            "graphs suit full-rank runs, oialr.enabled: false); continue it with 'oialr-search "
                            "resume --study s --set train.compile=default'"),
])
def test_a_stored_study_is_refused_only_what_it_can_change(tmp_path, compile, params, refused):
    problem = compile_problem(space(tmp_path, compile=compile, params=params), cuda=True, stored="s")
    assert problem == refused if refused is None else refused in problem


def test_inductors_own_cuda_graphs_setting_is_named_as_the_cause(tmp_path):
    import torch._inductor.config

    from oialr_search.training._compile import TrainingCompiler

    with torch._inductor.config.patch({"triton.cudagraphs": True}):  # as TORCHINDUCTOR_CUDAGRAPHS=1 sets
        assert TrainingCompiler(mode="default").uses_cuda_graphs
        problem = compile_problem(space(tmp_path, compile="default"), cuda=True)
    assert not TrainingCompiler(mode="default").uses_cuda_graphs
    assert problem.endswith("train.compile: default records CUDA graphs here (inductor's triton.cudagraphs, which "
                            "TORCHINDUCTOR_CUDAGRAPHS=1 sets), and they fail at OIALR's first rank change on GPUs; "
                            "unset TORCHINDUCTOR_CUDAGRAPHS (every trial would fail)")


def test_run_and_resume_judge_the_compile_mode_by_this_ranks_gpus(tmp_path, monkeypatch):
    import torch

    from oialr_search.cli import _search

    refused = space(tmp_path, compile="reduce-overhead")
    _search._refuse_unrunnable(refused)  # no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(OIALRSearchError, match="reduce-overhead runs the step as CUDA graphs"):
        _search._refuse_unrunnable(refused)
