"""Carrying optimizer state across the switch to U Σ Vᵀ and across basis updates.

Decision: the state is *transported* into the new parameterization instead of being reset, and the
step count is kept. Σ's gradient is an exact linear image of W's (G_Σ = Uᵀ G_W V; after a rotation
G_Σ' = Pᵀ G_Σ Q), so a first moment (Adam's ``exp_avg``, SGD's ``momentum_buffer``) maps exactly as
leftᵀ m right. A second moment is an elementwise mean of squares and has no exact image; we use
(left∘left)ᵀ v (right∘right), its expectation when the gradient entries are uncorrelated, which
keeps it positive and on the right scale. With both moments on scale, keeping the step count keeps
Adam's bias correction consistent, so the first low-rank updates are as large as the last
full-rank ones. (The reference zeroed the moments but kept the step count: its first updates were
≈(1-β1)/√(1-β2) ≈ 3× too large.) Unknown per-parameter state is dropped, i.e. that optimizer
restarts from scratch for Σ.
"""

from __future__ import annotations

import torch
from torch import Tensor

FIRST_MOMENTS = ("exp_avg", "momentum_buffer")
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")


def _transport(state: dict, shape: torch.Size, left: Tensor, right: Tensor) -> dict:
    """Map per-parameter state of a (…)-shaped weight onto leftᵀ (·) right."""
    new = {}
    for key, value in state.items():
        if not (isinstance(value, Tensor) and value.shape == shape and value.dim() > 0):
            new[key] = value  # step counters and scalars
            continue
        mat = value.reshape(left.shape[0], right.shape[0])
        if key in FIRST_MOMENTS:
            new[key] = (left.T @ mat @ right).contiguous()
        elif key in SECOND_MOMENTS:
            new[key] = ((left * left).T @ mat @ (right * right)).contiguous()
        else:
            return {}
    return new


@torch.no_grad()
def replace_parameter(optimizer: torch.optim.Optimizer | None, old: Tensor, new: Tensor, left: Tensor,
                      right: Tensor) -> bool:
    """Put ``new`` in ``old``'s place (same group, same position) and transport its state: at the switch
    (W → Σ) and at every basis update (Σ → leftᵀ Σ right, a new Parameter of the new rank). Returns
    whether ``optimizer`` trained ``old``; ``old`` keeps no gradient either way."""
    old.grad = None  # whatever still holds ``old`` (a graph alive across an update) need not keep it too
    if optimizer is None:
        return False
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if state:
                    optimizer.state[new] = _transport(state, old.shape, left, right)
                return True
    return False
