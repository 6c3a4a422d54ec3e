"""Run configs shipped with the package (``oialr_search/configs/*.yaml``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..exceptions import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name: str) -> Path:
    """A path, or the name of a bundled config (e.g. ``mnist_vit``)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml") or os.sep in name:
        return path
    bundled = CONFIG_DIR / f"{name}.yaml"
    if bundled.exists():
        return bundled
    raise ConfigError(f"{name}: no such config file or bundled config (bundled: {', '.join(bundled_configs())})")
