"""The initial design of a fresh Propulate search (search/_design.py)."""

import math

import pytest

from oialr_search.search._design import DesignInit, anchor, sliced_latin_hypercube

LIMITS = {"p0": (-2.0, 0.0), "p1": (0.0, 1.0), "p2": (3, 40), "p3": (0, 2)}
FLOATS = ("p0", "p1")


def _part(value: float, lo: float, hi: float, n: int) -> int:
    return min(n - 1, math.floor((value - lo) / (hi - lo) * n))


def _parts(points: list[dict], key: str, n: int) -> list[int]:
    lo, hi = LIMITS[key]
    return sorted(_part(p[key], lo, hi, n) for p in points)


@pytest.mark.parametrize("m", [1, 5, 8, 16])
def test_every_part_of_every_float_range_holds_one_point(m):
    (points,) = sliced_latin_hypercube(LIMITS, m, 1, seed=3)
    assert len(points) == m
    for key in FLOATS:
        assert _parts(points, key, m) == list(range(m))


@pytest.mark.parametrize(("m", "slices"), [(4, 2), (8, 4), (3, 5)])
def test_each_slice_is_a_latin_hypercube_and_so_are_all_together(m, slices):
    design = sliced_latin_hypercube(LIMITS, m, slices, seed=7)
    assert [len(points) for points in design] == [m] * slices
    for key in FLOATS:
        for points in design:
            assert _parts(points, key, m) == list(range(m))
        assert _parts(sum(design, []), key, m * slices) == list(range(m * slices))


def test_int_ranges_stay_inside_and_are_spread():
    (points,) = sliced_latin_hypercube(LIMITS, 8, 1, seed=0)
    assert all(isinstance(p["p2"], int) and 3 <= p["p2"] <= 40 for p in points)
    assert sorted(_part(p["p2"], 3, 41, 8) for p in points) == list(range(8))
    counts = [sum(p["p3"] == v for p in points) for v in (0, 1, 2)]  # a range narrower than the design
    assert min(counts) >= 2 and max(counts) <= 3


def test_deterministic_in_the_seed():
    assert sliced_latin_hypercube(LIMITS, 8, 2, seed=1) == sliced_latin_hypercube(LIMITS, 8, 2, seed=1)
    assert sliced_latin_hypercube(LIMITS, 8, 2, seed=1) != sliced_latin_hypercube(LIMITS, 8, 2, seed=2)


@pytest.mark.parametrize(("m", "slices"), [(0, 1), (4, 0)])
def test_an_empty_design_is_refused(m, slices):
    with pytest.raises(ValueError, match="at least one point"):
        sliced_latin_hypercube(LIMITS, m, slices, seed=0)


@pytest.mark.parametrize("seed", range(20))
def test_the_run_configs_values_take_a_point_of_the_first_slice_without_costing_it_a_part(seed):
    design = sliced_latin_hypercube(LIMITS, 8, 2, seed=seed)
    before = [sorted(map(str, points)) for points in design]
    start = {"p0": -1.0, "p1": 0.999, "p2": 3, "p3": 2}
    anchor(design, LIMITS, start)
    assert design[0][0] == start
    for key in FLOATS:
        assert _parts(design[0], key, 8) == list(range(8))  # still one point in every eighth
    assert all(3 <= p["p2"] <= 40 and 0 <= p["p3"] <= 2 for p in design[0])
    assert sorted(map(str, design[1])) == before[1]  # the other slice is untouched


def test_design_init_gives_its_points_in_order_then_falls_back():
    pytest.importorskip("propulate")
    (points,) = sliced_latin_hypercube(LIMITS, 2, 1, seed=0)
    fallbacks = []
    init = DesignInit(points, LIMITS, fallback=lambda inds: fallbacks.append(inds) or "uniform")
    first, second = init([]), init(["x"])
    assert [dict(first), dict(second)] == points
    assert init(["y"]) == "uniform" and fallbacks == [["y"]]
