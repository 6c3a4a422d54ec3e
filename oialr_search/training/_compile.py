"""``train.compile``: the training forward under torch.compile, with ranks that change under it.

OIALR changes the model's shapes as it trains: the switch replaces layers, and every basis update that
drops singular values gives Σ, U and Vᵀ a smaller rank. With static shapes each change is a recompile
(tens of seconds on a GPU, more on a CPU), and after ``torch._dynamo.config.recompile_limit`` of them
dynamo silently falls back to eager. So after the switch and every update the rank dimensions are
marked dynamic: one graph serves every rank, and a whole OIALR run compiles about three times (full
rank, the first short batch, the low-rank model), plus once for each update at which a layer moves
from its dense to its factorized product or a linear layer's Σ goes apart
(``LowRankWeight.sigma_apart``), and, under inductor, which specializes a factorized convolution's
rank (its channel count), once for each change of such a rank. Dynamo keeps parameter
shapes static by default, and Σ is a parameter, so that default is lifted while the forward runs.

The model is compiled in place (``nn.Module.compile``): the same module object, the same state_dict
keys, and the DistributedDataParallel wrapper of a multi-rank trial wraps the compiled model as it
wrapped the eager one. Evaluation runs eagerly (other shapes and mode, a small share of the time).
Dynamo and inductor are imported only when compiling: they double the trainer's import time (1.5 s),
which every search rank and every ``train`` would pay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..exceptions import ConfigError
from ..lowrank import LowRankWeight
from ._config import COMPILE_MODES

BACKEND = "inductor"  # the tests swap in "aot_eager": the same graphs and autograd, no code generation
# Graphs a run may compile before dynamo falls back to eager (its default, 8, is too few: besides the
# three above, a layer whose rank falls below the point where its factorized product beats the dense
# one recompiles once, so does one whose Σ goes apart, and so does each rank of a factorized
# convolution under inductor)
RECOMPILE_LIMIT = 64


def _toolchain_errors() -> tuple[type[BaseException], ...]:
    """What a machine that cannot compile raises (no C++ compiler, no or too old Triton): the one error the
    user fixes with train.compile: none. Anything else raised while compiling (a trial's timeout, an
    inductor bug, running out of memory) goes on as itself."""
    import torch._inductor.exc as inductor_exc

    return (inductor_exc.CppCompileError, inductor_exc.InvalidCxxCompiler, inductor_exc.TritonMissing,
            inductor_exc.GPUTooOldForTriton)


class TrainingCompiler:
    """Compiles a model's forward for training per ``mode``, a validated ``train.compile`` (``none``: a
    no-op everywhere). The modes that record CUDA graphs (reduce-overhead, max-autotune) follow OIALR's
    rank changes too: each update gives Σ a new Parameter (see ``LowRankWeight.rotate_``), so a recorded
    backward never meets a gradient accumulator of the old shape; the graphs are recorded anew after it."""

    def __init__(self, *, mode: str) -> None:
        assert mode in COMPILE_MODES, mode
        self.mode = mode

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def compile(self, model: nn.Module) -> None:
        """Compile ``model`` in place; its forward compiles at the first training step. Dynamo's caches
        are emptied first: they are kept per code object (timm's ``VisionTransformer.forward``), so the
        graphs of the trials a search worker trained before would count towards this run's limit."""
        if self.enabled:
            torch.compiler.reset()
            model.compile(backend=BACKEND, mode=None if self.mode == "default" else self.mode)
            self.shapes_changed(model)

    def shapes_changed(self, model: nn.Module) -> None:
        """After the OIALR switch, a basis update or loading a checkpoint's ranks: mark every factor's
        rank dimensions dynamic (the marks belong to the tensors, which an update replaces)."""
        if not self.enabled:
            return
        import torch._dynamo

        for module in model.modules():
            if isinstance(module, LowRankWeight):
                # "maybe": a backend may still specialize a rank (inductor's convolutions take static
                # channel counts), which then recompiles when that rank changes instead of failing
                torch._dynamo.maybe_mark_dynamic(module.U, 1)
                torch._dynamo.maybe_mark_dynamic(module.Vh, 0)
                torch._dynamo.maybe_mark_dynamic(module.sigma, 0)
                torch._dynamo.maybe_mark_dynamic(module.sigma, 1)

    def training(self) -> contextlib.AbstractContextManager[None]:
        """Around a training forward and backward: Σ's marks honoured, and a backend that cannot compile
        (no C++ compiler, no Triton for the GPU) reported as the setting to change."""
        return self._compiling() if self.enabled else contextlib.nullcontext()

    @contextlib.contextmanager
    def _compiling(self) -> Iterator[None]:
        import torch._dynamo

        try:
            with torch._dynamo.config.patch(force_parameter_static_shapes=False, recompile_limit=RECOMPILE_LIMIT):
                yield
        except torch._dynamo.exc.TorchDynamoException as exc:  # TritonMissing comes unwrapped
            chain = _causes(exc)
            toolchain = next((e for e in chain if isinstance(e, _toolchain_errors())), None)
            if toolchain is None:
                if isinstance(chain[-1], torch._dynamo.exc.TorchDynamoException):
                    raise
                raise chain[-1] from None  # as if raised eagerly: a trial's timeout stays a timeout
            lines = str(toolchain).strip().splitlines()
            why = f"{type(toolchain).__name__}: {lines[0][:300] if lines else ''}"
            backend = getattr(BACKEND, "__name__", BACKEND)
            raise ConfigError(f"train.compile: torch.compile ({backend}, mode {self.mode}) could not build its code "
                              f"on this machine ({why}); set train.compile: none") from exc

    def eager(self) -> contextlib.AbstractContextManager[None]:
        """Around an evaluation: the compiled model runs its eager forward."""
        return torch.compiler.set_stance("force_eager") if self.enabled else contextlib.nullcontext()


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps, innermost last: dynamo's ``inner_exception``, else ``__cause__``, else
    for dynamo's internal error the exception it was raised over (``from None``: an exception raised
    while tracing, such as a trial's timeout from its alarm signal, is re-raised in that form)."""
    import torch._dynamo

    chain = [exc]
    while True:
        last = chain[-1]
        inner = getattr(last, "inner_exception", None) or last.__cause__
        if inner is None and isinstance(last, torch._dynamo.exc.InternalTorchDynamoError):
            inner = last.__context__
        if inner is None or inner in chain:
            return chain
        chain.append(inner)
