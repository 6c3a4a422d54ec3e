"""The deployable form of an OIALR model: plain torch layers, no dependency on this package (DESIGN.md §9).

Per factor W = U Σ Vᵀ (m×n, rank r) of a linear layer: ``Linear(n, r, bias=False)`` holding Vᵀ, then
``Linear(r, m)`` holding U Σ with the original bias, in an ``nn.Sequential``; of a convolution: the
``ConvNd(in, r, kernel)`` of Vᵀ's r filters (stride, padding, dilation, padding mode there), then a 1×1
``ConvNd(r, out)`` holding U Σ with the bias. Where the pair does not pay, r·(m+n) ≥ m·n, the layer is
one dense ``Linear``/``ConvNd`` holding W instead. ``nn.MultiheadAttention`` layers come back as plain
``nn.MultiheadAttention`` with dense projections: its attention kernel takes the weight matrices
themselves (timm's ViTs use ``nn.Linear`` projections, which are factorized).
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import torch
from torch import Tensor, nn

from .._files import atomic_writer
from ._convert import _set_submodule
from ._factor import LowRankWeight
from ._layers import LowRankConv, LowRankLinear, LowRankMultiheadAttention

_LOW_RANK = (LowRankLinear, LowRankConv, LowRankMultiheadAttention)


def factor_pays(factor: LowRankWeight) -> bool:
    """Whether the two-layer form of ``factor`` has fewer weights than the dense one: r·(m+n) < m·n."""
    m, n, r = factor.out_features, factor.in_features, factor.rank
    return r * (m + n) < m * n


def _param(value: Tensor) -> nn.Parameter:
    return nn.Parameter(value.detach().clone().contiguous())


def _linear(layer: LowRankLinear) -> nn.Module:
    f, bias = layer.factor, layer.bias
    like = {"device": f.sigma.device, "dtype": f.sigma.dtype}
    if not factor_pays(f):
        dense = nn.Linear(f.in_features, f.out_features, bias=bias is not None, **like)
        dense.weight = _param(f.materialize())
        if bias is not None:
            dense.bias = _param(bias)
        return dense
    first = nn.Linear(f.in_features, f.rank, bias=False, **like)
    second = nn.Linear(f.rank, f.out_features, bias=bias is not None, **like)
    first.weight = _param(f.Vh)
    second.weight = _param(f.U @ f.sigma)
    if bias is not None:
        second.bias = _param(bias)
    return nn.Sequential(first, second)


def _conv(layer: LowRankConv) -> nn.Module:
    f, bias, dims = layer.factor, layer.bias, layer.dims
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    like = {"device": f.sigma.device, "dtype": f.sigma.dtype}
    shape = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
             "padding_mode": layer.padding_mode}
    if not factor_pays(f):
        dense = conv(layer.in_channels, layer.out_channels, layer.kernel_size, bias=bias is not None, **shape, **like)
        dense.weight = _param(layer.weight)
        if bias is not None:
            dense.bias = _param(bias)
        return dense
    first = conv(layer.in_channels, f.rank, layer.kernel_size, bias=False, **shape, **like)
    second = conv(f.rank, layer.out_channels, 1, bias=bias is not None, **like)
    first.weight = _param(f.Vh.reshape(f.rank, layer.in_channels, *layer.kernel_size))
    second.weight = _param((f.U @ f.sigma).reshape(layer.out_channels, f.rank, *([1] * dims)))
    if bias is not None:
        second.bias = _param(bias)
    return nn.Sequential(first, second)


def _attention(layer: LowRankMultiheadAttention) -> nn.MultiheadAttention:
    like = {"device": next(layer.parameters()).device, "dtype": next(layer.parameters()).dtype}
    out_bias = layer.out_proj.bias
    mha = nn.MultiheadAttention(layer.embed_dim, layer.num_heads, dropout=layer.dropout,
                                bias=layer.in_proj_bias is not None or out_bias is not None,
                                add_bias_kv=layer.bias_k is not None, add_zero_attn=layer.add_zero_attn,
                                kdim=layer.kdim, vdim=layer.vdim, batch_first=layer.batch_first, **like)
    names = ["in_proj"] if layer._qkv_same_embed_dim else ["q_proj", "k_proj", "v_proj"]
    for name in names:
        setattr(mha, f"{name}_weight", _param(layer._in_weight(name)))
    mha.in_proj_bias = _param(layer.in_proj_bias) if layer.in_proj_bias is not None else None
    mha.out_proj.weight = _param(layer.out_proj.weight)
    mha.out_proj.bias = _param(out_bias) if out_bias is not None else None
    if layer.bias_k is not None:
        mha.bias_k, mha.bias_v = _param(layer.bias_k), _param(layer.bias_v)
    return mha


def _plain(layer: nn.Module) -> nn.Module:
    if isinstance(layer, LowRankLinear):
        return _linear(layer)
    if isinstance(layer, LowRankConv):
        return _conv(layer)
    return _attention(layer)


@torch.no_grad()
def compact_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (converted to low rank by OIALR, or not) made of plain torch layers only, computing
    the same function to float precision: see the module docstring. ``model`` is left as it is; the copy
    keeps its train/eval mode."""
    out = copy.deepcopy(model)
    replaced: list[str] = []
    for name, module in list(out.named_modules()):
        if not isinstance(module, _LOW_RANK) or any(name.startswith(f"{r}.") for r in replaced):
            continue  # (an attention layer's out_proj is rebuilt with the attention layer)
        if not name:
            return _plain(module).train(module.training)
        plain = _plain(module).train(module.training)
        _set_submodule(out, name, plain)
        replaced.append(name)
    return out


def parameter_count(model: nn.Module) -> int:
    """Every number the model stores in parameters and in low-rank bases (U, Vᵀ), i.e. what a file of it holds."""
    bases = sum(m.U.numel() + m.Vh.numel() for m in model.modules() if isinstance(m, LowRankWeight))
    return sum(p.numel() for p in model.parameters()) + bases


def dense_parameter_count(model: nn.Module) -> int:
    """The parameters of the dense model that ``model`` was converted from: every factor counted as its m·n
    weights instead of U, Σ and Vᵀ."""
    factors = [m for m in model.modules() if isinstance(m, LowRankWeight)]
    return (sum(p.numel() for p in model.parameters()) - sum(f.sigma.numel() for f in factors)
            + sum(f.out_features * f.in_features for f in factors))


def export_compact(model: nn.Module, example: Tensor, path: str | Path) -> None:
    """Save ``model`` (a :func:`compact_model`, in eval mode) with ``torch.export`` so that plain PyTorch runs it,
    without this package or timm: ``torch.export.load(path).module()(x)`` (torch warns unless the name ends in
    ``.pt2``; ``torch.export.load(open(path, "rb"))`` does not). ``example`` is one input batch;
    the batch size stays free where the model allows it (else the file takes batches of one only).
    Written atomically (a temporary file, then ``os.replace``)."""
    try:  # a free batch dimension; a model that branches on the batch size cannot have one
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception:  # noqa: BLE001 - torch.export raises many kinds for a shape it cannot keep symbolic
        program = torch.export.export(model, (example[:1],))
    buffer = io.BytesIO()  # (torch.export.save warns about a file name that does not end in .pt2)
    torch.export.save(program, buffer)
    with atomic_writer(path) as fh:
        fh.write(buffer.getbuffer())
