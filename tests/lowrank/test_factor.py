"""Rotation, truncation, stability and the cost model of a single factor."""

import math

import pytest
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


def test_padded_conv_and_inference_mode_and_the_cost_model(monkeypatch):
    import pytest
    from torch import nn

    from oialr_search.lowrank import convert_to_low_rank

    pads = []
    pad = torch.nn.functional.pad
    monkeypatch.setattr(torch.nn.functional, "pad", lambda t, p, *a, **k: pads.append(p) or pad(t, p, *a, **k))
    # wide (12 filters over 6·3·3 inputs: rank 12, padded to 16) and tall (64 filters over 4: rank 4 → 8)
    for conv, x in ((nn.Sequential(nn.Conv2d(6, 12, 3, padding=1)), torch.randn(2, 6, 8, 8)),
                    (nn.Sequential(nn.Conv2d(4, 64, 1)), torch.randn(2, 4, 5, 5))):
        with torch.no_grad():
            dense = conv(x)
        (factor,) = [f for _, f in convert_to_low_rank(conv)]
        factor.forward_mode = "factorized"
        x.requires_grad_(True)
        outputs, grads = [], []
        for align in (1, 8):
            factor.align = align
            pads.clear()
            with torch.inference_mode():  # a padded product under inference mode, then training again
                outputs.append(conv(x.detach()))
            assert len(pads) == (2 if align == 8 else 0)
            factor.sigma.grad, x.grad = None, None
            (conv(x) * torch.arange(conv[0].out_channels).view(1, -1, 1, 1)).sum().backward()
            grads.append((factor.sigma.grad.clone(), x.grad.clone()))
        torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(outputs[0], dense, atol=1e-4, rtol=0)
        torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=0)
    # the cost model prices the padded rank, and the layer asks it so: rank 1 costs what rank 8 does
    f = LowRankWeight(torch.randn(14, 14))
    f.rotate_(beta=1.0, min_rank=1)
    assert f.use_factorized(1000, align=1) and not f.use_factorized(1000, align=8)
    built = []
    materialize = LowRankWeight.materialize
    monkeypatch.setattr(LowRankWeight, "materialize", lambda self: built.append(1) or materialize(self))
    f.align = 8
    f.linear(torch.randn(1000, 14), None)
    assert built == [1]  # padded, rank 1 costs rank 8: the dense path
    f.align = 1
    f.linear(torch.randn(1000, 14), None)
    assert built == [1]  # unpadded: factorized, W not built
    for bad in (0, 8.0, True):
        f.align = bad
        with pytest.raises(ValueError, match="align must be a positive integer"):
            f.linear(torch.randn(3, 14), None)


def test_conv_cost_model_counts_output_positions_once_for_non_zero_padding_modes():
    from torch import nn

    from oialr_search.lowrank import LowRankConv

    conv = LowRankConv(nn.Conv2d(3, 8, 3, padding=4, padding_mode="reflect"))
    x = torch.randn(1, 3, 10, 10)
    out = conv(x)
    padded = torch.nn.functional.pad(x, conv._reversed_padding_repeated_twice, mode="reflect")
    assert conv._out_positions(padded, 0) == out.shape[-1] * out.shape[-2] == 256


@pytest.fixture
def linear_calls(monkeypatch):
    """The F.linear calls made from here on (each one product)."""
    calls = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a, **k: calls.append(1) or linear(*a, **k))
    return calls


def test_sigma_apart_or_merged_the_factorized_product_computes_the_dense_one(linear_calls):
    # A dense reference: F.linear(x, U Σ Vᵀ) with the same Σ, and its gradients. Σ goes apart (three
    # products) when 3·r' < min(m, n), else it is merged into the narrower side (two products), padded or not.
    calls = linear_calls
    for m, n, rank, align, apart in ((40, 56, 5, 1, True), (56, 40, 5, 8, True), (40, 56, 14, 1, False),
                                     (56, 40, 13, 8, False), (40, 56, 16, 8, False), (42, 56, 14, 1, False)):
        f = _trained_factor(m, n)
        f.rotate_(beta=1.0, min_rank=rank)
        with torch.no_grad():
            f.sigma.add_(0.1 * torch.randn(rank, rank))  # not diagonal: a transposed Σ would show
        f.forward_mode, f.align = "factorized", align
        assert f.sigma_apart(align) is apart
        x = torch.randn(9, n, requires_grad=True)
        bias, weights = torch.randn(m), torch.randn(9, m)
        calls.clear()
        out = f.linear(x, bias)
        assert len(calls) == (3 if apart else 2)
        (out * weights).sum().backward()
        got = out.detach(), x.grad.clone(), f.sigma.grad.clone()
        sigma = f.sigma.detach().clone().requires_grad_(True)
        x.grad = None
        ref = torch.nn.functional.linear(x, f.U @ sigma @ f.Vh, bias)
        (ref * weights).sum().backward()
        torch.testing.assert_close(got, (ref.detach(), x.grad, sigma.grad), atol=1e-5, rtol=1e-5)


def test_sigma_apart_only_where_a_backward_runs_and_under_autocast_it_matches_the_dense_product(linear_calls):
    f = _trained_factor(40, 56)
    f.rotate_(beta=1.0, min_rank=5)
    f.forward_mode = "factorized"
    assert f.sigma_apart(1) and not f.sigma_apart(1, backward=False)
    x = torch.randn(9, 56)
    calls = linear_calls
    f.linear(x, None)
    with torch.no_grad():
        f.linear(x, None)
    f.sigma.requires_grad_(False)
    f.linear(x, None)
    f.sigma.requires_grad_(True)
    assert len(calls) == 3 + 2 + 2  # apart only where Σ's gradient is computed
    dense = x @ f.materialize().detach().T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = f.linear(x, None)  # Σ apart, in bf16
        with torch.no_grad():
            inference = f.linear(x, None)  # Σ merged: no backward to save
    assert out.dtype == inference.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), dense, atol=0.05, rtol=0.02)
    torch.testing.assert_close(inference.float(), dense, atol=0.05, rtol=0.02)
    f.sigma_placement = "Apart"
    with pytest.raises(ValueError, match="sigma_placement must be None, 'apart' or 'merged'"):
        f.linear(x, None)


def test_convolutions_keep_sigma_merged_and_attention_projections_stay_dense_for_the_cost_models():
    from torch import nn

    from oialr_search.lowrank import convert_to_low_rank

    conv_and_linear = dict(convert_to_low_rank(nn.Sequential(nn.Conv2d(64, 64, 1), nn.Flatten(1), nn.Linear(64, 64))))
    attention = dict(convert_to_low_rank(nn.Sequential(nn.MultiheadAttention(64, 4))))
    for f in [*conv_and_linear.values(), *attention.values()]:
        f.rotate_(beta=1.0, min_rank=2)  # far below a third of 64: a linear layer's Σ goes apart
    assert conv_and_linear["0.factor"].sigma_apart() is False  # the conv's two convolutions keep Σ merged
    assert conv_and_linear["2.factor"].sigma_apart() is True
    assert len(attention) == 2 and not any(f.use_factorized(1000) for f in attention.values())  # materialized
