"""Campaign stats end to end: buckets and their boundaries (UTC-offset trick), retention TTLs,
derived metrics with zeros, reach accuracy, de-duplication, exact sums, bad input, cluster, asyncio."""

from __future__ import annotations

import calendar
import time
from decimal import Decimal

import pytest
import redis
from clock import calm_offset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adcache import (
    AdCache,
    ArityError,
    BadArgumentError,
    BadKeyError,
    Call,
    CorruptStateError,
    LimitExceededError,
    aio,
)
from adcache import _generated as keys
from adcache.stats import Event, StatsConfig, record_call, summary_call

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@pytest.fixture(autouse=True)
def _clear_of_bucket_boundaries() -> None:
    """Start every test at least 3 s after and 3 s before the hour and half-hour marks (bucket
    boundaries with whole- and half-hour offsets): a test that records and then reads the current
    hour or day then never straddles a boundary, whatever the time it runs at. Waits < 4 s."""
    since = time.time() % 1800  # seconds since the last mark
    if since < 3 or since > 1797:
        time.sleep((3 - since) if since < 3 else (1800 - since + 3))


def server_ms(r: redis.Redis) -> int:
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000


def boundary_offset(now_ms: int, ahead_s: float = 1.5) -> int:
    """A UTC offset (whole seconds) whose local midnight (hence also an hour) is ~ahead_s away."""
    off = round((DAY_MS - now_ms % DAY_MS) / 1000 - ahead_s) % 86_400
    return off - 86_400 if off > 43_200 else off


def label_end_ms(label: str, offset_s: int) -> int:
    """Epoch ms at which the bucket named `label` (YYYYMMDD or YYYYMMDDHH) ends."""
    y, m, d = int(label[:4]), int(label[4:6]), int(label[6:8])
    start = calendar.timegm((y, m, d, int(label[8:10]) if len(label) == 10 else 0, 0, 0))
    length = 3600 if len(label) == 10 else 86_400
    return (start + length - offset_s) * 1000


def campaign_keys(r: redis.Redis, cid: str) -> list[str]:
    return sorted(k.decode() for k in r.scan_iter(match=f"ad:{{c:{cid}}}:*", count=1000))


def test_record_summary_series(acs: AdCache, uid: str) -> None:
    cid = f"{uid}-c"
    r = acs.stats.record(
        cid,
        [
            Event(impressions=1, cost_micros=1_500, user_id="u1", event_id="e1"),
            Event(impressions=1, cost_micros=1_500, user_id="u2", event_id="e2"),
            Event(clicks=1, user_id="u1", event_id="e3"),
            Event(conversions=1, revenue_micros=4_000_000, user_id="u1", event_id="e4"),
        ],
    )
    assert (r.recorded, r.duplicates) == (4, 0)
    assert len(r.hour) == 10 and r.hour.startswith(r.day)
    for s in (acs.stats.summary(cid, days=1), acs.stats.summary(cid, hours=1)):
        assert (s.impressions, s.clicks, s.conversions) == (2, 1, 1)
        assert (s.cost_micros, s.revenue_micros, s.reach) == (3_000, 4_000_000, 2)
        assert s.last == (r.day if s.unit == "day" else r.hour) and s.buckets == 1
        assert s.ctr == Decimal("0.5") and s.cvr == Decimal(1)
        assert s.cpc == Decimal("0.003") and s.cpm == Decimal("1.5")
        assert s.roas == Decimal(4_000_000) / Decimal(3_000)
        assert s.cost == Decimal("0.003") and s.revenue == Decimal(4)
        assert s.now_ms >= s.last_ms > 0
    s30 = acs.stats.summary(cid, days=30)
    assert s30.buckets == 30 and s30.impressions == 2 and s30.reach == 2
    ser = acs.stats.series(cid, "hour", 3)
    assert [p.label for p in ser.points][-1] == r.hour and len(ser.points) == 3
    assert [p.impressions for p in ser.points] == [0, 0, 2]
    assert ser.points[-1].reach == 2 and ser.points[0].ctr is None
    days = acs.stats.series(cid, "day", 7).points
    assert days[-1].label == r.day and days[-1].cost_micros == 3_000
    assert days[0].label < days[-1].label


def test_derived_metrics_with_zeros(ac: AdCache, uid: str) -> None:
    empty = ac.stats.summary(f"{uid}-none", days=7)
    assert (empty.impressions, empty.clicks, empty.reach, empty.last_ms) == (0, 0, 0, 0)
    assert [empty.ctr, empty.cvr, empty.cpc, empty.cpm, empty.roas] == [None] * 5
    ac.stats.record(f"{uid}-imp", [Event(impressions=10)])  # no clicks, no cost
    s = ac.stats.summary(f"{uid}-imp", days=1)
    assert s.ctr == 0 and s.cpm == 0 and s.cvr is None and s.cpc is None and s.roas is None
    ac.stats.record(f"{uid}-rev", [Event(revenue_micros=5)])  # revenue without cost
    assert ac.stats.summary(f"{uid}-rev", hours=1).roas is None


def test_duplicates_count_nothing(acs: AdCache, uid: str) -> None:
    cid = f"{uid}-d"
    ev = Event(impressions=1, cost_micros=2_000, user_id="u1", event_id="imp-1")
    assert acs.stats.record(cid, [ev, ev]).duplicates == 1  # twice in one batch
    again = acs.stats.record(cid, [ev, Event(clicks=1, event_id="clk-1")])  # a retried delivery
    assert (again.recorded, again.duplicates) == (1, 1)
    s = acs.stats.summary(cid, days=1)
    assert (s.impressions, s.clicks, s.cost_micros) == (1, 1, 2_000)
    meta = acs.redis.hgetall(keys.stats_meta(cid))
    assert meta[b"events"] == b"2" and meta[b"duplicates"] == b"2"
    # Without an event id nothing is de-duplicated.
    acs.stats.record(cid, [Event(impressions=1), Event(impressions=1)])
    assert acs.stats.summary(cid, days=1).impressions == 3


def test_dedup_window_ttl_and_disabled(ac: AdCache, uid: str) -> None:
    cid = f"{uid}-w"
    ac.stats.config = StatsConfig(dedup_s=120)
    r = ac.stats.record(cid, [Event(impressions=1, event_id="x")])
    ev_key = keys.stats_dedup(cid, r.hour)  # offset 0: de-dup hours are UTC hours
    assert ac.redis.sismember(ev_key, "x")
    assert ac.redis.pexpiretime(ev_key) == label_end_ms(r.hour, 0) + 120_000
    ac.stats.config = StatsConfig(dedup_s=0)
    assert ac.stats.record(cid, [Event(impressions=1, event_id="x")]).recorded == 1
    assert ac.stats.summary(cid, days=1).impressions == 2


def test_retention_ttls_are_anchored(acs: AdCache, uid: str) -> None:
    cid = f"{uid}-ttl"
    off = 19_800  # +05:30: buckets follow the configured offset, never the server's zone
    acs.stats.config = StatsConfig(offset_s=off, hour_retention_s=600, day_retention_s=7_200)
    r = acs.stats.record(cid, [Event(impressions=1, user_id="u")])
    r2 = acs.stats.record(cid, [Event(impressions=1, user_id="v")])
    assert r2.hour == r.hour or r2.hour > r.hour
    want_h = label_end_ms(r2.hour, off) + 600_000
    want_d = label_end_ms(r2.day, off) + 7_200_000
    rr = acs.redis
    assert rr.pexpiretime(keys.stats_hour(cid, r2.hour)) == want_h
    assert rr.pexpiretime(keys.stats_reach_hour(cid, r2.hour)) == want_h
    assert rr.pexpiretime(keys.stats_day(cid, r2.day)) == want_d
    assert rr.pexpiretime(keys.stats_reach_day(cid, r2.day)) == want_d
    assert rr.pexpiretime(keys.stats_meta(cid)) == want_d
    now = int(time.time() * 1000)  # the test servers run on this host's clock
    assert label_end_ms(r2.day, off) - DAY_MS <= now < label_end_ms(r2.day, off)
    assert label_end_ms(r2.hour, off) - HOUR_MS <= now < label_end_ms(r2.hour, off)


def test_defaults_keep_48_hours_and_90_days(ac: AdCache, uid: str) -> None:
    r = ac.stats.record(f"{uid}-def", [Event(impressions=1)])
    et = ac.redis.pexpiretime
    assert et(keys.stats_hour(f"{uid}-def", r.hour)) == label_end_ms(r.hour, 0) + 48 * HOUR_MS
    assert et(keys.stats_day(f"{uid}-def", r.day)) == label_end_ms(r.day, 0) + 90 * DAY_MS


def test_bucket_boundary_and_hour_retention(ac: AdCache, uid: str) -> None:
    cid = f"{uid}-b"
    off = boundary_offset(server_ms(ac.redis))
    ac.stats.config = StatsConfig(offset_s=off, hour_retention_s=1)
    before = ac.stats.record(cid, [Event(impressions=1, cost_micros=10, user_id="a")])
    assert before.hour.endswith("23"), "the offset puts local time just before midnight"
    wait = label_end_ms(before.day, off) - server_ms(ac.redis)
    assert 0 < wait <= 2_100
    time.sleep(wait / 1000 + 0.05)
    after = ac.stats.record(cid, [Event(impressions=2, cost_micros=20, user_id="b")])
    assert after.day > before.day and after.hour == after.day + "00"
    assert ac.stats.summary(cid, days=1).impressions == 2
    assert ac.stats.summary(cid, hours=1).impressions == 2
    two = ac.stats.summary(cid, days=2)
    assert (two.first, two.last, two.impressions, two.cost_micros, two.reach) == (
        before.day,
        after.day,
        3,
        30,
        2,
    )
    pts = ac.stats.series(cid, "hour", 2).points
    assert [(p.label, p.impressions) for p in pts] == [(before.hour, 1), (after.hour, 2)]
    # hour_retention_s=1: the old hour is gone a second after its end; its day stays.
    time.sleep(
        max(0.0, (label_end_ms(before.hour, off) + 1_000 - server_ms(ac.redis)) / 1000) + 0.1
    )
    assert not ac.redis.exists(keys.stats_hour(cid, before.hour))
    assert ac.redis.exists(keys.stats_day(cid, before.day))
    assert ac.stats.summary(cid, hours=2).impressions == 2


def test_reach_of_10000_users_within_hll_error(ac: AdCache, uid: str) -> None:
    cid = f"{uid}-reach"
    users = [f"user-{i}" for i in range(10_000)]
    r = ac.stats.record(cid, [Event(impressions=1, user_id=u) for u in users])
    assert r.recorded == 10_000
    ac.stats.record(cid, [Event(impressions=1, user_id=u) for u in users[:3_000]])  # repeat views
    s = ac.stats.summary(cid, days=1)
    assert s.impressions == 13_000
    # Redis HyperLogLog: standard error 0.81 %; allow three of them.
    assert abs(s.reach - 10_000) <= 10_000 * 0.0243, s.reach
    h = ac.stats.summary(cid, hours=1)
    assert abs(h.reach - 10_000) <= 10_000 * 0.0243, h.reach


def test_sums_stay_exact_past_2_pow_53(ac: AdCache, uid: str) -> None:
    cid = f"{uid}-big"
    big = 999_999_999_000_000  # the largest amount one event may carry
    for _ in range(12):
        ac.stats.record(cid, [Event(cost_micros=big, revenue_micros=big - 1)])
    s = ac.stats.summary(cid, days=3)
    assert s.cost_micros == 12 * big and s.cost_micros > 2**53
    assert s.revenue_micros == 12 * (big - 1)
    assert ac.stats.series(cid, "day", 1).points[0].cost_micros == 12 * big


def test_more_than_1000_events_go_as_a_pipeline(acs: AdCache, uid: str) -> None:
    r = acs.stats.record(f"{uid}-many", [Event(impressions=1) for _ in range(2_500)])
    assert r.recorded == 2_500
    assert acs.stats.summary(f"{uid}-many", hours=1).impressions == 2_500


def _raw(fn: str, key: str, *args: str | int) -> Call[object]:
    return Call(fn, (key,), tuple(args), lambda r: r)


EV = ["1", "0", "0", "100", "0", "u", "e"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["0", "172800", "7776000", "3600", "-1", *EV[1:]], BadArgumentError),
        (["0", "172800", "7776000", "3600", "x", *EV[1:]], BadArgumentError),
        (["0", "172800", "7776000", "3600", *EV[:5], "bad{user}", "e"], BadArgumentError),
        (["0", "172800", "7776000", "3600", *EV[:6], "e}"], BadArgumentError),
        (["0", "172800", "7776000", "3600", *EV[:6]], ArityError),
        (["86400", "172800", "7776000", "3600", *EV], BadArgumentError),
        (["0", "0", "7776000", "3600", *EV], BadArgumentError),
        (["0", "172800", "7776000", "-1", *EV], BadArgumentError),
        (
            ["0", "172800", "7776000", "3600", *EV, "1", "0", "0", "1.5", "0", "", ""],
            BadArgumentError,
        ),
        (["0", "172800", "7776000", "3600", *(EV * 1001)], LimitExceededError),
        (["0", "172800", "7776000", "3600"], None),
    ],
)
def test_record_bad_input_writes_nothing(
    ac: AdCache, uid: str, args: list[str], error: type[Exception] | None
) -> None:
    cid = f"{uid}-bad"
    call = _raw("ac_stats_record", keys.stats_meta(cid), *args)
    if error is None:
        ac.run(call)  # no events: a valid call that counts nothing
    else:
        with pytest.raises(error):
            ac.run(call)
    assert campaign_keys(ac.redis, cid) == []


def test_batch_totals_beyond_exact_range_are_refused(ac: AdCache, uid: str) -> None:
    big = 999_999_999_000_000
    with pytest.raises(LimitExceededError):
        ac.stats.record(f"{uid}-x", [Event(cost_micros=big), Event(cost_micros=1_000_000)])
    assert campaign_keys(ac.redis, f"{uid}-x") == []


@pytest.mark.parametrize(
    ("fn", "args", "error"),
    [
        ("ac_stats_summary", ("day", "91", "0"), LimitExceededError),
        ("ac_stats_summary", ("hour", "169", "0"), LimitExceededError),
        ("ac_stats_summary", ("week", "1", "0"), BadArgumentError),
        ("ac_stats_series", ("day", "0", "0"), BadArgumentError),
        ("ac_stats_series", ("day", "1"), ArityError),
    ],
)
def test_read_bad_input(ac: AdCache, uid: str, fn: str, args: tuple[str, ...], error: type) -> None:
    with pytest.raises(error):
        ac.run(_raw(fn, keys.stats_meta(uid), *args))


def test_bad_keys(ac: AdCache, uid: str) -> None:
    with pytest.raises(BadKeyError):
        ac.run(_raw("ac_stats_summary", keys.session(uid), "day", "1", "0"))
    with pytest.raises(BadKeyError):
        ac.run(_raw("ac_stats_record", keys.stats_day(uid, "20250101"), "0", "1", "1", "0"))
    with pytest.raises(ValueError):
        summary_call(uid, "day", 91)
    with pytest.raises(ValueError):
        ac.stats.summary(uid, days=1, hours=1)


def test_foreign_data_in_a_bucket_is_refused_before_writing(ac: AdCache, uid: str) -> None:
    cid = f"{uid}-wt"
    r = ac.stats.record(f"{uid}-probe", [])  # learn the current labels
    ac.redis.set(keys.stats_day(cid, r.day), "not a hash")
    with pytest.raises(CorruptStateError):
        ac.stats.record(cid, [Event(impressions=1, user_id="u", event_id="e")])
    assert campaign_keys(ac.redis, cid) == [keys.stats_day(cid, r.day)]
    ac.redis.delete(keys.stats_day(cid, r.day))
    ac.redis.hset(keys.stats_hour(cid, r.hour), "impressions", "1.5")
    with pytest.raises(CorruptStateError):
        ac.stats.summary(cid, hours=1)


def test_cluster_campaigns_on_every_shard(ac_cluster: AdCache, uid: str) -> None:
    cids = [f"{uid}-{i}" for i in range(12)]
    rc = ac_cluster.redis
    assert len({rc.get_node_from_key(keys.stats_meta(c)).name for c in cids}) == 3
    for i, c in enumerate(cids):
        ac_cluster.stats.record(c, [Event(impressions=1, user_id=f"u{j}") for j in range(i + 1)])
    sums = ac_cluster.stats.summaries(cids, days=7)
    assert [s.impressions for s in sums] == [i + 1 for i in range(12)]
    assert [s.reach for s in sums] == [i + 1 for i in range(12)]


async def test_async_twin(aacs: aio.AdCache, uid: str) -> None:
    cid = f"{uid}-a"
    ev = Event(impressions=1, clicks=1, cost_micros=500, user_id="u", event_id="e")
    r = await aacs.stats.record(cid, [ev, ev])
    assert (r.recorded, r.duplicates) == (1, 1)
    s = await aacs.stats.summary(cid, hours=1)
    assert (s.impressions, s.clicks, s.reach, s.ctr) == (1, 1, 1, Decimal(1))
    ser = await aacs.stats.series(cid, "day", 2)
    assert [p.impressions for p in ser.points] == [0, 1]
    both = await aacs.stats.summaries([cid, f"{uid}-other"], days=1)
    assert [b.impressions for b in both] == [1, 0]


def test_record_call_builder_is_one_fcall(uid: str) -> None:
    call = record_call(uid, [Event(impressions=1)], StatsConfig(offset_s=3600))
    assert call.command()[:4] == ("FCALL", "ac_stats_record", 1, keys.stats_meta(uid))
    assert call.command()[4:8] == (3600, 172_800, 7_776_000, 3600)


def test_concurrent_retries_count_each_event_once(lib_cluster: object, uid: str) -> None:
    """Eight clients deliver the same 300 events (with ids) at once: each event counts once."""
    import threading

    cid = f"{uid}-conc"
    events = [
        Event(impressions=1, cost_micros=1_000, user_id=f"u{i % 50}", event_id=f"ev-{i}")
        for i in range(300)
    ]
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def deliver() -> None:
        cache = AdCache(lib_cluster.client())  # type: ignore[attr-defined]
        try:
            for i in range(0, 300, 25):
                r = cache.stats.record(cid, events[i : i + 25])
                with lock:
                    results.append((r.recorded, r.duplicates))
        except BaseException as e:
            errors.append(e)
        finally:
            cache.close()

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sum(r for r, _ in results) == 300 and sum(d for _, d in results) == 7 * 300
    check = AdCache(lib_cluster.client())  # type: ignore[attr-defined]
    try:
        s = check.stats.summary(cid, hours=1)
        assert (s.impressions, s.cost_micros, s.reach) == (300, 300_000, 50)
    finally:
        check.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 2),
            st.integers(0, 1),
            st.integers(0, 10**9),
            st.integers(0, 10**9),
            st.sampled_from(["", "a", "b", "c"]),
            st.sampled_from(["", "e1", "e2", "e3", "e4"]),
        ),
        max_size=30,
    )
)
def test_summary_matches_a_model(
    ac: AdCache, events: list[tuple[int, int, int, int, int, str, str]]
) -> None:
    import uuid

    cid = f"prop-{uuid.uuid4().hex[:12]}"
    # Examples run over several seconds: keep the day boundary (the summary's) away from now.
    ac.stats.config = StatsConfig(offset_s=calm_offset(server_ms(ac.redis), ("day",)))
    batch = [Event(i, c, v, co, rv, u or None, e or None) for i, c, v, co, rv, u, e in events]
    ac.stats.record(cid, batch[: len(batch) // 2])
    ac.stats.record(cid, batch[len(batch) // 2 :])
    seen: set[str] = set()
    want = [0, 0, 0, 0, 0]
    users: set[str] = set()
    for i, c, v, co, rv, u, e in events:
        if e and e in seen:
            continue
        if e:
            seen.add(e)
        for k, x in enumerate((i, c, v, co, rv)):
            want[k] += x
        if u:
            users.add(u)
    s = ac.stats.summary(cid, days=1)
    assert [s.impressions, s.clicks, s.conversions, s.cost_micros, s.revenue_micros] == want
    assert s.reach == len(users)  # tiny sets: the HyperLogLog is exact here


def test_dedup_looks_back_over_the_window(ac: AdCache, uid: str) -> None:
    """An id remembered in an earlier UTC hour's set is a duplicate while that hour is within
    dedup_s of now, and forgotten once the window no longer reaches it."""
    cid = f"{uid}-lb"
    # No need to keep clear of an hour boundary: if one passes during the test, hour(now - 3 h)
    # still reaches the set two hours back, hour(now - 1 h) still does not, and the set of the
    # hour just ended is still within the 1 h window.
    now = server_ms(ac.redis)
    two_ago = time.strftime("%Y%m%d%H", time.gmtime(now // 1000 - 2 * 3600))
    ac.redis.sadd(keys.stats_dedup(cid, two_ago), "old-event")
    ac.redis.expire(keys.stats_dedup(cid, two_ago), 60)
    ev = Event(impressions=1, event_id="old-event")
    ac.stats.config = StatsConfig(dedup_s=3 * 3600)  # reaches back over two full hours
    assert ac.stats.record(cid, [ev]).duplicates == 1
    ac.stats.config = StatsConfig(dedup_s=3600)  # only the previous hour: forgotten
    r = ac.stats.record(cid, [ev])
    assert (r.recorded, r.duplicates) == (1, 0)
    assert ac.stats.record(cid, [ev]).duplicates == 1  # now remembered in this hour's set


def test_summary_without_reach_skips_the_count(acs: AdCache, uid: str) -> None:
    from adcache.stats import Event

    acs.stats.record(uid, [Event(impressions=3, user_id="u1"), Event(clicks=1, user_id="u2")])
    full = acs.stats.summary(uid, days=7)
    sums = acs.stats.summary(uid, days=7, reach=False)
    assert (full.impressions, full.clicks, full.reach) == (3, 1, 2)
    assert (sums.impressions, sums.clicks, sums.reach) == (3, 1, -1)
