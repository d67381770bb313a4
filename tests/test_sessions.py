"""Sessions end to end: TTL behaviour, bad input, standalone and cluster, sync and asyncio."""

from __future__ import annotations

import time

import pytest
import redis
from clock import sleep_until

from adcache import (
    AdCache,
    AlreadyExistsError,
    ArityError,
    BadArgumentError,
    BadKeyError,
    Call,
    LimitExceededError,
    NotFoundError,
    aio,
)
from adcache import _generated as keys


def test_create_get_touch_delete(acs: AdCache, uid: str) -> None:
    s = acs.sessions.create(
        uid, "user-1", idle_ttl=30, max_lifetime=600, attributes={"site": "a.example"}
    )
    assert s.user_id == "user-1" and s.attributes == {"site": "a.example"}
    assert s.idle_ttl_ms == 30_000 and s.deadline_ms == s.created_ms + 600_000
    assert acs.redis.pexpiretime(keys.session(uid)) == s.expires_at_ms == s.created_ms + 30_000
    got = acs.sessions.get(uid)
    assert got is not None and got.user_id == "user-1" and got.attributes == {"site": "a.example"}
    t = acs.sessions.touch(uid)
    assert t.deadline_ms == s.deadline_ms and t.expires_at_ms >= s.created_ms + 30_000
    assert acs.sessions.delete(uid) is True
    assert acs.sessions.get(uid) is None
    assert acs.sessions.delete(uid) is False


def test_idle_ttl_slides_but_never_past_lifetime(ac: AdCache, uid: str) -> None:
    # The deadlines themselves (PEXPIRETIME), not whether a key happens to live at some moment.
    s = ac.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60.5)
    assert ac.redis.pexpiretime(keys.session(uid)) == s.created_ms + 60_000
    assert s.deadline_ms == s.created_ms + 60_500
    time.sleep(0.05)
    t = ac.sessions.touch(uid)  # slides: now + idle TTL, within the lifetime
    assert t.deadline_ms == s.deadline_ms
    assert s.created_ms + 60_000 < t.expires_at_ms <= t.deadline_ms
    assert ac.redis.pexpiretime(keys.session(uid)) == t.expires_at_ms
    time.sleep(0.55)  # now + idle TTL lies past the lifetime: the lifetime caps it
    t = ac.sessions.touch(uid)
    assert t.expires_at_ms == t.deadline_ms == ac.redis.pexpiretime(keys.session(uid))


def test_session_expires_for_real(ac: AdCache, uid: str) -> None:
    """The one real-expiry test of sessions, with wide margins: idle, then lifetime."""
    s = ac.sessions.create(uid, "u", idle_ttl=0.2, max_lifetime=60)
    sleep_until(ac, s.expires_at_ms, margin_ms=300)
    assert ac.sessions.get(uid) is None
    s = ac.sessions.create(f"{uid}-l", "u", idle_ttl=0.4, max_lifetime=0.6)
    time.sleep(0.25)
    t = ac.sessions.touch(f"{uid}-l")
    assert t.expires_at_ms == t.deadline_ms
    sleep_until(ac, t.deadline_ms, margin_ms=300)
    assert ac.sessions.get(f"{uid}-l") is None, "the absolute lifetime ended the session"
    with pytest.raises(NotFoundError):
        ac.sessions.touch(f"{uid}-l")


def test_create_twice_is_refused_and_keeps_the_first(ac: AdCache, uid: str) -> None:
    ac.sessions.create(uid, "first", idle_ttl=30, max_lifetime=60)
    with pytest.raises(AlreadyExistsError):
        ac.sessions.create(uid, "second", idle_ttl=30, max_lifetime=60)
    s = ac.sessions.get(uid)
    assert s is not None and s.user_id == "first"


def _raw(fn: str, key: str, *args: str | int) -> Call[object]:
    return Call(fn, (key,), tuple(args), lambda r: r)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("u", "-5", "1000"), BadArgumentError),
        (("u", "1000", "0"), BadArgumentError),
        (("u", "abc", "1000"), BadArgumentError),
        (("u", "1.5", "1000"), BadArgumentError),
        (("u", "99999999999999999999", "1000"), BadArgumentError),
        (("", "1000", "1000"), BadArgumentError),
        (("u{x}", "1000", "1000"), BadArgumentError),
        (("u" * 129, "1000", "1000"), BadArgumentError),
        (("u", "1000"), ArityError),
        (("u", "1000", "1000", "odd"), ArityError),
        (("u", "1000", "1000", *(["k", "v"] * 65)), LimitExceededError),
        (("u", "1000", "1000", "k", "v" * 5000), BadArgumentError),
    ],
)
def test_bad_create_input_is_typed_and_writes_nothing(
    acs: AdCache, uid: str, args: tuple[str, ...], error: type[Exception]
) -> None:
    key = keys.session(uid)
    with pytest.raises(error):
        acs.run(_raw("ac_session_create", key, *args))
    assert acs.sessions.get(uid) is None


@pytest.mark.parametrize(
    "key",
    [
        "ad:{u:x}:sess",  # another entity's tag
        "ad:{s:x}:other",  # unknown suffix
        "xx:{s:x}:sess",  # wrong prefix
        "ad:s:x:sess",  # no hash tag
        "ad:{s:" + "x" * 129 + "}:sess",  # id too long
    ],
)
def test_wrong_keys_are_refused(ac: AdCache, key: str) -> None:
    with pytest.raises(BadKeyError):
        ac.run(_raw("ac_session_create", key, "u", 1000, 1000))
    assert ac.redis.exists(key) == 0


def test_wrong_key_count_is_refused(ac: AdCache, uid: str) -> None:
    c: Call[object] = Call(
        "ac_session_get", (keys.session(uid), keys.session(uid + "b")), (), lambda r: r
    )
    with pytest.raises(ArityError):
        ac.run(c)


def test_python_edge_rejects_nonpositive_ttl(ac: AdCache, uid: str) -> None:
    with pytest.raises(BadArgumentError, match="idle_ttl"):
        ac.sessions.create(uid, "u", idle_ttl=0, max_lifetime=10)


def test_session_of_foreign_type_is_reported(ac: AdCache, uid: str) -> None:
    from adcache import CorruptStateError

    ac.redis.set(keys.session(uid), "not a hash")
    with pytest.raises(CorruptStateError):
        ac.sessions.touch(uid)


def test_get_many_spans_every_shard(ac_cluster: AdCache, uid: str) -> None:
    ids = [f"{uid}-{i}" for i in range(60)]
    for i, sid in enumerate(ids[:40]):
        ac_cluster.sessions.create(sid, f"user-{i}", idle_ttl=60, max_lifetime=120)
    rc: redis.RedisCluster = ac_cluster.redis  # type: ignore[assignment]
    owners = {rc.get_node_from_key(keys.session(s)).name for s in ids}
    assert len(owners) == len(rc.get_primaries()), "ids must spread over every primary"
    got = ac_cluster.sessions.get_many(ids)
    assert [g.user_id if g else None for g in got] == [f"user-{i}" for i in range(40)] + [None] * 20


async def test_async_twin(aacs: aio.AdCache, uid: str) -> None:
    s = await aacs.sessions.create(uid, "ua", idle_ttl=10, max_lifetime=20)
    assert s.user_id == "ua"
    got = await aacs.sessions.get(uid)
    assert got is not None and got.user_id == "ua" and got.deadline_ms == s.deadline_ms
    assert (await aacs.sessions.touch(uid)).deadline_ms == s.deadline_ms
    many = await aacs.sessions.get_many([uid, uid + "-none", uid])
    assert [m.user_id if m else None for m in many] == ["ua", None, "ua"]
    with pytest.raises(AlreadyExistsError):
        await aacs.sessions.create(uid, "ua", idle_ttl=10, max_lifetime=20)
    with pytest.raises(NotFoundError):
        await aacs.sessions.touch(uid + "-none")
    assert await aacs.sessions.delete(uid) is True


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "x" * 129])
def test_ids_that_cannot_form_a_key_fail_before_any_call(bad: str) -> None:
    # A client whose server does not exist: the error comes from the key builder, not the network.
    nowhere = AdCache(redis.Redis(port=1, socket_connect_timeout=0.2))
    with pytest.raises(BadArgumentError, match="session_id"):
        nowhere.sessions.get(bad)
    with pytest.raises(BadArgumentError, match="user_id"):
        nowhere.sessions.create("s1", bad, idle_ttl=10, max_lifetime=10)
