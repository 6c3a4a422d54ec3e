"""The OIALR schedule: switch to U Σ Vᵀ after a delay, then rotate and truncate every f steps."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..exceptions import CheckpointError
from ._config import OIALRConfig
from ._convert import convert_to_low_rank, low_rank_factors
from ._factor import LowRankWeight, Rotation, ceil_layers
from ._optim_state import replace_parameter


@dataclass
class ParameterCounts:
    """Parameter counts relative to the original dense model (DESIGN.md §5, note on counting)."""

    trainable: int
    total: int
    original: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.original

    @property
    def compression(self) -> float:
        return self.total / self.original


def count_parameters(model: nn.Module, original: int | None = None) -> ParameterCounts:
    """Trainable = parameters with requires_grad (Σ's r² included); total adds the frozen U, Vᵀ."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bases = sum(f.U.numel() + f.Vh.numel() for _, f in low_rank_factors(model))
    return ParameterCounts(trainable, params + bases, original if original is not None else params)


@dataclass
class UpdateRecord:
    """What one OIALR event did: the switch (``update`` = -1) or basis update ``update`` = k."""

    step: int
    update: int
    ranks: dict[str, int]
    updated: list[str]
    stability: dict[str, float]
    trainable: int
    total: int
    original: int
    seconds: float
    # per layer: Stability normalized by the new rank (1: the kept directions did not move), beside the
    # paper's ``stability``, normalized by the old rank (which a rank cut alone lowers)
    alignment: dict[str, float] = field(default_factory=dict)
    trainable_fraction: float = field(init=False)
    compression: float = field(init=False)
    mean_stability: float | None = field(init=False)
    mean_alignment: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.trainable_fraction = self.trainable / self.original
        self.compression = self.total / self.original
        self.mean_stability = (sum(self.stability.values()) / len(self.stability)) if self.stability else None
        self.mean_alignment = (sum(self.alignment.values()) / len(self.alignment)) if self.alignment else None

    def to_dict(self) -> dict:
        return asdict(self)


class OIALR:
    """Drives OIALR on a model and its optimizer; call :meth:`before_step` before every step.

    Steps are counted from 0 and only training steps count (evaluation never advances them).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, config: OIALRConfig, *,
                 total_steps: int) -> None:
        config.validate()
        self.model, self.optimizer, self.config = model, optimizer, config
        self.total_steps = total_steps
        self.delay = config.delay_steps(total_steps)
        self.original_parameters = sum(p.numel() for p in model.parameters())
        self.factors: list[tuple[str, LowRankWeight]] = []
        self.converted = False
        self.updates_done = 0
        self.records: list[UpdateRecord] = []

    # -- schedule ------------------------------------------------------------------------------
    def event_due(self, step: int) -> bool:
        """Whether ``before_step(step)`` will switch or update (no side effects)."""
        if not self.config.enabled:
            return False
        if not self.converted:
            return step >= self.delay
        since = step - self.delay
        return since > 0 and since % self.config.update_frequency == 0

    def before_step(self, step: int) -> UpdateRecord | None:
        """Run whatever OIALR event falls on ``step`` (switch or basis update) and return its record."""
        if not self.config.enabled:
            return None
        if not self.converted:
            return self.switch(step) if step >= self.delay else None
        since = step - self.delay
        if since > 0 and since % self.config.update_frequency == 0:
            return self.update(step)
        return None

    def _convert(self) -> None:
        self.factors = convert_to_low_rank(self.model, keep_first_layer=self.config.keep_first_layer,
                                           keep_last_layer=self.config.keep_last_layer, optimizer=self.optimizer)
        self.converted = True

    def switch(self, step: int) -> UpdateRecord:
        start = time.perf_counter()
        self._convert()
        return self._record(step, -1, [], {}, time.perf_counter() - start)

    @torch.no_grad()
    def update(self, step: int) -> UpdateRecord:
        start = time.perf_counter()
        count = ceil_layers(self.config.layer_fraction, len(self.factors), self.updates_done)
        chosen = self.factors[len(self.factors) - count:]
        stability: dict[str, float] = {}
        alignment: dict[str, float] = {}
        for name, factor in chosen:
            rot = self.rotate(factor, self.config.beta, self.config.min_rank)
            stability[name], alignment[name] = rot.stability, rot.alignment
        record = self._record(step, self.updates_done, [n for n, _ in chosen], stability,
                              time.perf_counter() - start, alignment)
        self.updates_done += 1
        return record

    def rotate(self, factor: LowRankWeight, beta: float, min_rank: int = 1) -> Rotation:
        """``factor.rotate_(beta, min_rank)``, with the optimizer training the new Σ in the old one's place."""
        old = factor.sigma
        rot = factor.rotate_(beta, min_rank)
        if not replace_parameter(self.optimizer, old, factor.sigma, rot.left, rot.right):
            # no optimizer of ours trains Σ (OIALR(model, None, ...) and the caller's own optimizer): the
            # values go into the old Parameter, which that optimizer holds, as before Σ became a new one
            # per update; its state of the old shape is the caller's to reset
            old.data, factor.sigma = factor.sigma.data, old
        return rot

    def _record(self, step: int, update: int, updated: list[str], stability: dict[str, float],
                seconds: float, alignment: dict[str, float] | None = None) -> UpdateRecord:
        counts = self.counts()
        rec = UpdateRecord(step=step, update=update, ranks=self.ranks, updated=updated,
                           stability=stability, trainable=counts.trainable, total=counts.total,
                           original=counts.original, seconds=seconds, alignment=alignment or {})
        self.records.append(rec)
        return rec

    # -- state ---------------------------------------------------------------------------------
    def counts(self) -> ParameterCounts:
        return count_parameters(self.model, self.original_parameters)

    @property
    def ranks(self) -> dict[str, int]:
        return {n: f.rank for n, f in self.factors}

    def state_dict(self) -> dict:
        return {"converted": self.converted, "updates_done": self.updates_done, "ranks": self.ranks,
                "records": [r.to_dict() for r in self.records]}

    def prepare_load(self, state: dict) -> None:
        """Give the model the structure in ``state`` (call before loading model/optimizer state)."""
        if state["converted"] and not self.converted:
            self._convert()
            if set(state["ranks"]) != {n for n, _ in self.factors}:
                raise CheckpointError("checkpoint layers do not match the model built from the config")
            for name, factor in self.factors:
                factor.resize_(state["ranks"][name])

    def load_state_dict(self, state: dict) -> None:
        self.updates_done = state["updates_done"]
        self.records = []
        for r in state["records"]:
            r = {k: v for k, v in r.items() if k not in ("trainable_fraction", "compression", "mean_stability",
                                                           "mean_alignment")}
            self.records.append(UpdateRecord(**r))
