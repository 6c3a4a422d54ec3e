"""The train command as a user runs it."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

TINY = """\
model: {name: mlp, kwargs: {hidden: 32, depth: 1}}
data: {name: digits, val_fraction: 0.2}
oialr: {delay: 0.3, update_frequency: 5, beta: 0.2, keep_last_layer: false}
train: {epochs: 2, batch_size: 128}
"""


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "oialr_search", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_train_writes_metrics_and_resolved_config(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    proc = run_cli("train", "tiny.yaml", "--set", "oialr.beta=0.3", "--out", "out/metrics.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/2" in proc.stdout and "epoch 2/2" in proc.stdout
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    for key in ("val_loss", "top1", "top5", "train_seconds", "trainable_fraction", "compression", "final_ranks"):
        assert key in metrics
    assert metrics["config"]["oialr"]["beta"] == 0.3
    resolved = (tmp_path / "out/metrics.config.yaml").read_text()
    assert "beta: 0.3" in resolved
    # the resolved config trains as it is
    again = run_cli("train", "out/metrics.config.yaml", "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["val_loss"] == pytest.approx(metrics["val_loss"])


def test_train_weights_give_the_trained_model_and_how_its_inputs_were_made(tmp_path):
    """Found by a sweep: train left no file that load_model reads, and nothing said how to feed the model."""
    import torch

    from oialr_search import load_model
    from oialr_search.training import Trainer, config_from_dict
    from oialr_search.training._weights import read_weights

    (tmp_path / "tiny.yaml").write_text(TINY)
    proc = run_cli("train", "tiny.yaml", "--quiet", "--weights", "model.pt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    val_loss = summary["val_loss"]
    payload = read_weights(tmp_path / "model.pt")
    pre = payload["preprocess"]
    assert pre["classes"] == [str(i) for i in range(10)] and pre["img_size"] == 8 and pre["scale"] == 16.0
    assert pre["crop_pct"] is None and len(pre["mean"]) == len(pre["std"]) == 1
    assert payload["metrics"]["val_loss"] == val_loss
    model = load_model(None, tmp_path / "model.pt")
    trainer = Trainer(config_from_dict(payload["config"]), log=None)
    trainer.model = model
    assert trainer.evaluate()[0] == pytest.approx(val_loss, rel=1e-6)
    # the recorded preprocessing, applied to the data set's own pixels, feeds the model as the trainer did
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / pre["scale"] - pre["mean"][0]) / pre["std"][0]
    with torch.no_grad():
        hits = (model(x).argmax(1) == torch.tensor(digits.target)).float().mean().item() * 100
    assert hits >= summary["top1"] - 5  # train and validation images alike (a wrong scale gives ~10 %)
    refused = run_cli("train", "tiny.yaml", "--quiet", "--out", "m.json", "--weights", "m.json", cwd=tmp_path)
    assert refused.returncode == 2 and "--weights m.json: would write over --out m.json" in refused.stderr


def test_train_writes_through_links_and_descriptors_and_refuses_a_socket(tmp_path):
    """A dangling link's target folder is made (its check and its write looked at different folders: a review),
    a named descriptor is written through (resolved and replaced, /dev/stdout wiped the log stdout appended
    to), and a socket is refused up front (it failed after training)."""
    import socket

    (tmp_path / "tiny.yaml").write_text(TINY)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        refused = run_cli("train", "tiny.yaml", "--quiet", "--out", "sock", cwd=tmp_path)
    assert refused.returncode == 2 and "--out sock: is not a file, device or pipe" in refused.stderr, refused.stderr
    # refused up front too, each found by a third review to fail after training or to lose data
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "d.config.yaml").mkdir()
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.commit()
    for args, message in ((["--checkpoint", "pipe"], "--checkpoint pipe: must be a file (written every epoch"),
                          (["--out", "/dev/stdin"], "--out /dev/stdin: descriptor 0 is not open for writing"),
                          (["--out", "d.json"], "d.config.yaml (the resolved config beside --out) d.config.yaml: is "
                                                "a folder"),
                          (["--weights", "other.db"], "--weights other.db: is a SQLite database; write it elsewhere")):
        refused = run_cli("train", "tiny.yaml", "--quiet", *args, cwd=tmp_path)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1
    (tmp_path / "link.json").symlink_to(tmp_path / "made" / "m.json")
    (tmp_path / "mystdout").symlink_to("/proc/self/fd/1")
    log = tmp_path / "log.txt"
    log.write_text("an earlier line\n")
    with log.open("ab") as fh:
        proc = subprocess.run([sys.executable, "-m", "oialr_search", "train", "tiny.yaml", "--quiet", "--out",
                               "link.json", "--weights", "mystdout"], cwd=tmp_path, stdout=fh, stderr=subprocess.PIPE,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "link.json").is_symlink() and json.loads((tmp_path / "made" / "m.json").read_text())["top1"] >= 0
    assert (tmp_path / "link.config.yaml").is_file()  # named after --out, beside it
    data = log.read_bytes()
    assert data.startswith(b"an earlier line\n") and len(data) > 10_000  # the weights, appended


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.yaml"], "missing.yaml: no such config file"),
        (["nosuchbundle"], "no such config file or bundled config"),
        (["tiny.yaml", "--set", "oialr.bta=1"], "oialr.bta: unknown key (did you mean 'beta'?)"),
        (["tiny.yaml", "--set", "optim.lr=-1"], "optim.lr: must be > 0"),
        (["tiny.yaml", "--set", "model.name=no_such_net_xyz"], "model.name: unknown model"),
        (["tiny.yaml", "--set", "data.name=cifar10", "--set", "data.path=nowhere"], "nowhere is not a folder"),
        (["tiny.yaml", "--resume"], "--resume needs --checkpoint"),
        (["binary.yaml"], "binary.yaml: not UTF-8 text"),
        (["tiny.yaml", "--out", "tiny.yaml/m.json"], "--out tiny.yaml/m.json: cannot be written (tiny.yaml is not a"),
        (["tiny.yaml", "--checkpoint", "tiny.yaml/r.ckpt"], "--checkpoint tiny.yaml/r.ckpt: cannot be written"),
        (["tiny.yaml", "--checkpoint", "."], "--checkpoint .: is a folder"),
        (["tiny.yaml", "--epochs", "2"], "unrecognized arguments: --epochs 2"),
        (["tiny.yaml", "--set", "model.kwargs.hidden=-5"], "model.kwargs.hidden: must be an integer >= 1, got -5"),
        (["tiny.yaml", "--set", "model.name=mini_vit", "--set", "model.kwargs={}", "--set", "model.kwargs.depth=-1"],
         "model.kwargs.depth: must be an integer >= 0, got -1"),
        (["tiny.yaml", "--out", "tiny.yaml"], "--out tiny.yaml: would write over the config being trained"),
        (["tiny.yaml", "--out", "tiny.json", "--checkpoint", "./tiny.yaml"], "--checkpoint ./tiny.yaml: would write "
         "over the config being trained (tiny.yaml)"),
        (["tiny.yaml", "--out", "r.bin", "--checkpoint", "r.bin"], "--checkpoint r.bin: would write over --out r.bin"),
        (["tiny.yaml", "--out", "m.json", "--checkpoint", "m.config.yaml"], "--checkpoint m.config.yaml: would write "
         "over m.config.yaml (the resolved config --out writes beside m.json)"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    proc = run_cli("train", *args, *([] if "--out" in args else ["--out", "m.json"]), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bundled_default_config_is_valid():
    from oialr_search.training import bundled_configs, load_config, resolve_config_path

    assert "mnist_vit" in bundled_configs()
    cfg = load_config(resolve_config_path("mnist_vit"))
    assert cfg.model.name == "mini_vit" and cfg.data.name == "mnist" and cfg.oialr.enabled
    assert Path(resolve_config_path("mnist_vit")).is_file()


def test_output_into_a_closed_pipe_ends_quietly_as_sigpipe(tmp_path):
    """`oialr-search studies | head -1`: once the reader has gone, the next write fails; the command ends with
    141 (128 + SIGPIPE, as git and grep do) and no traceback (found by a sweep: BrokenPipeError, exit 1 or 120)."""
    (tmp_path / "empty.db").write_bytes(b"")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        proc = subprocess.run([sys.executable, "-m", "oialr_search", "studies", "--storage", "sqlite:///empty.db"],
                              cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_an_empty_pareto_csv_has_the_columns_of_a_full_one(tmp_path, capsys):
    """A CSV's columns do not depend on its rows (found by a sweep: with no trial on the front the header
    lacked the parameter columns)."""
    from oialr_search.cli import main
    from oialr_search.storage import COMPLETE, FAILED, Store

    url = f"sqlite:///{tmp_path}/s.db"
    store = Store(url)
    objectives = [{"metric": "val_loss", "direction": "minimize"}, {"metric": "trainable_fraction",
                                                                     "direction": "minimize"}]
    study = store.create_study(name="s", space={"raw": {"params": {"optim.lr": {}, "oialr.beta": {}}}},
                               space_path="", metric="val_loss", direction="minimize", backend="optuna", seed=0,
                               budget=2, objectives=objectives)
    failed = store.start_trial(study, params={"optim.lr": 0.1, "oialr.beta": 0.2}, rank=0, island=None, device="cpu")
    store.finish_trial(failed.id, state=FAILED, error="boom")
    assert main(["pareto", "--study", "s", "--storage", url, "--format", "csv"]) == 0
    empty = capsys.readouterr().out.splitlines()
    done = store.start_trial(study, params={"optim.lr": 0.1, "oialr.beta": 0.2}, rank=0, island=None, device="cpu")
    store.finish_trial(done.id, state=COMPLETE, value=0.5, values=[0.5, 0.1], feasible=True)
    store.engine.dispose()
    assert main(["pareto", "--study", "s", "--storage", url, "--format", "csv"]) == 0
    full = capsys.readouterr().out.splitlines()
    assert empty[0] == full[0] == "number,val_loss,trainable_fraction,oialr.beta,optim.lr"
    assert full[1:] == ["1,0.5,0.1,0.2,0.1"]


@pytest.mark.parametrize("value", ["abc", "1.5", "-1"])
def test_top_takes_a_whole_number(value, capsys):
    from oialr_search.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["report", "--study", "s", "-o", "r.html", "--top", value])
    assert exit_.value.code == 2
    assert f"argument --top: expected a whole number >= 0, got '{value}'" in capsys.readouterr().err


def test_status_tells_stopped_trials_from_running_ones(tmp_path, capsys):
    """A RUNNING trial without a live heartbeat belongs to a job that was stopped or died: status counts it
    apart, says how to continue it, and the elapsed time stops (found by a sweep: it counted as running, and
    the elapsed time grew for as long as nobody resumed the study)."""
    import time

    from oialr_search.cli import main
    from oialr_search.storage import COMPLETE, Store

    url = f"sqlite:///{tmp_path}/s.db"
    store = Store(url)
    study = store.create_study(name="s", space={"raw": {"params": {"optim.lr": {}}}}, space_path="",
                               metric="val_loss", direction="minimize", backend="optuna", seed=0, budget=3)
    done = store.start_trial(study, params={"optim.lr": 0.1}, rank=0, island=None, device="cpu")
    store.finish_trial(done.id, state=COMPLETE, value=0.5, values=[0.5], feasible=True)
    live = store.start_trial(study, params={"optim.lr": 0.2}, rank=0, island=None, device="cpu")
    left = store.start_trial(study, params={"optim.lr": 0.3}, rank=0, island=None, device="cpu")
    store.release(left.id)  # as a preempted job leaves it: no heartbeat
    assert main(["status", "--study", "s", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "trials: 1 complete, 1 running, 1 stopped, 0 pruned" in out
    assert "stopped: 1 trial(s) whose job ended or died" in out and "oialr-search resume --study s" in out
    store.release(live.id)  # now no job trains any: the elapsed time is the study's, and stays
    elapsed = []
    for _ in range(2):
        assert main(["status", "--study", "s", "--storage", url]) == 0
        out = capsys.readouterr().out
        assert "0 running, 2 stopped" in out and "(no job is training a trial now)" in out
        elapsed.append(next(line for line in out.splitlines() if line.startswith("elapsed:")))
        time.sleep(1.1)
    assert elapsed[0] == elapsed[1]
    store.engine.dispose()


def test_status_of_a_study_whose_only_trial_stopped_counts_the_time_to_its_last_beat(tmp_path, capsys, monkeypatch):
    import time

    from oialr_search.cli import main
    from oialr_search.storage import Store

    monkeypatch.setenv("OIALR_SEARCH_HEARTBEAT", "0.1")  # a trial is dead 0.6 s after its last beat
    url = f"sqlite:///{tmp_path}/s.db"
    store = Store(url)
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss",
                               direction="minimize", backend="optuna", seed=0, budget=1)
    trial = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    time.sleep(1.2)
    assert store.beat(trial.id, grace=None)  # its last sign of life, 1.2 s after its start; then its job dies
    time.sleep(0.8)
    assert main(["status", "--study", "s", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "0 running, 1 stopped" in out and "elapsed: 1s (no job is training a trial now)" in out, out
    store.engine.dispose()


def test_an_error_about_the_storage_of_the_environment_names_the_variable_as_its_subject_only(monkeypatch):
    from oialr_search.storage._errors import storage_named

    monkeypatch.setenv("OIALR_SEARCH_STORAGE", "sqlite:///x.db")
    assert storage_named("--storage sqlite:///x.db: no such database file", None) == \
        "OIALR_SEARCH_STORAGE=sqlite:///x.db: no such database file"
    hint = "sqlite:///x.db: schema v5 is older; upgrade it with: oialr-search storage upgrade --storage sqlite:///x.db"
    assert storage_named(hint, None) == hint  # the command it suggests works as it is (found in review)
    assert storage_named("--storage sqlite:///x.db: gone", "sqlite:///x.db") == "--storage sqlite:///x.db: gone"


def test_status_of_a_study_whose_only_trial_was_released_says_its_time_is_unknown(tmp_path, capsys):
    """A job stopped (SIGTERM, Ctrl-C) before any trial ended: the released trial has no heartbeat and no
    finish, so nothing says how long it ran (status printed "elapsed: 0s", found by a sweep)."""
    from oialr_search.cli import main
    from oialr_search.storage import Store

    url = f"sqlite:///{tmp_path}/s.db"
    store = Store(url)
    study = store.create_study(name="s", space={"raw": {}}, space_path="", metric="val_loss",
                               direction="minimize", backend="optuna", seed=0, budget=1)
    trial = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
    store.release(trial.id)
    assert main(["status", "--study", "s", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "0 running, 1 stopped" in out, out
    assert "elapsed: unknown (no job is training a trial now): the last job stopped before any trial ended" in out
    store.engine.dispose()


def test_binary_weights_are_not_written_to_a_terminal(tmp_path):
    """``--weights /dev/stdout`` on a terminal would fill it with binary (as gzip, refused up front); the text
    outputs may go there."""
    import pty

    (tmp_path / "tiny.yaml").write_text(TINY)
    leader, follower = pty.openpty()
    try:
        for args in (["train", "tiny.yaml", "--quiet", "--weights", "/dev/stdout"],
                     ["export", "--study", "s", "--storage", f"sqlite:///{tmp_path}/s.db", "--weights", "/dev/stdout"]):
            proc = subprocess.run([sys.executable, "-m", "oialr_search", *args], cwd=tmp_path, stdout=follower,
                                  stderr=subprocess.PIPE, text=True, timeout=300)
            assert proc.returncode == 2, proc.stderr
            said = proc.stderr.strip()
            assert said.endswith("--weights /dev/stdout: is a terminal, and this output is binary; give a file name "
                                 "such as model.pt, or redirect it to a file"), said
            assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "s.db").exists()
    finally:
        os.close(leader)
        os.close(follower)


def test_the_command_ignores_preemption_signals_once_its_work_is_done(tmp_path, monkeypatch):
    """A search's rank that has finished still waits for the others while MPI finalizes: SLURM's SIGTERM killed
    it there, and the finished job's exit code 143 read as a failed run (a review)."""
    import signal

    from oialr_search.cli import console

    monkeypatch.setattr(sys, "argv", ["oialr-search", "studies", "--storage", f"sqlite:///{tmp_path}/none.db"])
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with pytest.raises(SystemExit) as exited:
            console()
        assert isinstance(exited.value.code, int)
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in before)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
