"""Settings of the OIALR schedule."""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import ConfigError


@dataclass
class OIALRConfig:
    """OIALR hyperparameters (DESIGN.md §1).

    ``delay`` is a step count (int ≥ 0) or a fraction of training (float in [0, 1)); 0 trains low
    rank from the start (spectral initialization). ``update_frequency`` is in steps. At update k
    (0-based) the last ⌈layer_fraction·L·(k+1)⌉ of the L factorized weights are rotated and cut at
    ``beta``·max σ, never below ``min_rank``.
    """

    enabled: bool = True
    delay: float | int = 0.33
    update_frequency: int = 100
    beta: float = 0.1
    layer_fraction: float = 0.2
    min_rank: int = 1
    keep_first_layer: bool = False
    keep_last_layer: bool = True

    def validate(self, prefix: str = "oialr") -> None:
        if isinstance(self.delay, bool) or not isinstance(self.delay, (int, float)):
            raise ConfigError(f"{prefix}.delay: must be a step count (int) or a fraction (float), got {self.delay!r}")
        if isinstance(self.delay, float) and not 0.0 <= self.delay < 1.0:
            raise ConfigError(f"{prefix}.delay: a fraction must be in [0, 1); give steps as an integer, "
                              f"got {self.delay}")
        if isinstance(self.delay, int) and self.delay < 0:
            raise ConfigError(f"{prefix}.delay: must be >= 0, got {self.delay}")
        if self.update_frequency < 1:
            raise ConfigError(f"{prefix}.update_frequency: must be >= 1 step, got {self.update_frequency}")
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError(f"{prefix}.beta: must be in [0, 1), got {self.beta}")
        if not 0.0 < self.layer_fraction <= 1.0:
            raise ConfigError(f"{prefix}.layer_fraction: must be in (0, 1], got {self.layer_fraction}")
        if self.min_rank < 1:
            raise ConfigError(f"{prefix}.min_rank: must be >= 1, got {self.min_rank}")

    def delay_steps(self, total_steps: int) -> int:
        return int(round(self.delay * total_steps)) if isinstance(self.delay, float) else int(self.delay)
