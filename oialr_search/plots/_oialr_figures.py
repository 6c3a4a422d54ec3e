"""OIALR figures of one or a few runs, from plain :class:`RunData` (a stored trial or a ``train`` result):

- trainable parameters and mean Stability against the training step, with top-1 (the paper's Figure 2);
- the learning rate against the trainable fraction (the paper's Figure 3: tuned schedules raise the lr as
  the trainable parameters shrink);
- a heat map of every layer's rank over the OIALR events.
"""

from __future__ import annotations

from typing import Any

from ._common import RUN_COLORS, metric_label, new_figure, percent_axis
from ._data import RunData, stability_series, trainable_series

# Beside the paper's Stability (normalized by the old rank, so a rank cut alone lowers it) the records
# carry the alignment of the directions that were kept (normalized by the new rank).
STABILITY_LABEL = "Stability (paper, eq. 4)"
ALIGNMENT_LABEL = "alignment of kept directions"


def _color(i: int) -> str:
    return RUN_COLORS[i % len(RUN_COLORS)]


def stability_figure(runs: list[RunData]) -> Any:  # noqa: ANN401
    """The paper's Figure 2 for each run: top-1 per epoch, trainable parameters (% of the full-rank model)
    and the mean Stability of the updated layers' bases, all against the training step."""
    from matplotlib.lines import Line2D

    fig = new_figure(9, 8.2)
    top, middle, bottom = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1, 1.15]})
    any_alignment = False
    for i, run in enumerate(runs):
        color = _color(i)
        points = [(s, v) for s, v in zip(run.curve.steps, run.curve.top1) if v is not None]
        top.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=color,
                 label=run.label)
        steps, fraction = trainable_series(run)
        middle.step(steps, fraction, where="post", color=color, linewidth=1.5)
        s_steps, stability, a_steps, alignment = stability_series(run)
        bottom.plot(s_steps, stability, marker="o", markersize=3, color=color, linewidth=1.3)
        if a_steps:
            any_alignment = True
            bottom.plot(a_steps, alignment, linestyle="--", marker="s", markersize=2.5, color=color, linewidth=1.0,
                        alpha=0.8)
    top.set_ylabel(metric_label("top1"))
    top.set_title("Accuracy, trainable parameters and basis Stability over training (cf. the paper's Figure 2)",
                  loc="left")
    middle.set_ylabel("trainable parameters\n(% of full-rank model)")
    percent_axis(middle.yaxis)
    middle.set_ylim(bottom=0)
    bottom.set_ylabel("basis Stability, mean over the\nupdated layers (1 = unchanged)")
    bottom.set_xlabel("training step (optimizer steps)")
    if not any(stability_series(run)[0] for run in runs):  # OIALR off, or no basis update yet
        bottom.set_ylim(0, 1.05)
        bottom.text(0.5, 0.5, "no basis update in these runs", transform=bottom.transAxes, ha="center",
                    va="center", color="#666666")
    handles = [Line2D([], [], color=_color(i), marker="o", markersize=3, label=run.label) for i, run in enumerate(runs)]
    handles.append(Line2D([], [], color="#444444", marker="o", markersize=3, label=STABILITY_LABEL))
    if any_alignment:
        handles.append(Line2D([], [], color="#444444", linestyle="--", marker="s", markersize=2.5,
                              label=ALIGNMENT_LABEL))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.04), ncol=min(len(handles), 5),
               frameon=False)
    fig.tight_layout()
    return fig


def lr_figure(runs: list[RunData]) -> Any:  # noqa: ANN401
    """The paper's Figure 3 for each run: the learning rate per epoch, and against the trainable fraction
    (epoch by epoch, from the open circle at epoch 1 to the square at the last)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(11, 4.8)
    by_epoch, by_fraction = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        color, c = _color(i), run.curve
        points = [(e, lr) for e, lr in zip(c.epochs, c.lr) if lr is not None]
        by_epoch.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=color)
        pairs = [(tf, lr) for tf, lr in zip(c.trainable_fraction, c.lr) if tf is not None and lr is not None]
        if not pairs:
            continue
        by_fraction.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", markersize=3, color=color,
                         alpha=0.85)
        by_fraction.plot([pairs[0][0]], [pairs[0][1]], marker="o", markersize=9, markerfacecolor="none",
                         markeredgecolor=color, linestyle="none")
        by_fraction.plot([pairs[-1][0]], [pairs[-1][1]], marker="s", markersize=7, color=color, linestyle="none")
    for ax in (by_epoch, by_fraction):
        ax.set_yscale("log")
        ax.set_ylabel("learning rate at the epoch's end (log scale)")
    by_epoch.set_xlabel("epoch")
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_epoch.set_title("Learning rate per epoch", loc="left")
    by_fraction.set_xlabel(metric_label("trainable_fraction"))
    percent_axis(by_fraction.xaxis)
    by_fraction.set_title("Learning rate vs trainable parameters (cf. the paper's Figure 3)", loc="left")
    handles = [Line2D([], [], color=_color(i), marker="o", markersize=3, label=run.label) for i, run in enumerate(runs)]
    handles += [Line2D([], [], color="#444444", marker="o", markersize=9, markerfacecolor="none", linestyle="none",
                       label="first epoch"),
                Line2D([], [], color="#444444", marker="s", markersize=7, linestyle="none", label="last epoch")]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.07), ncol=min(len(handles), 6),
               frameon=False)
    fig.tight_layout()
    return fig


def rank_heatmap_figure(run: RunData) -> Any:  # noqa: ANN401
    """Each layer's rank after every OIALR event (columns: the switch, then each basis update), coloured by
    the rank as a share of the layer's rank at the switch, with the ranks written in when they fit."""
    import numpy as np

    t = run.trajectory
    n_layers, n_events = len(t.layers), len(t.steps)
    values = np.full((n_layers, n_events), np.nan)
    for i, row in enumerate(t.ranks):
        start = next((r for r in row if r), None)
        for k, r in enumerate(row):
            if r is not None and start:
                values[i, k] = r / start
    fig = new_figure(max(6.5, min(16.0, 2.5 + 0.42 * n_events)), max(3.0, min(16.0, 1.6 + 0.32 * n_layers)))
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.grid(False)
    colorbar = fig.colorbar(image, ax=ax, pad=0.02)
    colorbar.set_label("rank / the layer's rank at the switch")
    if n_events <= 30 and n_layers <= 40:  # the numbers themselves, while the cells are big enough to hold them
        for i, row in enumerate(t.ranks):
            for k, r in enumerate(row):
                if r is not None:
                    ax.text(k, i, str(r), ha="center", va="center", fontsize=8,
                            color="white" if values[i, k] < 0.6 else "black")
    stride = max(1, int(np.ceil(n_events / 16)))
    ticks = list(range(0, n_events, stride))
    ax.set_xticks(ticks, [str(t.steps[k]) for k in ticks])
    ax.set_yticks(range(n_layers), [name.removesuffix(".factor") for name in t.layers],
                  fontsize=8 if n_layers <= 30 else 6)
    ax.set_xlabel("training step of the OIALR event (first column: the switch to low rank)")
    ax.set_ylabel("layer")
    ax.set_title(f"{run.label}: rank of each layer after every OIALR event", loc="left")
    fig.tight_layout()
    return fig
