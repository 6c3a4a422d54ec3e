"""A study's figures: optimization history, trade-off (Pareto front), parallel coordinates, parameter
importances and learning curves.

History, parallel coordinates and importances are Optuna's (``optuna.visualization.matplotlib``) drawn on
the in-memory study of ``_optuna_study``, with what Optuna leaves out added (pruned and failed trials,
readable labels); the trade-off and the learning curves are plain matplotlib on the data of
``_study_data``. Every function returns an open Figure: ``_common.render`` turns it into PNG bytes and
closes it.
"""

from __future__ import annotations

from typing import Any

from ..storage import COMPLETE, FAILED, PRUNED
from ._common import (
    PERCENT_OF_ONE,
    STATE_COLORS,
    metric_label,
    metric_name,
    new_figure,
    percent_axis,
)
from ._data import Curve
from ._study_data import TradeOff, TrialSummary, pruned_values


def _better(direction: str) -> str:
    return "lower is better" if direction == "minimize" else "higher is better"


def _legend_below(ax: Any, ncol: int = 3) -> None:  # noqa: ANN401
    """The legend under the axes, where it cannot hide a point."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=ncol, frameon=False)


def history_figure(ostudy: Any, rows: list[TrialSummary], j: int, metric: str, direction: str) -> Any:  # noqa: ANN401
    """Objective ``j`` of every trial against its number: Optuna's history of the completed trials (feasible
    in colour, infeasible grey, the best feasible value so far as a line), plus the value each pruned trial
    reached and a cross for each failed one. ``ostudy``: the single-objective study of objective ``j``."""
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization.matplotlib import plot_optimization_history

    ax = plot_optimization_history(ostudy, target_name=metric_name(metric))
    fig = ax.figure
    fig.set_size_inches(8, 5.2)
    ax.set_title("")  # Optuna's generic title; ours goes on the left
    for collection in ax.collections:  # Optuna's unlabelled grey scatter: the infeasible trials
        if collection.get_label().startswith("_") and len(collection.get_offsets()):
            collection.set_label("completed, infeasible (violates a constraint)")
    for line in ax.get_lines():
        if line.get_label() == "Best Value":  # the best so far holds until a better trial: a staircase
            line.set_label("best feasible value so far")
            line.set_drawstyle("steps-post")
    for collection in ax.collections:
        if collection.get_label() == metric_name(metric):
            collection.set_label("completed, feasible")
    numbers, values = pruned_values(rows, j)
    if numbers:
        ax.scatter(numbers, values, marker="v", facecolors="none", edgecolors=STATE_COLORS[PRUNED], linewidths=1.4,
                   label="pruned (value at its last epoch)", zorder=3)
    failed = [r.number for r in rows if r.state == FAILED]
    if failed:  # no value: a cross in a band of its own under the values, without ticks, so none reads as one
        low, high = ax.get_ylim()
        ticks = [t for t in ax.get_yticks() if low <= t <= high]
        ax.set_ylim(low - 0.08 * (high - low), high)
        ax.set_yticks(ticks)
        ax.axhline(low, color="#999999", linewidth=0.8, linestyle="--")
        ax.scatter(failed, [0.03] * len(failed), transform=ax.get_xaxis_transform(), marker="x",
                   color=STATE_COLORS[FAILED], label="failed (no value)", zorder=3)
    if rows:  # autoscaling ignores the crosses (drawn in axes coordinates): keep every trial in view
        low, high = ax.get_xlim()
        ax.set_xlim(min(low, rows[0].number - 0.5), max(high, rows[-1].number + 0.5))
    ax.set_title(f"Optimization history: {metric_name(metric)} of each trial ({_better(direction)})", loc="left")
    ax.set_xlabel("trial number (in the order the trials started)")
    ax.set_ylabel(metric_label(metric))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if metric in PERCENT_OF_ONE:
        percent_axis(ax.yaxis)
    _legend_below(ax)
    return fig


def trade_off_figure(data: TradeOff) -> Any:  # noqa: ANN401
    """The first objective against the trainable fraction of every completed trial: the front in colour,
    joined by its attainment staircase, dominated trials grey, infeasible ones as crosses."""
    fig = new_figure(8, 5.2)
    ax = fig.add_subplot()
    front = set(data.front)
    groups = {"front": [], "dominated": [], "infeasible": []}
    for n, x, y, ok in zip(data.numbers, data.x, data.y, data.feasible):
        groups["front" if n in front else "dominated" if ok else "infeasible"].append((n, x, y))
    if groups["dominated"]:
        ax.scatter([p[1] for p in groups["dominated"]], [p[2] for p in groups["dominated"]], color="#9a9a9a",
                   alpha=0.7, s=28, label="dominated (completed, feasible)")
    if groups["infeasible"]:
        ax.scatter([p[1] for p in groups["infeasible"]], [p[2] for p in groups["infeasible"]], marker="x",
                   color="#b04a4a", s=36, label="infeasible (violates a constraint)")
    by_x = sorted((p for p in groups["front"]), key=lambda p: data.front.index(p[0]))
    if by_x:
        what = "Pareto front of the study" if data.study_front else "non-dominated in these two metrics"
        ax.step([p[1] for p in by_x], [p[2] for p in by_x], where="post", color=STATE_COLORS[COMPLETE],
                alpha=0.6, linewidth=1.2)
        ax.scatter([p[1] for p in by_x], [p[2] for p in by_x], color=STATE_COLORS[COMPLETE], s=46, zorder=3,
                   edgecolors="white", linewidths=0.8, label=what)
        if len(by_x) <= 20:  # label the front's trials, unless there are too many to read
            for n, x, y in by_x:
                ax.annotate(f"#{n}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8,
                            color=STATE_COLORS[COMPLETE])
    labelled = False
    for bounds, line in ((data.x_bounds, ax.axvline), (data.y_bounds, ax.axhline)):
        for bound in bounds:
            if bound is not None:  # a constraint of the study: the feasible side is the one with the trials
                line(bound, color="#b04a4a", linestyle=":", linewidth=1.2,
                     label=None if labelled else "constraint bound")
                labelled = True
    percent_axis(ax.xaxis)
    ax.set_xlabel(metric_label("trainable_fraction") + ", lower is better")
    ax.set_ylabel(f"{metric_label(data.metric)}, {_better(data.direction)}")
    if data.metric in PERCENT_OF_ONE:
        percent_axis(ax.yaxis)
    ax.set_title(f"Trade-off of the completed trials: {metric_name(data.metric)} vs trainable parameters",
                 loc="left")
    _legend_below(ax)
    return fig


def parallel_figure(ostudy: Any, metric: str) -> Any:  # noqa: ANN401
    """Optuna's parallel coordinates of the completed trials' params, coloured by the first objective."""
    from matplotlib.collections import LineCollection
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    ax = plot_parallel_coordinate(ostudy, target_name=metric_name(metric))
    fig = ax.figure
    fig.set_size_inches(max(8.0, 1.8 * (len(ax.get_xticks()))), 5.2)
    ax.set_title("")  # Optuna's generic title; ours goes on the left
    ax.set_title(f"Parameters of the completed trials, each a line coloured by its {metric_name(metric)}",
                 loc="left", pad=12)
    for collection in ax.collections:
        if isinstance(collection, LineCollection) and collection.get_array() is not None:
            # Optuna's Blues fades the worst trials to white, invisible on white; viridis keeps every line
            # visible, and keeps Optuna's sense (dark = better)
            collection.set_cmap("viridis" if collection.get_cmap().name.endswith("_r") else "viridis_r")
    legend = ax.get_legend()
    if legend is not None:  # Optuna's feasible/infeasible key sits where our title goes: move it below
        handles = legend.legend_handles
        for handle in handles:
            handle.set_label({"Feasible": "feasible", "Infeasible": "infeasible (violates a constraint)"}.get(
                handle.get_label(), handle.get_label()))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for label in ax.get_xticklabels():
        label.set_rotation(15)
        label.set_horizontalalignment("right")
    return fig


def importances_figure(ostudy: Any, metrics: list[str]) -> Any:  # noqa: ANN401
    """Optuna's fANOVA importance of each param for each objective (share of the objective's variance that
    the param explains, over the completed trials). Raises what Optuna raises when it cannot evaluate."""
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    if len(metrics) > 1:
        ostudy.set_metric_names([metric_name(m) for m in metrics])
        ax = plot_param_importances(ostudy, evaluator=FanovaImportanceEvaluator(seed=0))
    else:
        ax = plot_param_importances(ostudy, evaluator=FanovaImportanceEvaluator(seed=0),
                                    target_name=metric_name(metrics[0]))
    fig = ax.figure
    fig.set_size_inches(8, 1.6 + 0.45 * len(ax.get_yticks()) * max(1, len(metrics) // 2 + 1))
    ax.set_title("Parameter importances: share of each objective's variance a parameter explains (fANOVA)",
                 loc="left")
    ax.set_xlabel("importance (fraction of the variance, summing to 1 per objective)")
    ax.set_ylabel("parameter")
    if len(metrics) > 1:
        _legend_below(ax, ncol=len(metrics))
    return fig


def _curve_style(state: str) -> dict:
    if state == COMPLETE:
        return {"color": STATE_COLORS[COMPLETE], "linestyle": "-", "alpha": 0.75}
    if state == PRUNED:
        return {"color": STATE_COLORS[PRUNED], "linestyle": "--", "alpha": 0.8}
    return {"color": STATE_COLORS.get(state, "#7f7f7f"), "linestyle": ":", "alpha": 0.8}


def learning_curves_figure(curves: list[Curve], *, title: str | None = None) -> Any:  # noqa: ANN401
    """Validation loss and top-1 per epoch of every trial: completed solid, pruned dashed ending in a
    triangle at the epoch it was stopped, failed or unfinished dotted. ``title`` replaces the default one."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(11, 4.6)
    axes = fig.subplots(1, 2)
    few = max((len(c.epochs) for c in curves), default=0) <= 30  # epochs as dots while they stay apart
    for ax, key, label in ((axes[0], "val_loss", metric_label("val_loss")),
                           (axes[1], "top1", metric_label("top1"))):
        for c in curves:
            points = [(e, v) for e, v in zip(c.epochs, getattr(c, key)) if v is not None]
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.1, marker="o" if few else None,
                    markersize=2.5, **_curve_style(c.state))
            if c.state == PRUNED:
                ax.plot([points[-1][0]], [points[-1][1]], marker="v", markersize=6, color=STATE_COLORS[PRUNED],
                        linestyle="none")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("Validation loss per epoch", loc="left")
    axes[1].set_title("Top-1 validation accuracy per epoch", loc="left")
    present = {c.state for c in curves}
    names = {COMPLETE: "completed", PRUNED: "pruned (triangle: the epoch it was stopped at)", FAILED: "failed"}
    handles = [Line2D([], [], linewidth=1.4, label=names.get(s, s.lower()),
                      marker="v" if s == PRUNED else None, **_curve_style(s))
               for s in (COMPLETE, PRUNED, FAILED, "RUNNING", "INTERRUPTED") if s in present]
    if len(curves) > 1:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.06), ncol=len(handles),
                   frameon=False)
    fig.suptitle(title or f"Learning curves of {len(curves)} trials (every one that finished an epoch)", x=0.01,
                 horizontalalignment="left")
    fig.tight_layout()
    return fig
