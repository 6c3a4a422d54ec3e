"""Drawing every figure of a study or a run into PNG bytes, and writing them.

All figures are rendered in memory first: a command checks its input, renders, and only then writes, so
bad input or a failed figure leaves nothing behind. A figure that cannot be drawn for a reason inherent
to the data (one completed trial has no parameter importances; a run that never switched to low rank has
no rank heat map) is skipped with a note instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._files import output_file, write_file_atomic
from ..storage import COMPLETE, Store, Study
from ._common import RenderedFigure, metric_name, pyplot, quiet_optuna, render, style
from ._data import Curve, RunData
from ._oialr_figures import lr_figure, rank_heatmap_figure, stability_figure
from ._optuna_study import optuna_study
from ._study_data import (
    PlotError,
    best_numbers,
    best_runs,
    learning_curves,
    require_completed,
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


class _Skip(Exception):  # noqa: N818 - a figure the data cannot give; the message says why
    pass


class _Figures:
    """Collects rendered figures and the notes on those skipped."""

    def __init__(self) -> None:
        self.figures: list[RenderedFigure] = []
        self.notes: list[str] = []

    def add(self, name: str, title: str, caption: str, draw: Callable[[], Any], *,
            optuna_errors: bool = False) -> None:
        """Draw and render one figure; ``optuna_errors``: Optuna's ValueError/RuntimeError on this data
        (too few trials, constant params) skips it too. Figures left open by a failed draw are closed."""
        plt = pyplot()
        before = set(plt.get_fignums())
        try:
            with quiet_optuna() if optuna_errors else style():
                fig = draw()
                self.figures.append(render(fig, name, title, caption[:1].upper() + caption[1:]))
        except _Skip as exc:
            self.notes.append(f"skipped {title.lower()}: {exc}")
        except (ValueError, RuntimeError) as exc:
            if not optuna_errors:
                raise
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.notes.append(f"skipped {title.lower()}: {reason}")
        finally:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)


def _run_figures(out: _Figures, runs: list[RunData], curves: list[Curve] | None, *,
                 curves_title: str | None = None) -> None:
    """The OIALR figures of ``runs`` (and the learning curves of ``curves`` when given)."""
    if curves is not None:
        out.add("learning_curves", "Learning curves",
                "Validation loss and top-1 accuracy after every epoch.",
                lambda: learning_curves_figure(curves, title=curves_title))
    if not runs:
        return
    names = ", ".join(r.label for r in runs)
    out.add("stability", "Trainable parameters and Stability over training",
            f"{names}: top-1 accuracy per epoch, trainable parameters (% of the full-rank model) and the mean basis "
            "Stability of the layers each OIALR update touched (the paper's eq. 4, normalized by the old rank; "
            "dashed: the alignment of the kept directions, normalized by the new rank), against the training step.",
            lambda: stability_figure(runs))
    out.add("lr_vs_trainable", "Learning rate vs trainable parameters",
            f"{names}: the learning rate per epoch, and against the share of trainable parameters.",
            lambda: lr_figure(runs))
    for run in runs:
        slug = f"ranks_trial_{run.curve.number}" if run.curve.number is not None else "ranks"

        def heatmap(run: RunData = run) -> Any:  # noqa: ANN401
            if not len(run.trajectory):
                raise _Skip(f"{run.label} has no OIALR event (OIALR off, or the run ended before the switch)")
            return rank_heatmap_figure(run)

        out.add(slug, f"Rank heat map of {run.label}",
                f"{run.label}: each layer's rank after the switch to low rank and after every basis update.",
                heatmap)


def study_figures(store: Store, study: Study, *, top: int = 3) -> tuple[list[RenderedFigure], list[str]]:
    """Every figure of ``study`` rendered, and a note per figure skipped. Raises :class:`PlotError` when the
    study has no completed trial."""
    rows = summaries(store, study)
    require_completed(study, rows)
    trials = store.trials(study)
    metrics = [o["metric"] for o in study.objectives]
    out = _Figures()
    for j, o in enumerate(study.objectives):
        out.add(f"history_{o['metric']}", f"Optimization history of {metric_name(o['metric'])}",
                f"{metric_name(o['metric'])} ({o['direction']}) of every trial in the order they started; the line is "
                "the best feasible value so far.",
                lambda j=j, o=o: history_figure(optuna_study(store, study, objective=j, trials=trials), rows, j,
                                                o["metric"], o["direction"]), optuna_errors=True)
    data = trade_off(study, rows)

    def trade_off_draw() -> Any:  # noqa: ANN401
        if not data.numbers:
            raise _Skip("no completed trial reported both values")
        return trade_off_figure(data)

    out.add("trade_off", "Trade-off against trainable parameters",
            f"{metric_name(data.metric)} against the share of trainable parameters of every completed trial; "
            + ("the study's Pareto front" if data.study_front else "the trials no other beats in both")
            + " joined by a staircase.", trade_off_draw)
    complete = sum(r.state == COMPLETE for r in rows)

    def parallel() -> Any:  # noqa: ANN401
        if complete < 2:  # one line has no ranges to spread over
            raise _Skip(f"it needs at least 2 completed trials, the study has {complete}")
        return parallel_figure(optuna_study(store, study, objective=0, trials=trials), metrics[0])

    out.add("parallel_coordinates", "Parallel coordinates",
            f"The parameters of every completed trial, coloured by {metric_name(metrics[0])}.", parallel,
            optuna_errors=True)

    def importances() -> Any:  # noqa: ANN401
        if complete < 2:
            raise _Skip(f"it needs at least 2 completed trials, the study has {complete}")
        return importances_figure(optuna_study(store, study, trials=trials), metrics)

    out.add("importances", "Parameter importances",
            "How much of each objective's variance over the completed trials each parameter explains (fANOVA).",
            importances, optuna_errors=True)
    numbers = best_numbers(study, rows, top)
    if not numbers:
        out.notes.append("skipped the OIALR figures of the best trials: " +
                         ("--top 0" if top == 0 else "no feasible completed trial"))
    _run_figures(out, best_runs(store, study, numbers), learning_curves(store, study))
    return out.figures, out.notes


def run_figures(runs: list[RunData]) -> tuple[list[RenderedFigure], list[str]]:
    """The figures of ``train`` runs: learning curves and the OIALR figures."""
    out = _Figures()
    _run_figures(out, runs, [r.curve for r in runs],
                 curves_title=f"Learning curves of {', '.join(r.label for r in runs)}")
    return out.figures, out.notes


def check_output_dir(path: str | os.PathLike, *, option: str = "-o") -> Path:
    """A folder to write figures into: an existing folder, or a new one in an existing folder (a missing
    parent is an error rather than a tree of folders made from a typo). ``option`` names it in errors."""
    out = Path(path)
    if out.is_symlink() and not out.exists():
        raise PlotError(f"{option} {out}: is a broken link; give a folder for the figures")
    if out.exists() and not out.is_dir():
        raise PlotError(f"{option} {out}: exists and is not a folder; give a folder for the figures")
    if not out.exists():
        parent = out.parent
        if not parent.is_dir():
            raise PlotError(f"{option} {out}: folder {parent} does not exist; create it first")
        if not os.access(parent, os.W_OK):
            raise PlotError(f"{option} {out}: folder {parent} is not writable")
    elif not os.access(out, os.W_OK):
        raise PlotError(f"{option} {out}: the folder is not writable")
    return out


def check_output_file(path: str | os.PathLike, *, option: str = "-o") -> Path:
    """A file to write: not a folder, in an existing writable folder."""
    return output_file(path, option=option, example="report.html", error=PlotError)


def write_figures(figures: list[RenderedFigure], folder: Path) -> list[Path]:
    """Write every figure as ``folder/<name>.png`` (the folder is created if needed); returns the paths."""
    folder.mkdir(exist_ok=True)
    paths = []
    for f in figures:
        path = folder / f"{f.name}.png"
        write_file_atomic(path, f.png)
        paths.append(path)
    return paths
