"""Low-rank replacements for nn.Linear, nn.Conv1d/2d and nn.MultiheadAttention.

Each keeps the original bias Parameter object (so it goes on training and stays in the optimizer)
and exposes a read-only ``weight`` that materializes W, so code that reads ``layer.weight`` (timm
helpers, torch's transformer fast-path checks) keeps working.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ._factor import LowRankWeight


class LowRankLinear(nn.Module):
    """nn.Linear with W = U Σ Vᵀ."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.factor = LowRankWeight(linear.weight)
        self.bias = linear.bias

    @property
    def weight(self) -> Tensor:
        return self.factor.materialize()

    def forward(self, x: Tensor) -> Tensor:
        return self.factor.linear(x, self.bias)

    def factors(self) -> list[tuple[str, LowRankWeight]]:
        return [("", self.factor)]


class LowRankConv(nn.Module):
    """nn.Conv1d/nn.Conv2d (groups=1) with the kernel viewed as out × (in·k…) = U Σ Vᵀ.

    Factorized forward: a convolution with the r filters of Vᵀ (stride, padding and dilation
    there), then a 1×1 convolution with U (and Σ merged into one side).
    """

    def __init__(self, conv: nn.Conv1d | nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("grouped convolutions are not converted")
        self.dims = conv.weight.dim() - 2
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.padding_mode = conv.padding_mode
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
        self.factor = LowRankWeight(conv.weight.reshape(conv.out_channels, -1))
        self.factor.sigma_placement = "merged"  # what the two convolutions below do (the cost models read it)
        self.bias = conv.bias
        self._conv = F.conv1d if self.dims == 1 else F.conv2d

    @property
    def weight(self) -> Tensor:
        return self.factor.materialize().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def _out_positions(self, x: Tensor, padding: str | tuple[int, ...] | int) -> int:
        """Output positions per image of the convolution of ``x`` with ``padding`` (0 once ``x`` was
        padded by hand for a non-zeros padding mode)."""
        spatial = x.shape[-self.dims :]
        if isinstance(padding, str):  # "same" keeps the size, "valid" only shrinks it a bit
            return math.prod(max(1, s // st) for s, st in zip(spatial, self.stride))
        padding = (padding,) * self.dims if isinstance(padding, int) else padding
        out = 1
        for s, k, st, p, d in zip(spatial, self.kernel_size, self.stride, padding, self.dilation):
            out *= max(1, (s + 2 * p - d * (k - 1) - 1) // st + 1)
        return out

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        batch = x.shape[0] if x.dim() == self.dims + 2 else 1
        align = self.factor.alignment(x.device)  # the r intermediate channels, padded for tensor cores
        if not self.factor.use_factorized(batch * self._out_positions(x, padding), align=align):
            return self._conv(x, self.weight, self.bias, self.stride, padding, self.dilation)
        left, right = self.factor.aligned_split(align)
        h = self._conv(x, right.reshape(-1, self.in_channels, *self.kernel_size), None, self.stride, padding,
                       self.dilation)
        return self._conv(h, left.reshape(self.out_channels, -1, *([1] * self.dims)), self.bias)

    def factors(self) -> list[tuple[str, LowRankWeight]]:
        return [("", self.factor)]


class _OutProjection(nn.Module):
    """The dense out-projection of an attention layer whose output side was kept full-rank."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias


class LowRankMultiheadAttention(nn.Module):
    """nn.MultiheadAttention with low-rank input and output projections.

    The input projection (q, k, v stacked, 3E×E; or three separate ones when kdim/vdim differ) and
    the output projection are factors. The attention itself runs through
    ``F.multi_head_attention_forward`` with materialized weights, which keeps every option of the
    original (masks, need_weights, bias_k/v, add_zero_attn, dropout, batch_first) exact; these
    projections therefore always use the dense product.
    """

    def __init__(self, mha: nn.MultiheadAttention, *, convert_in: bool = True, convert_out: bool = True) -> None:
        super().__init__()
        for name in ("embed_dim", "kdim", "vdim", "_qkv_same_embed_dim", "num_heads", "dropout", "batch_first",
                     "head_dim", "add_zero_attn"):
            setattr(self, name, getattr(mha, name))
        self.bias_k, self.bias_v, self.in_proj_bias = mha.bias_k, mha.bias_v, mha.in_proj_bias
        self.in_factors = nn.ModuleDict()
        self._dense_in = nn.ParameterDict()
        names = ["in_proj"] if mha._qkv_same_embed_dim else ["q_proj", "k_proj", "v_proj"]
        for name in names:
            w = getattr(mha, f"{name}_weight")
            if convert_in:
                self.in_factors[name] = LowRankWeight(w)
            else:
                self._dense_in[name] = w
        self.out_proj = LowRankLinear(mha.out_proj) if convert_out else _OutProjection(mha.out_proj)
        for _, factor in self.factors():  # always materialized below (the cost models read it)
            factor.forward_mode = "dense"

    # torch's TransformerEncoderLayer eval fast path calls this on its self_attn
    merge_masks = nn.MultiheadAttention.merge_masks

    def _in_weight(self, name: str) -> Tensor | None:
        if name in self.in_factors:
            return self.in_factors[name].materialize()
        return self._dense_in.get(name)

    @property
    def in_proj_weight(self) -> Tensor | None:
        return self._in_weight("in_proj")

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        separate = not self._qkv_same_embed_dim
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, self.out_proj.weight, self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, use_separate_proj_weight=separate,
            q_proj_weight=self._in_weight("q_proj"), k_proj_weight=self._in_weight("k_proj"),
            v_proj_weight=self._in_weight("v_proj"), average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights

    def factors(self) -> list[tuple[str, LowRankWeight]]:
        found = [(f"in_factors.{n}", f) for n, f in self.in_factors.items()]
        if isinstance(self.out_proj, LowRankLinear):
            found.append(("out_proj.factor", self.out_proj.factor))
        return found
