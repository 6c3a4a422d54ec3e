"""``run``/``resume --set key=value``: overrides of a search's base config, stored with the study."""

import json
import shutil

import pytest
import yaml

from oialr_search.search import OverrideError, SearchSpace, load_space, merge_overrides

from .test_search_cli import run, trials, write_space


def configs(folder, study):
    return [json.loads(r["config"]) for r in trials(folder, study)]


def status(folder, study):
    proc = run(["status", "--study", study], folder)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_run_set_reaches_every_trial_status_export_and_resume(tmp_path):
    write_space(tmp_path)
    sets = ["--set", "data.path=/scratch/cifar-10-batches-py", "--set", "train.epochs=1"]
    proc = run(["run", "space.yaml", "--study", "s", "--budget", "2", *sets], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "base config overridden by --set data.path=/scratch/cifar-10-batches-py --set train.epochs=1" in proc.stdout
    got = configs(tmp_path, "s")
    assert len(got) == 2 and all(c["train"]["epochs"] == 1 and c["data"]["path"] == "/scratch/cifar-10-batches-py"
                                 for c in got)
    assert "overrides: data.path=/scratch/cifar-10-batches-py; train.epochs=1" in status(tmp_path, "s")
    assert run(["export", "--study", "s", "-o", "tuned.yaml"], tmp_path).returncode == 0
    exported = yaml.safe_load((tmp_path / "tuned.yaml").read_text())
    assert exported["train"]["epochs"] == 1 and exported["data"]["path"] == "/scratch/cifar-10-batches-py"

    # the same overrides (values as YAML: '1' and 1 are the same) continue the study
    again = run(["run", "space.yaml", "--study", "s", "--budget", "3", "--set", "train.epochs=1",
                 "--set", "data.path='/scratch/cifar-10-batches-py'"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    # resume reuses them
    assert run(["resume", "--study", "s", "--budget", "4"], tmp_path).returncode == 0
    got = configs(tmp_path, "s")
    assert len(got) == 4 and all(c["train"]["epochs"] == 1 for c in got)

    # resume --set of a key the space does not search: merged (later wins), stored, used by new trials
    moved = run(["resume", "--study", "s", "--budget", "5", "--set", "data.path=/elsewhere", "--set",
                 "optim.weight_decay=0.01"], tmp_path)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "now overridden by --set train.epochs=1 --set data.path=/elsewhere --set optim.weight_decay=0.01" \
        in moved.stdout and moved.stdout.count("overridden by") == 1  # said once (a sweep saw it twice)
    assert "overrides: train.epochs=1; data.path=/elsewhere; optim.weight_decay=0.01" in status(tmp_path, "s")
    new = configs(tmp_path, "s")[4]
    assert new["data"]["path"] == "/elsewhere" and new["optim"]["weight_decay"] == 0.01 and new["train"]["epochs"] == 1
    assert run(["resume", "--study", "s", "--budget", "6"], tmp_path).returncode == 0
    assert configs(tmp_path, "s")[5]["data"]["path"] == "/elsewhere"
    # a plain run now differs from the stored overrides
    plain = run(["run", "space.yaml", "--study", "s", "--budget", "7"], tmp_path)
    assert plain.returncode == 2 and "resume --study s" in plain.stderr and len(configs(tmp_path, "s")) == 6


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["oialr.beta=0.2"], "--set oialr.beta: oialr.beta is searched"),
        (["model.kwargs.hidden=8"], "--set model.kwargs.hidden: model.kwargs.hidden is searched"),
        (["model.kwargs={hidden: 8, depth: 2}"], "--set model.kwargs: model.kwargs.hidden is searched"),
        (["train.epochs"], "--set 'train.epochs': expected key=value"),
        (["train.epocs=1"], "--set train.epocs: unknown key (did you mean 'epochs'?)"),
        (["train.epochs=0"], "--set train.epochs: must be >= 1"),
        (["optim.weight_decay=[1"], "--set optim.weight_decay: cannot parse value"),
        (["train.threads=4"], "--set train.threads: the search sets it for every rank"),
    ],
)
def test_bad_run_set_exits_2_and_creates_nothing(tmp_path, sets, message):
    write_space(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run(["run", "space.yaml", "--study", "x", *[a for s in sets for a in ("--set", s)]], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A folder with a one-trial study 's' run with --set data.path=/a."""
    folder = tmp_path_factory.mktemp("stored")
    write_space(folder, epochs=1)
    proc = run(["run", "space.yaml", "--study", "s", "--budget", "1", "--set", "data.path=/a"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "space.yaml", "--study", "s", "--set", "data.path=/b"],
         "study 's' was run with --set data.path=/a, not --set data.path=/b; continue it with 'oialr-search resume"),
        (["run", "space.yaml", "--study", "s"], "was run with --set data.path=/a, not no --set"),
        (["run", "space.yaml", "--study", "s", "--set", "data.path=/a", "--set", "oialr.beta=0.3"],
         "--set oialr.beta: oialr.beta is searched"),
        (["resume", "--study", "s", "--set", "oialr.beta=0.3"], "--set oialr.beta: oialr.beta is searched"),
        (["resume", "--study", "s", "--set", "data.path=/b", "--set", "train.epochs=0"],
         "--set train.epochs: must be >= 1"),
        (["resume", "--study", "s", "--set", "data.pth=/b"], "--set data.pth: unknown key (did you mean 'path'?)"),
        (["resume", "--study", "s", "--set", "nonsense"], "--set 'nonsense': expected key=value"),
    ],
)
def test_refused_set_on_a_stored_study_changes_nothing(stored, tmp_path, args, message):
    for name in ("space.yaml", "oialr_search.db"):
        shutil.copy(stored / name, tmp_path / name)
    db = (tmp_path / "oialr_search.db").read_bytes()
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run([*args, "--budget", "3"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert (tmp_path / "oialr_search.db").read_bytes() == db
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_stored_overrides_survive_the_spaces_own_set_and_later_wins(tmp_path):
    path = write_space(tmp_path, extra="set: {train.epochs: 3, optim.weight_decay: 0.1}")
    space = load_space(path).with_overrides(["train.epochs=1", " data.path = /x", "train.epochs=2"])
    assert space.overrides == ("data.path=/x", "train.epochs=2")
    assert space.base["train"]["epochs"] == 2 and space.base["optim"]["weight_decay"] == 0.1
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))  # as the database stores it
    assert again.base == space.base and again.overrides == space.overrides
    assert again.config_for({"oialr.beta": 0.1})["train"]["epochs"] == 2
    # replacing the overrides starts from the space's own base, not the overridden one
    assert again.with_overrides([]).base["train"]["epochs"] == 3
    assert merge_overrides(["a.b=1", "c=2"], ["a.b=3"]) == ("c=2", "a.b=3")
    assert load_space(path).to_dict().keys() == {"path", "raw", "base", "sampler"}  # no overrides: none stored
    with pytest.raises(OverrideError, match="--set train.device: the search sets it"):
        load_space(path).with_overrides(["train.device=cpu"])


def test_a_missing_data_set_is_refused_before_any_search_and_a_moved_one_is_followed(tmp_path):
    """Found by a sweep: a wrong --set data.path created the study, spent its whole budget on FAILED trials
    and exited 0. Now every run and resume looks for the data set first; and a study pointed at a moved
    copy with resume --set data.path reads it there (stopped trials too, see test_objective)."""
    from ..training.test_data import _write_cifar

    write_space(tmp_path, epochs=1)
    cifar = ["--set", "data.name=cifar10", "--set", "train.batch_size=32"]
    missing = run(["run", "space.yaml", "--study", "s", "--budget", "1", *cifar, "--set", "data.path=/nonexistent"],
                  tmp_path)
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert missing.stderr.count("\n") == 1 and "data.path: /nonexistent is not a folder with the CIFAR-10" in \
        missing.stderr and "(every trial would fail loading its data)" in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]  # nothing written
    # under mpiexec every rank looks (each may see its own disk), rank 0 says it once and none aborts
    both = run(["run", "space.yaml", "--study", "s", "--budget", "1", *cifar, "--set", "data.path=/nonexistent"],
               tmp_path, ranks=2)
    assert both.returncode == 2 and both.stderr.count("\n") == 1 and "/nonexistent is not a folder" in both.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]
    _write_cifar(tmp_path / "c10")
    first = run(["run", "space.yaml", "--study", "s", "--budget", "1", *cifar, "--set",
                 f"data.path={tmp_path / 'c10'}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.move(tmp_path / "c10", tmp_path / "moved")
    before = (tmp_path / "oialr_search.db").read_bytes()
    gone = run(["resume", "--study", "s", "--budget", "2"], tmp_path)
    assert gone.returncode == 2 and "c10 is not a folder with the CIFAR-10 python batches" in gone.stderr
    assert "point the study at it with 'oialr-search resume --study s --set data.path=…'" in gone.stderr
    assert (tmp_path / "oialr_search.db").read_bytes() == before
    moved = run(["resume", "--study", "s", "--budget", "2", "--set", f"data.path={tmp_path / 'moved'}"], tmp_path)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert [t["state"] for t in trials(tmp_path, "s")] == ["COMPLETE", "COMPLETE"]


def test_two_jobs_resumed_with_set_at_once_keep_both_overrides(tmp_path):
    """Each job merges its --set into the overrides stored when it writes, not into those it read at its
    start (a review: of two resume --set at once, the later write dropped the other's override)."""
    from oialr_search.search._runner import _updated_space
    from oialr_search.storage import Store

    space = load_space(write_space(tmp_path))
    store = Store(f"sqlite:///{tmp_path}/db.sqlite")
    store.create_study(name="s", space=space.to_dict(), space_path=space.path, metric="val_loss",
                       direction="minimize", backend="optuna", seed=0, budget=3)
    for overrides in (["train.batch_size=64"], ["train.epochs=1"]):  # the second job read the study before
        store.update_study_space("s", lambda stored, o=overrides: _updated_space(stored, o, None))
    stored = SearchSpace.from_dict(store.get_study("s").space)
    assert stored.overrides == ("train.batch_size=64", "train.epochs=1")
    assert stored.base["train"]["batch_size"] == 64 and stored.base["train"]["epochs"] == 1
    store.engine.dispose()
