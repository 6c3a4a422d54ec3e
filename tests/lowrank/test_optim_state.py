"""AdamW state across the switch and across basis updates (see lowrank/_optim_state.py)."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from oialr_search.lowrank import convert_to_low_rank

STEPS = 400
BETAS = (0.9, 0.99)  # bias corrections have settled after STEPS, as late in training


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 16, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=BETAS)
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, x, y


def _step(model, opt, x, y):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def test_first_moment_is_transported_exactly():
    model, opt, x, y = _problem()
    w = model[2].weight
    m_w = opt.state[w]["exp_avg"].clone()
    step = opt.state[w]["step"].clone()
    factors = convert_to_low_rank(model, optimizer=opt)
    f = factors[1][1]
    state = opt.state[f.sigma]
    torch.testing.assert_close(state["exp_avg"], f.U.T @ m_w @ f.Vh.T)
    assert torch.equal(state["step"], step)  # bias correction stays consistent
    assert (state["exp_avg_sq"] >= 0).all()
    assert w not in opt.state


def test_first_moment_follows_the_rotation():
    model, opt, x, y = _problem()
    factors = convert_to_low_rank(model, optimizer=opt)
    _step(model, opt, x, y)
    f = factors[1][1]
    m_before = opt.state[f.sigma]["exp_avg"].clone()
    from oialr_search.lowrank._optim_state import replace_parameter

    old = f.sigma
    rot = f.rotate_(beta=0.3)
    assert f.sigma is not old and old.shape == (32, 32)  # a new Parameter; the old one is left as it was
    replace_parameter(opt, old, f.sigma, rot.left, rot.right)
    assert f.rank < 32 and old not in opt.state and any(p is f.sigma for g in opt.param_groups for p in g["params"])
    torch.testing.assert_close(opt.state[f.sigma]["exp_avg"], rot.left.T @ m_before @ rot.right)
    assert opt.state[f.sigma]["exp_avg_sq"].shape == (f.rank, f.rank)
    _step(model, opt, x, y)  # AdamW accepts the resized state


def _clone(model, opt):
    m = copy.deepcopy(model)
    o = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01, betas=BETAS)
    o.load_state_dict(opt.state_dict())
    return m, o


def _weights(model):
    return [model[i].weight.detach().clone() for i in (0, 2, 4)]


def test_loss_continuity_at_the_switch():
    """Late in training, the first low-rank steps are about as large as full-rank ones and the
    loss follows the full-rank curve; zeroed moments with a kept step count (the reference
    implementation) make the first update several times too large."""
    model, opt, x, y = _problem()
    w0 = _weights(model)

    dense, dense_opt = _clone(model, opt)
    dense_losses = [_step(dense, dense_opt, x, y) for _ in range(3)]
    ours, ours_opt = _clone(model, opt)
    convert_to_low_rank(ours, optimizer=ours_opt)
    our_losses = [_step(ours, ours_opt, x, y) for _ in range(3)]
    ref, ref_opt = _clone(model, opt)
    convert_to_low_rank(ref, optimizer=ref_opt)
    for p in ref_opt.state:
        ref_opt.state[p]["exp_avg"].zero_()
        ref_opt.state[p]["exp_avg_sq"].zero_()
    _step(ref, ref_opt, x, y)

    def moved(m):
        return sum((a - b).norm().item() for a, b in zip(_weights(m), w0))

    dense_move, our_move, ref_move = moved(dense), moved(ours), moved(ref)
    assert 0.3 * dense_move < our_move < 1.5 * dense_move
    assert ref_move > 3 * dense_move
    for ours_l, dense_l in zip(our_losses, dense_losses):
        assert abs(ours_l - dense_l) <= 0.05 * dense_l + 1e-4
