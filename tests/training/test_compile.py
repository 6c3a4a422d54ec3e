"""train.compile: a compiled OIALR run computes what the eager one does, and its changing ranks do not
recompile it (graphs compiled with the aot_eager backend: dynamo and AOT autograd as under inductor,
without generating code, which takes minutes on this CPU)."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from oialr_search.exceptions import ConfigError
from oialr_search.training import Trainer, _compile, config_from_dict

CONFIG = {
    "model": {"name": "mini_vit", "kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2}},
    "data": {"name": "digits", "val_fraction": 0.2},
    "oialr": {"delay": 0.2, "update_frequency": 10, "beta": 0.3},
    "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "precision": "fp32", "threads": 1},
}


def _config(compile: str, *, model: dict | None = None, oialr: dict | None = None, **train):
    """CONFIG with ``train.compile``, other train keys, and the model's and OIALR's keys changed."""
    return config_from_dict({**CONFIG, "model": model or CONFIG["model"], "oialr": {**CONFIG["oialr"], **(oialr or {})},
                             "train": {**CONFIG["train"], "compile": compile, **train}})


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test starts and leaves with empty dynamo caches, whatever it asserted."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def graphs(monkeypatch):
    """Compile with aot_eager and count the graphs dynamo makes from here on."""
    monkeypatch.setattr(_compile, "BACKEND", "aot_eager")
    counters.clear()
    return lambda: counters["stats"]["unique_graphs"]


def test_a_compiled_oialr_run_equals_the_eager_run_and_compiles_once_per_structure(graphs):
    eager_trainer = Trainer(_config("none"), log=None)
    eager = eager_trainer.fit()
    assert graphs() == 0
    compiled_trainer = Trainer(_config("default"), log=None)
    compiled = compiled_trainer.fit()
    rank_sets = {tuple(sorted(r["ranks"].items())) for r in compiled.oialr_updates}
    assert len(rank_sets) >= 3  # the switch and updates that changed the ranks
    # full rank, the epoch's short last batch, the low-rank model: not one graph per rank set (6 when
    # the ranks are not marked dynamic), and none for evaluation, which runs eagerly
    assert graphs() <= 3
    assert compiled.final_ranks == eager.final_ranks
    for a, b in zip(compiled.epochs, eager.epochs, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)
    # compiled in place: the state_dict has the eager model's keys (no torch.compile wrapper prefix)
    assert list(compiled_trainer.model.state_dict()) == list(eager_trainer.model.state_dict())


def test_the_rank_padding_for_tensor_cores_does_not_recompile_at_updates(graphs, monkeypatch):
    """On CUDA the rank is padded to a multiple of 8 (here forced on the CPU): a branch on whether it
    already is one was a guard on every factor's rank, and most updates recompiled (6 graphs here)."""
    from oialr_search.lowrank import LowRankWeight

    monkeypatch.setattr(LowRankWeight, "align", 8)
    monkeypatch.setattr(LowRankWeight, "forward_mode", "factorized")
    oialr = {"update_frequency": 5, "layer_fraction": 0.3}
    compiled = Trainer(_config("default", oialr=oialr, epochs=4), log=None).fit()
    assert len({tuple(sorted(r["ranks"].items())) for r in compiled.oialr_updates}) >= 4
    assert graphs() <= 3


def test_sigma_going_apart_recompiles_once_and_the_compiled_products_match_eager(graphs, monkeypatch):
    """Σ goes apart (three products) once a linear layer's rank falls below a third of its narrower
    side: one guard on the rank, so each graph compiles once more when it crosses, and never for ranks
    on either side."""
    from torch import nn

    from oialr_search.lowrank import LowRankWeight, convert_to_low_rank

    monkeypatch.setattr(LowRankWeight, "forward_mode", "factorized")  # no dense/factorized crossing here
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 48), nn.GELU(), nn.Linear(48, 48))
    factors = convert_to_low_rank(model)
    compiler = _compile.TrainingCompiler(mode="default")
    compiler.compile(model)
    x = torch.randn(16, 48)
    counts = []
    for rank in (40, 30, 16, 15, 10, 5):  # merged while 3·rank ≥ 48, then apart
        for _, f in factors:
            f.rotate_(beta=1.0, min_rank=rank)
        compiler.shapes_changed(model)
        results = []
        for compiled in (True, False):
            with compiler.training() if compiled else compiler.eager():
                model.zero_grad()
                out = model(x)
                (out * torch.arange(48)).sum().backward()
            results.append((out.detach(), *(f.sigma.grad.clone() for _, f in factors)))
        torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)
        assert [f.sigma_apart() for _, f in factors] == [3 * rank < 48] * 2
        counts.append(graphs())
    assert counts[0] == counts[1] == counts[2] and counts[3] == counts[4] == counts[5]  # none on either side
    assert counts[0] < counts[3] <= 2 * counts[0]  # Σ going apart: each compiled graph once more at most


def test_inductor_compiles_a_factorized_oialr_run_that_matches_eager(monkeypatch):
    """The real backend once (seconds for this model): inductor specializes a factorized convolution's
    rank (its channel count), which a strict dynamic mark turned into a ConstraintViolationError."""
    from oialr_search.lowrank import LowRankWeight

    monkeypatch.setattr(LowRankWeight, "forward_mode", "factorized")  # the conv too: the patch embedding
    eager = Trainer(_config("none", epochs=2), log=None).fit()
    compiled = Trainer(_config("default", epochs=2), log=None).fit()
    assert len(compiled.oialr_updates) >= 3 and compiled.final_ranks == eager.final_ranks
    assert compiled.val_loss == pytest.approx(eager.val_loss, rel=1e-4)


def test_a_checkpoint_resumes_with_or_without_compile(graphs, tmp_path):
    whole = Trainer(_config("none"), log=None).fit()
    first = Trainer(_config("default"), log=None, checkpoint=tmp_path / "ck.pt")
    first.fit(stop_after=2)
    rest = Trainer(_config("none"), log=None, checkpoint=tmp_path / "ck.pt", resume=True).fit()
    assert rest.final_ranks == whole.final_ranks
    assert rest.val_loss == pytest.approx(whole.val_loss, rel=1e-5)


def _failing_backend(error: Exception):
    def backend(gm, example_inputs):
        raise error

    return backend


@pytest.mark.parametrize("error", ["InvalidCxxCompiler", "TritonMissing"])
def test_a_machine_that_cannot_compile_gets_one_config_error(graphs, monkeypatch, error):
    import torch._inductor.exc as inductor_exc

    failure = getattr(inductor_exc, error)
    failure = failure() if error == "InvalidCxxCompiler" else failure(None)  # TritonMissing escapes unwrapped
    monkeypatch.setattr(_compile, "BACKEND", _failing_backend(failure))
    trainer = Trainer(_config("default", epochs=1), log=None)
    with pytest.raises(ConfigError) as err:
        trainer.fit()
    message = str(err.value)
    assert message.startswith("train.compile: torch.compile") and message.endswith("set train.compile: none")
    assert error in message and "\n" not in message


class TrialTimeout(Exception):  # as the search's, raised by its SIGALRM handler wherever the trial is
    pass


def test_an_error_in_the_backend_goes_on_as_itself(graphs, monkeypatch):
    monkeypatch.setattr(_compile, "BACKEND", _failing_backend(TrialTimeout("the trial ran longer than 1s")))
    trainer = Trainer(_config("default", epochs=1), log=None)
    with pytest.raises(TrialTimeout, match="longer than 1s"):
        trainer.fit()


def test_an_error_while_dynamo_traces_goes_on_as_itself():
    """Dynamo re-raises what interrupts its tracing as an InternalTorchDynamoError, ``from None``."""
    compiler = _compile.TrainingCompiler(mode="default")
    with pytest.raises(TrialTimeout, match="longer than 1s"), compiler.training():
        try:
            raise TrialTimeout("the trial ran longer than 1s")
        except TrialTimeout:
            raise torch._dynamo.exc.InternalTorchDynamoError("TrialTimeout: the trial ran longer than 1s") from None


def test_each_run_starts_with_empty_dynamo_caches(graphs, monkeypatch):
    """A search worker trains trial after trial in one process; their graphs share timm's forward's
    cache, which kept the earlier trials' graphs, and after the limit the next trial silently ran eager."""
    monkeypatch.setattr(_compile, "RECOMPILE_LIMIT", 4)  # room for one run's graphs, not for two runs'
    for width in (16, 24):  # models of different sizes, as a searched width gives
        before = graphs()
        model = {"name": "mini_vit", "kwargs": {"embed_dim": width, "depth": 1, "num_heads": 2}}
        Trainer(_config("default", model=model, epochs=2), log=None).fit()
        assert graphs() - before >= 2, f"width {width}: {graphs() - before} graphs compiled, so it ran eager"


@pytest.mark.parametrize("mode", ["fast", "", "inductor", True])
def test_an_unknown_compile_mode_is_refused_naming_the_key(mode):
    wanted = "must be one of none, default, reduce-overhead" if isinstance(mode, str) else "expected a string"
    with pytest.raises(ConfigError, match=rf"^train\.compile: {wanted}"):
        _config(mode)
