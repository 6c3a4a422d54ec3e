"""``train --plots`` and the OIALR figures on plain run data (a train result, old and new trajectories)."""

import json
from pathlib import Path

import pytest

from oialr_search.lowrank._oialr import UpdateRecord
from oialr_search.plots import (
    ALIGNMENT_LABEL,
    STABILITY_LABEL,
    run_data,
    stability_figure,
    stability_series,
    trajectory_from_records,
)
from oialr_search.plots._common import close

from ..search.test_search_cli import run
from ._png import assert_png

CONFIG = """\
model: {name: mlp, kwargs: {hidden: 32, depth: 2}}
data: {name: digits, val_fraction: 0.2}
oialr: {keep_last_layer: false, delay: 0.25, layer_fraction: 1.0, update_frequency: 4, beta: 0.2}
train: {epochs: 4, batch_size: 128}
"""


def test_train_plots_writes_the_runs_figures_from_its_own_metrics(tmp_path):
    (tmp_path / "run.yaml").write_text(CONFIG)
    proc = run(["train", "run.yaml", "--quiet", "--out", "m.json", "--plots", "figs"], tmp_path,
               env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[0])["val_loss"] > 0  # the summary line stays first
    names = ["learning_curves", "stability", "lr_vs_trainable", "ranks"]
    assert lines[1:] == [str(Path("figs") / f"{n}.png") for n in names]
    for n in names:
        assert_png(tmp_path / "figs" / f"{n}.png")
    # the figures' data is the run's own: its epochs and OIALR updates as --out wrote them
    metrics = json.loads((tmp_path / "m.json").read_text())
    data = run_data("run", "COMPLETE", metrics["epochs"], metrics["oialr_updates"])
    assert data.curve.epochs == [1, 2, 3, 4] and data.curve.lr == [e["lr"] for e in metrics["epochs"]]
    assert data.curve.top1 == [e["top1"] for e in metrics["epochs"]]
    assert data.trajectory.steps == [u["step"] for u in metrics["oialr_updates"]]
    assert data.trajectory.ranks[0] == [u["ranks"][data.trajectory.layers[0]] for u in metrics["oialr_updates"]]


def test_train_plots_without_oialr_notes_the_missing_heat_map(tmp_path):
    (tmp_path / "run.yaml").write_text(CONFIG)
    proc = run(["train", "run.yaml", "--quiet", "--set", "oialr.enabled=false", "--plots", "figs"], tmp_path,
               env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "note: skipped rank heat map of run: run has no OIALR event" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["learning_curves.png", "lr_vs_trainable.png",
                                                                     "stability.png"]


@pytest.mark.parametrize("plots", ["missing/figs", "afile"])
def test_train_plots_bad_folder_exits_2_before_training(tmp_path, plots):
    (tmp_path / "run.yaml").write_text(CONFIG)
    (tmp_path / "afile").write_text("keep")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = run(["train", "run.yaml", "--quiet", "--out", "m.json", "--plots", plots], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"oialr-search train: error: --plots {plots}: "), lines
    assert proc.stdout == "" and sorted(p.name for p in tmp_path.rglob("*")) == before


def _records(*, alignment: bool) -> list[dict]:
    """A switch and two updates, as ``UpdateRecord.to_dict()`` writes them (``alignment=False``: as
    trajectories stored before the alignment field existed)."""
    events = [(10, -1, {"a": 8, "b": 4}, {}, {}), (14, 0, {"a": 6, "b": 4}, {"a": 0.75, "b": 1.0},
                                                    {"a": 1.0, "b": 1.0}),
              (18, 1, {"a": 5, "b": 3}, {"a": 0.8, "b": 0.7}, {"a": 0.96, "b": 0.93})]
    out = []
    for step, update, ranks, stability, align in events:
        record = UpdateRecord(step, update, ranks, sorted(stability), stability, trainable=sum(ranks.values()),
                              total=100, original=50, seconds=0.0, alignment=align).to_dict()
        if not alignment:
            record = {k: v for k, v in record.items() if k not in ("alignment", "mean_alignment")}
        out.append(record)
    return out


@pytest.mark.parametrize("alignment", [True, False])
def test_stability_figure_draws_alignment_only_when_recorded(alignment):
    records = _records(alignment=alignment)
    epochs = [{"epoch": e, "step": 6 * e, "val_loss": 1.0 / e, "top1": 50.0 + e, "lr": 1e-3, "trainable_fraction":
               1.0 if e == 1 else 0.3} for e in (1, 2, 3)]
    data = run_data("run", "COMPLETE", epochs, records)
    assert data.trajectory.layers == ["a", "b"] and data.trajectory.ranks == [[8, 6, 5], [4, 4, 3]]
    assert data.trajectory.mean_stability == [None, 0.875, 0.75]
    s_steps, stability, a_steps, align = stability_series(data)
    assert (s_steps, stability) == ([14, 18], [0.875, 0.75])
    if alignment:
        assert (a_steps, align) == ([14, 18], [1.0, pytest.approx(0.945)])
    else:
        assert trajectory_from_records(records).mean_alignment is None and a_steps == align == []
    fig = stability_figure([data])
    try:
        labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    finally:
        close(fig)
    assert "run" in labels and STABILITY_LABEL in labels
    assert (ALIGNMENT_LABEL in labels) == alignment
