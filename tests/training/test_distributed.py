"""A run trained by 2 ranks (DDP over gloo, under the venv's mpiexec) equals a single-process run with
the same global batch, and the OIALR switch and every basis update leave the replicas identical."""

import json
import os
import sys
from pathlib import Path

import pytest

from .._processes import run_killable

MPIEXEC = Path(sys.executable).parent / "mpiexec"

WORKER = r'''
import json, sys
import torch
from mpi4py import MPI
from oialr_search.training import Trainer, _compile, config_from_dict
from oialr_search.training._distributed import close_trial_group, init_trial_group

torch.set_num_threads(1)
_compile.BACKEND = "aot_eager"  # train.compile's graphs without code generation (seconds, not minutes)
comm = MPI.COMM_WORLD
cfg = {
    "model": {"name": "mlp", "kwargs": {"hidden": 48, "depth": 2}},
    # augmented (argv 4): the ranks shift their items as one process shifts the whole batch
    "data": {"name": "digits", "val_fraction": 0.2, "augment": sys.argv[4] == "augment"},
    "optim": {"lr": 0.003},
    "oialr": {"delay": 0.3, "update_frequency": 5, "beta": 0.2, "layer_fraction": 1.0},
    # 1438 training images: the last global batch (30) splits 15/15; batch 100 makes it uneven below
    "train": {"epochs": 3, "batch_size": int(sys.argv[1]), "seed": 1, "precision": sys.argv[2],
              "compile": sys.argv[3]},
}
group = init_trial_group(comm, "cpu")
ddp = Trainer(config_from_dict(cfg), log=None, group=group)
events = []
original = ddp.oialr.before_step
def spy(step):
    record = original(step)
    if record is not None:
        events.append(step)
    return record
ddp.oialr.before_step = spy
states = []
def snapshot(record):
    flat = torch.cat([p.detach().flatten() for p in ddp.model.parameters()])
    states.append(flat)
    return True
res = ddp.fit(on_epoch=snapshot)
everyone = comm.gather([s.tolist() for s in states], root=0)
if comm.Get_rank() == 0:
    identical = all(other == everyone[0] for other in everyone)
    single = Trainer(config_from_dict(cfg), log=None).fit()
    print("RESULT " + json.dumps({
        "identical": identical, "events": events, "ddp": [res.val_loss, res.top1, res.train_seconds > 0],
        "single": [single.val_loss, single.top1], "ranks": [res.final_ranks, single.final_ranks],
        "train_loss": [[e.train_loss for e in res.epochs], [e.train_loss for e in single.epochs]],
        "updates": [len(res.oialr_updates), len(single.oialr_updates)]}), flush=True)
close_trial_group(group)
'''


def _run(tmp_path, batch, precision="fp32", compile="none", augment="plain", timeout=300):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", str(script), str(batch), precision, compile,
           augment]
    proc = run_killable(cmd, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize(("batch", "compile", "augment"), [(64, "none", "plain"), (100, "none", "augment"),
                                                        (64, "default", "plain")])
def test_two_rank_run_equals_single_process_and_replicas_stay_identical(tmp_path, batch, compile, augment):
    r = _run(tmp_path, batch, compile=compile, augment=augment)  # compiled: DDP wraps the model compiled in place
    assert len(r["events"]) > 3  # the switch and several basis updates happened
    assert r["identical"]  # bitwise, after every epoch, on both ranks
    assert r["ranks"][0] == r["ranks"][1] and r["updates"][0] == r["updates"][1]
    assert r["ddp"][0] == pytest.approx(r["single"][0], rel=1e-4, abs=1e-5)
    assert r["ddp"][1] == pytest.approx(r["single"][1], abs=0.1)  # at most one validation image apart
    for a, b in zip(*r["train_loss"], strict=True):
        assert a == pytest.approx(b, rel=1e-4)


RESUME_WORKER = r'''
import json, sys
import torch
from mpi4py import MPI
from oialr_search.training import Trainer, config_from_dict
from oialr_search.training._distributed import close_trial_group, init_trial_group

torch.set_num_threads(1)
comm = MPI.COMM_WORLD
cfg = config_from_dict({
    "model": {"name": "mlp", "kwargs": {"hidden": 48, "depth": 2}},
    "data": {"name": "digits", "val_fraction": 0.2},
    "optim": {"lr": 0.003},
    # no basis update after the switch: none may rebuild the DDP wrapper right after the resume
    "oialr": {"delay": 0.3, "update_frequency": 1000, "beta": 0.2, "layer_fraction": 1.0},
    "train": {"epochs": 3, "batch_size": 64, "seed": 1, "precision": "fp32"},
})
group = init_trial_group(comm, "cpu")
checkpoint, leader = sys.argv[1], comm.Get_rank() == 0
first = Trainer(cfg, log=None, group=group, checkpoint=checkpoint, save=leader)
first.fit(stop_after=2)  # past the switch (delay 0.3 of 3 epochs): the checkpoint holds a low-rank model
low_rank = bool(first.oialr.ranks)
comm.Barrier()
resumed = Trainer(cfg, log=None, group=group, checkpoint=checkpoint, resume=True, save=leader).fit()
whole = Trainer(cfg, log=None, group=group).fit()
if leader:
    print("RESULT " + json.dumps({"low_rank": low_rank, "resumed": [resumed.val_loss, resumed.final_ranks],
                                  "whole": [whole.val_loss, whole.final_ranks]}), flush=True)
close_trial_group(group)
'''


def test_a_two_rank_run_resumes_after_the_switch_as_if_never_stopped(tmp_path):
    """A preempted multi-rank trial past the OIALR switch resumes (found by a sweep: the DDP wrapper was
    built before the resume made the model low-rank, so it tracked the dense weights, and the first step
    failed with 'Expected to have finished reduction'; the resumed trial was stored FAILED)."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME_WORKER)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", str(script), str(tmp_path / "run.ckpt")]
    proc = run_killable(cmd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    assert r["low_rank"]
    assert r["resumed"][1] == r["whole"][1]
    assert r["resumed"][0] == pytest.approx(r["whole"][0], rel=1e-6)


def test_a_global_batch_smaller_than_two_items_per_rank_is_refused():
    """A rank with an empty share would leave the others waiting in a collective, and gloo aborts the
    process (found in review): a clear error instead, before anything is loaded."""
    from oialr_search.exceptions import ConfigError
    from oialr_search.training import Trainer, config_from_dict
    from oialr_search.training._distributed import TrialGroup

    cfg = config_from_dict({"data": {"name": "digits"}, "train": {"batch_size": 3}})
    with pytest.raises(ConfigError, match=r"train.batch_size: 3 is too small for a trial trained by 2 ranks.*\(4\)"):
        Trainer(cfg, log=None, group=TrialGroup(0, 2))


OWN_RANDOMNESS_WORKER = r"""
import json, sys
import torch
from mpi4py import MPI
from oialr_search.training import Trainer, config_from_dict
from oialr_search.training._distributed import close_trial_group, init_trial_group

torch.set_num_threads(1)
comm = MPI.COMM_WORLD
cfg = config_from_dict({
    "model": {"name": "bnmodel:build"},  # BatchNorm and dropout
    "data": {"name": "digits", "val_fraction": 0.2},
    "oialr": {"delay": 0.3, "update_frequency": 5, "beta": 0.2, "layer_fraction": 1.0},
    "train": {"epochs": 2, "batch_size": 64, "seed": 1, "precision": "fp32"},
})
group = init_trial_group(comm, "cpu")
checkpoint, leader = sys.argv[1], comm.Get_rank() == 0
whole = Trainer(cfg, log=None, group=group)
masks = []
whole.model[4].register_forward_hook(lambda m, i, o: masks.append((o != 0).flatten().tolist()) if m.training else None)
res = whole.fit()
statistics = torch.cat([whole.model[2].running_mean, whole.model[2].running_var]).tolist()
whole.group, whole.val_batches.rank, whole.val_batches.ranks = None, 0, 1
own = whole.evaluate()  # this rank's model alone on the whole validation split
Trainer(cfg, log=None, group=group, checkpoint=checkpoint, save=leader).fit(stop_after=1)
comm.Barrier()  # the leader's checkpoint is written before any rank reads it (a search resumes in a later job)
resumed = Trainer(cfg, log=None, group=group, checkpoint=checkpoint, resume=True, save=leader).fit()
everyone = comm.gather({"mask": masks[0], "stats": statistics, "own": own[0]}, root=0)
if leader:
    agree = sum(a == b for a, b in zip(everyone[0]["mask"], everyone[1]["mask"])) / len(masks[0])
    print("RESULT " + json.dumps({"agree": agree, "stats": everyone[0]["stats"] == everyone[1]["stats"],
                                  "reported": res.val_loss, "own": [e["own"] for e in everyone],
                                  "resumed": resumed.val_loss}), flush=True)
close_trial_group(group)
"""

BN_MODEL = """
from torch import nn
def build(*, num_classes, in_chans, img_size, **_):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, 32), nn.BatchNorm1d(32),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, num_classes))
"""


def test_each_rank_draws_its_own_dropout_and_the_ranks_evaluate_one_model(tmp_path):
    """Found in review: every rank of a trial drew the same dropout masks (one seed everywhere), and each
    evaluated its shard with its own BatchNorm statistics, so the reported metrics were those of no saved
    model. Now each rank has its own random state (saved in the checkpoint, so a resume stays exact) and
    the statistics are averaged before every evaluation."""
    script, model = tmp_path / "own.py", tmp_path / "bnmodel.py"
    script.write_text(OWN_RANDOMNESS_WORKER)
    model.write_text(BN_MODEL)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", str(script), str(tmp_path / "run.ckpt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = run_killable(cmd, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    assert r["agree"] < 0.8  # independent masks agree on about half the units (one seed: on all)
    assert r["stats"]  # one set of BatchNorm statistics
    assert r["own"][1] == r["own"][0]  # the replicas are one model,
    assert r["own"][0] == pytest.approx(r["reported"], rel=1e-6)  # the one reported (sums in another order)
    assert r["resumed"] == pytest.approx(r["reported"], rel=1e-9)  # every rank resumed its own random state
