"""Pareto dominance, fronts, hypervolumes and --pick conditions (all in the minimize sense)."""

import itertools
import math
import random

import pytest

from oialr_search.exceptions import OIALRSearchError
from oialr_search.search._pareto import Condition, PickError, dominates, hypervolume, non_dominated, parse_pick

INF, NAN = math.inf, math.nan
METRICS = ["val_loss", "top1", "top5", "trainable_fraction"]


def brute_front(points):
    finite = [i for i, p in enumerate(points) if all(math.isfinite(x) for x in p)]
    return [i for i in finite if not any(dominates(points[j], points[i]) for j in finite if j != i)]


def random_points(rng, n, m, *, levels=6):
    # Few distinct levels force ties and duplicates; some coordinates are inf or NaN.
    pts = [[float(rng.randrange(levels)) for _ in range(m)] for _ in range(n)]
    for p in rng.sample(pts, k=n // 10):
        p[rng.randrange(m)] = rng.choice([INF, -INF, NAN])
    pts += [list(p) for p in rng.sample(pts, k=n // 5)]
    rng.shuffle(pts)
    return pts


def test_dominates():
    assert dominates([1, 2], [1, 3]) and dominates([0, 0], [1, 1])
    assert not dominates([1, 2], [1, 2])  # equal: neither dominates
    assert not dominates([1, 3], [2, 2]) and not dominates([2, 2], [1, 3])
    assert not dominates([NAN, 0], [1, 1]) and not dominates([0, 0], [NAN, 1])
    assert dominates([1, 1], [1, INF])
    with pytest.raises(ValueError):
        dominates([1], [1, 2])


def test_non_dominated_small():
    pts = [[1, 5], [2, 2], [5, 1], [3, 3], [2, 2], [1, 6], [0, INF], [NAN, 0]]
    assert non_dominated(pts) == [0, 1, 2, 4]
    assert non_dominated([]) == []
    assert non_dominated([[INF, 0], [NAN, NAN]]) == []
    assert non_dominated([[3], [1], [2], [1]]) == [1, 3]
    with pytest.raises(ValueError):
        non_dominated([[1, 2], [1, 2, 3]])


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("seed", range(8))
def test_non_dominated_matches_brute_force(m, seed):
    rng = random.Random(seed * 10 + m)
    pts = random_points(rng, rng.randrange(1, 120), m)
    assert non_dominated(pts) == brute_front(pts)
    # Continuous coordinates too (no ties).
    pts = [[rng.random() for _ in range(m)] for _ in range(80)]
    assert non_dominated(pts) == brute_front(pts)


@pytest.mark.parametrize("levels", [2, 3, 5])
def test_non_dominated_3d_sweep_matches_brute_force_with_many_ties(levels):
    # the staircase of the three-objective sweep: equal y or z with the steps it keeps or replaces
    rng = random.Random(levels)
    for _ in range(150):
        pts = random_points(rng, rng.randrange(1, 60), 3, levels=levels)
        assert non_dominated(pts) == brute_front(pts)


def test_non_dominated_10k_points_3d_one_front():
    # every point on one plane: the whole population on the front, the sweep's longest staircase
    rng = random.Random(1)
    pts = []
    for _ in range(10_000):
        w = [rng.random() + 1e-9 for _ in range(3)]
        pts.append(tuple(x / sum(w) for x in w))
    pts.append((2.0, 2.0, 2.0))  # dominated by all of them
    assert non_dominated(pts) == list(range(10_000))


def test_non_dominated_10k_points_2d():
    rng = random.Random(0)
    pts = [(1.0 + rng.random(), 1.0 + rng.random()) for _ in range(10_000)]  # each dominated by the line
    pts += [(x, 1.0 - x) for x in (rng.random() for _ in range(500))]  # a long front
    assert non_dominated(pts) == list(range(10_000, 10_500))


def test_hypervolume_2d_by_hand():
    assert hypervolume([[1, 1]], [3, 3]) == 4.0
    assert hypervolume([[1, 2], [2, 1]], [3, 3]) == 3.0  # 2 + 2 - 1
    assert hypervolume([[1, 2], [2, 1], [2, 2], [1, 2]], [3, 3]) == 3.0  # dominated and duplicates add nothing
    assert hypervolume([[0, 3], [1, 1], [3, 0]], [4, 4]) == 4 * 1 + 3 * 2 + 1 * 1
    assert hypervolume([], [1, 1]) == 0.0


def test_hypervolume_reference_clipping():
    ref = [3, 3]
    assert hypervolume([[3, 1], [1, 3], [4, 0]], ref) == 0.0  # on or beyond the reference
    assert hypervolume([[1, 1], [3, 0], [INF, 0], [NAN, 0], [-INF, 2]], ref) == 4.0
    assert hypervolume([[-1, 2]], ref) == 4.0  # below the origin counts in full
    with pytest.raises(ValueError):
        hypervolume([[1, 1]], [INF, 3])
    with pytest.raises(ValueError):
        hypervolume([[1, 1, 1]], [3, 3])


def inclusion_exclusion(points, ref):
    inside = [p for p in points if all(x < r for x, r in zip(p, ref))]
    total = 0.0
    for k in range(1, len(inside) + 1):
        for subset in itertools.combinations(inside, k):
            corner = [max(c) for c in zip(*subset)]
            total += (-1) ** (k + 1) * math.prod(r - c for r, c in zip(ref, corner))
    return total


def grid_count(points, ref):
    # Integer points: unit cell [c, c + 1) is dominated iff some point is <= its lower corner c.
    return sum(any(all(p[k] <= c[k] for k in range(len(c))) for p in points)
               for c in itertools.product(*(range(r) for r in ref)))


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_hypervolume_matches_inclusion_exclusion(m, seed):
    rng = random.Random(100 + seed)
    ref = [1.0] * m
    pts = [[rng.uniform(-0.1, 1.1) for _ in range(m)] for _ in range(rng.randrange(1, 10))]
    assert hypervolume(pts, ref) == pytest.approx(inclusion_exclusion(pts, ref), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_3d_matches_grid_count(seed):
    rng = random.Random(seed)
    ref = [6, 5, 7]
    pts = [[rng.randrange(8) for _ in range(3)] for _ in range(rng.randrange(1, 40))]
    assert hypervolume(pts, ref) == grid_count(pts, ref)


def test_hypervolume_3d_by_hand_and_a_few_hundred_points():
    assert hypervolume([[0, 0, 0]], [1, 2, 3]) == 6.0
    # Three boxes of volume 2; each pair and the triple overlap in the unit cube [1, 2)^3.
    assert hypervolume([[0, 1, 1], [1, 0, 1], [1, 1, 0]], [2, 2, 2]) == 3 * 2 - 3 * 1 + 1
    rng = random.Random(7)
    pts = []
    while len(pts) < 300:  # points near the simplex x + y + z = 1, mostly mutually non-dominated
        a, b = sorted((rng.random(), rng.random()))
        pts.append([a, b - a, 1 - b])
    assert 0 < hypervolume(pts, [1, 1, 1]) < 1


@pytest.mark.parametrize(("text", "expected"), [
    ("trainable_fraction<=0.1", [("trainable_fraction", "<=", 0.1)]),
    (" trainable_fraction <= 0.1 , top1>=90", [("trainable_fraction", "<=", 0.1), ("top1", ">=", 90.0)]),
    ("val_loss<1e-2,top5>50,top1==75.5", [("val_loss", "<", 0.01), ("top5", ">", 50.0), ("top1", "==", 75.5)]),
    ("top1>=-3", [("top1", ">=", -3.0)]),
])
def test_parse_pick(text, expected):
    conds = parse_pick(text, METRICS)
    assert [(c.metric, c.op, c.value) for c in conds] == expected
    assert parse_pick(",".join(map(str, conds)), METRICS) == conds  # str gives the condition back


def test_condition_str_and_holds():
    assert str(Condition("trainable_fraction", "<=", 0.1)) == "trainable_fraction<=0.1"
    assert str(Condition("top1", ">=", 90.0)) == "top1>=90"
    le, gt, eq = Condition("x", "<=", 1.0), Condition("x", ">", 1.0), Condition("x", "==", 1.0)
    assert le.holds(1.0) and le.holds(-INF) and not le.holds(1.5)
    assert gt.holds(2) and not gt.holds(1.0) and eq.holds(1) and not eq.holds(1.1)
    assert not any(c.holds(v) for c in (le, gt, eq) for v in (None, NAN))
    with pytest.raises(ValueError):
        Condition("x", "=", 1.0)


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "empty"),
    ("   ", "empty"),
    ("top1>=90,", "empty condition"),
    ("acc>=90", "unknown metric 'acc'; known metrics: val_loss, top1, top5, trainable_fraction"),
    ("top1 90", "missing operator in 'top1 90'; use one of <=, <, >=, >, =="),
    ("top1=90", "unknown operator '='"),
    ("top1=>90", "unknown operator '=>'"),
    ("top1!=90", "unknown operator '!='"),
    ("<=0.1", "missing metric name"),
    ("top1>=", "missing value after '>='"),
    ("top1>=ninety", "value 'ninety' in 'top1>=ninety' is not a number"),
    ("top1>=nan", "must be a finite number"),
])
def test_parse_pick_errors(text, fragment):
    with pytest.raises(PickError) as info:
        parse_pick(text, METRICS)
    message = str(info.value)
    assert isinstance(info.value, OIALRSearchError)
    assert message.startswith(f"--pick {text!r}: ") and fragment in message and "\n" not in message
