"""In-place conversion of any nn.Module to OIALR's low-rank form."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ._factor import LowRankWeight
from ._layers import LowRankConv, LowRankLinear, LowRankMultiheadAttention
from ._optim_state import replace_parameter


@dataclass(frozen=True)
class EligibleWeight:
    """One weight that OIALR may factorize, in module order (input side first)."""

    module_name: str
    weight_name: str  # e.g. "weight", "in_proj_weight", "out_proj.weight"

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.weight_name}" if self.module_name else self.weight_name


def _is_eligible(module: nn.Module, skip_grouped: bool = True) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return True
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.groups == 1 or not skip_grouped
    return type(module) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)


def eligible_weights(model: nn.Module) -> list[EligibleWeight]:
    """The weights OIALR can factorize: Linear, ungrouped Conv1d/2d and attention projections — unless
    tied to another module (a head sharing its embedding's matrix: factorizing one copy would untie them,
    and the other copy's factor would never be trained) or frozen (``requires_grad=False``), which stay
    as they are."""
    return _layer_weights(model, trainable_alone_only=True)


def _layer_weights(model: nn.Module, *, trainable_alone_only: bool) -> list[EligibleWeight]:
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1

    def trainable_alone(module: nn.Module, weight_name: str) -> bool:
        if not trainable_alone_only:
            return True
        w = functools.reduce(getattr, weight_name.split("."), module)
        # a weight derived from others (spectral_norm, weight_norm, parametrizations) is no Parameter: it stays
        return isinstance(w, nn.Parameter) and w.requires_grad and uses.get(id(w)) == 1

    found: list[EligibleWeight] = []
    inside_mha: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside_mha):
            continue  # out_proj of an attention layer belongs to the attention layer
        if not _is_eligible(module):
            continue
        if isinstance(module, nn.MultiheadAttention):
            inside_mha.append(name)
            found += [EligibleWeight(name, w) for w in [*_in_projections(module), "out_proj.weight"]
                      if trainable_alone(module, w)]
        elif trainable_alone(module, "weight"):
            found.append(EligibleWeight(name, "weight"))
    return found


def _in_projections(attention: nn.MultiheadAttention) -> list[str]:
    """The names of an attention layer's input projection weights: one packed, or q, k and v apart."""
    return ["in_proj_weight"] if attention._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight",
                                                                     "v_proj_weight"]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@torch.no_grad()
def convert_to_low_rank(model: nn.Module, *, keep_first_layer: bool = False, keep_last_layer: bool = False,
                        optimizer: torch.optim.Optimizer | None = None) -> list[tuple[str, LowRankWeight]]:
    """Replace every eligible weight W of ``model`` by U Σ Vᵀ, in place.

    The model computes the same function afterwards (to float precision). Σ takes W's place in
    ``optimizer`` (same group, so the same lr and weight decay) with its state transported, see
    ``_optim_state``. Biases stay the same Parameter objects. Returns the factors in module order
    (input side first) with their dotted names.
    """
    if any(isinstance(m, (LowRankLinear, LowRankConv, LowRankMultiheadAttention)) for m in model.modules()):
        raise RuntimeError("model is already converted to low rank")
    weights = eligible_weights(model)
    if any(not w.module_name for w in weights):
        raise ValueError("the model itself is a single layer; wrap it in an nn.Sequential to convert it")
    eligible = {w.name for w in weights}
    # the model's own first and last layers, eligible or not: one that is frozen or tied stays dense anyway,
    # and the flags must not push the next layer in to dense instead (found in review)
    layers = _layer_weights(model, trainable_alone_only=False)
    kept = set()
    if layers and keep_first_layer:
        kept.add(layers[0].name)
    if layers and keep_last_layer:
        kept.add(layers[-1].name)

    done_modules: set[str] = set()
    for ew in weights:
        if ew.module_name in done_modules:
            continue
        module = model.get_submodule(ew.module_name)
        if isinstance(module, nn.MultiheadAttention):
            done_modules.add(ew.module_name)
            # a projection left out of the eligible ones (tied, frozen) or kept dense keeps its side dense
            convert_in = all(f"{ew.module_name}.{w}" in eligible and f"{ew.module_name}.{w}" not in kept
                             for w in _in_projections(module))
            out_name = f"{ew.module_name}.out_proj.weight"
            convert_out = out_name in eligible and out_name not in kept
            if not (convert_in or convert_out):
                continue
            new: nn.Module = LowRankMultiheadAttention(module, convert_in=convert_in, convert_out=convert_out)
            old_params = {"in_proj": module.in_proj_weight, "q_proj": module.q_proj_weight,
                          "k_proj": module.k_proj_weight, "v_proj": module.v_proj_weight,
                          "out_proj.factor": module.out_proj.weight}
        elif ew.name in kept:
            continue
        else:
            new = LowRankLinear(module) if isinstance(module, nn.Linear) else LowRankConv(module)
            old_params = {"": module.weight}
        for local, factor in new.factors():
            old = old_params[local.removeprefix("in_factors.")]
            replace_parameter(optimizer, old, factor.sigma, factor.U, factor.Vh.T)
        _set_submodule(model, ew.module_name, new)
    return low_rank_factors(model)


def low_rank_factors(model: nn.Module) -> list[tuple[str, LowRankWeight]]:
    """The factors of an already converted model, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LowRankWeight)]
