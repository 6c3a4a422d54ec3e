"""The OIALR schedule: when it switches, which layers it updates, what it records."""

import torch
from torch import nn

from oialr_search.lowrank import OIALR, OIALRConfig, count_parameters


def _model():
    return nn.Sequential(*[nn.Linear(16, 16) for _ in range(10)])


def _run(config, total_steps=100, model=None):
    model = model or _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctl = OIALR(model, opt, config, total_steps=total_steps)
    events = {}
    x = torch.randn(4, model[0].in_features)
    for step in range(total_steps):
        rec = ctl.before_step(step)
        if rec:
            events[step] = rec
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return ctl, events


def test_switch_and_update_steps():
    ctl, events = _run(OIALRConfig(delay=20, update_frequency=15, keep_last_layer=False))
    assert sorted(events) == [20, 35, 50, 65, 80, 95]
    assert events[20].update == -1 and events[35].update == 0 and events[95].update == 4


def test_delay_as_fraction():
    ctl, events = _run(OIALRConfig(delay=0.25, update_frequency=1000))
    assert list(events) == [25]


def test_disabled_never_converts():
    ctl, events = _run(OIALRConfig(enabled=False))
    assert not events and not ctl.converted


def test_layer_fraction_takes_the_last_layers():
    ctl, events = _run(OIALRConfig(delay=0, update_frequency=10, layer_fraction=0.15, beta=0.0,
                                   keep_last_layer=False), total_steps=60)
    names = [n for n, _ in ctl.factors]
    updates = [events[s] for s in (10, 20, 30, 40, 50)]
    # ⌈0.15·10·(k+1)⌉ = 2, 3, 5, 6, 8
    assert [len(u.updated) for u in updates] == [2, 3, 5, 6, 8]
    assert updates[0].updated == names[-2:]
    assert updates[2].updated == names[-5:]


def test_delay_zero_is_spectral_initialization():
    model = _model()
    w0 = [m.weight.detach().clone() for m in model]
    ctl = OIALR(model, None, OIALRConfig(delay=0, keep_last_layer=False), total_steps=10)
    ctl.before_step(0)
    for (_, f), w in zip(ctl.factors, w0):
        torch.testing.assert_close(f.materialize(), w, atol=1e-5, rtol=0)
        # with orthonormal bases ‖U Σ Vᵀ‖_F = ‖Σ‖_F: Frobenius decay is weight decay on Σ
        torch.testing.assert_close(torch.linalg.norm(f.sigma), torch.linalg.norm(w), atol=1e-4, rtol=0)


def test_records_counts_and_stability():
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 48), nn.Linear(48, 8))
    ctl, events = _run(OIALRConfig(delay=10, update_frequency=10, beta=0.3, layer_fraction=1.0,
                                   keep_last_layer=True), total_steps=40, model=model)
    switch = events[10]
    original = 64 * 32 + 32 + 32 * 48 + 48 + 48 * 8 + 8
    assert switch.original == original
    # at the switch: Σ is r×r for the two converted layers, the kept head stays dense
    assert switch.trainable == 32 * 32 + 32 + 32 * 32 + 48 + 48 * 8 + 8
    assert switch.total == switch.trainable + 32 * (64 + 32) + 32 * (32 + 48)
    assert switch.ranks == {"0.factor": 32, "1.factor": 32}
    upd = events[20]
    assert upd.updated == ["0.factor", "1.factor"] and set(upd.stability) == set(upd.updated)
    assert all(0.0 < s <= 1.0 + 1e-6 for s in upd.stability.values())
    assert set(upd.alignment) == set(upd.updated)  # beside it, normalized by the new rank: never below it
    assert all(upd.alignment[n] >= upd.stability[n] - 1e-6 for n in upd.updated)
    assert upd.mean_alignment == sum(upd.alignment.values()) / 2
    assert upd.trainable_fraction == upd.trainable / original
    assert upd.compression == upd.total / original
    assert upd.seconds >= 0
    counts = count_parameters(model, original)
    assert counts.trainable == events[30].trainable
    assert all(r <= 32 for r in ctl.ranks.values())


def test_a_graph_alive_across_a_rank_change_does_not_break_the_next_backward():
    """Whatever still holds Σ's gradient accumulator across an update (here a graph kept alive; on a GPU a
    recorded CUDA graph of train.compile reduce-overhead, or a DDP reducer) must not meet the new rank: with
    Σ's .data replaced in place, the next backward failed ("MmBackward0 returned an invalid gradient at
    index 0 - got [11, 11] but expected shape compatible with [16, 16]"), as the compiled backward did on
    an H100. Σ is a new Parameter at every update, which the optimizer trains in the old one's place."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ctl = OIALR(model, opt, OIALRConfig(delay=0, update_frequency=1, beta=0.5, layer_fraction=1.0,
                                        keep_last_layer=False), total_steps=10)
    x = torch.randn(4, 16)
    ctl.before_step(0)  # the switch
    kept = model(x).sum()  # alive across the update
    old = [f.sigma for _, f in ctl.factors]
    record = ctl.before_step(1)
    assert record.ranks == {"0.factor": 11, "2.factor": 8}  # both ranks dropped
    model(x).pow(2).mean().backward()
    opt.step()
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    for (_, f), before in zip(ctl.factors, old, strict=True):
        assert f.sigma.grad is not None and id(f.sigma) in trained and id(before) not in trained
    assert kept.grad_fn is not None


def test_without_an_optimizer_of_its_own_an_update_keeps_the_callers_optimizer_training_sigma():
    """OIALR(model, None, ...) with the caller's own optimizer: that optimizer holds the Σ Parameters, so an
    update puts the new values into them (as before Σ became a new Parameter per update), and they train."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    ctl = OIALR(model, None, OIALRConfig(delay=0, update_frequency=1, beta=0.5, layer_fraction=1.0,
                                         keep_last_layer=False), total_steps=10)
    ctl.before_step(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # the caller's, made after the switch
    held = [f.sigma for _, f in ctl.factors]
    x = torch.randn(4, 16)
    for step in (1, 2):
        ctl.before_step(step)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        before = [f.sigma.detach().clone() for _, f in ctl.factors]
        opt.step()
        for (_, f), p, b in zip(ctl.factors, held, before, strict=True):
            assert f.sigma is p and not torch.equal(f.sigma, b)  # the held Parameter is Σ, and it trained
    assert ctl.ranks["0.factor"] < 16 and ctl.ranks["2.factor"] < 8  # the updates dropped ranks


def test_the_replaced_sigma_keeps_no_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ctl = OIALR(model, opt, OIALRConfig(delay=0, update_frequency=1, beta=0.5, layer_fraction=1.0,
                                        keep_last_layer=False), total_steps=10)
    ctl.before_step(0)
    model(torch.randn(4, 16)).sum().backward()
    old = [f.sigma for _, f in ctl.factors]
    assert all(p.grad is not None for p in old)
    ctl.before_step(1)
    assert all(p.grad is None for p in old) and all(f.sigma is not p for (_, f), p in zip(ctl.factors, old))
