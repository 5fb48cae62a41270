"""The decide agent's view of a service: the scope windows a decision is made with."""

from __future__ import annotations

from test_throttle import stats

from surgegate.agents.decide import ServiceView


def test_a_tier_whose_window_is_not_in_yet_keeps_its_last_one_and_an_old_one_is_dropped():
    view = ServiceView(controller=None)  # type: ignore[arg-type]
    view.tiers = {0: {"enterprise": stats(1), "pro": stats(2), "free": stats(3)},
                  10_000: {"enterprise": stats(4), "pro": stats(5), "free": stats(6)},
                  20_000: {"enterprise": stats(7), "free": stats(9)}}  # pro's window of 20,000 comes later
    got = view.newest_each(view.tiers, 20_000, oldest=0)
    assert {t: s.realtime for t, s in got.items()} == {"enterprise": 70, "pro": 50, "free": 90}
    assert set(view.newest_each({0: {"gone": stats(1)}, 30_000: {"free": stats(1)}}, 30_000, oldest=10_000)) == \
        {"free"}
