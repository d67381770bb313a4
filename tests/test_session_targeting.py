"""Sessions for targeting: context history, weighted interests, impression caps, the per-user
index with listing and revocation, bad input; standalone and cluster, sync and asyncio."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
from clock import sleep_until

from adcache import (
    AdCache,
    AlreadyExistsError,
    ArityError,
    BadArgumentError,
    Call,
    CorruptStateError,
    LimitExceededError,
    NotFoundError,
    aio,
)
from adcache import _generated as keys
from adcache.sessions import index_add_call


def _raw(fn: str, ks: tuple[str, ...], *args: str | int) -> Call[object]:
    return Call(fn, ks, tuple(args), lambda r: r)


def _both(sid: str) -> tuple[str, str]:
    return keys.session(sid), keys.session_history(sid)


def test_track_appends_bounded_recency_ordered_context(acs: AdCache, uid: str) -> None:
    acs.sessions.create(uid, "u1", idle_ttl=30, max_lifetime=600)
    for i in range(5):
        t = acs.sessions.track(
            uid,
            kind="view" if i % 2 == 0 else "request",
            categories=[f"c{i}", "news", "news"],
            keywords=[f"k{i}"],
            referrer=f"https://r{i}.example/p?q=1",
            max_history=3,
        )
        assert t.history_length == min(i + 1, 3)
    h = acs.sessions.history(uid)
    assert h is not None and [e.categories for e in h] == [
        ("c4", "news"),
        ("c3", "news"),
        ("c2", "news"),
    ], "newest first, capped at 3, a token counts once per entry"
    assert [e.kind for e in h] == ["view", "request", "view"]
    assert h[0].keywords == ("k4",) and h[0].referrer == "https://r4.example/p?q=1"
    assert h[0].at_ms >= h[1].at_ms >= h[2].at_ms
    assert acs.redis.pexpiretime(keys.session_history(uid)) == acs.redis.pexpiretime(
        keys.session(uid)
    ), "the history shares the session's expiry"


def test_track_slides_the_idle_ttl_and_touch_carries_the_history(ac: AdCache, uid: str) -> None:
    s = ac.sessions.create(uid, "u", idle_ttl=0.5, max_lifetime=60)
    first = ac.sessions.track(uid, categories=["a"])
    assert first.expires_at_ms >= s.expires_at_ms
    time.sleep(0.05)
    t = ac.sessions.track(uid, categories=["b"])
    assert t.expires_at_ms > first.expires_at_ms, "track slid the idle TTL"
    assert t.expires_at_ms == ac.redis.pexpiretime(keys.session(uid))
    assert ac.redis.pexpiretime(keys.session_history(uid)) == t.expires_at_ms
    time.sleep(0.05)
    touched = ac.sessions.touch(uid)
    assert touched.expires_at_ms > t.expires_at_ms
    assert (
        ac.redis.pexpiretime(keys.session_history(uid))
        == ac.redis.pexpiretime(keys.session(uid))
        == touched.expires_at_ms
    )
    sleep_until(ac, touched.expires_at_ms, margin_ms=300)
    assert ac.sessions.get(uid) is None
    assert ac.redis.exists(keys.session_history(uid)) == 0, "the history idles out with it"
    assert ac.sessions.context(uid) is None and ac.sessions.history(uid) is None


def _expected_weight(now: int, at: int, half_ms: int) -> int:
    return math.floor(1000 * 2 ** (-max(0, now - at) / half_ms))


def test_context_weights_recent_entries_more(acs: AdCache, uid: str) -> None:
    acs.sessions.create(uid, "u", idle_ttl=60, max_lifetime=600)
    acs.sessions.track(uid, categories=["sports", "cars"], keywords=["tyres"], referrer="r1")
    time.sleep(0.4)
    acs.sessions.track(uid, categories=["sports"], keywords=["golf"])
    acs.sessions.track(uid, kind="request", categories=["travel"], referrer="r3")
    ctx = acs.sessions.context(uid, half_life=0.4, top=10)
    h = acs.sessions.history(uid)
    assert ctx is not None and h is not None and ctx.entries == 3
    w = [_expected_weight(ctx.now_ms, e.at_ms, 400) for e in h]
    assert w[0] >= w[2] and w[2] <= 600, "an entry one half-life old weighs about half"
    cats = dict(ctx.categories)
    for name, want in (("sports", w[1] + w[2]), ("cars", w[2]), ("travel", w[0])):
        assert abs(cats[name] - want) <= 2, (name, cats[name], want)
    assert ctx.categories[0][0] == "sports", "heaviest first"
    assert all(isinstance(v, int) for _, v in ctx.categories + ctx.keywords)
    assert dict(ctx.keywords).keys() == {"golf", "tyres"}
    assert ctx.referrer == "r3" and ctx.impressions == 0
    # top bounds the answer; ties are broken by name
    top1 = acs.sessions.context(uid, half_life=0.4, top=1)
    assert top1 is not None and [n for n, _ in top1.categories] == ["sports"]


def test_context_leaves_out_weightless_tokens(ac: AdCache, uid: str) -> None:
    ac.sessions.create(uid, "u", idle_ttl=60, max_lifetime=600)
    ac.sessions.track(uid, categories=["old"])
    time.sleep(0.05)
    ac.sessions.track(uid, categories=["new"])
    ctx = ac.sessions.context(uid, half_life=0.001)
    assert ctx is not None and ctx.entries == 2
    assert "old" not in dict(ctx.categories), "50 half-lives old weighs 0"


def test_impressions_are_capped_per_session_and_per_campaign(acs: AdCache, uid: str) -> None:
    acs.sessions.create(uid, "u", idle_ttl=60, max_lifetime=600)
    r = [
        acs.sessions.record_impression(uid, cap=3, campaign_id="c1", campaign_cap=2)
        for _ in range(3)
    ]
    assert [(x.allowed, x.reason) for x in r] == [
        (True, "ok"),
        (True, "ok"),
        (False, "campaign_cap"),
    ]
    assert r[1].campaign_impressions == 2 and r[2].session_impressions == 2
    x = acs.sessions.record_impression(uid, cap=3, campaign_id="c2")
    assert x.allowed and x.session_impressions == 3 and x.campaign_impressions == 1
    y = acs.sessions.record_impression(uid, cap=3)
    assert (y.allowed, y.reason, y.session_impressions) == (False, "session_cap", 3)
    assert acs.sessions.record_impression(uid).allowed, "cap 0 means no cap"
    s = acs.sessions.get(uid)
    ctx = acs.sessions.context(uid)
    assert s is not None and s.impressions == 4 and ctx is not None and ctx.impressions == 4


def test_session_cap_holds_under_concurrency(lib_standalone: Any, uid: str) -> None:
    caches = [AdCache(lib_standalone.client()) for _ in range(8)]
    caches[0].sessions.create(uid, "u", idle_ttl=60, max_lifetime=600)
    allowed: list[int] = []
    start = threading.Barrier(len(caches))

    def work(c: AdCache) -> None:
        start.wait()
        allowed.append(sum(c.sessions.record_impression(uid, cap=50).allowed for _ in range(20)))

    threads = [threading.Thread(target=work, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(allowed) == 50
    finally:
        for c in caches:
            c.close()


def test_unknown_session_is_not_found_and_nothing_is_written(acs: AdCache, uid: str) -> None:
    with pytest.raises(NotFoundError):
        acs.sessions.track(uid, categories=["a"])
    with pytest.raises(NotFoundError):
        acs.sessions.record_impression(uid, cap=1)
    assert acs.redis.exists(*_both(uid)) == 0
    assert acs.sessions.context(uid) is None


def test_unindexed_create_and_plain_delete_are_single_calls(ac: AdCache, uid: str) -> None:
    ac.sessions.create(uid, uid + "-user", idle_ttl=60, max_lifetime=600, index=False)
    assert ac.redis.exists(keys.user_sessions(uid + "-user")) == 0
    assert ac.sessions.list(uid + "-user") == []
    assert ac.sessions.delete(uid) is True


def test_sessions_are_indexed_by_default(ac: AdCache, uid: str) -> None:
    ac.sessions.create(uid, uid + "-user", idle_ttl=60, max_lifetime=600)
    assert [s.session_id for s in ac.sessions.list(uid + "-user")] == [uid]
    assert ac.sessions.revoke_all(uid + "-user") == 1
    assert ac.sessions.get(uid) is None


def test_user_sessions_are_listed_and_revoked(acs: AdCache, uid: str) -> None:
    user = f"{uid}-user"
    sids = [f"{uid}-s{i}" for i in range(6)]
    for sid in sids:
        acs.sessions.create(sid, user, idle_ttl=60, max_lifetime=600, index=True)
        acs.sessions.track(sid, categories=["x"])
    acs.sessions.create(
        f"{uid}-other", f"{uid}-someone-else", idle_ttl=60, max_lifetime=600, index=True
    )
    assert sorted(s.session_id for s in acs.sessions.list(user)) == sorted(sids)
    assert acs.sessions.delete(sids[0], user) is True  # then drops the index entry
    assert acs.redis.zscore(keys.user_sessions(user), sids[0]) is None
    assert acs.sessions.revoke_all(user) == 5
    for sid in sids:
        assert acs.sessions.get(sid) is None
        assert acs.redis.exists(*_both(sid)) == 0
    assert acs.redis.exists(keys.user_sessions(user)) == 0
    assert acs.sessions.list(user) == [] and acs.sessions.revoke_all(user) == 0
    assert acs.sessions.get(f"{uid}-other") is not None, "another user's session is untouched"


def test_index_skips_idled_out_sessions_and_prunes_passed_bounds(ac: AdCache, uid: str) -> None:
    user = f"{uid}-user"
    ac.sessions.create(f"{uid}-short", user, idle_ttl=0.2, max_lifetime=600, index=True)
    ac.sessions.create(f"{uid}-long", user, idle_ttl=60, max_lifetime=600, index=True)
    idx = keys.user_sessions(user)
    assert 600_000 < ac.redis.pttl(idx) <= 605_000, "the index lives as long as its latest bound"
    time.sleep(0.3)
    assert [s.session_id for s in ac.sessions.list(user)] == [f"{uid}-long"]
    ac.redis.zadd(idx, {"stale": 1})  # an entry whose bound has passed
    ac.sessions.create(f"{uid}-third", user, idle_ttl=60, max_lifetime=600, index=True)
    assert ac.redis.zscore(idx, "stale") is None, "index writes prune passed bounds"


def test_a_crash_between_index_and_create_is_harmless(acs: AdCache, uid: str) -> None:
    user, sid = f"{uid}-user", f"{uid}-s"
    acs.run(index_add_call(user, sid, max_lifetime=600))  # then the client died
    assert acs.sessions.list(user) == []
    assert acs.sessions.revoke_all(user) == 0
    acs.sessions.create(sid, user, idle_ttl=60, max_lifetime=600, index=True)  # the retry
    assert [s.session_id for s in acs.sessions.list(user)] == [sid]


def test_revocation_never_deletes_a_session_of_another_user(ac: AdCache, uid: str) -> None:
    sid = f"{uid}-s"
    ac.sessions.create(sid, "alice-" + uid, idle_ttl=60, max_lifetime=600, index=True)
    with pytest.raises(AlreadyExistsError):
        ac.sessions.create(sid, "mallory-" + uid, idle_ttl=60, max_lifetime=600, index=True)
    assert ac.sessions.list("mallory-" + uid) == []
    assert ac.sessions.revoke_all("mallory-" + uid) == 0
    s = ac.sessions.get(sid)
    assert s is not None and s.user_id == "alice-" + uid


def test_user_session_bound(ac: AdCache, uid: str) -> None:
    user = f"{uid}-user"
    for i in range(3):
        ac.sessions.create(
            f"{uid}-{i}", user, idle_ttl=60, max_lifetime=60, max_sessions=3, index=True
        )
    with pytest.raises(LimitExceededError):
        ac.sessions.create(
            f"{uid}-x", user, idle_ttl=60, max_lifetime=60, max_sessions=3, index=True
        )
    assert ac.sessions.get(f"{uid}-x") is None and len(ac.sessions.list(user)) == 3


@pytest.mark.parametrize(
    ("fn", "args", "error"),
    [
        ("ac_session_track", ("click", "10", "", "0"), BadArgumentError),
        ("ac_session_track", ("view", "0", "", "0"), BadArgumentError),
        ("ac_session_track", ("view", "501", "", "0"), BadArgumentError),
        ("ac_session_track", ("view", "10", "r\x01", "0"), BadArgumentError),
        ("ac_session_track", ("view", "10", "r" * 513, "0"), BadArgumentError),
        ("ac_session_track", ("view", "10", "", "2", "a"), BadArgumentError),
        ("ac_session_track", ("view", "10", "", "1", "a,b"), BadArgumentError),
        ("ac_session_track", ("view", "10", "", "1", ""), BadArgumentError),
        ("ac_session_track", ("view", "10", "", "1", "c" * 65), BadArgumentError),
        (
            "ac_session_track",
            ("view", "10", "", "17", *[f"c{i}" for i in range(17)]),
            LimitExceededError,
        ),
        (
            "ac_session_track",
            ("view", "10", "", "0", *[f"k{i}" for i in range(17)]),
            LimitExceededError,
        ),
        ("ac_session_track", ("view", "10", ""), ArityError),
        ("ac_session_context", ("0", "5"), BadArgumentError),
        ("ac_session_context", ("1000", "101"), BadArgumentError),
        ("ac_session_impression", ("-1", "", "0"), BadArgumentError),
        ("ac_session_impression", ("1", "c{x}", "0"), BadArgumentError),
        ("ac_session_impression", ("1", ""), ArityError),
        ("ac_session_delete", ("u", "extra"), ArityError),
    ],
)
def test_bad_input_is_typed_and_writes_nothing(
    acs: AdCache, uid: str, fn: str, args: tuple[str, ...], error: type[Exception]
) -> None:
    s = acs.sessions.create(uid, "u", idle_ttl=60, max_lifetime=600)
    acs.sessions.track(uid, categories=["seed"])
    sess_key, hist_key = _both(uid)
    before = (acs.redis.hgetall(sess_key), acs.redis.lrange(hist_key, 0, -1))
    ks = (sess_key,) if fn == "ac_session_impression" else (sess_key, hist_key)
    with pytest.raises(error):
        acs.run(_raw(fn, ks, *args))
    assert (acs.redis.hgetall(sess_key), acs.redis.lrange(hist_key, 0, -1)) == before
    assert s.deadline_ms == int(before[0][b"deadline"])


@pytest.mark.parametrize(
    ("fn", "args", "error"),
    [
        ("ac_session_index_add", ("s{", "1000", "10"), BadArgumentError),
        ("ac_session_index_add", ("s", "0", "10"), BadArgumentError),
        ("ac_session_index_add", ("s", "1000", "5000"), BadArgumentError),
        ("ac_session_index_add", ("s", "1000"), ArityError),
        ("ac_session_index_remove", (), ArityError),
        ("ac_session_index_remove", tuple(f"s{i}" for i in range(1001)), LimitExceededError),
        ("ac_session_index_list", ("x",), ArityError),
    ],
)
def test_bad_index_input_is_typed_and_writes_nothing(
    acs: AdCache, uid: str, fn: str, args: tuple[str, ...], error: type[Exception]
) -> None:
    key = keys.user_sessions(uid)
    with pytest.raises(error):
        acs.run(_raw(fn, (key,), *args))
    assert acs.redis.exists(key) == 0


def test_python_edge_refuses_commas_in_tokens(ac: AdCache, uid: str) -> None:
    ac.sessions.create(uid, "u", idle_ttl=60, max_lifetime=600)
    with pytest.raises(BadArgumentError):
        ac.sessions.track(uid, keywords=["a,b"])
    assert ac.redis.exists(keys.session_history(uid)) == 0


def test_foreign_history_key_is_reported(ac: AdCache, uid: str) -> None:
    ac.sessions.create(uid, "u", idle_ttl=60, max_lifetime=600)
    ac.redis.set(keys.session_history(uid), "junk")
    before = ac.redis.hgetall(keys.session(uid))
    with pytest.raises(CorruptStateError):
        ac.sessions.track(uid, categories=["a"])
    assert ac.redis.hgetall(keys.session(uid)) == before


async def test_async_twin(aacs: aio.AdCache, uid: str) -> None:
    user = f"{uid}-user"
    await aacs.sessions.create(uid, user, idle_ttl=60, max_lifetime=600, index=True)
    t = await aacs.sessions.track(uid, categories=["a"], keywords=["k"], referrer="r")
    assert t.history_length == 1
    ctx = await aacs.sessions.context(uid)
    assert ctx is not None and [n for n, _ in ctx.categories] == ["a"] and ctx.referrer == "r"
    h = await aacs.sessions.history(uid)
    assert h is not None and h[0].keywords == ("k",)
    imp = await aacs.sessions.record_impression(uid, cap=1)
    assert imp.allowed and not (await aacs.sessions.record_impression(uid, cap=1)).allowed
    assert [s.session_id for s in await aacs.sessions.list(user)] == [uid]
    assert await aacs.sessions.revoke_all(user) == 1
    assert await aacs.sessions.get(uid) is None


def test_impression_id_makes_the_count_exactly_once(acs: AdCache, uid: str) -> None:
    acs.sessions.create(uid, f"{uid}-u", idle_ttl=60, max_lifetime=600, index=False)
    first = acs.sessions.record_impression(uid, campaign_id="c1", impression_id="r1:1")
    again = acs.sessions.record_impression(uid, campaign_id="c1", impression_id="r1:1")
    assert (first.allowed, first.duplicate, first.session_impressions) == (True, False, 1)
    assert (again.allowed, again.duplicate, again.session_impressions) == (True, True, 1)
    other = acs.sessions.record_impression(uid, campaign_id="c1", impression_id="r2:1", cap=1)
    assert (other.allowed, other.reason, other.duplicate) == (False, "session_cap", False)
    replay = acs.sessions.record_impression(uid, campaign_id="c1", impression_id="r2:1", cap=5)
    assert (replay.allowed, replay.reason, replay.duplicate) == (False, "session_cap", True)
    s = acs.sessions.get(uid)
    assert s is not None and s.impressions == 1
