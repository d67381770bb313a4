"""Segments end to end: memberships on both sides, expiry, newest-first paging, bounds, the
composed add/remove and its crash-retry consistency, bad input; standalone and cluster."""

from __future__ import annotations

import time

import pytest

from adcache import AdCache, ArityError, BadArgumentError, Call, LimitExceededError, aio
from adcache import _generated as keys
from adcache.segments import add_call, leave_call


def _raw(fn: str, ks: tuple[str, ...], *args: str | int) -> Call[object]:
    return Call(fn, ks, tuple(args), lambda r: r)


def _seg_side(ac: AdCache, seg: str) -> dict[str, float]:
    return {
        k.decode(): v for k, v in ac.redis.zrange(keys.segment_expiry(seg), 0, -1, withscores=True)
    }


def _user_side(ac: AdCache, user: str) -> dict[str, float]:
    return {
        k.decode(): v for k, v in ac.redis.zrange(keys.user_segments(user), 0, -1, withscores=True)
    }


def test_add_is_visible_on_both_sides_without_duplicates(acs: AdCache, uid: str) -> None:
    user, seg = f"{uid}-u", f"{uid}-g"
    m1 = acs.segments.add(user, seg, ttl=60)
    m2 = acs.segments.add(user, seg, ttl=120)
    assert m1.new and not m2.new and m2.expires_at_ms > m1.expires_at_ms
    of = acs.segments.of(user)
    assert [(m.segment_id, m.expires_at_ms) for m in of] == [(seg, m2.expires_at_ms)]
    page = acs.segments.members(seg)
    assert [m.user_id for m in page.members] == [user] and page.done
    assert page.members[0].expires_at_ms == m2.expires_at_ms
    assert _seg_side(acs, seg) == {user: m2.expires_at_ms}
    assert _user_side(acs, user) == {seg: m2.expires_at_ms}, "both sides hold the same expiry"


def test_refresh_keeps_the_time_added(ac: AdCache, uid: str) -> None:
    seg = f"{uid}-g"
    ac.segments.add("a", seg, ttl=60)
    time.sleep(0.01)
    ac.segments.add("b", seg, ttl=60)
    time.sleep(0.01)
    ac.segments.add("a", seg, ttl=90)  # a refresh: "a" stays older than "b"
    assert [m.user_id for m in ac.segments.members(seg).members] == ["b", "a"]


def test_expired_memberships_are_never_returned_and_pruned_on_write(acs: AdCache, uid: str) -> None:
    user, seg = f"{uid}-u", f"{uid}-g"
    acs.segments.add(user, seg + "short", ttl=0.3)
    acs.segments.add(user, seg, ttl=60)
    acs.segments.add(user + "x", seg + "short", ttl=60)
    acs.segments.add(user + "y", seg, ttl=0.3)
    time.sleep(0.4)
    assert [m.segment_id for m in acs.segments.of(user)] == [seg]
    assert [m.user_id for m in acs.segments.members(seg).members] == [user]
    assert [m.user_id for m in acs.segments.members(seg + "short").members] == [user + "x"]
    # still stored until a write prunes them
    assert seg + "short" in _user_side(acs, user) and user + "y" in _seg_side(acs, seg)
    acs.segments.add(user, seg + "other", ttl=60)
    acs.segments.add(user + "z", seg, ttl=60)
    assert seg + "short" not in _user_side(acs, user)
    assert user + "y" not in _seg_side(acs, seg)
    assert acs.redis.zscore(keys.segment_members(seg), user + "y") is None


def test_keys_expire_with_their_last_membership(acs: AdCache, uid: str) -> None:
    user, seg = f"{uid}-u", f"{uid}-g"
    m = acs.segments.add(user, seg, ttl=0.25)
    for k in (keys.user_segments(user), keys.segment_members(seg), keys.segment_expiry(seg)):
        assert acs.redis.pexpiretime(k) == m.expires_at_ms, k
    time.sleep(max(0.0, (m.expires_at_ms - int(time.time() * 1000)) / 1000) + 0.3)
    for k in (keys.user_segments(user), keys.segment_members(seg), keys.segment_expiry(seg)):
        assert acs.redis.exists(k) == 0


def test_remove_clears_both_sides_and_is_idempotent(acs: AdCache, uid: str) -> None:
    user, seg = f"{uid}-u", f"{uid}-g"
    acs.segments.add(user, seg, ttl=60)
    acs.segments.add(user, seg + "2", ttl=60)
    assert acs.segments.remove(user, seg) is True
    assert acs.segments.remove(user, seg) is False
    assert [m.segment_id for m in acs.segments.of(user)] == [seg + "2"]
    assert acs.segments.members(seg).members == []
    assert acs.redis.exists(keys.segment_members(seg), keys.segment_expiry(seg)) == 0


def test_paging_is_newest_first_complete_and_stable(acs: AdCache, uid: str) -> None:
    seg = f"{uid}-g"
    users = [f"{uid}-u{i:02d}" for i in range(25)]
    for u in users:
        acs.segments.add(u, seg, ttl=60)
    expected = sorted(
        (
            (int(s), u.decode())
            for u, s in acs.redis.zrange(keys.segment_members(seg), 0, -1, withscores=True)
        ),
        reverse=True,
    )
    seen: list[str] = []
    page = acs.segments.members(seg, count=10)
    seen += [m.user_id for m in page.members]
    # members come and go between pages: newer ones do not shift the pages, and the cursor
    # survives the removal of the member it names
    acs.segments.add(f"{uid}-new", seg, ttl=60)
    acs.segments.remove(seen[-1], seg)
    while not page.done:
        page = acs.segments.members(seg, page.next_cursor, count=10)
        assert len(page.members) <= 10
        seen += [m.user_id for m in page.members]
    assert seen == [u for _, u in expected]
    assert len(set(seen)) == 25


def test_paging_skips_expired_members(ac: AdCache, uid: str) -> None:
    seg = f"{uid}-g"
    for i in range(6):
        ac.segments.add(f"live{i}", seg, ttl=60)
        ac.segments.add(f"dead{i}", seg, ttl=0.2)
    time.sleep(0.3)
    got: list[str] = []
    page = ac.segments.members(seg, count=2)
    got += [m.user_id for m in page.members]
    while not page.done:
        page = ac.segments.members(seg, page.next_cursor, count=2)
        got += [m.user_id for m in page.members]
    assert sorted(got) == [f"live{i}" for i in range(6)]


def test_bounds_refuse_and_leave_nothing_behind(acs: AdCache, uid: str) -> None:
    seg, user = f"{uid}-g", f"{uid}-u"
    for i in range(3):
        acs.segments.add(f"{uid}-m{i}", seg, ttl=60, max_members=3)
    with pytest.raises(LimitExceededError):
        acs.segments.add(user, seg, ttl=60, max_members=3)
    assert user not in _seg_side(acs, seg) and acs.segments.of(user) == []
    acs.segments.add(f"{uid}-m0", seg, ttl=90, max_members=3)  # a refresh is not a new member
    for i in range(2):
        acs.segments.add(user, f"{seg}{i}", ttl=60, max_segments=2)
    with pytest.raises(LimitExceededError):
        acs.segments.add(user, f"{seg}x", ttl=60, max_segments=2)
    assert acs.redis.exists(keys.segment_expiry(f"{seg}x")) == 0, "the segment side was undone"
    assert len(acs.segments.of(user)) == 2


def test_a_crash_between_the_two_writes_is_harmless_and_a_retry_repairs_it(
    acs: AdCache, uid: str
) -> None:
    user, seg = f"{uid}-u", f"{uid}-g"
    acs.run(add_call(seg, user, ttl=60))  # the segment side was written, then the client died
    assert acs.segments.of(user) == [], "targeting does not see a half-done add"
    m = acs.segments.add(user, seg, ttl=60)  # the retry
    assert _user_side(acs, user) == {seg: m.expires_at_ms}
    assert _seg_side(acs, seg) == {user: m.expires_at_ms}, "both sides agree after the retry"
    assert [x.user_id for x in acs.segments.members(seg).members] == [user]


def test_a_crash_inside_remove_leaves_only_a_segment_side_entry(acs: AdCache, uid: str) -> None:
    user, seg = f"{uid}-u", f"{uid}-g"
    acs.segments.add(user, seg, ttl=60)
    acs.run(leave_call(user, seg))  # the user side went first, then the client died
    assert acs.segments.of(user) == [], "targeting stops at once"
    assert user in _seg_side(acs, seg), "the segment side still lists it until the retry"
    assert acs.segments.remove(user, seg) is False  # the retry finishes the job
    assert acs.redis.exists(keys.segment_members(seg), keys.segment_expiry(seg)) == 0


@pytest.mark.parametrize(
    ("fn", "side", "args", "error"),
    [
        ("ac_segment_add", "g", ("", "1000", "10"), BadArgumentError),
        ("ac_segment_add", "g", ("u{1}", "1000", "10"), BadArgumentError),
        ("ac_segment_add", "g", ("u", "0", "10"), BadArgumentError),
        ("ac_segment_add", "g", ("u", "1000", "0"), BadArgumentError),
        ("ac_segment_add", "g", ("u", "1000", "99999999999"), BadArgumentError),
        ("ac_segment_add", "g", ("u", "1000"), ArityError),
        ("ac_segment_members", "g", ("junk", "10"), BadArgumentError),
        ("ac_segment_members", "g", ("", "1001"), BadArgumentError),
        ("ac_segment_join", "u", ("s", "12", "10"), None),
        ("ac_segment_join", "u", ("s", "99999999999999", "10"), BadArgumentError),
        ("ac_segment_join", "u", ("s", "abc", "10"), BadArgumentError),
        ("ac_segment_join", "u", ("s{", "99999", "10"), BadArgumentError),
        ("ac_segment_join", "u", ("s", "99999", "5000"), BadArgumentError),
        ("ac_segment_leave", "u", (), ArityError),
    ],
)
def test_bad_input_is_typed_and_writes_nothing(
    acs: AdCache,
    uid: str,
    fn: str,
    side: str,
    args: tuple[str, ...],
    error: type[Exception] | None,
) -> None:
    ks = (
        (keys.segment_members(uid), keys.segment_expiry(uid))
        if side == "g"
        else (keys.user_segments(uid),)
    )
    if error is None:  # an expiry in the past: a reply (-1), nothing written
        assert acs.run(_raw(fn, ks, *args)) == [-1, 0]
    else:
        with pytest.raises(error):
            acs.run(_raw(fn, ks, *args))
    assert acs.redis.exists(*ks) == 0


def test_python_edge_refuses_nonpositive_ttl(ac: AdCache, uid: str) -> None:
    with pytest.raises(BadArgumentError):
        ac.segments.add(uid, uid, ttl=0)


async def test_async_twin(aacs: aio.AdCache, uid: str) -> None:
    user, seg = f"{uid}-u", f"{uid}-g"
    m = await aacs.segments.add(user, seg, ttl=60)
    assert m.new
    assert [x.segment_id for x in await aacs.segments.of(user)] == [seg]
    page = await aacs.segments.members(seg)
    assert [x.user_id for x in page.members] == [user]
    assert await aacs.segments.remove(user, seg) is True
    assert await aacs.segments.of(user) == []


def test_foreign_keys_are_reported(ac: AdCache, uid: str) -> None:
    from adcache import CorruptStateError

    ac.redis.set(keys.user_segments(uid), "junk")
    ac.redis.set(keys.segment_members(uid), "junk")
    with pytest.raises(CorruptStateError):
        ac.segments.of(uid)
    with pytest.raises(CorruptStateError):
        ac.segments.members(uid)
    with pytest.raises(CorruptStateError):
        ac.segments.add(uid + "-u", uid, ttl=60)
    assert ac.redis.exists(keys.segment_expiry(uid)) == 0, "refused before any write"
