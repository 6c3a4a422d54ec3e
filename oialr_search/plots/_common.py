"""What every figure shares: labels with units, state colours, the style, and rendering to PNG bytes."""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Axis labels a reader understands without the README: what the number is, and its unit.
METRIC_LABELS = {
    "val_loss": "validation loss (cross-entropy)",
    "top1": "top-1 validation accuracy (%)",
    "top5": "top-5 validation accuracy (%)",
    "trainable_fraction": "trainable parameters (% of full-rank model)",
    "compression": "stored parameters incl. U, V (% of full-rank)",
    "train_seconds": "training time (s)",
}
METRIC_NAMES = {"val_loss": "validation loss", "top1": "top-1 accuracy", "top5": "top-5 accuracy",
                "trainable_fraction": "trainable fraction", "compression": "compression",
                "train_seconds": "training time"}
PERCENT_OF_ONE = {"trainable_fraction", "compression"}  # fractions of 1, shown as percentages

STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAILED": "#d62728", "RUNNING": "#7f7f7f",
                "INTERRUPTED": "#9467bd"}
RUN_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

_STYLE = {"axes.grid": True, "grid.alpha": 0.35, "grid.linestyle": "-", "axes.spines.top": False,
          "axes.spines.right": False, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
          "legend.framealpha": 0.85, "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12}
DPI = 110


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


@dataclass(frozen=True)
class RenderedFigure:
    """One figure, rendered: ``name`` is its file name without ``.png``; ``caption`` says what it shows."""

    name: str
    title: str
    caption: str
    png: bytes


def pyplot() -> Any:  # noqa: ANN401 - the matplotlib.pyplot module
    """pyplot (Optuna's figures need it) on the Agg backend, unless the process chose a backend already."""
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Our figures' style, restored afterwards (Optuna's figures switch pyplot to ggplot; this undoes it)."""
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        yield


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's matplotlib functions are experimental and warn on every call, and set a global style; with
    one value on an axis matplotlib warns of identical limits (a sweep saw it leak into plot's output)."""
    import matplotlib
    import optuna

    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Attempting to set identical", category=UserWarning)
        yield


def new_figure(width: float = 8.0, height: float = 5.0, **kwargs: Any) -> Any:  # noqa: ANN401
    """A matplotlib Figure outside pyplot: nothing global to leak, and no display backend needed."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), **kwargs)


def render(fig: Any, name: str, title: str, caption: str) -> RenderedFigure:  # noqa: ANN401
    """The figure as PNG bytes; the figure is closed whatever happens."""
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
        return RenderedFigure(name, title, caption, buf.getvalue())
    finally:
        close(fig)


def close(fig: Any) -> None:  # noqa: ANN401
    """Release a figure (pyplot keeps the ones it made until closed)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)
    fig.clear()


def percent_axis(axis: Any) -> None:  # noqa: ANN401
    """Show a 0..1 fraction on ``axis`` (ax.xaxis / ax.yaxis) as percent."""
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(xmax=1.0))
