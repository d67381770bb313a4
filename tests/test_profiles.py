"""Profiles end to end: set/get/patch, compare-and-set, atomic activity under concurrency, idle
expiry, unknown users, bad input; standalone and cluster, sync and asyncio."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import pytest
import redis
from clock import sleep_until

from adcache import (
    AdCache,
    ArityError,
    BadArgumentError,
    Call,
    CorruptStateError,
    LimitExceededError,
    NotFoundError,
    VersionConflictError,
    aio,
)
from adcache import _generated as keys
from adcache.profiles import score_from_points


def _raw(fn: str, key: str, *args: str | int) -> Call[object]:
    return Call(fn, (key,), tuple(args), lambda r: r)


def test_set_get_roundtrip(acs: AdCache, uid: str) -> None:
    w = acs.profiles.set(
        uid,
        idle_ttl=60,
        score_milli=score_from_points(Decimal("75.5")),
        last_activity_ms=1_700_000_000_000,
        segment="high_value",
        interests=["tech", "gaming", "tech", "sports"],
        demographics={"age": "28", "gender": "M", "location": "Seoul"},
        attributes={"plan": "gold"},
    )
    assert w.version == 1
    p = acs.profiles.get(uid)
    assert p is not None
    assert p.version == 1 and p.score_milli == 75_500 and p.score_points == Decimal("75.5")
    assert p.last_activity_ms == 1_700_000_000_000 and p.segment == "high_value"
    assert p.interests == ("tech", "gaming", "sports"), "duplicates dropped, order kept"
    assert p.demographics == {"age": "28", "gender": "M", "location": "Seoul"}
    assert p.attributes == {"plan": "gold"}
    assert p.idle_ttl_ms == 60_000 and 58_000 <= p.ttl_ms <= 60_000
    assert w.expires_at_ms == p.updated_ms + 60_000
    assert acs.profiles.get(uid + "-none") is None


def test_set_replaces_the_whole_profile(ac: AdCache, uid: str) -> None:
    ac.profiles.set(uid, score_milli=5, segment="a", demographics={"age": "30"})
    w = ac.profiles.set(uid, interests=["x"])
    p = ac.profiles.get(uid)
    assert p is not None and w.version == 2 == p.version
    assert p.segment is None and p.demographics == {} and p.score_milli == 0
    assert p.interests == ("x",)
    assert p.idle_ttl_ms == 30 * 86_400_000, "default idle TTL for a new profile"


def test_patch_changes_only_given_fields(acs: AdCache, uid: str) -> None:
    acs.profiles.set(
        uid,
        idle_ttl=120,
        score_milli=1000,
        segment="s1",
        interests=["a"],
        demographics={"age": "20", "city": "X"},
        attributes={"k": "v"},
    )
    w = acs.profiles.patch(uid, demographics={"age": "21", "city": None}, segment="")
    assert w.version == 2
    p = acs.profiles.get(uid)
    assert p is not None
    assert p.demographics == {"age": "21"} and p.segment is None
    assert p.interests == ("a",) and p.attributes == {"k": "v"} and p.score_milli == 1000
    assert p.idle_ttl_ms == 120_000, "patch keeps the stored idle TTL"


def test_patch_creates_a_missing_profile(ac: AdCache, uid: str) -> None:
    w = ac.profiles.patch(uid, idle_ttl=30, attributes={"src": "import"})
    p = ac.profiles.get(uid)
    assert p is not None and w.version == 1 == p.version
    assert p.score_milli == 0 and p.attributes == {"src": "import"}
    assert 0 < p.ttl_ms <= 30_000
    ac.profiles.patch(uid + "b", score_milli=42)
    q = ac.profiles.get(uid + "b")
    assert q is not None and q.score_milli == 42 and q.version == 1


def test_compare_and_set(acs: AdCache, uid: str) -> None:
    assert acs.profiles.patch(uid, expected_version=0, segment="s").version == 1
    with pytest.raises(VersionConflictError):
        acs.profiles.patch(uid, expected_version=0, segment="other")
    assert acs.profiles.patch(uid, expected_version=1, segment="s2").version == 2
    before = acs.redis.hgetall(keys.profile(uid))
    with pytest.raises(VersionConflictError):
        acs.profiles.patch(uid, expected_version=1, segment="lost", demographics={"a": "1"})
    with pytest.raises(VersionConflictError):
        acs.profiles.set(uid, expected_version=7, segment="lost")
    assert acs.redis.hgetall(keys.profile(uid)) == before, "a conflict changes nothing"
    assert acs.profiles.set(uid, expected_version=2, segment="s3").version == 3


def test_activity_does_not_bump_the_version(ac: AdCache, uid: str) -> None:
    ac.profiles.set(uid, score_milli=100)
    a = ac.profiles.activity(uid, 250)
    assert a.score_milli == 350 and a.version == 1 and not a.created
    p = ac.profiles.get(uid)
    assert p is not None and p.last_activity_ms == a.last_activity_ms
    assert ac.profiles.patch(uid, expected_version=1, segment="x").version == 2
    assert ac.profiles.activity(uid, -400).score_milli == -50


def test_activity_refreshes_the_idle_ttl(ac: AdCache, uid: str) -> None:
    w = ac.profiles.set(uid, idle_ttl=60)
    set_deadline = ac.redis.pexpiretime(keys.profile(uid))
    time.sleep(0.05)
    a = ac.profiles.activity(uid, 1)
    assert a.expires_at_ms == a.last_activity_ms + 60_000 == ac.redis.pexpiretime(keys.profile(uid))
    assert a.expires_at_ms > set_deadline, "activity moved the deadline"
    a = ac.profiles.activity(uid, 1, idle_ttl=0.2)  # a per-call idle TTL replaces the stored one
    assert a.expires_at_ms == a.last_activity_ms + 200 == ac.redis.pexpiretime(keys.profile(uid))
    p = ac.profiles.get(uid)
    assert p is not None and p.idle_ttl_ms == 200 and w.version >= 1
    # The one real expiry of profiles, with a wide margin.
    sleep_until(ac, a.expires_at_ms, margin_ms=300)
    assert ac.profiles.get(uid) is None


def test_activity_on_an_unknown_user(acs: AdCache, uid: str) -> None:
    with pytest.raises(NotFoundError):
        acs.profiles.activity(uid, 5, missing="fail")
    assert acs.redis.exists(keys.profile(uid)) == 0, "fail mode writes nothing"
    a = acs.profiles.activity(uid, 5, idle_ttl=60)
    assert a.created and a.version == 1 and a.score_milli == 5
    p = acs.profiles.get(uid)
    assert p is not None, "the minimal profile is a valid one"
    assert p.score_milli == 5 and p.last_activity_ms == a.last_activity_ms
    assert 0 < p.ttl_ms <= 60_000 and p.idle_ttl_ms == 60_000
    assert acs.redis.pttl(keys.profile(uid)) > 0, "never a profile without a TTL"


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_sixteen_clients_add_to_one_score(
    request: pytest.FixtureRequest, where: str, uid: str
) -> None:
    lib: Any = request.getfixturevalue("lib_standalone" if where == "standalone" else "lib_cluster")
    n_clients, per_client, delta = 16, 40, 1250
    caches = [AdCache(lib.client()) for _ in range(n_clients)]
    caches[0].profiles.set(uid, idle_ttl=120)
    start = threading.Barrier(n_clients)
    errors: list[BaseException] = []

    def work(c: AdCache) -> None:
        try:
            start.wait()
            for _ in range(per_client):
                c.profiles.activity(uid, delta)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        p = caches[0].profiles.get(uid)
        assert p is not None and p.score_milli == n_clients * per_client * delta
        assert p.version == 1
    finally:
        for c in caches:
            c.close()


@pytest.mark.parametrize(
    ("fn", "args", "error"),
    [
        ("ac_profile_set", ("-1", "-"), BadArgumentError),
        ("ac_profile_set", ("abc", "-"), BadArgumentError),
        ("ac_profile_set", ("0", "x"), BadArgumentError),
        ("ac_profile_set", ("0",), ArityError),
        ("ac_profile_set", ("0", "-", "score"), ArityError),
        ("ac_profile_set", ("0", "-", "score", "1.5"), BadArgumentError),
        ("ac_profile_set", ("0", "-", "v", "9"), BadArgumentError),
        ("ac_profile_set", ("0", "-", "created", "9"), BadArgumentError),
        ("ac_profile_set", ("0", "-", "d.", "9"), BadArgumentError),
        ("ac_profile_set", ("0", "-", "d.a{b}", "9"), BadArgumentError),
        ("ac_profile_set", ("0", "-", "segment", "a}b"), BadArgumentError),
        ("ac_profile_set", ("0", "-", "interests", "a,,b"), BadArgumentError),
        (
            "ac_profile_set",
            ("0", "-", "interests", ",".join(f"i{i}" for i in range(65))),
            LimitExceededError,
        ),
        ("ac_profile_set", ("0", "-", "x.k", "v" * 1025), BadArgumentError),
        ("ac_profile_set", ("0", "-", "x.k", "1", "x.k", "2"), BadArgumentError),
        ("ac_profile_set", ("0", "-", *(["x.k", "v"] * 129)), LimitExceededError),
        ("ac_profile_patch", ("0", "-", "score", ""), BadArgumentError),
        ("ac_profile_patch", ("0", "-", "last", "-5"), BadArgumentError),
        ("ac_profile_patch", ("99999999999", "-"), BadArgumentError),
        ("ac_profile_activity", ("1", "0"), ArityError),
        ("ac_profile_activity", ("1.5", "0", "create"), BadArgumentError),
        ("ac_profile_activity", ("1", "0", "maybe"), BadArgumentError),
        ("ac_profile_activity", ("1", "-1", "create"), BadArgumentError),
        ("ac_profile_activity", ("10000000000000", "0", "create"), BadArgumentError),
    ],
)
def test_bad_input_is_typed_and_writes_nothing(
    acs: AdCache, uid: str, fn: str, args: tuple[str, ...], error: type[Exception]
) -> None:
    key = keys.profile(uid)
    with pytest.raises(error):
        acs.run(_raw(fn, key, *args))
    assert acs.redis.exists(key) == 0
    # the same on an existing profile: unchanged, TTL included
    acs.profiles.set(uid, idle_ttl=100, segment="keep", demographics={"a": "1"})
    before, ttl = acs.redis.hgetall(key), acs.redis.pttl(key)
    with pytest.raises(error):
        acs.run(_raw(fn, key, *args))
    assert acs.redis.hgetall(key) == before and acs.redis.pttl(key) <= ttl


def test_score_overflow_is_refused(ac: AdCache, uid: str) -> None:
    ac.profiles.set(uid, score_milli=999_999_999_999_000)
    with pytest.raises(BadArgumentError):
        ac.profiles.activity(uid, 1_000_000)
    p = ac.profiles.get(uid)
    assert p is not None and p.score_milli == 999_999_999_999_000


def test_python_edge_refuses_what_the_wire_cannot_say(ac: AdCache, uid: str) -> None:
    with pytest.raises(BadArgumentError):
        ac.profiles.set(uid, interests=["a,b"])
    with pytest.raises(BadArgumentError):
        ac.profiles.set(uid, idle_ttl=0)
    with pytest.raises(BadArgumentError):
        score_from_points("1.2345")
    assert ac.redis.exists(keys.profile(uid)) == 0


def test_foreign_key_is_reported(ac: AdCache, uid: str) -> None:
    ac.redis.set(keys.profile(uid), "not a hash")
    with pytest.raises(CorruptStateError):
        ac.profiles.activity(uid, 1)
    ac.redis.delete(keys.profile(uid))
    ac.redis.hset(keys.profile(uid), "foo", "bar")
    with pytest.raises(CorruptStateError):
        ac.profiles.patch(uid, segment="s")
    assert ac.redis.hgetall(keys.profile(uid)) == {b"foo": b"bar"}


def test_get_many_spans_every_shard(ac_cluster: AdCache, uid: str) -> None:
    ids = [f"{uid}-{i}" for i in range(30)]
    for i, u in enumerate(ids[:20]):
        ac_cluster.profiles.set(u, score_milli=i)
    rc: redis.RedisCluster = ac_cluster.redis  # type: ignore[assignment]
    owners = {rc.get_node_from_key(keys.profile(u)).name for u in ids}
    assert len(owners) == len(rc.get_primaries())
    got = ac_cluster.profiles.get_many(ids)
    assert [p.score_milli if p else None for p in got] == list(range(20)) + [None] * 10


async def test_async_twin(aacs: aio.AdCache, uid: str) -> None:
    w = await aacs.profiles.set(uid, idle_ttl=30, segment="s", interests=["a"])
    assert w.version == 1
    assert (await aacs.profiles.patch(uid, expected_version=1, attributes={"k": "v"})).version == 2
    with pytest.raises(VersionConflictError):
        await aacs.profiles.patch(uid, expected_version=1, segment="x")
    a = await aacs.profiles.activity(uid, 7)
    assert a.score_milli == 7 and a.version == 2
    p = await aacs.profiles.get(uid)
    assert p is not None and p.attributes == {"k": "v"} and p.segment == "s"
    many = await aacs.profiles.get_many([uid, uid + "-none"])
    assert many[0] is not None and many[0].version == 2 and many[1] is None
