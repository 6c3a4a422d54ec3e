"""Rotation, truncation, stability and the cost model of a single factor."""

import math

import torch

from oialr_search.lowrank import LowRankWeight, ceil_layers


def _trained_factor(m=12, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = LowRankWeight(torch.randn(m, n, generator=g))
    with torch.no_grad():  # a Σ that is no longer diagonal, as after training
        f.sigma.add_(0.3 * torch.randn(f.rank, f.rank, generator=g))
    return f


def test_rotation_without_truncation_leaves_function_unchanged():
    f = _trained_factor()
    x = torch.randn(5, 8)
    before = f.linear(x, None).detach()
    w_before = f.materialize().detach()
    rot = f.rotate_(beta=0.0)
    assert rot.new_rank == rot.old_rank == 8
    torch.testing.assert_close(f.materialize(), w_before, atol=1e-5, rtol=0)
    torch.testing.assert_close(f.linear(x, None), before, atol=1e-5, rtol=0)
    sigma = f.sigma.detach()
    torch.testing.assert_close(sigma, torch.diag(torch.diagonal(sigma)))  # Σ is diagonal again
    torch.testing.assert_close(f.U.T @ f.U, torch.eye(8), atol=1e-5, rtol=0)  # bases still orthonormal
    torch.testing.assert_close(f.Vh @ f.Vh.T, torch.eye(8), atol=1e-5, rtol=0)


def test_truncation_keeps_exactly_the_values_above_beta():
    f = _trained_factor()
    s = torch.linalg.svdvals(f.sigma.detach())
    beta = float((s[2] + s[3]) / 2 / s[0])  # between the 3rd and 4th singular value
    f.rotate_(beta=beta)
    assert f.rank == int((s >= beta * s[0]).sum()) == 3
    torch.testing.assert_close(torch.diagonal(f.sigma.detach()), s[:3], atol=1e-5, rtol=0)
    # the kept part is the best rank-3 approximation of the previous W
    assert f.U.shape == (12, 3) and f.Vh.shape == (3, 8)


def test_truncation_respects_min_rank_and_never_grows():
    f = _trained_factor()
    f.rotate_(beta=0.99, min_rank=2)
    assert f.rank == 2
    f.rotate_(beta=0.0, min_rank=5)
    assert f.rank == 2


def test_stability_matches_the_definition():
    """tr(Q_prevᵀ Q)/r_prev with Q = U Vᵀ, computed from explicit bases."""
    f = _trained_factor(16, 10)
    f.rotate_(beta=0.0)  # now U Vᵀ is the polar factor
    q_prev = (f.U @ f.Vh).clone()
    r_prev = f.rank
    with torch.no_grad():
        f.sigma.add_(0.2 * torch.randn(f.rank, f.rank))
    rot = f.rotate_(beta=0.2)
    q_now = f.U @ f.Vh
    expected = torch.trace(q_prev.T @ q_now).item() / r_prev
    assert math.isclose(rot.stability, expected, abs_tol=1e-5)
    # and U Vᵀ is the orthogonal (polar) factor of the rank-truncated W
    u, _, vh = torch.linalg.svd(f.materialize(), full_matrices=False)
    torch.testing.assert_close(q_now, u[:, : f.rank] @ vh[: f.rank], atol=1e-4, rtol=0)


def test_stability_is_one_for_an_unchanged_basis():
    f = LowRankWeight(torch.randn(9, 6))
    assert math.isclose(f.rotate_(beta=0.0).stability, 1.0, abs_tol=1e-6)


def test_a_pure_truncation_has_paper_stability_below_one_but_alignment_one():
    """Σ diagonal (the bases are already its singular vectors): the update only cuts the rank. The paper's
    Stability, normalized by the old rank, is new/old; the alignment of the kept directions is 1."""
    f = LowRankWeight(torch.randn(64, 48))
    s = torch.diagonal(f.sigma.detach())
    beta = float((s[36] + s[37]) / 2 / s[0])  # keep 37 of 48
    rot = f.rotate_(beta=beta)
    assert (rot.old_rank, rot.new_rank) == (48, 37)
    assert math.isclose(rot.stability, 37 / 48, abs_tol=1e-5)
    assert math.isclose(rot.alignment, 1.0, abs_tol=1e-5)


def test_alignment_is_the_trace_over_the_new_rank():
    f = _trained_factor(16, 10)
    f.rotate_(beta=0.0)
    q_prev = (f.U @ f.Vh).clone()
    with torch.no_grad():
        f.sigma.add_(0.2 * torch.randn(f.rank, f.rank))
    rot = f.rotate_(beta=0.2)
    trace = torch.trace(q_prev.T @ (f.U @ f.Vh)).item()
    assert math.isclose(rot.alignment, trace / rot.new_rank, abs_tol=1e-5)
    assert math.isclose(rot.stability * rot.old_rank, rot.alignment * rot.new_rank, abs_tol=1e-4)


def test_cost_model_prefers_dense_near_full_rank_and_factorized_at_low_rank():
    f = LowRankWeight(torch.randn(256, 256))
    assert not f.use_factorized(tokens=2048)
    f.resize_(16)
    assert f.use_factorized(tokens=2048)


def test_ceil_layers():
    assert ceil_layers(0.1, 10, 0) == 1  # 0.1·10·1 is 1.0000000000000002 in binary
    assert ceil_layers(0.1, 10, 1) == 2
    assert ceil_layers(0.2, 26, 0) == 6  # ⌈5.2⌉
    assert ceil_layers(0.01, 10, 0) == 1  # p·L < 1 selects one layer, not all
    assert ceil_layers(0.5, 10, 5) == 10
    assert ceil_layers(1.0, 7, 0) == 7


def test_padding_the_rank_for_tensor_cores_changes_neither_output_nor_gradients(monkeypatch):
    # On CUDA the factorized product pads the rank to a multiple of 8 (align=None); here align is
    # forced, so the padded path is checked on the CPU against the unpadded one, on both sides of
    # the split (Σ merged into U for a wide weight, into Vᵀ for a tall one).
    padded = []
    pad = torch.nn.functional.pad
    monkeypatch.setattr(torch.nn.functional, "pad", lambda t, p, *a, **k: padded.append(p) or pad(t, p, *a, **k))
    for m, n in ((12, 20), (20, 12)):
        f = _trained_factor(m, n)
        f.rotate_(beta=1.0, min_rank=5)  # rank 5: padded to 8
        f.forward_mode = "factorized"
        x = torch.randn(7, n, requires_grad=True)
        outputs, grads = [], []
        for align in (1, 8):
            f.align = align
            f.sigma.grad, x.grad = None, None
            out = f.linear(x, torch.ones(m))
            (out * torch.arange(m)).sum().backward()
            outputs.append(out.detach())
            grads.append((f.sigma.grad.clone(), x.grad.clone()))
        assert f.rank == 5 and outputs[1].shape == (7, m)
        torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=0)
        assert f.sigma.grad.shape == (5, 5)
    assert padded == [(0, 3), (0, 0, 0, 3)] * 2  # align 8 padded both sides, align 1 neither


def test_padded_conv_and_inference_mode_and_the_cost_model():
    import pytest
    from torch import nn

    from oialr_search.lowrank import convert_to_low_rank

    conv = nn.Sequential(nn.Conv2d(6, 12, 3, padding=1))
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        dense = conv(x)
    (factor,) = [f for _, f in convert_to_low_rank(conv)]
    factor.forward_mode = "factorized"
    assert factor.rank == 12  # 12 filters over 6·3·3 inputs: padded to 16 intermediate channels
    outputs = []
    for align in (1, 8):
        factor.align = align
        with torch.inference_mode():  # a padded product under inference mode, then training again
            outputs.append(conv(x))
        conv(x).sum().backward()
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs[0], dense, atol=1e-4, rtol=0)
    assert factor.sigma.grad is not None
    # the cost model prices the padded rank: rank 1 costs what rank 8 does once padded
    f = LowRankWeight(torch.randn(14, 14))
    f.rotate_(beta=1.0, min_rank=1)
    assert f.use_factorized(1000, align=1) and not f.use_factorized(1000, align=8)
    f.align = 0
    with pytest.raises(ValueError, match="align must be a positive integer"):
        f.linear(torch.randn(3, 64), None)
