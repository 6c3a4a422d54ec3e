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


def _config(compile: str, **train):
    return config_from_dict({**CONFIG, "train": {**CONFIG["train"], "compile": compile, **train}})


@pytest.fixture
def graphs(monkeypatch):
    """Compile with aot_eager and count the graphs dynamo makes from here on."""
    monkeypatch.setattr(_compile, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    yield lambda: counters["stats"]["unique_graphs"]
    torch._dynamo.reset()


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


def test_inductor_compiles_a_factorized_oialr_run_that_matches_eager(monkeypatch):
    """The real backend once (seconds for this model): inductor specializes a factorized convolution's
    rank (its channel count), which a strict dynamic mark turned into a ConstraintViolationError."""
    from oialr_search.lowrank import LowRankWeight

    monkeypatch.setattr(LowRankWeight, "forward_mode", "factorized")  # the conv too: the patch embedding
    torch._dynamo.reset()
    eager = Trainer(_config("none", epochs=2), log=None).fit()
    compiled = Trainer(_config("default", epochs=2), log=None).fit()
    torch._dynamo.reset()
    assert len(compiled.oialr_updates) >= 3 and compiled.final_ranks == eager.final_ranks
    assert compiled.val_loss == pytest.approx(eager.val_loss, rel=1e-4)


def test_a_checkpoint_resumes_with_or_without_compile(graphs, tmp_path):
    whole = Trainer(_config("none"), log=None).fit()
    first = Trainer(_config("default"), log=None, checkpoint=tmp_path / "ck.pt")
    first.fit(stop_after=2)
    rest = Trainer(_config("none"), log=None, checkpoint=tmp_path / "ck.pt", resume=True).fit()
    assert rest.final_ranks == whole.final_ranks
    assert rest.val_loss == pytest.approx(whole.val_loss, rel=1e-5)


def test_a_backend_that_cannot_compile_is_one_config_error(monkeypatch):
    def broken(gm, example_inputs):  # what a machine without a C++ compiler or Triton gets
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(_compile, "BACKEND", broken)
    torch._dynamo.reset()
    trainer = Trainer(_config("default", epochs=1), log=None)
    with pytest.raises(ConfigError) as err:
        trainer.fit()
    message = str(err.value)
    assert message.startswith("train.compile: torch.compile") and message.endswith("set train.compile: none")
    assert "no working C++ compiler found" in message and "\n" not in message
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["fast", "", "inductor", True])
def test_an_unknown_compile_mode_is_refused_naming_the_key(mode):
    wanted = "must be one of none, default, reduce-overhead" if isinstance(mode, str) else "expected a string"
    with pytest.raises(ConfigError, match=rf"^train\.compile: {wanted}"):
        _config(mode)
