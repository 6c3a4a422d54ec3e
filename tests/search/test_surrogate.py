"""SurrogatePick: the Propulate backend runs the most promising of several bred children."""

import math
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
from propulate.population import Individual
from scipy.stats import norm

from oialr_search.search._design import DesignInit
from oialr_search.search._selection import default_breeding
from oialr_search.search._surrogate import SurrogatePick, _normal_scores, expected_improvement

from .test_search_cli import MPIEXEC

LIMITS = {"p0": (0.0, 1.0), "p1": (0, 4)}


class Ind(dict):
    def __init__(self, p0: float, p1: int = 2, loss: float = math.nan) -> None:
        super().__init__(p0=p0, p1=p1)
        self.loss = loss


class Inner:
    """A Conditional's stand-in: breeds the next of ``children``, counting its calls."""

    def __init__(self, children: list, pop_size: int = 4) -> None:
        self.children, self.pop_size, self.calls = list(children), pop_size, 0

    def __call__(self, individuals: list):
        self.calls += 1
        return self.children.pop(0)


def population(xs, f=lambda x: (x - 0.3) ** 2):
    return [Ind(x, loss=f(x)) for x in xs]


def test_the_initial_design_is_not_bred_more_than_once():
    # Propulate's own propagator with the design in front, and enough finite losses for a model: below the
    # breeding population each proposal takes the next design point, without breeding 15 more
    limits = {"a": (0.0, 1.0), "b": (0.0, 1.0)}
    breeding = default_breeding(limits, pop_size=8, rng=random.Random(0), sigma_factor=0.15)
    breeding.false_prop = DesignInit([{"a": i / 20, "b": i / 20} for i in range(20)], limits, breeding.false_prop)
    pop = []
    for i in range(6):
        ind = Individual({"a": 0.9 - i / 10, "b": 0.1 + i / 10}, limits)
        ind.loss = float(i)
        pop.append(ind)
    child = SurrogatePick(breeding, limits, rng=random.Random(0))(pop)
    assert child["a"] == 0.0 and len(breeding.false_prop.points) == 19


def test_real_individuals_are_bred_and_picked_without_changing_the_parents():
    limits = {"a": (0.0, 1.0), "b": (0, 4)}
    breeding = default_breeding(limits, pop_size=4, rng=random.Random(0), sigma_factor=0.15)
    pop = []
    for i in range(10):
        ind = Individual({"a": i / 10, "b": i % 5}, limits)
        ind.loss = (i / 10 - 0.3) ** 2
        pop.append(ind)
    before = [(dict(ind), ind.loss) for ind in pop]
    child = SurrogatePick(breeding, limits, rng=random.Random(0))(pop)
    assert isinstance(child, Individual) and set(child) == {"a", "b"}
    assert [(dict(ind), ind.loss) for ind in pop] == before


def test_an_idle_rank_breeds_without_the_model():
    inner = Inner([Ind(0.9), Ind(0.31)], pop_size=4)
    idle = [True]  # the rank takes no more trials (budget full, preempted, closed)
    pick = SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=2, idle=lambda: idle[0])
    assert pick(population(np.linspace(0, 1, 10)))["p0"] == 0.9 and inner.calls == 1


# Two ranks search with the Propulate backend and a zero-cost objective; each sends itself SIGTERM (a
# preemption) at its 14th trial, once the island breeds with the model. Prints the model fits per rank
# before and after the signal.
PREEMPTED = """
import os, signal, sys
from pathlib import Path
from mpi4py import MPI
from oialr_search.search import SearchRequest, TrialOutcome, load_space, run_search, _study_points, _surrogate
from oialr_search.storage import COMPLETE

fits, calls, signalled, reads = [0, 0], [0], [], [0]
points = _study_points.StudyPoints.points
def read(self):
    reads[0] += 1
    return points(self)
_study_points.StudyPoints.points = read
fit = _surrogate.SurrogatePick._expected_improvement
def counted(self, *args):
    fits[bool(signalled)] += 1
    return fit(self, *args)
_surrogate.SurrogatePick._expected_improvement = counted

def objective(space, params, *, report=None, **_):
    calls[0] += 1
    if calls[0] == 14:
        signalled.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
    value = sum(float(v) for v in params.values())
    record = {"epoch": 1, "step": 1, "train_loss": 1.0, "val_loss": value, "top1": 50.0, "top5": 90.0, "lr": 1e-3,
              "trainable_fraction": 0.5, "seconds": 0.0, "compression": 0.5, "train_seconds": 0.0}
    if report is not None:
        report(record)
    return TrialOutcome(COMPLETE, {"val_loss": value}, [record], [])

folder = Path(sys.argv[1])
req = SearchRequest(study="p", storage=f"sqlite:///{folder}/p.db", space=load_space(folder / "space.yaml"),
                    backend="propulate", budget=400)
rc = run_search(req, objective=objective, quiet=True)
print(f"FITS {MPI.COMM_WORLD.Get_rank()} {rc} {calls[0]} {fits[0]} {fits[1]} {reads[0]}", flush=True)
"""

SMALL_SPACE = """\
base:
  model: {name: mlp}
  data: {name: digits}
params:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  schedule.k_decay: {type: float, low: 0.5, high: 4.0}
"""


def test_a_preempted_rank_fits_no_model_for_the_generations_it_has_left(tmp_path):
    (tmp_path / "space.yaml").write_text(SMALL_SPACE)
    (tmp_path / "worker.py").write_text(PREEMPTED)
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(tmp_path / "worker.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    # by pattern, not by line: mpiexec may forward the two ranks' lines without a newline between them
    rows = re.findall(r"FITS (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", proc.stdout)
    assert proc.returncode == 0 and len(rows) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "surrogate:" not in proc.stderr  # the model read the study's trials from the store
    for _rank, rc, calls, before, after, reads in rows:
        assert (rc, calls) == ("0", "14"), rows  # the job ended cleanly after the preemption, no trial more
        assert int(before) > 0 and int(after) == 0, rows  # 186 generations left on each rank: none fitted
        assert int(reads) >= int(before), rows  # each fit had the whole study's trials to learn from


def test_the_child_the_model_expects_best_runs():
    pop = population(np.linspace(0, 1, 12))
    children = [Ind(x) for x in (0.95, 0.7, 0.31, 0.05, 0.55, 0.85)]
    inner = Inner(children, pop_size=4)
    child = SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=6)(pop)
    assert inner.calls == 6
    assert child["p0"] == 0.31  # the minimum of (x - 0.3)^2 among the candidates


def test_diverged_and_failed_trials_do_not_fit_the_model():
    # the infinite loss is left out; the huge one only ranks last (normal scores), so 0.31 still wins
    pop = population(np.linspace(0, 1, 10)) + [Ind(0.5, loss=math.inf), Ind(0.6, loss=1e9)]
    inner = Inner([Ind(x) for x in (0.9, 0.31, 0.6)], pop_size=4)
    assert SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=3)(pop)["p0"] == 0.31


def test_too_few_finite_losses_give_the_first_child_without_breeding_more():
    pop = [Ind(0.1, loss=0.2), Ind(0.2, loss=0.1), Ind(0.3, loss=0.3)] + [Ind(0.5, loss=math.inf)] * 3
    inner = Inner([Ind(0.7), Ind(0.31)], pop_size=4)
    child = SurrogatePick(inner, LIMITS, rng=random.Random(0), candidates=2)(pop)
    assert child["p0"] == 0.7 and inner.calls == 1


def test_expected_improvement_matches_its_closed_form():
    mean, sd, best = np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.5, 2.0]), 1.0
    z = (best - mean) / sd
    assert expected_improvement(mean, sd, best) == pytest.approx((best - mean) * norm.cdf(z) + sd * norm.pdf(z))
    assert expected_improvement(np.array([0.5]), np.array([0.0]), 1.0) == pytest.approx([0.5])  # a sure gain


def test_normal_scores_keep_the_order_and_ignore_how_far_an_outlier_is():
    a = _normal_scores(np.array([0.3, 0.1, 0.2, 5.0]))
    b = _normal_scores(np.array([0.3, 0.1, 0.2, 5e9]))
    assert list(np.argsort(a)) == [1, 2, 0, 3] and a == pytest.approx(b)


def test_candidates_must_be_positive():
    with pytest.raises(ValueError, match="candidates must be at least 1"):
        SurrogatePick(Inner([]), LIMITS, rng=random.Random(0), candidates=0)
