"""Every function answers a key holding another Redis type with ADCACHE_WRONGTYPE, and changes nothing.

For each public function (from the generated function table, so a new function without a case here
fails), a case seeds what makes the call otherwise valid and returns the call's keys, its arguments
and the keys it derives from their tag. Then, for each of those keys in turn, a fresh setup puts a
value of a foreign type at it, and the call must fail with an error reply whose first word is
ADCACHE_WRONGTYPE (the client raises the exception mapped to that code), with every key of the tag
(type, value, expiry) exactly as before.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

import pytest
import redis

from adcache import AdCache
from adcache import _generated as keys
from adcache._core import Call, raw
from adcache._generated import ERRORS, FUNCTIONS
from adcache_loader.paths import project_paths
from adcache_loader.render import load_keyspace

WRONGTYPE = ERRORS["ADCACHE_WRONGTYPE"]
KEY_TYPES = {name: k["type"] for name, k in load_keyspace(project_paths().lua)["keys"].items()}
Setup = tuple[list[str], list[Any], list[tuple[str, str]]]  # keys, args, derived (key, keyspace name)
HOUR_MS, DAY_MS = 3_600_000, 86_400_000


def fcall(r: redis.Redis, name: str, ks: list[str], *args: Any) -> Any:
    cmd = "FCALL_RO" if FUNCTIONS[name].readonly else "FCALL"
    return r.execute_command(cmd, name, len(ks), *ks, *args)


def now_ms(r: redis.Redis) -> int:
    s, us = r.time()
    return int(s) * 1000 + int(us) // 1000


def utc_label(ms: int, hours: bool) -> str:
    import datetime as dt

    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return t.strftime("%Y%m%d%H" if hours else "%Y%m%d")


# ---- seeds ----


def campaign(r: redis.Redis, cid: str) -> list[str]:
    ks = [keys.campaign(cid), keys.budget(cid)]
    now = now_ms(r)
    fields = ["advertiser", "adv", "status", "active", "bid", 2_000_000, "budget", 10**12]
    fields += ["start", now - 1000, "end", now + DAY_MS, "shards", "interest.all geo.all device.all"]
    fcall(r, "ac_campaign_set", ks, -1, *fields)
    return ks


def budget_keys(cid: str) -> list[str]:
    return [
        keys.campaign(cid),
        keys.budget(cid),
        keys.budget_resv(cid),
        keys.budget_resv_exp(cid),
        keys.budget_settled(cid),
        keys.budget_settled_exp(cid),
    ]


def session(r: redis.Redis, sid: str, history: bool = True) -> list[str]:
    ks = [keys.session(sid), keys.session_history(sid)]
    fcall(r, "ac_session_create", ks[:1], "u1", 600_000, 3_600_000)
    if history:
        fcall(r, "ac_session_track", ks, "view", 50, "r", 1, "cat", "kw")
    return ks


def auction(r: redis.Redis, aid: str, closed: bool = False) -> list[str]:
    ks = [keys.auction(aid), keys.auction_bids(aid)]
    fcall(r, "ac_auction_create", ks[:1], 2, 5000, 60_000, 600_000, 0, 0, 0, 1, "1", 100, 0, 0)
    bid = ["s1", "b1", "1", 500, "", "", "", "", "", "", ""]
    fcall(r, "ac_auction_bid", ks, *bid)
    if closed:
        fcall(r, "ac_auction_close", ks)
    return ks


RULES = ["c1", "a1", "", 2, "c", "day", 5, "a", "rolling:60", 3]


def caps(r: redis.Redis, uid: str) -> list[str]:
    ks = [keys.freqcap(uid), keys.freqcap_imps(uid)]
    fcall(r, "ac_freqcap_record", ks, "seed", 60_000, *RULES)
    return ks


def cache(r: redis.Redis, cid: str, key: str, tag: str | None = None) -> list[str]:
    ks = [keys.cache_value(cid, key), keys.cache_lock(cid, key)]
    fcall(r, "ac_cache_get", ks, "seed", 10_000, 0)
    tags = [keys.cache_tag(cid, tag)] if tag else []
    fcall(r, "ac_cache_fill", ks + tags, "seed", "value", "payload", 600_000, 1000, 5)
    return ks


def stats(r: redis.Redis, cid: str) -> None:
    ev = [1, 0, 0, 1500, 0, "u1", "e-seed"]
    fcall(r, "ac_stats_record", [keys.stats_meta(cid)], 0, 86400, 864000, 3600, *ev)


# ---- one case per function: seed, then (keys, args, derived keys) ----


def c_version(r: redis.Redis, u: str) -> Setup:
    return [], [], []


def c_auction_create(r: redis.Redis, u: str) -> Setup:
    return [keys.auction(u)], [2, 5000, 60_000, 600_000, 0, 0, 0, 1, "1", 100, 0, 0], []


def c_auction_bid(r: redis.Redis, u: str) -> Setup:
    ks = auction(r, u)
    return ks, ["s2", "b2", "1", 700, "", "", "", "", "", "", ""], []


def c_auction_open(r: redis.Redis, u: str) -> Setup:
    # an auction that exists: the open reads both keys (a new one touches only the auction key)
    return auction(r, u), [2, 5000, 60_000, 600_000, 0, 0, 0, 1, "1", 100, 0, 0], []


def c_auction_bid_close(r: redis.Redis, u: str) -> Setup:
    ks = auction(r, u)
    return ks, ["s2", "b2", "1", 700, "", "", "", "", "", "", ""], []


def c_auction_close(r: redis.Redis, u: str) -> Setup:
    return auction(r, u), [], []


def c_auction_result(r: redis.Redis, u: str) -> Setup:
    return auction(r, u), [], []


def c_auction_bill(r: redis.Redis, u: str) -> Setup:
    return auction(r, u, closed=True), ["s1", "b1"], []


def c_budget_reserve(r: redis.Redis, u: str) -> Setup:
    campaign(r, u)
    return budget_keys(u), ["r1", 2000, 10_000], []


def c_budget_commit(r: redis.Redis, u: str) -> Setup:
    campaign(r, u)
    fcall(r, "ac_budget_reserve", budget_keys(u), "r1", 2000, 10_000)
    return budget_keys(u), ["r1", 1500], []


def c_budget_release(r: redis.Redis, u: str) -> Setup:
    campaign(r, u)
    fcall(r, "ac_budget_reserve", budget_keys(u), "r1", 2000, 10_000)
    return budget_keys(u), ["r1"], []


def c_budget_state(r: redis.Redis, u: str) -> Setup:
    campaign(r, u)
    fcall(r, "ac_budget_reserve", budget_keys(u), "r1", 2000, 10_000)
    return budget_keys(u), [], []


CAMPAIGN_FIELDS = ["advertiser", "adv", "status", "active", "bid", 1000, "budget", 10**9]
CAMPAIGN_FIELDS += ["start", 1, "end", 4_000_000_000_000, "shards", "interest.all geo.all device.all"]


def c_campaign_set(r: redis.Redis, u: str) -> Setup:
    return [keys.campaign(u), keys.budget(u)], [-1, *CAMPAIGN_FIELDS], []


def c_campaign_patch(r: redis.Redis, u: str) -> Setup:
    return campaign(r, u), [-1, "status", "paused"], []


def c_campaign_get(r: redis.Redis, u: str) -> Setup:
    return campaign(r, u), [], []


def c_campaign_remove(r: redis.Redis, u: str) -> Setup:
    campaign(r, u)
    fcall(r, "ac_budget_reserve", budget_keys(u), "r1", 2000, 10_000)
    return budget_keys(u), [-1], []


def c_cache_get(r: redis.Redis, u: str) -> Setup:
    return [keys.cache_value(u, "k"), keys.cache_lock(u, "k")], ["tok", 1000, 0], []


def c_cache_get_many(r: redis.Redis, u: str) -> Setup:
    cache(r, u, "k1")
    ks = [keys.cache_value(u, "k1"), keys.cache_value(u, "k2")]
    ks += [keys.cache_lock(u, "k1"), keys.cache_lock(u, "k2")]
    return ks, ["tok", 1000], []


def c_cache_fill(r: redis.Redis, u: str) -> Setup:
    ks = [keys.cache_value(u, "k"), keys.cache_lock(u, "k")]
    fcall(r, "ac_cache_get", ks, "tok", 10_000, 0)
    return [*ks, keys.cache_tag(u, "t")], ["tok", "value", "p", 60_000, 1000, 5], []


def c_cache_release(r: redis.Redis, u: str) -> Setup:
    ks = [keys.cache_value(u, "k"), keys.cache_lock(u, "k")]
    fcall(r, "ac_cache_get", ks, "tok", 10_000, 0)
    return ks, ["tok"], []


def c_cache_write_begin(r: redis.Redis, u: str) -> Setup:
    ks = cache(r, u, "k")
    return [*ks, keys.cache_writer(u, "k")], ["tok", 10_000], []


def c_cache_set(r: redis.Redis, u: str) -> Setup:
    ks = [*cache(r, u, "k"), keys.cache_writer(u, "k")]
    fcall(r, "ac_cache_write_begin", ks, "tok", 10_000)
    return [*ks, keys.cache_tag(u, "t")], ["tok", "value", "p", 60_000, 1000], []


def c_cache_invalidate(r: redis.Redis, u: str) -> Setup:
    ks = cache(r, u, "k")
    fcall(r, "ac_cache_get", ks, "tok", 10_000, 1)  # takes the lock (refresh)
    return ks, [], []


def c_cache_invalidate_tag(r: redis.Redis, u: str) -> Setup:
    ks = cache(r, u, "k", tag="t")
    fcall(r, "ac_cache_get", ks, "tok", 10_000, 1)
    derived = [(ks[0], "cache_value"), (ks[1], "cache_lock")]
    return [keys.cache_tag(u, "t")], [], derived


def c_cache_wb_write(r: redis.Redis, u: str) -> Setup:
    ks = cache(r, u, "k")
    return [*ks, keys.cache_stream(u), keys.cache_tag(u, "t")], ["set", "p", 60_000, 1000], []


def c_cache_wb_ack(r: redis.Redis, u: str) -> Setup:
    ks = cache(r, u, "k")
    stream = keys.cache_stream(u)
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    sid = fcall(r, "ac_cache_wb_write", [*ks, stream], "set", "p", 60_000, 1000)
    return [stream, ks[0]], ["g", sid], []


def c_freqcap_check(r: redis.Redis, u: str) -> Setup:
    caps(r, u)
    return [keys.freqcap(u)], [2, *RULES, "c2", "", "", 1, "c", "lifetime", 1], []


def c_freqcap_record(r: redis.Redis, u: str) -> Setup:
    return caps(r, u), ["i2", 60_000, *RULES], []


def c_freqcap_reset(r: redis.Redis, u: str) -> Setup:
    return caps(r, u), [], []


def c_freqcap_inspect(r: redis.Redis, u: str) -> Setup:
    caps(r, u)
    return [keys.freqcap(u)], [], []


def c_profile_get(r: redis.Redis, u: str) -> Setup:
    fcall(r, "ac_profile_set", [keys.profile(u)], 60_000, "-", "score", 10)
    return [keys.profile(u)], [], []


def c_profile_set(r: redis.Redis, u: str) -> Setup:
    return [keys.profile(u)], [60_000, "-", "score", 10], []


def c_profile_patch(r: redis.Redis, u: str) -> Setup:
    fcall(r, "ac_profile_set", [keys.profile(u)], 60_000, "-", "score", 10)
    return [keys.profile(u)], [0, "-", "segment", "s1"], []


def c_profile_activity(r: redis.Redis, u: str) -> Setup:
    return [keys.profile(u)], [250, 0, "create"], []


def segment(r: redis.Redis, g: str) -> list[str]:
    ks = [keys.segment_members(g), keys.segment_expiry(g)]
    fcall(r, "ac_segment_add", ks, "u1", 600_000, 1000)
    return ks


def c_segment_add(r: redis.Redis, u: str) -> Setup:
    return segment(r, u), ["u2", 600_000, 1000], []


def c_segment_remove(r: redis.Redis, u: str) -> Setup:
    return segment(r, u), ["u1"], []


def c_segment_members(r: redis.Redis, u: str) -> Setup:
    return segment(r, u), ["", 10], []


def c_segment_join(r: redis.Redis, u: str) -> Setup:
    return [keys.user_segments(u)], ["g1", now_ms(r) + 600_000, 100], []


def c_segment_leave(r: redis.Redis, u: str) -> Setup:
    fcall(r, "ac_segment_join", [keys.user_segments(u)], "g1", now_ms(r) + 600_000, 100)
    return [keys.user_segments(u)], ["g1"], []


def c_segment_of(r: redis.Redis, u: str) -> Setup:
    fcall(r, "ac_segment_join", [keys.user_segments(u)], "g1", now_ms(r) + 600_000, 100)
    return [keys.user_segments(u)], [], []


def c_session_create(r: redis.Redis, u: str) -> Setup:
    return [keys.session(u), keys.session_history(u)], ["u1", 600_000, 3_600_000, "a", "b"], []


def c_session_get(r: redis.Redis, u: str) -> Setup:
    return session(r, u)[:1], [], []


def c_session_touch(r: redis.Redis, u: str) -> Setup:
    return session(r, u), [], []


def c_session_delete(r: redis.Redis, u: str) -> Setup:
    return session(r, u), ["u1"], []


def c_session_track(r: redis.Redis, u: str) -> Setup:
    return session(r, u), ["request", 50, "", 1, "cat2", "kw2"], []


def c_session_history(r: redis.Redis, u: str) -> Setup:
    return session(r, u), [10], []


def c_session_context(r: redis.Redis, u: str) -> Setup:
    return session(r, u), [60_000, 10], []


def c_session_impression(r: redis.Redis, u: str) -> Setup:
    return session(r, u)[:1], [0, "c1", 0, "imp1"], []


def c_session_index_add(r: redis.Redis, u: str) -> Setup:
    return [keys.user_sessions(u)], ["s1", 600_000, 16], []


def c_session_index_remove(r: redis.Redis, u: str) -> Setup:
    fcall(r, "ac_session_index_add", [keys.user_sessions(u)], "s1", 600_000, 16)
    return [keys.user_sessions(u)], ["s1"], []


def c_session_index_list(r: redis.Redis, u: str) -> Setup:
    fcall(r, "ac_session_index_add", [keys.user_sessions(u)], "s1", 600_000, 16)
    return [keys.user_sessions(u)], [], []


def c_stats_record(r: redis.Redis, u: str) -> Setup:
    stats(r, u)
    now = now_ms(r)
    derived = [
        (keys.stats_hour(u, utc_label(now, True)), "stats_hour"),
        (keys.stats_day(u, utc_label(now, False)), "stats_day"),
        (keys.stats_reach_hour(u, utc_label(now, True)), "stats_reach_hour"),
        (keys.stats_reach_day(u, utc_label(now, False)), "stats_reach_day"),
        (keys.stats_dedup(u, utc_label(now - HOUR_MS, True)), "stats_dedup"),
        (keys.stats_dedup(u, utc_label(now, True)), "stats_dedup"),
    ]
    ev = [1, 1, 0, 1500, 0, "u2", "e2"]
    return [keys.stats_meta(u)], [0, 86400, 864000, 3600, *ev], derived


def range_keys(r: redis.Redis, u: str) -> list[tuple[str, str]]:
    now = now_ms(r)
    out = []
    for d in (now - DAY_MS, now):
        out += [(keys.stats_day(u, utc_label(d, False)), "stats_day")]
        out += [(keys.stats_reach_day(u, utc_label(d, False)), "stats_reach_day")]
    return out


def c_stats_summary(r: redis.Redis, u: str) -> Setup:
    stats(r, u)
    return [keys.stats_meta(u)], ["day", 2, 0], range_keys(r, u)


def c_stats_series(r: redis.Redis, u: str) -> Setup:
    stats(r, u)
    return [keys.stats_meta(u)], ["day", 2, 0], range_keys(r, u)


def targeting(r: redis.Redis, t: str) -> list[str]:
    ks = [keys.targeting_index(t), keys.targeting_hold(t)]
    fcall(r, "ac_targeting_put", ks, "c1", now_ms(r) + 600_000, now_ms(r) + 60_000)
    return ks


def c_targeting_put(r: redis.Redis, u: str) -> Setup:
    return targeting(r, u), ["c2", now_ms(r) + 600_000, 0], []


def c_targeting_remove(r: redis.Redis, u: str) -> Setup:
    return targeting(r, u), ["c1"], []


def c_targeting_query(r: redis.Redis, u: str) -> Setup:
    return targeting(r, u), [], []


CASES: dict[str, Callable[[redis.Redis, str], Setup]] = {
    "ac_" + name[2:]: fn for name, fn in globals().items() if name.startswith("c_")
}
CASES["ac_version"] = c_version
CASES["ac_monitor_counters"] = c_version


# Keys a function is given but never reads or writes (they only name what it works on): a foreign
# value there is left alone and the call succeeds.
UNTOUCHED = {
    ("ac_cache_release", "cache_value"),  # the lock names the cache key; the value is not read
    ("ac_cache_write_begin", "cache_value"),
    ("ac_stats_series", "stats_meta"),  # names the campaign; the buckets are derived from its tag
}

# ---- the check ----


def tag_of(key: str) -> str:
    m = re.search(r"\{[^}]*\}", key)
    assert m, key
    return m.group(0)


def snapshot(r: redis.Redis, tag: str) -> dict[bytes, tuple[Any, ...]]:
    """Every key of the tag: type, serialized value and absolute expiry."""
    out = {}
    for k in r.scan_iter(match=f"*{tag}*", count=1000):
        out[k] = (r.type(k), r.dump(k), r.execute_command("PEXPIRETIME", k))
    return out


def settle_hlls(r: redis.Redis, tag: str) -> None:
    """PFCOUNT caches an estimate inside a HyperLogLog (not a change of its data): fill every cache
    first, so a snapshot compares data only."""
    for k in r.scan_iter(match=f"*{tag}*"):
        if r.type(k) == b"string":
            with contextlib.suppress(redis.ResponseError):
                r.pfcount(k)


def foreign(r: redis.Redis, key: str, name: str) -> None:
    """Replace `key` by a value of another Redis type than the keyspace gives it."""
    ttl = r.pttl(key)
    r.delete(key)
    if KEY_TYPES[name] == "string":
        r.rpush(key, "foreign")
    else:
        r.set(key, "foreign")
    if ttl > 0:
        r.pexpire(key, ttl)


def key_names(name: str, ks: list[str]) -> list[str]:
    spec = [k.rstrip(".") for k in FUNCTIONS[name].keys]
    if name == "ac_cache_get_many":  # value keys, then as many lock keys
        half = len(ks) // 2
        return ["cache_value"] * half + ["cache_lock"] * half
    return [spec[min(i, len(spec) - 1)] for i in range(len(ks))]


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_foreign_type_is_refused_and_changes_nothing(
    ac: AdCache, uid: str, name: str
) -> None:
    assert name in CASES, f"{name} has no case in tests/test_wrongtype.py: add one"
    r = ac.redis
    ks, _, derived = CASES[name](r, f"{uid}p")
    if not FUNCTIONS[name].keys:
        assert ks == []
        return
    assert "ADCACHE_WRONGTYPE" in FUNCTIONS[name].errors, f"{name}: @errors must list it"
    positions = list(zip(ks, key_names(name, ks), strict=True)) + derived
    for i in range(len(positions)):
        u = f"{uid}{i}"
        ks, args, derived = CASES[name](r, u)
        target, kname = (list(zip(ks, key_names(name, ks), strict=True)) + derived)[i]
        foreign(r, target, kname)
        settle_hlls(r, tag_of(target))
        before = snapshot(r, tag_of(target))
        assert target.encode() in before
        if (name, kname) in UNTOUCHED:
            fcall(r, name, ks, *args)
            assert r.type(target) == before[target.encode()][0], f"{name} replaced {kname}"
            continue
        with pytest.raises(redis.ResponseError) as err:
            fcall(r, name, ks, *args)
        assert str(err.value).split()[0] == "ADCACHE_WRONGTYPE", (name, kname, str(err.value))
        with pytest.raises(WRONGTYPE) as typed:
            ac.run(Call(name, tuple(ks), tuple(args), raw))
        assert typed.value.code == "ADCACHE_WRONGTYPE"
        assert snapshot(r, tag_of(target)) == before, f"{name} changed keys with {kname} foreign"
