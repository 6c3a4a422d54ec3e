"""The converted model computes what the dense one did; structure and gradients are right."""

import pytest
import torch
from torch import nn

from oialr_search._compat import ensure_torchvision
from oialr_search.lowrank import (
    LowRankConv,
    LowRankLinear,
    LowRankMultiheadAttention,
    LowRankWeight,
    convert_to_low_rank,
    eligible_weights,
)

ATOL = 1e-4


def _same_function(model: nn.Module, *inputs, atol=ATOL, **convert_kwargs):
    model.eval()
    with torch.no_grad():
        before = model(*inputs)
        factors = convert_to_low_rank(model, **convert_kwargs)
        after = model(*inputs)
    before = before[0] if isinstance(before, tuple) else before
    after = after[0] if isinstance(after, tuple) else after
    scale = before.abs().max().item() + 1e-6
    assert (after - before).abs().max().item() <= atol * max(1.0, scale)
    return factors


@pytest.mark.parametrize("mode", [None, "dense", "factorized"])
def test_linear_and_conv_paths_match_dense(mode, monkeypatch):
    monkeypatch.setattr(LowRankWeight, "forward_mode", mode)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1, padding_mode="reflect", dilation=1), nn.Flatten(),
                          nn.Linear(6 * 8 * 8, 20), nn.Linear(20, 40), nn.Linear(40, 5))
    factors = _same_function(model, torch.randn(4, 3, 16, 16))
    kinds = [type(m) for m in model if not isinstance(m, (nn.ReLU, nn.Flatten))]
    assert kinds == [LowRankConv] * 2 + [LowRankLinear] * 3
    assert len(factors) == 5


def test_conv1d(monkeypatch):
    for mode in ("dense", "factorized"):
        monkeypatch.setattr(LowRankWeight, "forward_mode", mode)
        _same_function(nn.Sequential(nn.Conv1d(4, 12, 5, stride=2), nn.Conv1d(12, 3, 1)), torch.randn(2, 4, 30))


def test_grouped_conv_is_skipped():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1))
    factors = _same_function(model, torch.randn(2, 8, 6, 6))
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[1], LowRankConv)
    assert len(factors) == 1


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention(batch_first):
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    model = nn.ModuleDict({"attn": mha})
    x = torch.randn(3, 5, 16)
    mha.eval()
    with torch.no_grad():
        ref, ref_w = mha(x, x, x)
        convert_to_low_rank(model)
        out, w = model["attn"](x, x, x)
    assert isinstance(model["attn"], LowRankMultiheadAttention)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=ATOL, rtol=0)


def test_multihead_attention_separate_kv_dims_and_masks():
    mha = nn.MultiheadAttention(12, 3, kdim=7, vdim=5, batch_first=True)
    model = nn.ModuleDict({"attn": mha})
    q, k, v = torch.randn(2, 4, 12), torch.randn(2, 6, 7), torch.randn(2, 6, 5)
    pad = torch.tensor([[False] * 5 + [True], [False] * 6])
    mha.eval()
    with torch.no_grad():
        ref, _ = mha(q, k, v, key_padding_mask=pad)
        factors = convert_to_low_rank(model)
        out, _ = model["attn"](q, k, v, key_padding_mask=pad)
    assert [n.rsplit(".", 1)[-1] for n, _ in factors] == ["q_proj", "k_proj", "v_proj", "factor"]
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_transformer_encoder_train_and_eval():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2,
                                enable_nested_tensor=False)
    x = torch.randn(3, 7, 32)
    factors = _same_function(enc, x)
    assert len(factors) == 8  # in_proj, out_proj, linear1, linear2 per layer
    enc.train()
    enc(x).sum().backward()  # training path works too
    assert all(f.sigma.grad is not None for _, f in factors)


def _timm():
    ensure_torchvision()
    import timm

    return timm


def test_timm_vit():
    from oialr_search.training import create_model

    model = create_model("mini_vit", num_classes=10, in_chans=1, img_size=28, embed_dim=24, depth=2, num_heads=2)
    _same_function(model, torch.randn(2, 1, 28, 28))


def test_timm_resnet():
    model = _timm().create_model("resnet10t", num_classes=7, in_chans=3)
    _same_function(model, torch.randn(2, 3, 32, 32))


def test_timm_vgg():
    from timm.models.vgg import VGG

    _timm()
    model = VGG([8, "M", 16, "M", 16], num_classes=4, in_chans=3, mlp_ratio=0.01)
    _same_function(model, torch.randn(2, 3, 32, 32))


def test_keep_first_and_last_layer():
    model = nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 7), nn.Linear(7, 3))
    convert_to_low_rank(model, keep_first_layer=True, keep_last_layer=True)
    assert [type(m) for m in model] == [nn.Linear, LowRankLinear, nn.Linear]


def test_eligible_weights_order_and_attention_names():
    model = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2), nn.Linear(4, 2))
    names = [w.name for w in eligible_weights(model)]
    assert names == ["0.weight", "1.in_proj_weight", "1.out_proj.weight", "2.weight"]


def test_bases_frozen_sigma_trains_biases_kept():
    model = nn.Sequential(nn.Linear(10, 12), nn.GELU(), nn.LayerNorm(12), nn.Linear(12, 3))
    bias0 = model[0].bias
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    factors = convert_to_low_rank(model, optimizer=opt)
    assert model[0].bias is bias0
    optimized = {id(p) for g in opt.param_groups for p in g["params"]}
    for _, f in factors:
        assert isinstance(f.U, torch.Tensor) and not isinstance(f.U, nn.Parameter)
        assert not f.U.requires_grad and not f.Vh.requires_grad
        assert id(f.sigma) in optimized and id(f.U) not in optimized and id(f.Vh) not in optimized
        assert f.sigma.shape == (f.rank, f.rank)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bases = [(f.U.clone(), f.Vh.clone()) for _, f in factors]
    model(torch.randn(8, 10)).pow(2).mean().backward()
    for _, f in factors:
        assert f.U.grad is None and f.Vh.grad is None
    opt.step()
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not change"
    for (_, f), (u, vh) in zip(factors, bases):
        assert torch.equal(f.U, u) and torch.equal(f.Vh, vh)
    assert "0.bias" in before and "2.weight" in before  # a bias and an unconverted norm changed


def test_already_converted_is_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    convert_to_low_rank(model)
    with pytest.raises(RuntimeError, match="already"):
        convert_to_low_rank(model)


def test_tied_and_frozen_weights_stay_dense_and_tied():
    """A weight shared by two modules (a head tied to an embedding) or frozen is not factorized: converting
    one copy would untie them, and the other copy's Σ would never be trained (found in review)."""
    a, b, frozen = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    frozen.weight.requires_grad_(False)
    model = nn.Sequential(a, nn.Tanh(), b, nn.Tanh(), frozen, nn.Tanh(), nn.Linear(8, 3))
    assert [w.name for w in eligible_weights(model)] == ["6.weight"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    convert_to_low_rank(model, optimizer=opt)
    assert [type(m) for m in model[::2]] == [nn.Linear, nn.Linear, nn.Linear, LowRankLinear]
    model(torch.randn(4, 8)).pow(2).sum().backward()
    opt.step()
    assert model[0].weight is model[2].weight  # still one matrix, trained
    attention = nn.MultiheadAttention(4, 2)
    attention.out_proj.weight.requires_grad_(False)
    model = nn.Sequential(nn.Linear(4, 4), attention)
    assert [w.name for w in eligible_weights(model)] == ["0.weight", "1.in_proj_weight"]
    convert_to_low_rank(model)
    assert model[1].out_proj.weight is attention.out_proj.weight  # its frozen side kept as it was


def test_keep_first_and_last_mean_the_models_own_layers_even_when_those_are_frozen_or_tied():
    """A frozen first layer or a head tied to an embedding is dense already; keep_first/keep_last must not
    push the next layer in to dense instead (found in review)."""
    frozen = nn.Linear(4, 4)
    frozen.weight.requires_grad_(False)
    model = nn.Sequential(frozen, nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    convert_to_low_rank(model, keep_first_layer=True, keep_last_layer=True)
    assert [type(m) for m in model] == [nn.Linear, LowRankLinear, LowRankLinear, nn.Linear]
    embed, head = nn.Embedding(6, 4), nn.Linear(4, 6)
    head.weight = embed.weight
    model = nn.Sequential(embed, nn.Linear(4, 4), nn.Linear(4, 4), head)
    convert_to_low_rank(model, keep_last_layer=True)
    assert [type(m) for m in model][1:] == [LowRankLinear, LowRankLinear, nn.Linear]
    assert model[3].weight is model[0].weight


def test_a_weight_derived_from_others_stays_dense():
    """spectral_norm (or weight_norm) makes ``weight`` a computed tensor, no Parameter: the eligibility check
    crashed on it at the switch (found in review); factorizing it would drop the normalization anyway."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.utils.spectral_norm(nn.Linear(8, 8)), nn.ReLU(),
                          nn.Linear(8, 3))
    assert [w.name for w in eligible_weights(model)] == ["0.weight", "4.weight"]
    convert_to_low_rank(model, keep_last_layer=False)
    assert [type(m) for m in model[::2]] == [LowRankLinear, nn.Linear, LowRankLinear]
    assert hasattr(model[2], "weight_orig")  # still spectrally normalized
