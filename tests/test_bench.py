"""The benchmark harness: what it times and which run it keeps."""

from __future__ import annotations

from moetopo.bench.measure import fastest_of


def test_fastest_of_keeps_a_jobs_own_clock_its_result_and_the_highest_peak():
    """A job returning a float reports its own seconds; another is timed whole."""
    calls = []
    best = fastest_of(
        [("own clock", float, ("0.25",)), ("timed whole", len, ("abc",))],
        repeat=2,
        before_each=lambda: calls.append(1),
    )
    assert list(best) == ["own clock", "timed whole"] and len(calls) == 4
    assert best["own clock"].seconds == 0.25 and best["own clock"].result == 0.25
    assert best["timed whole"].result == 3 and 0 < best["timed whole"].seconds < 0.25
    assert all(m.peak_rss_mib > 0 for m in best.values())
