"""Multi-rank trials: ``run --ranks-per-trial 2`` under the venv's mpiexec (gloo on CPU), 2 trials at a
time of 2 ranks each, on both backends; only a trial's first rank writes to the store."""

import json
import os
import sys
from pathlib import Path

import pytest

from .._processes import run_killable
from .test_search_cli import MPIEXEC, run, trials, write_space

ASHA = "pruner: {type: asha, min_epochs: 1, reduction: 2}"


@pytest.mark.parametrize("backend", ["propulate", "optuna"])
def test_two_trials_of_two_ranks(tmp_path, backend):
    write_space(tmp_path, epochs=3, extra=ASHA)
    proc = run(["run", "space.yaml", "--study", "k2", "--budget", "6", "--backend", backend,
                "--ranks-per-trial", "2"], tmp_path, ranks=4, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 worker(s) of 2 ranks" in proc.stdout
    rows = trials(tmp_path, "k2")
    assert len(rows) >= 6 and [r["number"] for r in rows] == list(range(len(rows)))
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) >= 6 and all(r["state"] != "FAILED" for r in rows), [r["error"] for r in rows]
    assert {r["rank"] for r in rows} <= {0, 2}  # the leaders of the two groups
    assert all(r["device"] == "cpu +1" for r in rows)
    for r in finished:  # epochs stored once, by the leader, up to where the trial stopped
        epochs = json.loads(r["metrics"]) if r["metrics"] else {}
        assert r["last_epoch"] == (3 if r["state"] == "COMPLETE" else r["last_epoch"]) and epochs


def test_ranks_per_trial_must_divide_the_ranks(tmp_path):
    write_space(tmp_path)
    proc = run(["run", "space.yaml", "--study", "bad", "--ranks-per-trial", "2"], tmp_path, ranks=3)
    assert proc.returncode == 2
    assert "--ranks-per-trial 2: 3 rank(s) do not split into trials of 2 ranks" in proc.stderr
    assert not (tmp_path / "oialr_search.db").exists()
    proc = run(["run", "space.yaml", "--study", "bad", "--ranks-per-trial", "0"], tmp_path)
    assert proc.returncode == 2 and "--ranks-per-trial: must be at least 1" in proc.stderr


LOST = '''
from torch import nn


class _Lost(nn.Module):
    def forward(self, x):
        raise RuntimeError("CUDA error: device-side assert triggered\\nCompile with TORCH_USE_CUDA_DSA")


def lost_device_model(**_):
    return _Lost()
'''


@pytest.mark.parametrize("backend,ranks", [("propulate", 2), ("optuna", 2), ("optuna", None)])
def test_a_rank_whose_device_is_lost_takes_no_more_trials(tmp_path, backend, ranks):
    (tmp_path / "lost.py").write_text(LOST)
    write_space(tmp_path, extra="set: {model.name: 'lost:lost_device_model'}")
    proc = run(["run", "space.yaml", "--study", "lost", "--budget", "8", "--backend", backend], tmp_path,
               ranks=ranks, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = trials(tmp_path, "lost")
    assert len(rows) == (ranks or 1)  # one failed trial per rank, then nothing more
    assert all(r["state"] == "FAILED" and "device-side assert" in r["error"] for r in rows)
    assert proc.stderr.count("this rank takes no more trials") == (ranks or 1)


TIMEOUT_WORKER = r'''
import json, os, sys, time
from pathlib import Path

import torch
from mpi4py import MPI

from oialr_search.search import load_space
from oialr_search.search._objective import run_trial
from oialr_search.training._distributed import close_trial_group, init_trial_group

torch.set_num_threads(1)
comm = MPI.COMM_WORLD
group = init_trial_group(comm, "cpu")
space = load_space(Path(sys.argv[1]))
if comm.Get_rank() == 0:
    time.sleep(1.5)  # the leader starts later: its own clock would reach the timeout 1.5 s after the other's
out = run_trial(space, space.start_params(), device="cpu", threads=1, group=group, should_stop=lambda: False)
def threads():
    return sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
before = threads()
close_trial_group(group)
outs = comm.gather({"state": out.state, "error": out.error, "preempted": out.preempted, "threads": [before, threads()]},
                   root=0)
if comm.Get_rank() == 0:
    print("RESULT " + json.dumps(outs), flush=True)
'''


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process's threads from /proc (Linux)")
def test_a_group_times_out_together_even_when_its_ranks_started_apart(tmp_path):
    """The ranks of a trial stop at the step any of them asks; each must then see the timeout, not a
    preemption (which would release the trial and end the job), and short epochs must stop too. Then
    closing the group ends its threads (Linux: read from /proc)."""
    write_space(tmp_path, epochs=400, extra="trial_timeout: 3")  # epochs of 12 steps: shorter than a check window
    (tmp_path / "worker.py").write_text(TIMEOUT_WORKER)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", str(tmp_path / "worker.py"),
           str(tmp_path / "space.yaml")]
    proc = run_killable(cmd, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    for out in outs:
        assert out["state"] == "FAILED" and not out["preempted"], outs
        assert out["error"] == "timeout: the trial ran longer than 3s", outs
        # the group is gone with its worker threads: none is left to abort the interpreter's exit
        before, after = ([t for t in names if t.startswith(("pt_gloo", "gloo_"))] for names in out["threads"])
        assert before and not after, out["threads"]


ALONE = '''
from pathlib import Path

import torch.distributed as dist
from torch import nn

from oialr_search.training._models import create_model


class _FailsAlone(nn.Module):
    """Fails on one rank of the trial, once per run (a marker file says it has), at its 3rd forward."""

    def __init__(self, inner, rank, marker):
        super().__init__()
        self.inner, self.rank, self.marker, self.calls = inner, rank, Path(marker), 0

    def forward(self, x):
        self.calls += 1
        if dist.get_rank() == self.rank and self.calls == 3 and not self.marker.exists():
            self.marker.write_text("failed")
            raise MemoryError("out of memory on this rank alone")
        return self.inner(x)


def fails_alone_model(*, rank, marker, **kwargs):
    return _FailsAlone(create_model("mlp", **kwargs), rank, marker)
'''


@pytest.mark.parametrize("failing", [0, 1], ids=["leader", "follower"])
def test_a_rank_that_fails_alone_stops_its_group_instead_of_failing_every_later_trial(tmp_path, failing):
    """The other rank waits in a collective until it times out (5 s here); then the process group is unusable,
    so the group takes no more trials (the job ends cleanly) and the trial's error names the failing rank."""
    (tmp_path / "alone.py").write_text(ALONE)
    write_space(tmp_path, epochs=2, extra="set: {model.name: 'alone:fails_alone_model', "
                                          f"model.kwargs: {{hidden: 24, depth: 1, rank: {failing}, "
                                          f"marker: '{tmp_path / 'failed'}'}}}}")
    env = {"PYTHONPATH": str(tmp_path), "OIALR_SEARCH_COLLECTIVE_TIMEOUT": "5"}
    proc = run(["run", "space.yaml", "--study", "alone", "--budget", "3", "--ranks-per-trial", "2"], tmp_path,
               ranks=2, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = trials(tmp_path, "alone")
    assert [r["state"] for r in rows] == ["FAILED"], [(r["state"], r["error"]) for r in rows]
    assert "MemoryError: out of memory on this rank alone" in rows[0]["error"]
    if failing:  # the leader only waited: the stored error is the follower's
        assert rows[0]["error"].startswith("rank 1 of the trial failed: MemoryError"), rows[0]["error"]
    assert proc.stderr.count("these ranks take no more trials") == 1, proc.stderr[-3000:]
    resumed = run(["resume", "--study", "alone", "--ranks-per-trial", "2"], tmp_path, ranks=2, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["state"] for r in trials(tmp_path, "alone")][1:] == ["COMPLETE"] * 2  # a new job trains again


SAVE_FAILS = '''
import sys
from pathlib import Path

import torch.distributed as dist
from torch import nn

from oialr_search.training._models import create_model


class _SaveFails(nn.Module):
    """The leader's first epoch checkpoint fails (a full disk), after the epoch's last collective."""

    def __init__(self, inner, marker):
        super().__init__()
        self.inner, self.marker = inner, Path(marker)

    def forward(self, x):
        return self.inner(x)

    def state_dict(self, *args, **kwargs):
        if sys._getframe(1).f_code.co_name == "_save" and dist.get_rank() == 0 and not self.marker.exists():
            self.marker.write_text("failed")
            raise OSError(28, "No space left on device")
        return super().state_dict(*args, **kwargs)


def save_fails_model(*, marker, **kwargs):
    return _SaveFails(create_model("mlp", **kwargs), marker)
'''


def test_a_leader_that_fails_between_epochs_does_not_strand_its_followers(tmp_path):
    """The followers wait for the epoch's keep/stop decision; the leader's OVER stops them instead, and the
    group, whose collectives are intact, goes on with the next trials (found in review: it hung for good)."""
    (tmp_path / "savefail.py").write_text(SAVE_FAILS)
    write_space(tmp_path, epochs=2, extra="set: {model.name: 'savefail:save_fails_model', model.kwargs: "
                                          f"{{hidden: 24, depth: 1, marker: '{tmp_path / 'failed'}'}}}}")
    proc = run(["run", "space.yaml", "--study", "save", "--budget", "3", "--ranks-per-trial", "2"], tmp_path,
               ranks=2, env={"PYTHONPATH": str(tmp_path), "OIALR_SEARCH_COLLECTIVE_TIMEOUT": "5"}, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = trials(tmp_path, "save")
    assert [r["state"] for r in rows] == ["FAILED", "COMPLETE", "COMPLETE"], [(r["state"], r["error"]) for r in rows]
    assert "No space left on device" in rows[0]["error"]
    assert "take no more trials" not in proc.stderr
