"""Figures and the HTML report of a study, and the figures of a ``train`` run.

Data preparation (store records to plain lists and dataclasses) is apart from drawing, so the tests check
the data behind every figure against the stored values. Study figures: optimization history per
objective, the trade-off against trainable parameters (Pareto front), parallel coordinates and parameter
importances (Optuna's, on an in-memory study built from the store), learning curves; for the best trials
and for ``train --plots``: trainable parameters and Stability over training (the paper's Figure 2), the
learning rate against trainable parameters (Figure 3) and a heat map of per-layer ranks.
"""

from ._common import RenderedFigure
from ._data import (
    Curve,
    RunData,
    Trajectory,
    curve_from_epochs,
    run_data,
    stability_series,
    trainable_series,
    trajectory_from_records,
)
from ._oialr_figures import ALIGNMENT_LABEL, STABILITY_LABEL, lr_figure, rank_heatmap_figure, stability_figure
from ._optuna_study import optuna_study
from ._render import (
    check_output_dir,
    check_output_file,
    run_figures,
    study_figures,
    write_figures,
)
from ._report import study_report
from ._study_data import (
    PlotError,
    TradeOff,
    TrialSummary,
    best_numbers,
    best_runs,
    first_line,
    learning_curves,
    pruned_values,
    state_counts,
    summaries,
    trade_off,
)
from ._study_figures import (
    history_figure,
    importances_figure,
    learning_curves_figure,
    parallel_figure,
    trade_off_figure,
)

__all__ = [
    "ALIGNMENT_LABEL",
    "STABILITY_LABEL",
    "Curve",
    "PlotError",
    "RenderedFigure",
    "RunData",
    "TradeOff",
    "Trajectory",
    "TrialSummary",
    "best_numbers",
    "best_runs",
    "check_output_dir",
    "check_output_file",
    "curve_from_epochs",
    "first_line",
    "history_figure",
    "importances_figure",
    "learning_curves",
    "learning_curves_figure",
    "lr_figure",
    "optuna_study",
    "parallel_figure",
    "pruned_values",
    "rank_heatmap_figure",
    "run_data",
    "run_figures",
    "stability_figure",
    "stability_series",
    "state_counts",
    "study_figures",
    "study_report",
    "summaries",
    "trade_off",
    "trade_off_figure",
    "trainable_series",
    "trajectory_from_records",
    "write_figures",
]
