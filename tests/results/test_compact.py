"""Compact exports: plain torch layers (two per factor where that pays, else one dense), loadable without us."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from oialr_search import load_model
from oialr_search.lowrank import (
    LowRankConv,
    LowRankLinear,
    LowRankMultiheadAttention,
    compact_model,
    convert_to_low_rank,
    dense_parameter_count,
    export_compact,
    factor_pays,
    low_rank_factors,
    parameter_count,
)
from oialr_search.training import create_model

from ._study import cli, kept_files, trials

LOW_RANK = (LowRankLinear, LowRankConv, LowRankMultiheadAttention)


def _with_ranks(model: nn.Module, rank: int | None) -> nn.Module:
    """``model`` converted to U Σ Vᵀ; every factor cut to ``rank`` (None: full rank) with a random Σ, so the
    compact copy is compared on a model whose factors are not the dense weights'."""
    convert_to_low_rank(model)
    with torch.no_grad():
        for _, f in low_rank_factors(model):
            if rank is not None:
                f.U, f.Vh = f.U[:, :rank].contiguous(), f.Vh[:rank].contiguous()
                f.sigma.data = f.sigma.data[:rank, :rank].contiguous()
            f.sigma.add_(0.05 * torch.randn_like(f.sigma))
    return model.eval()


def _plain_modules(model: nn.Module) -> set[str]:
    return {type(m).__module__.split(".")[0] for m in model.modules()}


class _Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 24, 3, stride=2, padding=1, padding_mode="reflect", bias=False)
        self.c = nn.Conv1d(24, 8, 2, dilation=2)
        self.head = nn.Linear(8 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x)))
        h = self.c(h.flatten(2)[..., :8])
        return self.head(h.flatten(1))


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.cross = nn.MultiheadAttention(16, 2, kdim=8, vdim=12, add_bias_kv=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.attn(x, x, x)
        k, v = torch.ones(5, x.shape[0], 8), torch.ones(5, x.shape[0], 12)
        h2, _ = self.cross(h.transpose(0, 1), k, v)
        return self.out(h2.transpose(0, 1).mean(1))


@pytest.mark.parametrize("build", [
    lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 10)),
    _Convs,
    _Attention,
    lambda: create_model("mini_vit", num_classes=10, in_chans=1, img_size=8, embed_dim=24, depth=2, num_heads=3),
], ids=["mlp", "convs", "attention", "mini_vit"])
@pytest.mark.parametrize("rank", [2, None], ids=["small-ranks", "full-ranks"])
def test_compact_model_computes_the_low_rank_models_function_with_plain_layers(build, rank):
    model = _with_ranks(build(), rank)
    x = torch.randn(2, 3, 8, 8) if isinstance(model, _Convs) else \
        torch.randn(2, 6, 16) if isinstance(model, _Attention) else torch.randn(2, 1, 8, 8)
    compact = compact_model(model)
    assert not any(isinstance(m, LOW_RANK) for m in compact.modules())
    assert "oialr_search" not in _plain_modules(compact)  # nothing of this package is left in it
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, LOW_RANK) for m in model.modules())  # the model itself is left as it was
    factors = [f for _, f in low_rank_factors(model)]
    if rank is None:  # full rank never pays: every factor becomes its dense layer again
        assert not any(factor_pays(f) for f in factors)
        assert parameter_count(compact) == dense_parameter_count(model)
    else:
        assert all(map(factor_pays, factors)) and parameter_count(compact) < dense_parameter_count(model)


def test_break_even_rank_picks_two_layers_or_one():
    # W is 6×3: r·(6+3) < 18 pays for r = 1; at r = 2, 18 ≥ 18, the dense layer is as small
    for rank, expected in ((1, nn.Sequential), (2, nn.Linear), (3, nn.Linear)):
        model = _with_ranks(nn.Sequential(nn.Linear(3, 6)), rank)
        layer = compact_model(model)[0]
        assert type(layer) is expected
        if expected is nn.Sequential:
            first, second = layer
            assert (first.in_features, first.out_features, first.bias) == (3, 1, None)
            assert (second.in_features, second.out_features) == (1, 6) and second.bias is not None
            f = model[0].factor
            torch.testing.assert_close(first.weight, f.Vh)
            torch.testing.assert_close(second.weight, f.U @ f.sigma)
            torch.testing.assert_close(second.bias, model[0].bias)
        x = torch.randn(4, 3)
        torch.testing.assert_close(layer(x), model(x))


def test_export_compact_takes_any_batch_size(tmp_path):
    model = _with_ranks(create_model("mini_vit", num_classes=10, in_chans=1, img_size=8, embed_dim=24, depth=1,
                                     num_heads=3), 3)
    compact = compact_model(model)
    export_compact(compact, torch.randn(2, 1, 8, 8), tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # written atomically: no temporary file left
    with open(tmp_path / "c.pt", "rb") as fh:
        loaded = torch.export.load(fh).module()
    with torch.no_grad():
        for batch in (1, 2, 7):
            x = torch.randn(batch, 1, 8, 8)
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def test_compact_export_loads_in_plain_torch_and_matches_the_low_rank_model(front_study, tmp_path):
    rows = {r["number"]: r for r in trials(front_study, "front")}
    number = min(kept_files(front_study / "oialr_search.work" / "front"), key=lambda n: rows[n]["metrics"]
                 ["trainable_fraction"])  # the most truncated kept trial
    weights, compact_file = tmp_path / "model.pt", tmp_path / "compact.pt2"
    proc = cli(["export", "--study", "front", "--trial", str(number), "--weights", str(weights)], front_study)
    assert proc.returncode == 0, proc.stderr
    proc = cli(["export", "--study", "front", "--trial", str(number), "--weights", str(compact_file), "--compact"],
               front_study)
    assert proc.returncode == 0, proc.stderr
    model = load_model(None, weights)
    factors = [f for _, f in low_rank_factors(model)]
    dense, compact_params = dense_parameter_count(model), parameter_count(compact_model(model))
    assert f"wrote {compact_file}: {compact_params:,} parameters (the dense model has {dense:,}" in proc.stdout
    assert f"{compact_file.stat().st_size / 1e6:.2f} MB" in proc.stdout
    if any(factor_pays(f) for f in factors):  # the trial ended below the break-even rank somewhere
        assert compact_params < dense
    else:
        assert compact_params == dense
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    # a fresh interpreter that never imports this package (nor timm): plain torch loads and runs the file
    code = (
        "import sys, torch\n"
        f"model = torch.export.load(open({str(compact_file)!r}, 'rb')).module()\n"
        f"data = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "with torch.no_grad():\n"
        "    out, one = model(data['x']), model(data['x'][:1])\n"
        "torch.testing.assert_close(out, data['expected'], rtol=1e-5, atol=1e-5)\n"
        "torch.testing.assert_close(one, data['expected'][:1], rtol=1e-5, atol=1e-5)\n"
        "assert 'oialr_search' not in sys.modules and 'timm' not in sys.modules, 'imported'\n"
        "print('params', sum(p.numel() for p in model.parameters()))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"params {compact_params}" in run.stdout


def test_compact_without_a_weights_file_is_refused(tmp_path):
    proc = cli(["export", "--study", "front", "--compact", "-o", str(tmp_path / "t.yaml")], tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["oialr-search export: error: --compact writes the trained model as "
                                                "plain PyTorch layers to the --weights file: give --weights "
                                                "compact.pt2 too"]
    assert list(tmp_path.iterdir()) == []
