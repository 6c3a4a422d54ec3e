"""``train.compile``: the training forward under torch.compile, with ranks that change under it.

OIALR changes the model's shapes as it trains: the switch replaces layers, and every basis update that
drops singular values gives Σ, U and Vᵀ a smaller rank. With static shapes each change is a recompile
(tens of seconds on a GPU, more on a CPU), and after ``torch._dynamo.config.recompile_limit`` of them
dynamo silently falls back to eager. So after the switch and every update the rank dimensions are
marked dynamic: one graph serves every rank, and a whole OIALR run compiles about three times (full
rank, the first short batch, the low-rank model; inductor still specializes the rank of a factorized
convolution, whose changes recompile). Dynamo keeps parameter shapes static by default,
and Σ is a parameter, so that default is lifted while the forward runs.

The model is compiled in place (``nn.Module.compile``): the same module object, the same state_dict
keys, and the DistributedDataParallel wrapper of a multi-rank trial wraps the compiled model as it
wrapped the eager one. Evaluation runs eagerly (other shapes and mode, a small share of the time).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch._dynamo
from torch import nn

from ..exceptions import ConfigError
from ..lowrank import LowRankWeight
from ._config import COMPILE_MODES

BACKEND = "inductor"  # the tests swap in "aot_eager": the same graphs and autograd, no code generation


class TrainingCompiler:
    """Compiles a model's forward for training per ``mode``, a validated ``train.compile`` (``none``: a
    no-op everywhere)."""

    def __init__(self, *, mode: str) -> None:
        assert mode in COMPILE_MODES, mode
        self.mode = mode

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def compile(self, model: nn.Module) -> None:
        """Compile ``model`` in place; its forward compiles at the first training step."""
        if self.enabled:
            model.compile(backend=BACKEND, mode=None if self.mode == "default" else self.mode)
            self.shapes_changed(model)

    def shapes_changed(self, model: nn.Module) -> None:
        """After the OIALR switch, a basis update or loading a checkpoint's ranks: mark every factor's
        rank dimensions dynamic (the marks belong to the tensors, which an update replaces)."""
        if not self.enabled:
            return
        for module in model.modules():
            if isinstance(module, LowRankWeight):
                # "maybe": a backend may still specialize a rank (inductor's convolutions take static
                # channel counts), which then recompiles when that rank changes instead of failing
                torch._dynamo.maybe_mark_dynamic(module.U, 1)
                torch._dynamo.maybe_mark_dynamic(module.Vh, 0)
                torch._dynamo.maybe_mark_dynamic(module.sigma, 0)
                torch._dynamo.maybe_mark_dynamic(module.sigma, 1)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Around a training forward: Σ's marks honoured, and a backend that cannot compile (no C++
        compiler, no Triton for the GPU) reported as the setting to change."""
        if not self.enabled:
            yield
            return
        try:
            with torch._dynamo.config.patch(force_parameter_static_shapes=False):
                yield
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            cause = getattr(exc, "inner_exception", None) or exc
            lines = str(cause).strip().splitlines()
            why = f"{type(cause).__name__}: {lines[0][:300] if lines else ''}"
            backend = getattr(BACKEND, "__name__", BACKEND)
            raise ConfigError(f"train.compile: torch.compile ({backend}, mode {self.mode}) failed on this machine "
                              f"({why}); set train.compile: none") from exc

    def eager(self) -> contextlib.AbstractContextManager[None]:
        """Around an evaluation: the compiled model runs its eager forward."""
        return torch.compiler.set_stance("force_eager") if self.enabled else contextlib.nullcontext()
