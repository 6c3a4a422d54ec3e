"""Kept trained weights: which trials keep them (front / best / none), ``export --weights`` and ``load_model``."""

import os
import subprocess
import sys

import pytest
import torch

from oialr_search import load_model
from oialr_search.exceptions import WeightsError
from oialr_search.lowrank import low_rank_factors
from oialr_search.search._weights import keep_set
from oialr_search.training import Trainer, config_from_dict

from ._study import SINGLE, cli, kept_files, search, trials, write_space


def _minimized(row: dict, directions: list[str]) -> tuple:
    return tuple(v if d == "minimize" else -v for v, d in zip(row["objective_values"], directions))


def expected_keep(rows: list[dict], directions: list[str], mode: str) -> set[int]:
    """The keep set by brute force over the stored trials (independent of the package's front code)."""
    points = {r["number"]: _minimized(r, directions) for r in rows
              if r["state"] == "COMPLETE" and r["feasible"] in (None, 1)}
    if mode == "none" or not points:
        return set()
    best = {min(points, key=lambda n: (points[n][j], n)) for j in range(len(directions))}
    if mode == "best" or len(directions) == 1:
        return best

    def dominates(a: tuple, b: tuple) -> bool:
        return all(x <= y for x, y in zip(a, b)) and a != b

    return best | {n for n, p in points.items() if not any(dominates(q, p) for q in points.values())}


def _evaluate(model: torch.nn.Module, config: dict) -> tuple[float, float, float]:
    """(val_loss, top1, top5) of ``model`` on the trial's validation split, as the trainer computes them."""
    trainer = Trainer(config_from_dict({**config, "train": {**config["train"], "device": "cpu"}}), log=None)
    trainer.model = model
    return trainer.evaluate()


def test_the_front_keeps_exactly_its_weights_and_a_trial_pushed_off_loses_them(front_study):
    rows = trials(front_study, "front")
    directions = ["maximize", "minimize"]
    keep = expected_keep(rows, directions, "front")
    assert keep and kept_files(front_study / "oialr_search.work" / "front") == keep
    # trials that were kept when they finished (on the front of the trials finished before them), and are not now
    order = sorted(rows, key=lambda r: (r["finished"], r["number"]))
    pushed_off = [r["number"] for i, r in enumerate(order)
                  if r["number"] in expected_keep(order[: i + 1], directions, "front") and r["number"] not in keep]
    assert pushed_off, "no trial fell off the front in this study: its base config should have been beaten"
    assert 0 in pushed_off  # the base config's tiny lr: kept first, beaten later


def test_exported_weights_load_into_the_trials_model_with_its_val_loss(front_study, tmp_path):
    rows = {r["number"]: r for r in trials(front_study, "front")}
    kept = kept_files(front_study / "oialr_search.work" / "front")
    for number in sorted({min(kept), max(kept)}):
        weights, config = tmp_path / f"model{number}.pt", tmp_path / f"tuned{number}.yaml"
        proc = cli(["export", "--study", "front", "--trial", str(number), "--weights", str(weights),
                    "-o", str(config)], front_study)
        assert proc.returncode == 0, proc.stderr
        assert f"wrote {weights}" in proc.stdout and f"wrote {config}" in proc.stdout
        model = load_model(config, weights)
        assert not model.training and {p.device.type for p in model.parameters()} == {"cpu"}
        metrics = rows[number]["metrics"]
        assert {name: f.rank for name, f in low_rank_factors(model)} == metrics["final_ranks"]
        val_loss, top1, _ = _evaluate(model, rows[number]["config"])
        assert val_loss == pytest.approx(metrics["val_loss"], rel=1e-5, abs=1e-6)
        assert top1 == pytest.approx(metrics["top1"], abs=1e-6)
        payload = torch.load(weights, weights_only=True)
        assert payload["format"] == "oialr-search-weights" and payload["version"] == 1
        assert payload["low_rank"]["ranks"] == metrics["final_ranks"] and payload["trial"] == number
        assert {"config", "model_args", "state_dict"} <= set(payload)


def test_load_model_takes_a_config_dict_a_run_config_or_none_and_refuses_bad_files(front_study, tmp_path):
    number = min(kept_files(front_study / "oialr_search.work" / "front"))
    row = {r["number"]: r for r in trials(front_study, "front")}[number]
    weights = front_study / "oialr_search.work" / "front" / "weights" / f"trial_{number}.pt"
    x = torch.randn(4, 1, 8, 8)
    reference = load_model(None, weights)(x)
    for config in (row["config"], config_from_dict(row["config"])):
        torch.testing.assert_close(load_model(config, weights)(x), reference, rtol=0, atol=0)
    # "auto", as exported configs say: CUDA where there is one (a sweep found torch's error for it)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(load_model(None, weights, device="auto").parameters()).device.type == expected
    with pytest.raises(WeightsError, match="no such weights file"):
        load_model(None, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="unreadable"):
        load_model(None, tmp_path / "junk.pt")
    torch.save({"format": 1, "model": {}}, tmp_path / "checkpoint.pt")  # a training checkpoint's shape
    with pytest.raises(WeightsError, match="not an oialr-search weights file"):
        load_model(None, tmp_path / "checkpoint.pt")
    other = {**row["config"], "model": {"name": "mlp", "kwargs": {"hidden": 16, "depth": 1}}}
    with pytest.raises(WeightsError, match="do not fit the model"):
        load_model(other, weights)


def test_best_keeps_the_best_on_each_objective(tmp_path):
    write_space(tmp_path, extra="keep_weights: best")
    search(tmp_path, "s", 5, "--workdir", "wd")
    expected = expected_keep(trials(tmp_path, "s"), ["maximize", "minimize"], "best")
    assert kept_files(tmp_path / "wd" / "s") == expected and 1 <= len(expected) <= 2
    # the study recorded run's --workdir: export finds the weights without it; another folder has none
    best = min(expected)
    proc = cli(["export", "--study", "s", "--trial", str(best), "--weights", "w.pt"], tmp_path)
    assert proc.returncode == 0 and (tmp_path / "w.pt").is_file(), proc.stderr
    proc = cli(["export", "--study", "s", "--trial", str(best), "--weights", "w2.pt", "--workdir", "other"], tmp_path)
    assert proc.returncode == 2 and "other/s/weights" in proc.stderr and not (tmp_path / "w2.pt").exists()
    # nor may an export write into the recorded folder
    proc = cli(["export", "--study", "s", "--trial", str(best), "-o", "wd/s/t.yaml"], tmp_path)
    assert proc.returncode == 2 and "is in the work folder" in proc.stderr and not (tmp_path / "wd/s/t.yaml").exists()


def test_resume_and_status_use_the_work_folder_run_was_given(tmp_path):
    """A search run with --workdir DIR records it: resume without it keeps the trials' checkpoints and kept
    weights in DIR (found in a sweep: they went to the default folder, where a stopped trial's checkpoint
    is not), status shows it, and a resume given another folder moves the record and says what stays behind."""
    write_space(tmp_path, objectives=SINGLE)
    search(tmp_path, "s", 2, "--workdir", "wd")
    assert kept_files(tmp_path / "wd" / "s")
    proc = cli(["resume", "--study", "s", "--budget", "3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"work folder: {tmp_path / 'wd' / 's'} (the study's --workdir)" in proc.stdout
    assert not (tmp_path / "oialr_search.work").exists()  # nothing in the default folder
    rows = trials(tmp_path, "s")
    best = min((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: (r["value"], r["number"]))
    assert len(rows) == 3 and kept_files(tmp_path / "wd" / "s") == {best["number"]}
    status = cli(["status", "--study", "s"], tmp_path)
    assert f"work folder: {tmp_path / 'wd' / 's'} (--workdir)" in status.stdout
    proc = cli(["resume", "--study", "s", "--workdir", "wd2"], tmp_path)  # (nothing left to train)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"now uses {tmp_path / 'wd2' / 's'} (--workdir), not {tmp_path / 'wd' / 's'}" in proc.stdout
    assert f"work folder: {tmp_path / 'wd2' / 's'}" in cli(["status", "--study", "s"], tmp_path).stdout


def test_keep_set_rules():
    points = [(0, (1.0, 5.0)), (1, (2.0, 2.0)), (2, (3.0, 2.0)), (3, (1.0, 6.0)), (4, (5.0, 1.0))]
    assert keep_set(points, "front") == {0, 1, 4}  # 2 and 3 are dominated
    assert keep_set(points, "best") == {0, 4}
    assert keep_set(points, "none") == set()
    assert keep_set([(3, (1.0,)), (1, (1.0,)), (2, (0.5,))], "front") == {2}
    assert keep_set([(3, (1.0,)), (1, (1.0,))], "best") == {1}  # ties: the lower number, as best_trial
    # a tie on the first objective goes to the better on the second (trial 7 dominates 5), then the number
    assert keep_set([(5, (1.0, 3.0)), (7, (1.0, 2.0))], "front") == {7}
    assert keep_set([(5, (1.0, 3.0)), (7, (1.0, 2.0)), (2, (4.0, 2.0))], "best") == {7}
    assert keep_set([(5, (1.0, 2.0)), (7, (1.0, 2.0))], "best") == {5}


def test_a_pick_on_objectives_lands_on_kept_weights(tmp_path):
    """Ties on the first objective are common (top-1 on a small validation set): --pick and the default
    export choose the better on the next objective, which the front keeps weights of (found in review:
    the lower number was picked, a dominated trial without weights)."""
    from oialr_search.search import parse_pick, pick
    from oialr_search.storage import COMPLETE, Store

    store = Store(f"sqlite:///{tmp_path}/t.db")
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="top1", direction="maximize",
                               backend="optuna", seed=0, budget=3, objectives=[
                                   {"metric": "top1", "direction": "maximize"},
                                   {"metric": "trainable_fraction", "direction": "minimize"}])
    for top1, fraction in ((80.0, 0.5), (73.0, 0.25), (73.0, 0.20)):
        t = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
        store.finish_trial(t.id, state=COMPLETE, value=top1, values=[top1, fraction], feasible=True)
    kept = keep_set([(n, (-v[0], v[1])) for n, v in store.objective_points(study)], "front")
    assert kept == {0, 2}
    assert pick(store, study, parse_pick("trainable_fraction<=0.3", ["top1", "trainable_fraction"])).number == 2
    assert pick(store, study, []).number == 0
    store.engine.dispose()


def _refused(args: list[str], cwd, out_folder, message: str) -> None:
    """``export ARGS`` exits 2 with one line containing ``message`` and writes nothing into ``out_folder``."""
    out_folder.mkdir(exist_ok=True)
    outputs = ["--weights", str(out_folder / "m.pt"), "--compact", "-o", str(out_folder / "t.yaml")]
    proc = cli(["export", *args, *outputs], cwd)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == "" and list(out_folder.iterdir()) == []


def test_export_refuses_trials_without_kept_weights(front_study, tmp_path):
    out = tmp_path / "out"
    rows = trials(front_study, "front")
    off = [r["number"] for r in rows if r["number"] not in kept_files(front_study / "oialr_search.work" / "front")]
    assert off
    _refused(["--study", "front", "--trial", str(off[0])], front_study, out, f"trial {off[0]} of study 'front' has "
             "no kept weights")
    _refused(["--study", "front", "--trial", "99"], front_study, out, "has no trial 99")

    # one objective, with ASHA (a trial that is not the best at epoch 1 is stopped there): pruned trials
    write_space(tmp_path, objectives=SINGLE, extra="pruner: {type: asha, min_epochs: 1, reduction: 4}")
    search(tmp_path, "asha", 6)
    rows = trials(tmp_path, "asha")
    pruned = [r["number"] for r in rows if r["state"] == "PRUNED"]
    assert pruned, "ASHA pruned no trial in this study"
    _refused(["--study", "asha", "--trial", str(pruned[0])], tmp_path, out, "is PRUNED, not COMPLETE")
    kept = kept_files(tmp_path / "oialr_search.work" / "asha")
    assert kept == expected_keep(rows, ["minimize"], "front") and len(kept) == 1  # one objective: the best only
    (tmp_path / "oialr_search.work" / "asha" / "weights" / f"trial_{kept.pop()}.pt").unlink()  # weights missing
    _refused(["--study", "asha"], tmp_path, out, "no kept weights")

    # keep_weights: none keeps nothing
    write_space(tmp_path, objectives=SINGLE, extra="keep_weights: none", name="none.yaml")
    proc = cli(["run", "none.yaml", "--study", "none", "--budget", "2", "--backend", "optuna"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "oialr_search.work" / "none" / "weights").exists()
    _refused(["--study", "none"], tmp_path, out, "keeps no trained weights (keep_weights: none")

    # failed trials: a damaged data set (one that is not there is refused before the search)
    broken = tmp_path / "broken"
    (broken / "cifar").mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (broken / "cifar" / name).write_bytes(b"damaged")
    write_space(broken, objectives=SINGLE, extra=f"set: {{data.name: cifar10, data.path: {broken / 'cifar'}}}")
    search(broken, "failed", 1)
    assert [r["state"] for r in trials(broken, "failed")] == ["FAILED"]
    _refused(["--study", "failed", "--trial", "0"], broken, out, "is FAILED, not COMPLETE")


def test_keep_weights_is_checked_and_kept_with_the_space(tmp_path):
    from oialr_search.search import SearchSpace, SpaceError, load_space

    message = "space.yaml: keep_weights: must be one of front, best, none, got 'all'"
    path = write_space(tmp_path, extra="keep_weights: all")
    with pytest.raises(SpaceError, match=message):
        load_space(path)
    proc = cli(["run", "space.yaml", "--study", "x"], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]
    assert load_space(write_space(tmp_path)).keep_weights == "front"
    space = load_space(write_space(tmp_path, extra="keep_weights: best"))
    assert SearchSpace.from_dict(space.to_dict()).keep_weights == "best"  # what resume reads back


def test_concurrent_finishes_never_delete_a_kept_file(tmp_path):
    """Two ranks finishing at once, in the interleavings that matter (see search/_weights.py): a rank whose
    snapshot predates another trial never deletes that trial's file; the folder ends as the keep set."""
    from oialr_search.search import Scored
    from oialr_search.search._weights import KeptWeights
    from oialr_search.storage import Store

    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    objectives = [{"metric": "top1", "direction": "maximize"}, {"metric": "trainable_fraction",
                                                                 "direction": "minimize"}]
    study = store.create_study(name="k", space={}, space_path="", metric="top1", direction="maximize",
                               backend="optuna", seed=0, budget=9, objectives=objectives)
    folder = tmp_path / "weights"
    ranks = [KeptWeights(store, study, "front", folder, rank) for rank in (0, 1)]

    def start() -> object:
        return store.start_trial(study, params={}, rank=0, island=None, device="cpu")

    def finish(trial, values) -> None:
        store.finish_trial(trial.id, state="COMPLETE", value=values[0], values=values, feasible=True,
                           metrics={"top1": values[0], "trainable_fraction": values[1]})

    def scored(values) -> Scored:
        return Scored("COMPLETE", list(values), True, None)

    def weights(number: int):
        return lambda: {"format": "oialr-search-weights", "version": 1, "trial": number}

    a, b = start(), start()
    worse, better = (50.0, 0.5), (60.0, 0.4)  # b dominates a
    # 1. a is written and stored; b is written (its set saw a); a's rank prunes with a snapshot without b
    ranks[0].write(a, scored(worse), weights(a.number))
    finish(a, worse)
    ranks[1].write(b, scored(better), weights(b.number))
    assert kept_files(tmp_path) == {a.number, b.number}
    ranks[0].prune(a)
    assert kept_files(tmp_path) == {a.number, b.number}  # b is not stored yet: its file is left alone
    finish(b, better)
    ranks[1].prune(b)
    assert kept_files(tmp_path) == {b.number}
    # 2. c and d are written before either is stored (each set saw only itself); d dominates c
    c, d = start(), start()
    best, dominated = (70.0, 0.3), (65.0, 0.35)
    ranks[0].write(c, scored(dominated), weights(c.number))
    ranks[1].write(d, scored(best), weights(d.number))
    finish(d, best)
    ranks[1].prune(d)  # b is now dominated; c is not stored: left to its rank
    assert kept_files(tmp_path) == {c.number, d.number}
    finish(c, dominated)
    ranks[0].prune(c)  # c's own rank sees d, stored before c's prune: c deletes its own file
    assert kept_files(tmp_path) == {d.number}
    # 3. a trial that is not kept is never written; one that failed to store (FAILED) loses its file
    e = start()
    ranks[0].write(e, scored((10.0, 0.9)), weights(e.number))
    assert kept_files(tmp_path) == {d.number}
    f = start()
    ranks[0].write(f, scored((99.0, 0.01)), weights(f.number))
    store.finish_trial(f.id, state="FAILED", error="storing the outcome failed")
    ranks[0].prune(f)
    assert kept_files(tmp_path) == {d.number}
    assert torch.load(folder / f"trial_{d.number}.pt", weights_only=True)["study"] == "k"


def test_a_refused_export_writes_none_of_its_files(front_study, tmp_path):
    """Every output is checked before the first is written: a -o whose folder is a file, or does not exist,
    leaves no weights file behind (found in review: the weights were written, then -o failed with a
    traceback), and no folder is created for a mistyped path."""
    kept = min(kept_files(front_study / "oialr_search.work" / "front"))
    (tmp_path / "notadir").write_text("")
    for bad in ("notadir/t.yaml", "missing/t.yaml"):
        proc = cli(["export", "--study", "front", "--trial", str(kept), "--weights", str(tmp_path / "w.pt"),
                    "-o", str(tmp_path / bad)], front_study)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and f"-o {tmp_path / bad}" in proc.stderr, proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notadir"]


def test_export_and_report_never_write_over_the_database_or_the_work_folder(front_study):
    """An output named like the study's database, its WAL, or a file in its work folder (the kept weights
    are the only copy of the trained models) is refused with nothing changed (found by a sweep: the
    database was replaced by the exported YAML, a kept weights file by its compact model)."""
    work = front_study / "oialr_search.work" / "front"
    kept = min(kept_files(work))
    weights = work / "weights" / f"trial_{kept}.pt"
    db = front_study / "oialr_search.db"
    before = {p: p.read_bytes() for p in (db, weights)}
    (work.parent / "other").mkdir(exist_ok=True)  # another study's work folder
    (front_study / "elsewhere" / "b").mkdir(parents=True, exist_ok=True)  # study b's in a --workdir
    cases = [(["export", "-o", "oialr_search.db"], "-o oialr_search.db: is the study's database"),
             (["export", "-o", str(db) + "-wal"], "is the study's database"),
             (["export", "--weights", "oialr_search.db"], "--weights oialr_search.db: is the study's database"),
             (["report", "-o", "oialr_search.db"], "-o oialr_search.db: is the study's database"),
             (["export", "--weights", str(weights), "--compact"], "is in the work folder"),
             (["export", "-o", str(work / "tuned.yaml")], "is in the work folder"),
             # another study's folder, or this one's while --workdir names another (found in review)
             (["export", "-o", str(work.parent / "other" / "t.yaml")], "is in the work folder"),
             (["export", "--workdir", "elsewhere", "-o", str(weights)], "is in the work folder"),
             (["report", "-o", str(work.parent / "other.html")], "is in the work folder"),
             (["export", "--workdir", "elsewhere", "-o", "elsewhere/b/t.yaml"], "is in the work folder elsewhere"),
             # the database through a link: SQLite names its -wal after the file (a third review)
             (["report", "--storage", "sqlite:///link.db", "-o", "oialr_search.db-wal"], "is the study's database")]
    if not (front_study / "link.db").exists():
        (front_study / "link.db").symlink_to(front_study / "oialr_search.db")
    for args, message in cases:
        proc = cli([*args, "--study", "front", *(["--trial", str(kept)] if args[0] == "export" else [])], front_study)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert not (work / "tuned.yaml").exists() and not (front_study / "oialr_search.db-wal").exists()


def test_no_output_replaces_a_kept_weights_file_of_any_study(front_study, tmp_path):
    """Another database's study keeps its models in its own work folder: an export or a train that names one
    of its files would replace the only copy, and that study would then export the wrong model (a sweep)."""
    number = min(kept_files(front_study / "oialr_search.work" / "front"))
    other = tmp_path / "other.work" / "s"
    (other / "weights").mkdir(parents=True)
    (other / "trials").mkdir()
    kept, ckpt = other / "weights" / "trial_0.pt", other / "trials" / "trial_0.ckpt"
    kept.write_bytes(b"the only copy")
    ckpt.write_bytes(b"a checkpoint")
    cases = [["export", "--study", "front", "--trial", str(number), "--weights", str(kept)],
             ["export", "--study", "front", "--trial", str(number), "-o", str(ckpt)],
             ["train", "mnist_vit", "--weights", str(kept)],
             ["train", "mnist_vit", "--checkpoint", str(ckpt)]]
    for args in cases:
        proc = cli(args, front_study)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "is named as a study's" in proc.stderr, proc.stderr
    assert kept.read_bytes() == b"the only copy" and ckpt.read_bytes() == b"a checkpoint"


def test_an_export_writes_through_a_link_and_into_a_fifo_without_replacing_them(front_study, tmp_path):
    """Replacing the path (an atomic write) turned /dev/null into a plain file for root (a sweep), and a link
    into a copy; now the link's target gets the file and a device or FIFO gets the bytes."""
    import stat
    import threading

    number = min(kept_files(front_study / "oialr_search.work" / "front"))
    (tmp_path / "real.yaml").write_text("old")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "real.yaml")
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    for out in (tmp_path / "link.yaml", fifo):
        proc = cli(["export", "--study", "front", "--trial", str(number), "-o", str(out)], front_study, timeout=60)
        assert proc.returncode == 0, proc.stderr
    reader.join(timeout=30)
    assert (tmp_path / "link.yaml").is_symlink()
    assert "exported from study 'front'" in (tmp_path / "real.yaml").read_text()
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and got and b"exported from study 'front'" in got[0]
    # the file stdout appends to, named as it is: appended through stdout, not replaced (a third review)
    log = tmp_path / "log.txt"
    log.write_text("an earlier line\n")
    with log.open("ab") as fh:
        proc = subprocess.run([sys.executable, "-m", "oialr_search", "export", "--study", "front", "--trial",
                               str(number), "-o", str(log)], cwd=front_study, stdout=fh, stderr=subprocess.PIPE,
                              timeout=120, env={**os.environ, "OIALR_SEARCH_STORAGE": ""})
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    assert text.startswith("an earlier line\n# exported from study 'front'") and f"wrote {log}" in text
    # a folder that permissions call writable but that takes no new file (root, /proc): one line, not a traceback
    proc = cli(["export", "--study", "front", "--trial", str(number), "-o", "/proc/tuned.yaml"], front_study)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("-o /proc/tuned.yaml: /proc cannot be written "
                                                                 "(No such file or directory)"), proc.stderr


def test_ctrl_c_while_the_weights_are_written_is_still_ctrl_c(tmp_path, monkeypatch):
    """torch.save turns a Ctrl-C into its own RuntimeError: the write must not swallow it as a failed write
    (found in review: the search went on, and the trial was stored COMPLETE without its weights)."""
    from oialr_search.search import _weights
    from oialr_search.search._objectives import Scored
    from oialr_search.storage import Store

    def interrupted_save(path, payload):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None

    monkeypatch.setattr(_weights, "save_weights", interrupted_save)
    store = Store(f"sqlite:///{tmp_path}/t.db")
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss", direction="minimize",
                               backend="optuna", seed=0, budget=3)
    trial = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    kept = _weights.KeptWeights(store, study, "front", tmp_path / "weights", 0)
    with pytest.raises(KeyboardInterrupt):
        kept.write(trial, Scored("COMPLETE", [0.5], True, None), lambda: {"model": {}})
    store.engine.dispose()
