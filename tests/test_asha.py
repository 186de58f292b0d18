"""Two-objective successive halving: dominance, fronts, rungs and stop decisions."""

from __future__ import annotations

import random

import pytest

from ressearch.asha import SuccessiveHalving, dominates, non_dominated_ranks


# -- dominance and fronts ------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b", "expected"), [
    ((0.99, 100), (0.98, 200), True),  # better in both
    ((0.99, 100), (0.98, 100), True),  # more accurate, same size
    ((0.99, 100), (0.99, 200), True),  # as accurate, smaller
    ((0.99, 100), (0.99, 100), False),  # equal: neither dominates
    ((0.99, 200), (0.98, 100), False),  # a trade-off
    ((0.98, 100), (0.99, 200), False),  # the other trade-off
    ((0.98, 200), (0.99, 100), False),  # worse in both
    ((0.99, 200), (0.99, 100), False),  # as accurate, larger
])
def test_dominates(a: tuple[float, float], b: tuple[float, float], expected: bool) -> None:
    assert dominates(a, b) is expected


def test_dominance_is_asymmetric() -> None:
    rng = random.Random(0)
    points = [(rng.choice([0.9, 0.95, 0.99]), rng.choice([100, 200, 300])) for _ in range(40)]
    for a in points:
        assert not dominates(a, a)
        for b in points:
            assert not (dominates(a, b) and dominates(b, a))


@pytest.mark.parametrize(("points", "ranks"), [
    ([], []),
    ([(0.9, 100)], [0]),
    # A chain: each point dominated by the one before it.
    ([(0.99, 100), (0.98, 200), (0.97, 300)], [0, 1, 2]),
    # Listed worst first: ranks follow the points, not the order.
    ([(0.97, 300), (0.98, 200), (0.99, 100)], [2, 1, 0]),
    # A trade-off front of three, then a point dominated only by the middle one.
    ([(0.99, 300), (0.98, 200), (0.97, 100), (0.975, 250)], [0, 0, 0, 1]),
    # Duplicates do not dominate each other: both on the front, or both behind it.
    ([(0.99, 100), (0.99, 100)], [0, 0]),
    ([(0.99, 100), (0.98, 200), (0.98, 200), (0.97, 300)], [0, 1, 1, 2]),
    # Ties in one objective: the other decides.
    ([(0.99, 200), (0.99, 100), (0.98, 100)], [1, 0, 1]),
    ([(0.98, 100), (0.99, 100), (0.99, 100), (0.97, 100)], [1, 0, 0, 2]),
    # Two separate chains interleave into fronts.
    ([(0.99, 400), (0.98, 500), (0.90, 100), (0.89, 150), (0.88, 160)], [0, 1, 0, 1, 2]),
])
def test_non_dominated_ranks(points: list[tuple[float, float]], ranks: list[int]) -> None:
    assert non_dominated_ranks(points) == ranks


def test_non_dominated_ranks_are_consistent_on_random_points() -> None:
    rng = random.Random(1)
    points = [(rng.choice([0.9, 0.92, 0.95, 0.97]), rng.choice([100, 200, 300, 400]))
              for _ in range(60)]
    ranks = non_dominated_ranks(points)
    for i, a in enumerate(points):
        for j, b in enumerate(points):
            if dominates(a, b):
                assert ranks[i] < ranks[j]
        if ranks[i] > 0:  # something in the front just before dominates it
            assert any(dominates(points[j], a) for j in range(len(points))
                       if ranks[j] == ranks[i] - 1)
        else:
            assert not any(dominates(b, a) for b in points)


# -- rungs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("min_epochs", "rf", "max_epochs", "rungs"), [
    (2, 3, 12, [2, 6]),
    (2, 3, 6, [2]),
    (2, 3, 7, [2, 6]),
    (1, 2, 3, [1, 2]),
    (1, 3, 27, [1, 3, 9]),
    (1, 3, 1, []),
    (4, 2, 3, []),
])
def test_rung_epochs(min_epochs: int, rf: int, max_epochs: int, rungs: list[int]) -> None:
    assert SuccessiveHalving(min_epochs, rf, max_epochs).rung_epochs() == rungs


# -- decisions -----------------------------------------------------------------------------------
def halving() -> SuccessiveHalving:
    return SuccessiveHalving(min_epochs=2, reduction_factor=3, max_epochs=12)  # rungs 2 and 6


def test_first_trial_at_a_rung_continues() -> None:
    sh = halving()
    assert sh.should_stop(0, 2, 0.10, 10**6) is False  # however poor: nothing to compare with
    assert sh.should_stop(0, 6, 0.10, 10**6) is False
    assert sh.rungs == {2: {0: (0.10, 1e6)}, 6: {0: (0.10, 1e6)}}


def test_a_dominated_trial_stops_when_one_is_kept() -> None:
    sh = halving()
    assert sh.should_stop(0, 2, 0.98, 1000) is False
    assert sh.should_stop(1, 2, 0.97, 2000) is True  # less accurate and larger
    assert sh.should_stop(2, 2, 0.98, 1000) is False  # a duplicate of the best is not dominated
    assert sh.should_stop(3, 2, 0.98, 1001) is True  # as accurate, one parameter larger


def test_a_smaller_less_accurate_trial_continues() -> None:
    sh = halving()
    assert sh.should_stop(0, 2, 0.98, 1000) is False
    assert sh.should_stop(1, 2, 0.90, 999) is False  # on the front: a trade-off
    assert sh.should_stop(2, 2, 0.99, 5000) is False  # the other way round
    assert sh.should_stop(3, 2, 0.89, 999) is True  # dominated by trial 1 only


FIVE = [(0.99, 1000), (0.98, 500), (0.97, 2000), (0.90, 3000), (0.80, 4000)]  # fronts 0,0,1,2,3


@pytest.mark.parametrize(("point", "stop"), [
    ((0.975, 1500), True),  # front 1 behind the two of front 0: two better, keep 2
    ((0.97, 2000), True),  # a duplicate of the front-1 trial: the same
    ((0.985, 800), False),  # joins front 0
    ((0.95, 400), False),  # smallest of all: joins front 0
    ((0.995, 9000), False),  # most accurate of all: joins front 0
    ((0.5, 10**5), True),  # last
])
def test_six_trials_keep_two(point: tuple[float, int], stop: bool) -> None:
    sh = halving()
    for trial, (acc, params) in enumerate(FIVE):
        sh.record(trial, 2, acc, params)
    assert sh.should_stop(5, 2, *point) is stop
    assert len(sh.rungs[2]) == 6


def test_keep_grows_with_the_rung() -> None:
    # One point dominates all others; the newcomer is dominated by it alone (front 1).
    others = [(0.99, 500), (0.95, 1000), (0.94, 1100), (0.93, 1200), (0.92, 1300)]
    newcomer = (0.96, 900)
    few = halving()
    for trial, (acc, params) in enumerate(others[:2]):
        few.record(trial, 2, acc, params)
    assert few.should_stop(9, 2, *newcomer) is True  # 3 at the rung: keep 1, one is better
    many = halving()
    for trial, (acc, params) in enumerate(others):
        many.record(trial, 2, acc, params)
    assert many.should_stop(9, 2, *newcomer) is False  # 6 at the rung: keep 2, one is better


STRADDLE = [(0.99, 2000), (0.98, 1000),  # front 0
            (0.985, 3000), (0.97, 1500), (0.96, 1200),  # front 1
            (0.96, 3200), (0.95, 1600), (0.955, 2000)]  # front 2


@pytest.mark.parametrize(("point", "front", "stop"), [
    ((0.975, 2500), 1, False),  # 2 better < keep 3: goes on, with the whole of front 1
    ((0.958, 2100), 2, True),  # 2 + 3 better >= 3
    ((0.981, 1100), 0, False),
])
def test_the_front_straddling_the_cut_goes_on_whole(point: tuple[float, int], front: int,
                                                    stop: bool) -> None:
    ranks = non_dominated_ranks([*STRADDLE, point])
    assert ranks == [0, 0, 1, 1, 1, 2, 2, 2, front] or front == 0
    assert ranks[-1] == front
    sh = halving()
    for trial, (acc, params) in enumerate(STRADDLE):
        sh.record(trial, 2, acc, params)
    assert sh.should_stop(8, 2, *point) is stop  # 9 at the rung: keep 3


def test_epochs_that_are_not_rungs_never_stop() -> None:
    sh = halving()
    sh.should_stop(0, 2, 0.99, 100)
    sh.should_stop(0, 6, 0.99, 100)
    for epoch in (1, 3, 4, 5, 7, 11, 12, 18):
        assert sh.should_stop(1, epoch, 0.01, 10**6) is False
    assert set(sh.rungs) == {2, 6} and all(1 not in r for r in sh.rungs.values())


def test_rungs_are_separate() -> None:
    sh = halving()
    assert sh.should_stop(0, 2, 0.99, 100) is False
    assert sh.should_stop(1, 6, 0.50, 10**5) is False  # first at rung 6; rung 2 does not count
    assert sh.should_stop(1, 2, 0.50, 10**5) is True


def test_record_prefills_a_rung_for_resume() -> None:
    resumed = halving()
    resumed.record(0, 2, 0.99, 1000)
    resumed.record(0, 3, 0.99, 1000)  # not a rung: ignored
    resumed.record(0, 12, 0.99, 1000)  # the last epoch is no rung either
    assert resumed.rungs == {2: {0: (0.99, 1000.0)}}
    assert resumed.should_stop(7, 2, 0.97, 2000) is True  # dominated by the recorded trial
    assert resumed.should_stop(8, 6, 0.97, 2000) is False  # nothing recorded at rung 6
    fresh = halving()
    assert fresh.should_stop(7, 2, 0.97, 2000) is False  # the same trial without the record


def test_record_does_not_decide_and_matches_should_stop() -> None:
    recorded, decided = halving(), halving()
    for trial, (acc, params) in enumerate(FIVE):
        recorded.record(trial, 2, acc, params)
        decided.should_stop(trial, 2, acc, params)
    assert recorded.rungs == decided.rungs
    assert recorded.should_stop(5, 2, 0.975, 1500) == decided.should_stop(5, 2, 0.975, 1500)


def test_a_resumed_trial_replaces_its_own_record() -> None:
    sh = halving()
    sh.record(0, 2, 0.5, 1000)
    sh.record(1, 2, 0.9, 900)
    assert sh.should_stop(0, 2, 0.95, 1000) is False  # trial 0 again, better this time
    assert sh.rungs[2] == {0: (0.95, 1000.0), 1: (0.9, 900.0)}


def simulate(rf: int, trials: int, seed: int) -> dict[int, tuple[int, int]]:
    """Random trials through rungs 1, rf, rf**2: how many reached and went on at each."""
    rng = random.Random(seed)
    sh = SuccessiveHalving(1, rf, rf**3)
    reached = dict.fromkeys(sh.rung_epochs(), 0)
    kept = dict.fromkeys(sh.rung_epochs(), 0)
    for trial in range(trials):
        params = rng.randint(1000, 50000)
        for epoch in sh.rung_epochs():
            reached[epoch] += 1
            if sh.should_stop(trial, epoch, rng.random(), params):
                break
            kept[epoch] += 1
    return {e: (reached[e], kept[e]) for e in reached}


@pytest.mark.parametrize(("rf", "low", "high"), [(2, 0.42, 0.6), (3, 0.28, 0.42)])
def test_simulation_keeps_about_one_in_rf(rf: int, low: float, high: float) -> None:
    trials = 180
    result = simulate(rf=rf, trials=trials, seed=0)
    assert list(result) == [1, rf, rf**2]
    reached, kept = result[1]
    assert reached == trials
    assert low < kept / reached < high, result  # 1/rf, plus fronts straddling the cut
    # Later rungs see fewer, better trials, and still prune (asynchronously, so less strictly).
    for previous, epoch in ((1, rf), (rf, rf**2)):
        assert result[epoch][0] == result[previous][1], result
        assert 1 <= result[epoch][1] < 0.75 * result[epoch][0], result
    # Pruning compounds: about 1/rf**3 of the trials pass the last rung, with slack for fronts.
    assert result[rf**2][1] < trials * 3 / rf**3, result


def test_simulation_is_deterministic() -> None:
    assert simulate(rf=3, trials=60, seed=4) == simulate(rf=3, trials=60, seed=4)
