"""bench/pruner_replay.py replays the study's real pruner classes on stored curves: where every epoch
ranks the trials as their final values do, no pruner loses the best trial, and the epochs it saves show."""

import random
import subprocess
import sys
from pathlib import Path

from oialr_search.storage import COMPLETE, Store

ROOT = Path(__file__).resolve().parents[2]


def _unpruned_study(url: str, name: str, n: int = 12, epochs: int = 4) -> float:
    store = Store(url)
    study = store.create_study(name=name, space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="random", seed=0, budget=n)
    rng = random.Random(name)
    finals = []
    for _ in range(n):
        base = rng.uniform(0.2, 1.0)  # every epoch ranks the trials as the last one does
        curve = [{"epoch": e, "val_loss": base + 0.1 * (epochs - e), "seconds": 1.0} for e in range(1, epochs + 1)]
        t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
        store.finish_trial(t.id, state=COMPLETE, value=base, values=[base], metrics={"val_loss": base},
                           epochs=curve)
        finals.append(base)
    return min(finals)


def test_replay_on_curves_that_rank_alike_loses_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    _unpruned_study(url, "a")
    _unpruned_study(url, "b")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pruner_replay.py"), "--storage", url,
                           "--pruner", "{type: asha, min_epochs: 1, reduction: 3}", "--pruner", "none"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 unpruned studies, 24 trials (minimize val_loss)" in proc.stdout
    asha = next(line for line in proc.stdout.splitlines() if line.startswith("{type: asha"))
    epochs, _, _, best = asha[len("{type: asha, min_epochs: 1, reduction: 3}"):].split()[:4]
    assert float(epochs) < 0.8 and best == "+0.0000", asha  # saved epochs, kept the best
    none = next(line for line in proc.stdout.splitlines() if line.startswith("none"))
    assert none.split()[1:5] == ["1.00", "±", "0.00", "+0.0000"], none


def test_replay_says_when_there_is_nothing_to_replay_on(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    Store(url)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pruner_replay.py"), "--storage", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("no unpruned study"), proc.stderr


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pruner_replay", ROOT / "bench" / "pruner_replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_replay_counts_failed_trials_as_peers_as_the_runner_does():
    from oialr_search.search import ASHAPruner

    bench = _bench()
    inf = float("inf")

    def run(at, value, complete=True):  # one epoch of two, reached at time ``at``
        return bench.Run({1: (value,), 2: (value,)} if complete else {1: (inf,)}, (value,) if complete else (inf,),
                         {1: at, 2: at + 10} if complete else {1: at}, at + 10, complete, complete)

    failed = [run(t, 0, complete=False) for t in range(6)]
    done = [run(6, 1.0), run(7, 2.0), run(8, 3.0)]
    _, went_on = bench.replay(failed + done, ASHAPruner(min_epochs=1, reduction=3))
    # at epoch 1 the second completed trial is second of 8 (6 diverged), the third third of 9: both go on
    assert went_on[6:] == [True, True, True]
    _, went_on = bench.replay(done, ASHAPruner(min_epochs=1, reduction=3))
    assert went_on == [True, False, False]


def test_replay_refuses_a_named_study_that_was_pruned(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    _unpruned_study(url, "a")
    store = Store(url)
    study = store.get_study("a")
    t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    store.finish_trial(t.id, state="PRUNED", value=1.0, values=[1.0], metrics={"val_loss": 1.0},
                       epochs=[{"epoch": 1, "val_loss": 1.0, "seconds": 1.0}])
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pruner_replay.py"), "--storage", url, "--study", "a"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "skipped a: 1 PRUNED trials; a replay needs an unpruned search" in proc.stderr


def test_replay_of_a_front_with_no_feasible_trial_has_no_hypervolume():
    import math

    from oialr_search.search import NopPruner

    bench = _bench()
    runs = [bench.Run({1: (v, 0.5), 2: (v, 0.5)}, (v, 0.5), {1: v, 2: v + 1}, v + 1, False, True) for v in (1.0, 2.0)]
    scores = bench.score(runs, NopPruner())
    assert scores["epochs"] == 1.0 and math.isnan(scores["hv"])  # (it raised on an empty reference)
