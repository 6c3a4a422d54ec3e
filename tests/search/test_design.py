"""The initial design of a fresh Propulate island (search/_design.py)."""

import math

import pytest

from oialr_search.search._design import DesignInit, latin_hypercube, worker_share

LIMITS = {"p0": (-2.0, 0.0), "p1": (0.0, 1.0), "p2": (3, 40), "p3": (0, 2)}


def _slice(value: float, lo: float, hi: float, n: int) -> int:
    return min(n - 1, math.floor((value - lo) / (hi - lo) * n))


@pytest.mark.parametrize("n", [1, 5, 8, 16])
def test_every_slice_of_every_float_range_holds_one_point(n):
    points = latin_hypercube(LIMITS, n, seed=3)
    assert len(points) == n
    for key in ("p0", "p1"):
        lo, hi = LIMITS[key]
        assert sorted(_slice(p[key], lo, hi, n) for p in points) == list(range(n))


def test_int_ranges_stay_inside_and_are_spread():
    points = latin_hypercube(LIMITS, 8, seed=0)
    assert all(isinstance(p["p2"], int) and 3 <= p["p2"] <= 40 for p in points)
    assert sorted(_slice(p["p2"], 3, 41, 8) for p in points) == list(range(8))  # 38 values in 8 slices
    # a range narrower than the design: every value taken, none more than its share
    counts = [sum(p["p3"] == v for p in points) for v in (0, 1, 2)]
    assert min(counts) >= 2 and max(counts) <= 3


def test_deterministic_in_the_seed():
    assert latin_hypercube(LIMITS, 8, seed=1) == latin_hypercube(LIMITS, 8, seed=1)
    assert latin_hypercube(LIMITS, 8, seed=1) != latin_hypercube(LIMITS, 8, seed=2)


def test_an_empty_design_is_refused():
    with pytest.raises(ValueError, match="at least one point"):
        latin_hypercube(LIMITS, 0, seed=0)


def test_the_workers_of_an_island_share_out_its_design():
    design = latin_hypercube(LIMITS, 8, seed=5 * 1_000_003 + 1)
    shares = [worker_share(LIMITS, 8, seed=5, island=1, worker=w, island_size=3) for w in range(3)]
    assert sorted(map(str, sum(shares, []))) == sorted(map(str, design))
    assert [len(s) for s in shares] == [3, 3, 2]
    other = worker_share(LIMITS, 8, seed=5, island=0, worker=0, island_size=3)
    assert other != shares[0]  # another island draws its own design


def test_design_init_gives_its_points_in_order_then_falls_back():
    pytest.importorskip("propulate")
    points = latin_hypercube(LIMITS, 2, seed=0)
    fallbacks = []
    init = DesignInit(points, LIMITS, fallback=lambda inds: fallbacks.append(inds) or "uniform")
    first, second = init([]), init(["x"])
    assert [dict(first), dict(second)] == points
    assert init(["y"]) == "uniform" and fallbacks == [["y"]]
