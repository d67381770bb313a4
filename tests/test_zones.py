"""Named time zones: the library's period boundaries and labels against Python's zoneinfo (the
reference), the zone table against tzdata, and zone arguments on every calendar API.

The table test runs the library's own time helper (the rendered helpers, through EVAL) at
thousands of instants around every transition of 2026-2030 and at a random second of every day.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis
from clock import server_ms, sleep_until
from test_budget import spec

from adcache import AdCache, BadArgumentError
from adcache.zones import rule_zone
from adcache_loader import zones
from adcache_loader.paths import project_paths
from adcache_loader.render import render
from adcache_loader.servers import Standalone

ZONES = [
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
]
UNITS = ("hour", "day", "week", "month")
FROM = datetime(2026, 1, 1, tzinfo=UTC)
TO = datetime(2031, 1, 1, tzinfo=UTC)
GRID_S = 900  # every boundary of these zones falls on a 15-minute UTC grid


def helper_script(driver: str) -> str:
    """The rendered helpers (errors .. the last helper) followed by `driver`, for EVAL."""
    src = render().source
    start = src.index("-- ==== helper: ")
    end = src.index("-- ==== domain: ")
    return src[start:end] + "\n" + driver


DRIVER = """
local z = T.zone(ARGV[1], 'zone', 86399)
local nokeep = ARGV[2] == '1'
local out = {}
for i = 3, #ARGV do
  local ms = tonumber(ARGV[i])
  for _, u in ipairs({'hour', 'day', 'week', 'month'}) do
    local s, e, l = T.zbounds(z, ms, u, nokeep)
    out[#out + 1] = s
    out[#out + 1] = e
    out[#out + 1] = l or ''
  end
end
return out
"""


def lua_periods(
    r: redis.Redis, zone: str, instants_ms: list[int], nokeep: bool
) -> list[tuple[int, int, str]]:
    script = helper_script(DRIVER)
    out: list[tuple[int, int, str]] = []
    for i in range(0, len(instants_ms), 2000):
        part = instants_ms[i : i + 2000]
        flat = r.eval(script, 0, zone, "1" if nokeep else "0", *part)  # type: ignore[no-untyped-call]
        for j in range(0, len(flat), 3):
            label = flat[j + 2]
            out.append((int(flat[j]), int(flat[j + 1]), label.decode() if label else ""))
    return out


def _offset_label(off: timedelta) -> str:
    s = int(off.total_seconds())
    a = abs(s)
    return ("-" if s < 0 else "+") + f"{a // 3600:02d}{a % 3600 // 60:02d}"


def ref_period(z: ZoneInfo, ms: int, unit: str) -> tuple[int, int, str]:
    """zoneinfo's answer: days/weeks/months from local midnight (fold 0) to the next; an hour is
    the longest run of instants with the same local hour and the same UTC offset."""
    t = datetime.fromtimestamp(ms / 1000, z)
    if unit == "hour":

        def key(sec: int) -> tuple[datetime, timedelta | None]:
            u = datetime.fromtimestamp(sec, z)
            return u.replace(minute=0, second=0, microsecond=0, tzinfo=None), u.utcoffset()

        k = key(ms // 1000)
        lo = ms // 1000 // GRID_S * GRID_S
        while key(lo - GRID_S) == k:
            lo -= GRID_S
        hi = lo + GRID_S
        while key(hi) == k:
            hi += GRID_S
        off = t.utcoffset()
        assert off is not None
        return lo * 1000, hi * 1000, t.strftime("%Y%m%d%H") + _offset_label(off)
    d = t.date()
    if unit == "day":
        first, nxt = d, d + timedelta(days=1)
    elif unit == "week":
        first = d - timedelta(days=d.weekday())
        nxt = first + timedelta(days=7)
    else:
        first = d.replace(day=1)
        nxt = (first + timedelta(days=32)).replace(day=1)

    def at(day: date) -> int:
        # Local midnight (fold 0: its first occurrence); when zoneinfo maps it to an instant that
        # is not where the date changes (midnight in a gap), the first second of the new date.
        def dated(sec: int) -> date:
            return datetime.fromtimestamp(sec, z).date()

        c = int(datetime.combine(day, time(), tzinfo=z).timestamp())
        if not (dated(c) >= day > dated(c - 1)):
            lo, hi = c - 3 * 3600, c + 3 * 3600
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if dated(mid) >= day else (mid, hi)
            c = hi
        return c * 1000

    return at(first), at(nxt), d.strftime("%Y%m%d") if unit == "day" else ""


def transitions(z: ZoneInfo) -> list[int]:
    """Instants (s) at which the zone's UTC offset changes, 2026-2030 (to the second)."""
    out: list[int] = []
    step = 6 * 3600

    def off(sec: int) -> timedelta | None:
        return datetime.fromtimestamp(sec, z).utcoffset()

    sec = int(FROM.timestamp())
    end = int(TO.timestamp())
    while sec < end:
        if off(sec) != off(sec + step):
            lo, hi = sec, sec + step
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if off(mid) == off(sec):
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
        sec += step
    return out


def instants(z: ZoneInfo, seed: str) -> list[int]:
    """Around each transition (both sides, and the local midnights around it), and a random
    second of every day; in time order (the order hot calls meet them)."""
    rnd = random.Random(seed)
    out: set[int] = set()
    for tr in transitions(z):
        for d in (
            -86401,
            -86400,
            -3601,
            -3600,
            -1801,
            -1800,
            -1,
            0,
            1,
            1799,
            1800,
            3599,
            3600,
            5400,
            86399,
            86400,
        ):
            out.add((tr + d) * 1000)
        day = datetime.fromtimestamp(tr, z).date()
        for k in (-1, 0, 1, 2):
            m = int(datetime.combine(day + timedelta(days=k), time(), tzinfo=z).timestamp())
            out.update({(m - 1) * 1000, m * 1000, m * 1000 + 999})
    sec = int(FROM.timestamp())
    while sec < TO.timestamp():
        out.add((sec + rnd.randrange(86400)) * 1000 + rnd.randrange(1000))
        sec += 86400
    return sorted(out)


@pytest.mark.parametrize("name", ZONES)
def test_boundaries_match_zoneinfo_2026_2030(lib_standalone: Standalone, name: str) -> None:
    r = lib_standalone.client()
    z = ZoneInfo(name)
    ms_list = instants(z, name)
    assert len(transitions(z)) == (0 if name == "Asia/Kathmandu" else 10)
    cached = lua_periods(r, name, ms_list, nokeep=False)
    fresh = lua_periods(r, name, ms_list, nokeep=True)
    assert cached == fresh
    bad = []
    for ms, got in zip(ms_list, [cached[i : i + 4] for i in range(0, len(cached), 4)], strict=True):
        want = [ref_period(z, ms, u) for u in UNITS]
        if got != want:
            bad.append((ms, datetime.fromtimestamp(ms / 1000, z).isoformat(), got, want))
    assert not bad, bad[:5]


def test_day_lengths_of_the_changes() -> None:
    """The reference itself: 23- and 25-hour days (23.5/24.5 at Lord Howe) exist in the range."""
    z = ZoneInfo("Australia/Lord_Howe")
    lengths = set()
    for tr in transitions(z):
        s, e, _ = ref_period(z, tr * 1000, "day")
        lengths.add((e - s) / 3_600_000)
    assert lengths == {23.5, 24.5}


def test_zone_table_matches_tzdata() -> None:
    import tzdata  # type: ignore[import-untyped]

    path = project_paths().lua / "zones.txt"
    if f"tzdata {tzdata.IANA_VERSION} " not in path.read_text().splitlines()[0]:
        pytest.skip(f"lua/zones.txt was built from another tzdata than {tzdata.IANA_VERSION}")
    table = zones.read_table(path)
    rules = zones.zone_rules()
    named = {n: rule for rule, names in table for n in zones.expand(names)}
    assert named == {n: rules[n] for n in zones.DEFAULT_NAMES}
    assert set(ZONES) <= set(named)
    assert "Europe/Amsterdam" not in named  # the Python client sends it as its rule
    # Morocco's Ramadan changes are listed one by one: its footer rule would be wrong.
    assert "Africa/Casablanca" not in rules and "America/New_York" in rules


def test_posix_rules_parse_like_zoneinfo(lib_standalone: Standalone) -> None:
    """Rules in forms the table does not all use (Jn, negative and >24h times, offsets with
    seconds, a change over midnight). The zero-based `n` form follows POSIX; CPython's zoneinfo
    reads it one day early, so it is not compared here (no tzdata zone uses it)."""
    r = lib_standalone.client()
    rules = [
        "XST3XDT,J60/1:30,J300/25",
        "<-03>3<-02>,M3.5.0/-2,M10.5.0/-1",
        "XST-5:45:30XDT-6,J60/0,J300/0",
        "<+14>-14",
        "AAA-12:45BBB-13:45,M9.5.0/2:45,M4.1.0/3:45",
    ]
    for rule in rules:
        z = rule_zone(rule)
        ms_list = [
            int(datetime(2028, 1, 1, tzinfo=UTC).timestamp() * 1000) + k * 5_400_000 + 7
            for k in range(0, 5900, 13)
        ]
        got = lua_periods(r, rule, ms_list, nokeep=True)
        for i, ms in enumerate(ms_list):
            for j, u in enumerate(UNITS):
                if (
                    u == "hour"
                    and int(datetime.fromtimestamp(ms / 1000, z).utcoffset().total_seconds()) % 60
                ):  # type: ignore[union-attr]
                    continue
                want = ref_period(z, ms, u)
                if u == "hour" and rule.startswith("XST-5:45:30"):
                    continue
                assert got[i * 4 + j] == want, (rule, u, ms)


@pytest.mark.parametrize(
    "bad",
    ["Mars/Olympus", "America/New_Yrok", "EST5EDT,M3.2.0", "ABC", "X" * 200, "UTC+", "Etc/GMT+99"],
)
def test_unknown_zone_is_a_bad_argument(ac: AdCache, uid: str, bad: str) -> None:
    from adcache import _generated as keys
    from adcache.stats import Event, StatsConfig

    with pytest.raises(redis.ResponseError, match=r"^ADCACHE_BADARG .*time zone"):
        ac.redis.fcall_ro(  # type: ignore[no-untyped-call]
            "ac_freqcap_check", 1, keys.freqcap(uid), 1, "c", "", "", 1, "c", "day@" + bad, 1
        )
    if len(bad) < 100:
        ac.stats.config = StatsConfig(zone=bad)
        with pytest.raises(BadArgumentError):
            ac.stats.record(uid, [Event(impressions=1)])
        assert not ac.redis.exists(keys.stats_meta(uid))


# ---- real transitions against the server: zones built so that a change is seconds away ----


def _posix_offset(east_s: int) -> str:
    """A UTC offset as POSIX spells it: hours west, [-]hh:mm:ss."""
    west = -east_s
    a = abs(west)
    return ("-" if west < 0 else "") + f"{a // 3600}:{a % 3600 // 60:02d}:{a % 60:02d}"


def _mdate(d: date) -> str:
    """A date as a POSIX 'Mm.w.d' rule (w 5 = last: a day from the 29th is always the last)."""
    return f"M{d.month}.{min(5, (d.day - 1) // 7 + 1)}.{(d.weekday() + 1) % 7}"


def _east_for(at_s: int, local_s_of_day: int) -> int:
    """The offset (s east, within +-12 h) whose local time at at_s is local_s_of_day."""
    east = (local_s_of_day - at_s) % 86400
    return east - 86400 if east > 43200 else east


def zone_with_midnight(at_s: int, day_hours: int) -> str:
    """A POSIX rule whose local midnight falls at at_s and starts a day of day_hours (23: clocks
    go forward at 02:00 that day; 25: back at 02:00; 24: a plain day before the 23-hour one)."""
    if day_hours in (23, 24):
        std = _east_for(at_s, 0)
        d = datetime.fromtimestamp(at_s + std, UTC).date() + timedelta(days=day_hours - 23)
        end = d + timedelta(days=150)
        return f"XST{_posix_offset(std)}XDT,{_mdate(d)}/2,{_mdate(end)}/2"
    dst = _east_for(at_s, 0)
    d = datetime.fromtimestamp(at_s + dst, UTC).date()
    start = d - timedelta(days=150)
    return f"XST{_posix_offset(dst - 3600)}XDT{_posix_offset(dst)},{_mdate(start)}/2,{_mdate(d)}/2"


def zone_with_fall_back(at_s: int) -> str:
    """A POSIX rule whose clocks go back from 02:00 to 01:00 at at_s (a repeated hour)."""
    dst = _east_for(at_s, 7200)
    d = datetime.fromtimestamp(at_s + dst, UTC).date()
    start = d - timedelta(days=150)
    return f"XST{_posix_offset(dst - 3600)}XDT{_posix_offset(dst)},{_mdate(start)}/2,{_mdate(d)}/2"


def soon_s(ac: AdCache) -> int:
    """A whole second 1.5-2.5 s after the server's now."""
    return (server_ms(ac) + 1500) // 1000 + 1


def day_end_ms(rule: str, at_ms: int) -> int:
    return ref_period(rule_zone(rule), at_ms, "day")[1]


def test_zone_builders_make_the_days_they_say() -> None:
    at = int(datetime(2027, 3, 14, 9, 30, 17, tzinfo=UTC).timestamp())
    for hours in (23, 24, 25):
        z = rule_zone(zone_with_midnight(at, hours))
        assert datetime.fromtimestamp(at, z).time() == time(0)
        assert datetime.fromtimestamp(at - 1, z).time() == time(23, 59, 59)
        s, e, _ = ref_period(z, at * 1000, "day")
        assert s == at * 1000 and e - s == hours * 3_600_000
    z = rule_zone(zone_with_fall_back(at))
    before, after = datetime.fromtimestamp(at - 1, z), datetime.fromtimestamp(at, z)
    assert (before.hour, after.hour) == (1, 1) and before.utcoffset() != after.utcoffset()


@pytest.mark.parametrize("hours", [23, 25])
def test_daily_cap_frees_at_local_midnight_of_a_short_or_long_day(
    ac: AdCache, uid: str, hours: int
) -> None:
    from adcache.caps import Candidate, CapRule

    at = soon_s(ac)
    rule = zone_with_midnight(at, hours)
    cand = Candidate(uid, (CapRule("campaign", "day", 1, zone=rule),))
    assert ac.caps.record(uid, f"{uid}-1", cand).admitted
    d = ac.caps.check(uid, [cand])[0]
    assert not d.allowed and d.frees_at_ms == at * 1000 == day_end_ms(rule, server_ms(ac))
    sleep_until(ac, at * 1000)
    assert ac.caps.check(uid, [cand])[0].allowed
    assert ac.caps.record(uid, f"{uid}-2", cand).admitted
    d = ac.caps.check(uid, [cand])[0]
    # The day that began is 23 (25) hours long: the cap frees at the next local midnight.
    assert d.frees_at_ms == at * 1000 + hours * 3_600_000 == day_end_ms(rule, server_ms(ac))


def test_the_same_day_counter_holds_across_a_change(ac: AdCache, uid: str) -> None:
    """Clocks go forward at 02:00 a moment away: the day's counter stays the same across it
    (an offset read at each call would name another window after the change)."""
    from adcache.caps import Candidate, CapRule

    at = soon_s(ac)
    rule = zone_with_midnight(at - 2 * 3600, 23)  # midnight two hours ago, 02:00 at `at`
    cand = Candidate(uid, (CapRule("campaign", "day", 1, zone=rule),))
    assert ac.caps.record(uid, f"{uid}-1", cand).admitted
    end = day_end_ms(rule, server_ms(ac))
    assert end == (at - 2 * 3600) * 1000 + 23 * 3_600_000
    sleep_until(ac, at * 1000)
    d = ac.caps.check(uid, [cand])[0]
    assert not d.allowed and d.frees_at_ms == end


@pytest.mark.parametrize("hours", [23, 25])
def test_daily_budget_rolls_at_local_midnight(ac: AdCache, uid: str, hours: int) -> None:

    at = soon_s(ac)
    rule = zone_with_midnight(at, hours)
    w = ac.campaigns.create(
        uid, spec(uid, budget_micros=1_000_000, daily_budget_micros=50_000, day_zone=rule)
    )
    assert w.version == 1
    c = ac.campaigns.get(uid)
    assert c is not None and c.spec.day_zone == rule and c.spec.day_offset_s == 0
    assert ac.budgets.reserve(uid, "a1", 50_000, 30).ok
    assert ac.budgets.commit(uid, "a1", 50_000).exhausted == "daily_budget"
    r = ac.budgets.reserve(uid, "a2", 1_000, 30)
    assert not r.ok and r.reason == "daily_budget"
    st = ac.budgets.state(uid)
    z = rule_zone(rule)
    assert st.day_end_ms == at * 1000
    assert st.day == datetime.fromtimestamp(at - 1, z).strftime("%Y%m%d")
    c = ac.campaigns.get(uid)
    assert c is not None and c.reason == "daily_budget" and c.not_before_ms == at * 1000
    sleep_until(ac, at * 1000)
    st = ac.budgets.state(uid)
    assert st.day == datetime.fromtimestamp(at, z).strftime("%Y%m%d") and st.day_spent_micros == 0
    assert (st.day_start_ms, st.day_end_ms) == (at * 1000, at * 1000 + hours * 3_600_000)
    assert st.servable
    assert ac.budgets.reserve(uid, "a3", 40_000, 30).ok


def test_pacing_counts_the_day_as_it_is_long(ac: AdCache, uid: str) -> None:

    at = soon_s(ac)
    rule = zone_with_midnight(at - 12 * 3600, 25)  # noon of a 25-hour day: 12/25 of it gone
    ac.campaigns.create(
        uid,
        spec(
            uid,
            budget_micros=1_000_000,
            daily_budget_micros=100_000,
            day_zone=rule,
            pacing="even",
            pacing_tolerance_bp=0,
        ),
    )
    st = ac.budgets.state(uid)
    elapsed = st.now_ms - (at - 12 * 3600) * 1000
    assert st.day_end_ms - st.day_start_ms == 25 * 3_600_000
    assert st.elapsed_ppm == elapsed * 1_000_000 // (25 * 3_600_000)
    assert st.pacing_allowed_micros == 100_000 * elapsed // (25 * 3_600_000)


@pytest.mark.parametrize("hours", [23, 25])
def test_stats_day_bucket_changes_at_local_midnight(ac: AdCache, uid: str, hours: int) -> None:
    from adcache.stats import Event, StatsConfig

    at = soon_s(ac)
    rule = zone_with_midnight(at, hours)
    z = rule_zone(rule)
    ac.stats.config = StatsConfig(zone=rule)
    r1 = ac.stats.record(uid, [Event(impressions=1)])
    assert r1.day == datetime.fromtimestamp(at - 1, z).strftime("%Y%m%d")
    sleep_until(ac, at * 1000)
    r2 = ac.stats.record(uid, [Event(impressions=2)])
    assert r2.day == datetime.fromtimestamp(at, z).strftime("%Y%m%d") != r1.day
    s = ac.stats.summary(uid, days=2)
    assert (s.first, s.last, s.impressions) == (r1.day, r2.day, 3)
    days = ac.stats.series(uid, "day", 2)
    assert [(p.label, p.impressions) for p in days.points] == [(r1.day, 1), (r2.day, 2)]


def test_stats_repeated_hour_is_a_bucket_of_its_own(ac: AdCache, uid: str) -> None:
    from adcache.stats import Event, StatsConfig

    at = soon_s(ac)
    rule = zone_with_fall_back(at)
    ac.stats.config = StatsConfig(zone=rule)
    r1 = ac.stats.record(uid, [Event(impressions=1)])
    sleep_until(ac, at * 1000)
    r2 = ac.stats.record(uid, [Event(impressions=2)])
    assert r1.hour[:10] == r2.hour[:10] and r1.hour != r2.hour  # local 01h twice
    assert r1.day == r2.day
    hours = ac.stats.series(uid, "hour", 2)
    assert [(p.label, p.impressions) for p in hours.points] == [(r1.hour, 1), (r2.hour, 2)]
    assert ac.stats.summary(uid, days=1).impressions == 3


def test_named_zones_on_every_api(ac: AdCache, uid: str) -> None:
    from adcache.caps import Candidate, CapRule
    from adcache.stats import Event, StatsConfig

    now = server_ms(ac)
    ny = ZoneInfo("America/New_York")
    rules = tuple(
        CapRule("campaign", u, 5, zone="America/New_York")
        for u in ("minute", "hour", "day", "week", "month")
    )
    cand = Candidate(uid, rules)
    assert ac.caps.record(uid, f"{uid}-1", cand).admitted
    counters = {c.window: c.ends_at_ms for c in ac.caps.inspect(uid)}
    for u in ("hour", "day", "week", "month"):
        assert (
            counters[u] == ref_period(ny, server_ms(ac), u)[1]
            or counters[u] == ref_period(ny, now, u)[1]
        )
    ac.campaigns.create(uid, spec(uid, daily_budget_micros=50_000, day_zone="Asia/Kathmandu"))
    st = ac.budgets.state(uid)
    kat = ZoneInfo("Asia/Kathmandu")
    assert (st.day_start_ms, st.day_end_ms, st.day) == ref_period(kat, st.now_ms, "day")
    ac.stats.config = StatsConfig(zone="Pacific/Chatham")
    cht = ZoneInfo("Pacific/Chatham")
    t0 = server_ms(ac)
    r = ac.stats.record(uid, [Event(impressions=1)])
    t1 = server_ms(ac)  # the record ran between t0 and t1 (a boundary may lie between them)
    assert r.day in {ref_period(cht, t, "day")[2] for t in (t0, t1)}
    assert r.hour in {ref_period(cht, t, "hour")[2] for t in (t0, t1)}


def test_python_sends_other_zones_as_their_rule(ac: AdCache, uid: str) -> None:
    from adcache.caps import Candidate, CapRule
    from adcache.stats import Event, StatsConfig
    from adcache.zones import wire

    assert wire("America/New_York") == "America/New_York"  # the library knows it
    assert wire("Asia/Tokyo") == "JST-9" and wire("US/Eastern") == "EST5EDT,M3.2.0,M11.1.0"
    assert wire("EST5EDT,M3.2.0,M11.1.0") == "EST5EDT,M3.2.0,M11.1.0"
    assert wire("Africa/Casablanca") == "Africa/Casablanca"  # its rule would be wrong: refused
    for name in ("Asia/Tokyo", "US/Eastern"):
        z = ZoneInfo(name)
        cand = Candidate(uid, (CapRule("campaign", "week", 1, zone=name),))
        assert ac.caps.record(uid, f"{uid}-{name}", cand).admitted
        d = ac.caps.check(uid, [cand])[0]
        assert d.frees_at_ms == ref_period(z, server_ms(ac), "week")[1]
        ac.stats.config = StatsConfig(zone=name)
        t0 = server_ms(ac)
        day = ac.stats.record(uid, [Event(impressions=1)]).day
        assert day in {ref_period(z, t, "day")[2] for t in (t0, server_ms(ac))}
    ac.campaigns.create(uid, spec(uid, daily_budget_micros=50_000, day_zone="Asia/Tokyo"))
    c = ac.campaigns.get(uid)
    assert c is not None and c.spec.day_zone == "JST-9"  # stored as the rule it was sent as
    st = ac.budgets.state(uid)
    tokyo = ref_period(ZoneInfo("Asia/Tokyo"), st.now_ms, "day")
    assert (st.day_start_ms, st.day_end_ms) == tokyo[:2]
    ac.stats.config = StatsConfig(zone="Africa/Casablanca")
    with pytest.raises(BadArgumentError):
        ac.stats.record(uid, [Event(impressions=1)])


def test_cli_stats_in_a_zone(lib_standalone: Standalone, ac: AdCache, uid: str) -> None:
    from click.testing import CliRunner

    from adcache.stats import Event, StatsConfig
    from adcache_loader.cli import main

    ac.stats.config = StatsConfig(zone="Asia/Kathmandu")
    ac.stats.record(uid, [Event(impressions=4, clicks=1)])
    args = ["stats", uid, "--url", lib_standalone.url, "--hours", "1", "--series"]
    res = CliRunner(env={"COLUMNS": "200"}).invoke(main, [*args, "--zone", "Asia/Kathmandu"])
    assert res.exit_code == 0, res.output
    assert "+0545" in res.output  # the hour bucket's label carries the zone's offset
    res = CliRunner(env={"COLUMNS": "200"}).invoke(main, [*args, "--zone", "Mars/Olympus"])
    assert res.exit_code != 0


def test_patch_moves_a_campaign_between_offset_and_zone(ac: AdCache, uid: str) -> None:
    ac.campaigns.create(uid, spec(uid, daily_budget_micros=50_000, day_offset_s=3600))
    ac.campaigns.patch(uid, day_zone="Australia/Lord_Howe")
    c = ac.campaigns.get(uid)
    assert c is not None and (c.spec.day_zone, c.spec.day_offset_s) == ("Australia/Lord_Howe", 0)
    st = ac.budgets.state(uid)
    lhi = ref_period(ZoneInfo("Australia/Lord_Howe"), st.now_ms, "day")
    assert (st.day_start_ms, st.day_end_ms, st.day) == lhi
    ac.campaigns.patch(uid, day_offset_s=-7200)
    c = ac.campaigns.get(uid)
    assert c is not None and (c.spec.day_zone, c.spec.day_offset_s) == ("", -7200)
    with pytest.raises(BadArgumentError):
        ac.campaigns.patch(uid, day_zone="Europe/Atlantis")
    c = ac.campaigns.get(uid)
    assert c is not None and c.spec.day_offset_s == -7200 and c.version == 3


def test_hour_cap_frees_when_the_clock_goes_back(ac: AdCache, uid: str) -> None:
    """The first 1 a.m. hour of a fall back ends at the change; the repeated one is a new window."""
    from adcache.caps import Candidate, CapRule

    at = soon_s(ac)
    rule = zone_with_fall_back(at)
    cand = Candidate(uid, (CapRule("campaign", "hour", 1, zone=rule),))
    assert ac.caps.record(uid, f"{uid}-1", cand).admitted
    d = ac.caps.check(uid, [cand])[0]
    assert not d.allowed and d.frees_at_ms == at * 1000
    sleep_until(ac, at * 1000)
    assert ac.caps.record(uid, f"{uid}-2", cand).admitted
    d = ac.caps.check(uid, [cand])[0]
    assert d.frees_at_ms == at * 1000 + 3_600_000  # the repeated hour: a full hour
