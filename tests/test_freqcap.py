"""Frequency caps end to end: every window kind, hierarchy, recency, idempotency, reset, inspect,
bad input, concurrency, cluster routing and memory, against real Redis.

Test clock: rolling/recency windows of 1-2 s, and calendar windows whose boundary is moved a second
or two ahead with the UTC-offset trick (`boundary_offset`), so no test sleeps more than ~2.5 s.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from clock import boundary_offset, calm_offset, offset_away, period_bounds, server_ms, sleep_until

from adcache import (
    AdCache,
    ArityError,
    BadArgumentError,
    BadKeyError,
    Call,
    CorruptStateError,
    CrossSlotError,
    LimitExceededError,
    aio,
)
from adcache import _generated as keys
from adcache.caps import Candidate, CapRule

DAY_S = 86400


def fc_state(ac: AdCache, user: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    return ac.redis.hgetall(keys.freqcap(user)), ac.redis.hgetall(keys.freqcap_imps(user))  # type: ignore[return-value]


def counts(ac: AdCache, user: str) -> dict[tuple[str, str, str], int]:
    return {(c.scope, c.entity_id, c.window): c.count for c in ac.caps.inspect(user)}


# ---- basics ----


def test_daily_cap_check_record_refuse(acs: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(acs))
    day = CapRule.fixed("campaign", "day", 2, offset_s=off)
    cand = Candidate(f"{uid}-c1", [day])
    free = Candidate(f"{uid}-c2")
    d = acs.caps.check(uid, [cand, free])
    assert [x.allowed for x in d] == [True, True]
    assert d[0].remaining == 2 and d[1].remaining is None and d[0].blocked_by is None
    r1 = acs.caps.record(uid, "i1", cand)
    assert r1.admitted and not r1.duplicate and r1.remaining == 1
    assert acs.caps.record(uid, "i2", cand).remaining == 0
    now = server_ms(acs)
    r3 = acs.caps.record(uid, "i3", cand)
    assert not r3.admitted and r3.blocked_by == day
    expect = period_bounds(now, "day", off)[1]
    assert r3.frees_at_ms == expect
    d = acs.caps.check(uid, [cand, free])
    assert not d[0].allowed and d[0].blocked_by == day and d[0].frees_at_ms == expect
    assert d[1].allowed
    assert counts(acs, uid) == {("campaign", f"{uid}-c1", "day"): 2}


def test_refused_record_counts_nothing(ac: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(ac))
    day, week = (
        CapRule.fixed("campaign", "day", 5, offset_s=off),
        CapRule.fixed("campaign", "week", 5, offset_s=off),
    )
    rec = CapRule.recency("campaign", 60)
    cand = Candidate("c", [day, week, rec], advertiser_id="a")
    assert ac.caps.record(uid, "i1", cand).admitted
    r = ac.caps.record(uid, "i2", cand)
    assert not r.admitted and r.blocked_by == rec
    assert counts(ac, uid) == {
        ("campaign", "c", "day"): 1,
        ("campaign", "c", "week"): 1,
        ("campaign", "c", "rolling:60"): 1,
    }


def test_rolling_window_is_exact_and_bounded(ac: AdCache, uid: str) -> None:
    roll = CapRule.rolling("campaign", 2, 3)
    cand = Candidate("c", [roll])
    before = server_ms(ac)
    assert ac.caps.record(uid, "i0", cand).admitted
    after = server_ms(ac)
    for i in (1, 2):
        time.sleep(0.3)  # leaves room for a slow machine between the window edges below
        assert ac.caps.record(uid, f"i{i}", cand).admitted
    r = ac.caps.record(uid, "i3", cand)
    assert not r.admitted and r.blocked_by == roll and r.frees_at_ms is not None
    # frees when the first of the three leaves the window: exactly 2 s after it was recorded
    assert before <= r.frees_at_ms - 2000 <= after
    sleep_until(ac, r.frees_at_ms)
    d = ac.caps.check(uid, [cand])[0]
    assert d.allowed and d.remaining == 1, "only the oldest impression left the window"
    assert ac.caps.record(uid, "i4", cand).admitted
    assert not ac.caps.record(uid, "i5", cand).admitted
    # memory bound: the field keeps at most `limit` timestamps
    stored = ac.redis.hget(keys.freqcap(uid), "c:c|r2")
    assert stored is not None and len(stored.split(b",")) == 3
    # stored as the first time in base 36, then base-36 gaps: decode and compare with the clock
    times = list(itertools.accumulate(int(x, 36) for x in stored.split(b",")))
    assert times == sorted(times) and abs(times[-1] - server_ms(ac)) < 1000


def test_recency_rule(ac: AdCache, uid: str) -> None:
    rec = CapRule.recency("campaign", 1)
    cand = Candidate("c", [rec, CapRule.fixed("campaign", "day", 10)])
    before = server_ms(ac)
    assert ac.caps.record(uid, "i1", cand).admitted
    after = server_ms(ac)
    r = ac.caps.record(uid, "i2", cand)
    assert not r.admitted and r.blocked_by == rec
    assert r.frees_at_ms is not None and before <= r.frees_at_ms - 1000 <= after
    sleep_until(ac, r.frees_at_ms)
    assert ac.caps.record(uid, "i3", cand).admitted


def test_minute_window_resets_at_the_boundary_and_sweeps_stale_buckets(
    ac: AdCache, uid: str
) -> None:
    off = boundary_offset(server_ms(ac), 60)
    minute = CapRule.fixed("campaign", "minute", 1, offset_s=off)
    cand = Candidate("c", [minute])
    assert ac.caps.record(uid, "i1", cand).admitted
    r = ac.caps.record(uid, "i2", cand)
    assert not r.admitted and r.frees_at_ms is not None
    assert r.frees_at_ms % 1000 == 0 and 0 < r.frees_at_ms - server_ms(ac) <= 2100
    old = {f for f in ac.redis.hkeys(keys.freqcap(uid)) if f.startswith(b"c:c|m")}
    sleep_until(ac, r.frees_at_ms)
    assert ac.caps.record(uid, "i3", cand).admitted
    now_fields = {f for f in ac.redis.hkeys(keys.freqcap(uid)) if f.startswith(b"c:c|m")}
    assert len(now_fields) == 1 and not (old & now_fields), "the stale bucket was swept"


def test_a_refused_record_still_sweeps_stale_buckets(ac: AdCache, uid: str) -> None:
    off = boundary_offset(server_ms(ac), 60)
    ac.caps.record(
        uid, "i1", Candidate("c1", [CapRule.fixed("campaign", "minute", 5, offset_s=off)])
    )
    fc = keys.freqcap(uid)
    due = int(ac.redis.hget(fc, "~s") or 0)
    assert due % 1000 == 0 and due - server_ms(ac) <= 2100
    sleep_until(ac, due)
    r = ac.caps.record(uid, "i2", Candidate("c2", [CapRule.fixed("campaign", "hour", 0)]))
    assert not r.admitted
    assert ac.redis.exists(fc) == 0, "the only field was stale: the sweep emptied the hash"


def test_daily_cap_frees_at_calendar_boundary_however_often_the_user_is_seen(
    ac: AdCache, uid: str
) -> None:
    """Regression: the predecessor's INCR+EXPIRE slid the window forward on every hit, so an active
    user stayed capped forever. Here the day ends 2-3 s ahead; the user is seen every 50 ms."""
    now = server_ms(ac)
    off = boundary_offset(now, DAY_S, ahead_s=3)
    day = CapRule.fixed("campaign", "day", 3, offset_s=off)
    cand = Candidate("c", [day])
    for i in range(3):
        assert ac.caps.record(uid, f"a{i}", cand).admitted
    r = ac.caps.record(uid, "b0", cand)
    boundary = r.frees_at_ms
    assert not r.admitted and boundary is not None and boundary - now <= 3100
    n = 0
    # stop short of the boundary: a call sent just before it may run just after it
    while server_ms(ac) < boundary - 400:
        n += 1
        assert not ac.caps.record(uid, f"b{n}", cand).admitted
        assert not ac.caps.check(uid, [cand])[0].allowed
        time.sleep(0.05)
    assert n >= 3
    sleep_until(ac, boundary)
    d = ac.caps.check(uid, [cand])[0]
    assert d.allowed and d.remaining == 3
    assert ac.caps.record(uid, "c0", cand).admitted


def _local_period_end(now_ms: int, unit: str, offset_s: int) -> int:
    tz = timezone(timedelta(seconds=offset_s))
    t = datetime.fromtimestamp(now_ms / 1000, tz)
    if unit == "hour":
        end = t.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    elif unit == "week":
        start = (t - timedelta(days=t.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=7)
    else:  # month
        y, m = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
        end = datetime(y, m, 1, tzinfo=tz)
    return int(end.timestamp()) * 1000


@pytest.mark.parametrize("unit", ["hour", "week", "month"])
@pytest.mark.parametrize("offset_s", [0, -5 * 3600, 9 * 3600 + 1800])
def test_calendar_windows_end_on_local_boundaries(
    ac: AdCache, uid: str, unit: Any, offset_s: int
) -> None:
    rule = CapRule.fixed("campaign", unit, 1, offset_s=offset_s)
    cand = Candidate("c", [rule])
    before = server_ms(ac)
    assert ac.caps.record(uid, "i1", cand).admitted
    r = ac.caps.record(uid, "i2", cand)
    after = server_ms(ac)
    assert not r.admitted and r.blocked_by == rule
    assert r.frees_at_ms in {
        _local_period_end(before, unit, offset_s),
        _local_period_end(after, unit, offset_s),
    }
    assert ac.redis.pexpiretime(keys.freqcap(uid)) == r.frees_at_ms  # type: ignore[attr-defined]


def test_lifetime_cap_never_frees(ac: AdCache, uid: str) -> None:
    life = CapRule.lifetime("campaign", 2)
    cand = Candidate("c", [life, CapRule.fixed("campaign", "day", 10)])
    assert ac.caps.record(uid, "i1", cand).admitted
    assert ac.caps.record(uid, "i2", cand).admitted
    r = ac.caps.record(uid, "i3", cand)
    assert not r.admitted and r.blocked_by == life and r.frees_at_ms is None
    d = ac.caps.check(uid, [cand])[0]
    assert not d.allowed and d.blocked_by == life and d.frees_at_ms is None
    ttl_days = ac.redis.pttl(keys.freqcap(uid)) / 86_400_000
    assert 399 < ttl_days <= 400, "lifetime counters are kept 400 days after the last impression"


def test_limit_zero_blocks_for_good(ac: AdCache, uid: str) -> None:
    cand = Candidate("c", [CapRule.fixed("campaign", "hour", 0)])
    d = ac.caps.check(uid, [cand])[0]
    assert not d.allowed and d.frees_at_ms is None
    assert not ac.caps.record(uid, "i", cand).admitted
    assert ac.redis.exists(keys.freqcap(uid)) == 0


# ---- hierarchy ----


def test_hierarchy_most_restrictive_level_blocks(acs: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(acs))
    adv = CapRule.fixed("advertiser", "day", 3, offset_s=off)
    camp = CapRule.fixed("campaign", "day", 2, offset_s=off)
    crea = CapRule.fixed("creative", "day", 1, offset_s=off)

    def cand(c: str, k: str = "") -> Candidate:
        rules = [adv, camp] + ([crea] if k else [])
        return Candidate(c, rules, advertiser_id="adv", creative_id=k)

    assert acs.caps.record(uid, "i1", cand("c1", "k1")).admitted
    r = acs.caps.record(uid, "i2", cand("c1", "k1"))
    assert not r.admitted and r.blocked_by == crea
    assert acs.caps.record(uid, "i3", cand("c1", "k2")).admitted  # c1 now at its cap of 2
    d = acs.caps.check(uid, [cand("c1", "k3"), cand("c2", "k3"), cand("c3")])
    assert [x.allowed for x in d] == [False, True, True]
    assert d[0].blocked_by == camp and d[1].remaining == 1 and d[2].remaining == 1
    assert acs.caps.record(uid, "i4", cand("c2", "k3")).admitted  # advertiser now at 3
    d = acs.caps.check(uid, [cand("c1", "k3"), cand("c2", "k4"), cand("c3")])
    assert not any(x.allowed for x in d)
    assert d[1].blocked_by == adv and d[2].blocked_by == adv
    assert counts(acs, uid) == {
        ("advertiser", "adv", "day"): 3,
        ("campaign", "c1", "day"): 2,
        ("campaign", "c2", "day"): 1,
        ("creative", "k1", "day"): 1,
        ("creative", "k2", "day"): 1,
        ("creative", "k3", "day"): 1,
    }


def test_blocked_by_the_rule_that_frees_last(ac: AdCache, uid: str) -> None:
    # The boundaries are kept away from now (on Sundays 23:00-24:00 UTC the week's would coincide
    # with the hour's, and a call at the end of an hour would see the hour free), so the rule that
    # frees last is never a tie here.
    off = calm_offset(server_ms(ac))
    hour = CapRule.fixed("campaign", "hour", 1, offset_s=off)
    week = CapRule.fixed("advertiser", "week", 1, offset_s=off)
    life = CapRule.lifetime("creative", 1)
    assert ac.caps.record(uid, "i", Candidate("c", [hour, week, life], "a", "k")).admitted
    d = ac.caps.check(
        uid,
        [
            Candidate("c", [hour], "a", "k"),
            Candidate("c", [hour, week], "a", "k"),
            Candidate("c", [life, hour, week], "a", "k"),
        ],
    )
    assert [x.blocked_by for x in d] == [hour, week, life]
    assert d[0].frees_at_ms is not None and d[1].frees_at_ms is not None
    assert d[0].frees_at_ms <= d[1].frees_at_ms and d[2].frees_at_ms is None


def test_blocked_by_on_a_tie_names_the_first_tied_rule(ac: AdCache, uid: str) -> None:
    # Two rules that free at the same instant: the first of them in the candidate's order is named.
    off = offset_away(server_ms(ac), "week")
    camp = CapRule.fixed("campaign", "week", 1, offset_s=off)
    adv = CapRule.fixed("advertiser", "week", 1, offset_s=off)
    assert ac.caps.record(uid, "i", Candidate("c", [camp, adv], "a")).admitted
    d = ac.caps.check(uid, [Candidate("c", [camp, adv], "a"), Candidate("c", [adv, camp], "a")])
    assert [x.blocked_by for x in d] == [camp, adv]
    assert d[0].frees_at_ms == d[1].frees_at_ms == period_bounds(server_ms(ac), "week", off)[1]


# ---- idempotency, reset, inspect, TTL ----


def test_record_is_idempotent_by_impression_id(acs: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(acs))
    cand = Candidate("c", [CapRule.fixed("campaign", "day", 2, offset_s=off)])
    first = acs.caps.record(uid, "imp-1", cand)
    again = acs.caps.record(uid, "imp-1", cand)
    assert first.admitted and again.admitted and again.duplicate and not first.duplicate
    assert again.remaining == first.remaining == 1
    assert counts(acs, uid) == {("campaign", "c", "day"): 1}
    assert acs.caps.record(uid, "imp-2", cand).admitted
    refused = acs.caps.record(uid, "imp-3", cand)
    assert not refused.admitted
    acs.caps.reset(uid, "campaign", "c")
    replay = acs.caps.record(uid, "imp-3", cand)
    assert replay.duplicate and not replay.admitted, "a retry replays the first outcome"
    assert replay.blocked_by == refused.blocked_by and replay.frees_at_ms == refused.frees_at_ms
    assert counts(acs, uid) == {}


def test_impression_ids_are_forgotten_after_dedupe_ttl(ac: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(ac))
    cand = Candidate("c", [CapRule.fixed("campaign", "day", 10, offset_s=off)])
    for i in range(5):
        ac.caps.record(uid, f"old{i}", cand, dedupe_ttl=0.3)
    assert ac.redis.hlen(keys.freqcap_imps(uid)) == 6  # 5 ids + the sweep bookkeeping
    time.sleep(0.4)
    before = server_ms(ac)
    r = ac.caps.record(uid, "old0", cand, dedupe_ttl=60)
    after = server_ms(ac)
    assert r.admitted and not r.duplicate
    imps = ac.redis.hkeys(keys.freqcap_imps(uid))
    assert sorted(imps) == [b"old0", b"~n"], "expired ids were swept on record"
    assert counts(ac, uid) == {("campaign", "c", "day"): 6}
    deadline = ac.redis.pexpiretime(keys.freqcap_imps(uid))  # type: ignore[attr-defined]
    assert before + 60_000 <= deadline <= after + 60_000


def test_reset_one_entity_or_everything(acs: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(acs))
    rules = [
        CapRule.fixed("campaign", "day", 5, offset_s=off),
        CapRule.fixed("advertiser", "week", 9, offset_s=off),
    ]
    acs.caps.record(uid, "i1", Candidate("c1", rules, advertiser_id="a"))
    acs.caps.record(uid, "i2", Candidate("c2", rules, advertiser_id="a"))
    assert acs.caps.reset(uid, "campaign", "c1") == 1
    assert counts(acs, uid) == {("campaign", "c2", "day"): 1, ("advertiser", "a", "week"): 2}
    assert acs.caps.reset(uid, "campaign", "nope") == 0
    assert acs.caps.reset(uid) == 2
    assert acs.redis.exists(keys.freqcap(uid), keys.freqcap_imps(uid)) == 0
    assert acs.caps.record(uid, "i1", Candidate("c1", rules, advertiser_id="a")).admitted


def test_inspect_filters_and_reports_window_ends(ac: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(ac))
    rules = [
        CapRule.fixed("campaign", "day", 5, offset_s=off),
        CapRule.rolling("campaign", 30, 4),
        CapRule.lifetime("advertiser", 100),
    ]
    ac.caps.record(uid, "i1", Candidate("c1", rules, advertiser_id="a"))
    t = server_ms(ac)
    ac.caps.record(uid, "i2", Candidate("c2", rules, advertiser_id="a"))
    rows = ac.caps.inspect(uid, "campaign", "c2")
    assert {(r.window, r.count) for r in rows} == {("day", 1), ("rolling:30", 1)}
    roll = next(r for r in rows if r.window == "rolling:30")
    assert roll.ends_at_ms is not None and t <= roll.ends_at_ms - 30_000 <= server_ms(ac)
    (life,) = ac.caps.inspect(uid, "advertiser", "a")
    assert life.window == "lifetime" and life.count == 2 and life.ends_at_ms is None
    assert len(ac.caps.inspect(uid)) == 5
    with pytest.raises(ValueError):
        ac.caps.inspect(uid, "campaign")


def test_ttl_is_the_longest_window_and_never_shortened(ac: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(ac))
    week = CapRule.fixed("campaign", "week", 10, offset_s=off)
    ac.caps.record(
        uid, "i1", Candidate("c1", [week, CapRule.fixed("campaign", "minute", 5, offset_s=off)])
    )
    exp = ac.redis.pexpiretime(keys.freqcap(uid))  # type: ignore[attr-defined]
    r = ac.caps.check(uid, [Candidate("c1", [CapRule.fixed("campaign", "week", 1, offset_s=off)])])[
        0
    ]
    assert exp == r.frees_at_ms, "the key lives until the end of the week window"
    ac.caps.record(uid, "i2", Candidate("c2", [CapRule.recency("campaign", 2)]))
    ac.caps.record(
        uid, "i3", Candidate("c3", [CapRule.fixed("campaign", "minute", 5, offset_s=off)])
    )
    assert ac.redis.pexpiretime(keys.freqcap(uid)) == exp  # type: ignore[attr-defined]


def test_short_windows_only_expire_soon(ac: AdCache, uid: str) -> None:
    """The one real-expiry test of caps: the deadline is exact, the wait has a wide margin."""
    before = server_ms(ac)
    ac.caps.record(uid, "i1", Candidate("c", [CapRule.rolling("campaign", 1, 5)]))
    after = server_ms(ac)
    deadline = ac.redis.pexpiretime(keys.freqcap(uid))  # type: ignore[attr-defined]
    assert before + 1000 <= deadline <= after + 1000
    sleep_until(ac, deadline, margin_ms=300)
    assert ac.redis.exists(keys.freqcap(uid)) == 0


# ---- bad input ----


def _raw(fn: str, user: str, *args: str | int) -> Call[object]:
    ks = (keys.freqcap(user),)
    if fn in ("ac_freqcap_record", "ac_freqcap_reset"):
        ks += (keys.freqcap_imps(user),)
    return Call(fn, ks, tuple(args), lambda r: r)


GOOD = ("c1", "a1", "", 2, "c", "day", 3, "a", "week", 5)

BAD_CANDIDATES: list[tuple[tuple[str | int, ...], type[Exception]]] = [
    (("c1", "", "", 1, "c", "fortnight", 3), BadArgumentError),  # unknown window
    (("c1", "", "", 1, "c", "day", -1), BadArgumentError),  # negative limit
    (("c1", "", "", 1, "c", "day", "x"), BadArgumentError),
    (("c1", "", "", 1, "c", "day@90000", 1), BadArgumentError),  # offset out of range
    (("c1", "", "", 1, "c", "rolling:0", 1), BadArgumentError),
    (("c1", "", "", 1, "c", "rolling:60", 1001), BadArgumentError),  # unbounded memory
    (("c1", "", "", 1, "c", "recency:60", 2), BadArgumentError),
    (("c1", "", "", 1, "c", "lifetime@5", 1), BadArgumentError),
    (("c1", "", "", 1, "x", "day", 1), BadArgumentError),  # unknown scope
    (("c1", "", "", 1, "a", "day", 1), BadArgumentError),  # advertiser rule, no advertiser id
    (("", "", "", 0), BadArgumentError),
    (("c{1}", "", "", 0), BadArgumentError),
    (("c1", "", "", 2, "c", "day", 1), ArityError),  # rule count larger than the rules
    (("c1", "", "", 0, "extra"), ArityError),
    (("c1", "", "", 33, *(["c", "day", 1] * 33)), LimitExceededError),
]


@pytest.mark.parametrize(("cand", "error"), BAD_CANDIDATES)
def test_bad_record_is_typed_and_writes_nothing(
    acs: AdCache, uid: str, cand: tuple[str | int, ...], error: type[Exception]
) -> None:
    good = Candidate("c1", [CapRule.fixed("campaign", "day", 3)], advertiser_id="a1")
    acs.caps.record(uid, "seed", good)
    before = fc_state(acs, uid)
    with pytest.raises(error):
        acs.run(_raw("ac_freqcap_record", uid, "imp", 60000, *cand))
    assert fc_state(acs, uid) == before


@pytest.mark.parametrize(("cand", "error"), BAD_CANDIDATES)
def test_bad_check_is_typed(
    ac: AdCache, uid: str, cand: tuple[str | int, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        ac.run(_raw("ac_freqcap_check", uid, 2, *GOOD, *cand))


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("", 1000, *GOOD), BadArgumentError),  # empty impression id
        (("imp", 0, *GOOD), BadArgumentError),
        (("imp", 8 * 86_400_000, *GOOD), BadArgumentError),
        (("imp", 1000, *GOOD, "c2"), ArityError),
        (("imp", 1000, "c1"), ArityError),
    ],
)
def test_bad_record_arguments(
    ac: AdCache, uid: str, args: tuple[str | int, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        ac.run(_raw("ac_freqcap_record", uid, *args))
    assert ac.redis.exists(keys.freqcap(uid), keys.freqcap_imps(uid)) == 0


def test_too_many_candidates_is_a_limit_error(acs: AdCache, uid: str) -> None:
    rules = [CapRule.fixed("campaign", "day", 3), CapRule.rolling("campaign", 60, 2)]
    rules += [CapRule.fixed("advertiser", "week", 9)]
    many = [Candidate(f"c{i}", rules, advertiser_id=f"a{i % 7}") for i in range(501)]
    with pytest.raises(LimitExceededError):
        acs.caps.check(uid, many)
    # 500 candidates (1,507 distinct counter fields) is fine, in one call
    d = acs.caps.check(uid, many[:500])
    assert len(d) == 500 and all(x.allowed and x.remaining == 2 for x in d)
    with pytest.raises(ArityError):
        acs.run(_raw("ac_freqcap_check", uid, 2, *GOOD))


@pytest.mark.parametrize(
    ("ks", "error"),
    [
        (lambda u: (keys.freqcap_imps(u), keys.freqcap(u)), BadKeyError),  # swapped
        (lambda u: (keys.freqcap(u), keys.freqcap_imps(u + "x")), CrossSlotError),
        (lambda u: (keys.session(u), keys.freqcap_imps(u)), BadKeyError),
        (lambda u: (keys.freqcap(u),), ArityError),
    ],
)
def test_record_refuses_wrong_keys(ac: AdCache, uid: str, ks: Any, error: type[Exception]) -> None:
    c: Call[object] = Call("ac_freqcap_record", ks(uid), ("imp", 1000, *GOOD), lambda r: r)
    with pytest.raises(error):
        ac.run(c)
    assert (
        ac.redis.exists(keys.freqcap(uid), keys.freqcap_imps(uid), keys.freqcap_imps(uid + "x"))
        == 0
    )


def test_bad_reset_and_inspect(ac: AdCache, uid: str) -> None:
    ac.caps.record(uid, "i", Candidate("c", [CapRule.fixed("campaign", "day", 3)]))
    before = fc_state(ac, uid)
    for fn in ("ac_freqcap_reset", "ac_freqcap_inspect"):
        with pytest.raises(BadArgumentError):
            ac.run(_raw(fn, uid, "z", "c"))
        with pytest.raises(ArityError):
            ac.run(_raw(fn, uid, "c"))
    assert fc_state(ac, uid) == before


def test_foreign_data_is_reported_and_nothing_written(ac: AdCache, uid: str) -> None:
    cand = Candidate("c", [CapRule.lifetime("campaign", 5), CapRule.fixed("campaign", "day", 5)])
    ac.redis.hset(keys.freqcap(uid), "c:c|L", "not a number")
    before = fc_state(ac, uid)
    with pytest.raises(CorruptStateError):
        ac.caps.record(uid, "i", cand)
    with pytest.raises(CorruptStateError):
        ac.caps.check(uid, [cand])
    assert fc_state(ac, uid) == before
    ac.redis.delete(keys.freqcap(uid))
    ac.redis.set(keys.freqcap(uid), "a string")
    with pytest.raises(CorruptStateError):
        ac.caps.check(uid, [cand])


def test_python_edge_rejects_malformed_rules() -> None:
    with pytest.raises(ValueError):
        CapRule("campaign", "fortnight", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CapRule.fixed("campaign", "day", -1)
    with pytest.raises(ValueError):
        CapRule("campaign", "rolling", 3)  # no seconds
    with pytest.raises(ValueError):
        CapRule("campaign", "recency", 2, seconds=5)
    with pytest.raises(ValueError):
        CapRule.fixed("campaign", "day", 1, offset_s=86400)
    with pytest.raises(ValueError):
        CapRule("publisher", "day", 1)  # type: ignore[arg-type]


# ---- concurrency, cluster, memory ----


@pytest.mark.parametrize("target", ["lib_standalone", "lib_cluster"])
def test_concurrent_records_admit_exactly_the_cap(
    request: pytest.FixtureRequest, uid: str, target: str
) -> None:
    off = calm_offset(int(time.time() * 1000))
    server = request.getfixturevalue(target)
    cap = 37
    rules = [
        CapRule.fixed("campaign", "day", 100, offset_s=off),
        CapRule.rolling("campaign", 60, cap),
    ]
    cand = Candidate("camp", rules, advertiser_id="adv")
    clients = [AdCache(server.client()) for _ in range(16)]
    admitted = [0] * 16
    barrier = threading.Barrier(16)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(8):
            # every impression is sent twice (a retry): it must still count once
            for _ in range(2):
                r = clients[n].caps.record(uid, f"imp-{n}-{i}", cand)
            admitted[n] += r.admitted

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    assert sum(admitted) == cap
    assert counts(AdCache(server.client()), uid) == {
        ("campaign", "camp", "day"): cap,
        ("campaign", "camp", "rolling:60"): cap,
    }


def test_batch_check_of_100_is_one_fcall_on_the_owning_node(ac_cluster: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(ac_cluster))
    rc: redis.RedisCluster = ac_cluster.redis  # type: ignore[assignment]
    rules = [
        CapRule.fixed("campaign", "day", 2, offset_s=off),
        CapRule.fixed("advertiser", "week", 2, offset_s=off),
    ]
    cands = [Candidate(f"c{i}", rules, advertiser_id=f"a{i % 5}") for i in range(100)]
    ac_cluster.caps.record(uid, "i", cands[3])
    owner = rc.get_node_from_key(keys.freqcap(uid))
    nodes = {n.name: rc.get_redis_connection(n) for n in rc.get_primaries()}
    ac_cluster.caps.check(uid, cands)  # connections and library checks are set up
    for r in nodes.values():
        r.config_resetstat()
    d = ac_cluster.caps.check(uid, cands)
    stats = {name: r.info("commandstats") for name, r in nodes.items()}
    assert stats[owner.name]["cmdstat_fcall_ro"]["calls"] == 1
    for name, st in stats.items():
        if name != owner.name:
            assert "cmdstat_fcall_ro" not in st and "cmdstat_fcall" not in st
    assert (
        len(d) == 100 and d[3].remaining == 1 and d[8].remaining == 1
    )  # a3 counted once (c8 is also of a3)
    assert d[0].remaining == 2


def test_users_spread_over_shards(ac_cluster: AdCache, uid: str) -> None:
    off = calm_offset(server_ms(ac_cluster))
    rc: redis.RedisCluster = ac_cluster.redis  # type: ignore[assignment]
    users = [f"{uid}-{i}" for i in range(30)]
    assert len({rc.get_node_from_key(keys.freqcap(u)).name for u in users}) == 3
    cand = Candidate("c", [CapRule.fixed("campaign", "day", 1, offset_s=off)])
    for u in users:
        assert ac_cluster.caps.record(u, "i", cand).admitted
    assert all(not ac_cluster.caps.check(u, [cand])[0].allowed for u in users)


@pytest.mark.parametrize(
    ("rules", "per_campaign"),
    [
        (
            [
                CapRule.fixed("campaign", "day", 3),
                CapRule.fixed("campaign", "week", 10),
                CapRule.recency("campaign", 300),
            ],
            1,
        ),
        (
            [
                CapRule.fixed("campaign", "day", 30),
                CapRule.fixed("campaign", "week", 100),
                CapRule.rolling("campaign", 3600, 10),
            ],
            10,  # the rolling list full
        ),
    ],
)
def test_memory_per_active_pair_is_bounded(
    ac: AdCache, uid: str, rules: list[CapRule], per_campaign: int
) -> None:
    """MEMORY USAGE of a user's counters over 20 active campaigns with 3 caps each."""
    pairs = 20
    for i in range(pairs):
        cand = Candidate(f"campaign-{i:04d}", rules, advertiser_id="advertiser-01")
        for k in range(per_campaign):
            assert ac.caps.record(uid, f"imp-{i}-{k}", cand).admitted
    fc = ac.redis.memory_usage(keys.freqcap(uid), samples=0)
    assert fc is not None
    per_pair = fc / pairs
    assert per_pair < 300, f"{per_pair:.0f} bytes per (user, campaign) pair"
    assert ac.redis.object("encoding", keys.freqcap(uid)) == b"listpack"


async def test_async_twin(aacs: aio.AdCache, uid: str) -> None:
    cand = Candidate("c", [CapRule.fixed("campaign", "day", 1)])
    assert (await aacs.caps.check(uid, [cand]))[0].allowed
    assert (await aacs.caps.record(uid, "i", cand)).admitted
    r = await aacs.caps.record(uid, "i2", cand)
    assert not r.admitted
    assert [c.count for c in await aacs.caps.inspect(uid)] == [1]
    assert await aacs.caps.reset(uid) == 1
