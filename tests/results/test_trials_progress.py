"""`trials` shows how far each trial got: a RUNNING trial's epochs are in the database as they happen."""

import json

from oialr_search.cli import main
from oialr_search.storage import COMPLETE, Store

EPOCH = {"step": 3, "train_loss": 1.0, "val_loss": 0.5, "top1": 50.0, "top5": 90.0, "lr": 1e-3,
         "trainable_fraction": 0.3, "seconds": 1.0}


def test_trials_shows_the_epochs_a_running_trial_has_done(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    store = Store(url)
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=3)
    done = store.start_trial(study, params={"x": 1}, rank=0, island=None, device="cpu")
    store.finish_trial(done.id, state=COMPLETE, value=0.5, values=[0.5],
                       epochs=[{**EPOCH, "epoch": e} for e in (1, 2, 3)])
    running = store.start_trial(study, params={"x": 2}, rank=1, island=None, device="cpu")
    store.report_epochs(running.id, [{**EPOCH, "epoch": e} for e in (1, 2)])
    store.start_trial(study, params={"x": 3}, rank=2, island=None, device="cpu")  # no epoch yet
    store.engine.dispose()
    assert main(["trials", "--study", "s", "--storage", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["state"], r["epochs_done"], r["stopped_at_epoch"]) for r in rows] == [
        ("COMPLETE", 3, None), ("RUNNING", 2, None), ("RUNNING", None, None)]
