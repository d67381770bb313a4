"""The targeting index end to end: the matching rule, the index kept right on every change
(targeting change, pause, resume, exhaustion, daily hold, start, end, remove), self-healing after a
half-applied change, sharding over the cluster, bad input."""

from __future__ import annotations

import time
from typing import Any, Literal

import pytest
import redis

from adcache import AdCache, BadArgumentError, Call, CrossSlotError, LimitExceededError, aio
from adcache import _generated as keys
from adcache.campaigns import CampaignSpec, set_call
from adcache.targeting import Targeting, combine, user_shards

DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def spec(uid: str, targeting: Targeting, **kw: Any) -> CampaignSpec:
    base: dict[str, Any] = {
        "advertiser_id": "adv",
        "bid_cpm_micros": 1_000_000,
        "budget_micros": 1_000_000,
        "start_ms": now_ms() - 60_000,
        "end_ms": now_ms() + 3_600_000,
        "targeting": targeting,
    }
    base.update(kw)
    return CampaignSpec(**base)


def mine(ids: list[str], uid: str) -> list[str]:
    """The `all` shards are shared by every test: keep this test's campaigns only."""
    return [i for i in ids if i.startswith(uid)]


@pytest.mark.parametrize("rounds", [1, 2])
def test_matching_rule(acs: AdCache, uid: str, rounds: Literal[1, 2]) -> None:
    sports, news, us, fr = f"{uid}sports", f"{uid}news", f"{uid}US", f"{uid}FR"
    a, b, c, d = (f"{uid}-{x}" for x in "abcd")
    acs.campaigns.create(a, spec(uid, Targeting.of([sports], [us])))
    acs.campaigns.create(b, spec(uid, Targeting.of([news], [], ["mobile"])))
    acs.campaigns.create(c, spec(uid, Targeting.of([], [fr])))
    acs.campaigns.create(d, spec(uid, Targeting.of([sports, news], [us, fr], ["desktop"])))

    def q(**kw: Any) -> list[str]:
        return mine(acs.targeting.query(**kw, rounds=rounds), uid)

    assert q(interests=[sports], location=us, device="mobile") == [a]
    assert q(interests=[sports], location=us, device="desktop") == [a, d]
    assert q(interests=[news], location=us, device="mobile") == [b]
    assert q(interests=[news, sports], location=fr, device="desktop") == [c, d]
    assert q(interests=[], location=fr) == [c]  # c targets every interest
    assert q(interests=[news]) == []  # b targets mobile only; no device given
    assert q(interests=[news], device="mobile") == [b]


def test_query_helpers() -> None:
    per = user_shards(["x", "y"], "KR", None)
    assert per == {
        "interest": ["interest.all", "interest.x", "interest.y"],
        "geo": ["geo.KR", "geo.all"],
        "device": ["device.all"],
    }
    members = {s: [] for ss in per.values() for s in ss}
    members["interest.x"] = ["c1", "c2"]
    members["geo.all"] = ["c1"]
    members["device.all"] = ["c1", "c2"]
    assert combine(per, members) == ["c1"]
    assert Targeting.of(["a", "all"], ["all"]).shards() == ["device.all", "geo.all", "interest.all"]
    with pytest.raises(ValueError):
        Targeting.of(["bad value"]).shards()


def test_index_follows_every_change(acs: AdCache, uid: str) -> None:
    cid = f"{uid}-c"
    t1 = Targeting.of([f"{uid}a"], [f"{uid}G"])
    t2 = Targeting.of([f"{uid}b"], [f"{uid}G"])
    user_a = {"interests": [f"{uid}a"], "location": f"{uid}G", "device": "tv"}
    user_b = {"interests": [f"{uid}b"], "location": f"{uid}G", "device": "tv"}

    def seen(user: dict[str, Any]) -> bool:
        return cid in acs.targeting.query(**user)

    w = acs.campaigns.create(cid, spec(uid, t1, budget_micros=10_000))
    assert seen(user_a) and not seen(user_b)
    # Targeting change: out of the old shard, into the new one.
    w = acs.campaigns.patch(cid, targeting=t2)
    assert w.removed == (f"interest.{uid}a",) and f"interest.{uid}b" in w.added
    assert not seen(user_a) and seen(user_b)
    assert cid not in acs.targeting.members(f"interest.{uid}a")
    # Pause and resume.
    acs.campaigns.pause(cid)
    assert not seen(user_b)
    assert all(cid not in acs.targeting.members(s) for s in t2.shards())
    acs.campaigns.resume(cid)
    assert seen(user_b)
    # Lifetime budget exhausted by a commit: out at once; more budget: back.
    acs.budgets.reserve(cid, "a1", 10_000, 10)
    assert acs.budgets.commit(cid, "a1", 9_500).exhausted == "lifetime_budget"
    assert not seen(user_b)
    acs.campaigns.patch(cid, budget_micros=100_000)
    assert seen(user_b)
    # End date moved into the past: gone.
    acs.campaigns.patch(cid, end_ms=now_ms() - 1, start_ms=now_ms() - 10_000)
    assert not seen(user_b)
    acs.campaigns.patch(cid, end_ms=now_ms() + 60_000)
    assert seen(user_b)
    # Removed: gone from every shard.
    acs.campaigns.remove(cid)
    assert not seen(user_b)
    assert all(cid not in acs.targeting.members(s) for s in t2.shards())


def test_end_and_start_times_apply_without_writes(ac: AdCache, uid: str) -> None:
    t = Targeting.of([f"{uid}a"])
    user = {"interests": [f"{uid}a"]}
    ending, starting = f"{uid}-ending", f"{uid}-starting"
    ac.campaigns.create(ending, spec(uid, t, end_ms=now_ms() + 1200))
    ac.campaigns.create(starting, spec(uid, t, start_ms=now_ms() + 1200))
    assert mine(ac.targeting.query(**user), uid) == [ending]
    time.sleep(1.5)
    assert mine(ac.targeting.query(**user), uid) == [starting]


def test_daily_budget_holds_until_the_next_day(ac: AdCache, uid: str) -> None:
    # The campaign's midnight is 2-3 s ahead (day offset), so the hold lifts by itself.
    off = ((DAY_MS - 2500) - now_ms() % DAY_MS) % DAY_MS
    if off > DAY_MS // 2:
        off -= DAY_MS
    cid = f"{uid}-d"
    t = Targeting.of([f"{uid}a"])
    ac.campaigns.create(
        cid, spec(uid, t, daily_budget_micros=5_000, day_offset_s=round(off / 1000))
    )
    ac.budgets.reserve(cid, "a1", 5_000, 10)
    assert ac.budgets.commit(cid, "a1", 5_000).exhausted == "daily_budget"
    assert cid not in ac.targeting.query(interests=[f"{uid}a"])
    c = ac.campaigns.get(cid)
    assert c is not None and c.reason == "daily_budget" and c.not_before_ms > now_ms()
    time.sleep(max(0.0, (c.not_before_ms - now_ms()) / 1000) + 0.1)
    assert cid in ac.targeting.query(interests=[f"{uid}a"])


def test_half_applied_change_heals(acs: AdCache, uid: str) -> None:
    cid = f"{uid}-h"
    t = Targeting.of([f"{uid}a"])
    user = {"interests": [f"{uid}a"]}
    # A crash after the record write, before the shard calls: not indexed yet...
    acs.run(set_call(cid, spec(uid, t)))
    assert cid not in acs.targeting.query(**user)
    # ...until the write is retried, or the campaign is reindexed.
    acs.campaigns.reindex(cid)
    assert cid in acs.targeting.query(**user)
    # A crash after a pause, before the shard calls: the stale id is removed by reindex.
    ks = (keys.campaign(cid), keys.budget(cid))
    acs.run(Call("ac_campaign_patch", ks, (-1, "status", "paused"), lambda r: r))
    assert cid in acs.targeting.query(**user)
    c = acs.campaigns.reindex(cid)
    assert c is not None and not c.indexed
    assert cid not in acs.targeting.query(**user)
    # Applying the same change twice is harmless (every shard call is idempotent).
    acs.campaigns.resume(cid)
    acs.campaigns.resume(cid)
    assert mine(acs.targeting.query(**user), uid) == [cid]


def test_shards_spread_over_the_cluster(ac_cluster: AdCache, uid: str) -> None:
    interests = [f"{uid}i{n}" for n in range(12)]
    cid = f"{uid}-wide"
    ac_cluster.campaigns.create(cid, spec(uid, Targeting.of(interests)))
    rc: redis.RedisCluster = ac_cluster.redis  # type: ignore[assignment]
    owners = {rc.get_node_from_key(keys.targeting_index(f"interest.{i}")).name for i in interests}
    assert len(owners) == len(rc.get_primaries())
    for i in interests:
        assert cid in ac_cluster.targeting.query(interests=[i])


@pytest.mark.parametrize(
    ("fn", "args", "error"),
    [
        ("ac_targeting_put", ("c", "-1", "0"), BadArgumentError),
        ("ac_targeting_put", ("c", "x", "0"), BadArgumentError),
        ("ac_targeting_put", ("c{x}", "99999999999999", "0"), BadArgumentError),
        ("ac_targeting_put", ("c", "99999999999999", "-5"), BadArgumentError),
        ("ac_targeting_remove", tuple(f"c{i}" for i in range(101)), LimitExceededError),
        ("ac_targeting_query", ("0",), BadArgumentError),
        ("ac_targeting_query", ("5001",), BadArgumentError),
        ("ac_targeting_query", ("10", *(f"c{i}" for i in range(5001))), LimitExceededError),
    ],
)
def test_bad_input(
    acs: AdCache, uid: str, fn: str, args: tuple[str, ...], error: type[Exception]
) -> None:
    shard = f"interest.{uid}"
    with pytest.raises(error):
        acs.run(
            Call(fn, (keys.targeting_index(shard), keys.targeting_hold(shard)), args, lambda r: r)
        )
    assert acs.redis.exists(keys.targeting_index(shard)) == 0


def test_candidate_filter(ac: AdCache, uid: str) -> None:
    from adcache.targeting import filter_call

    shard = f"interest.{uid}"
    ac.targeting.put(shard, "a", now_ms() + 60_000)
    ac.targeting.put(shard, "b", now_ms() + 60_000, now_ms() + 30_000)  # held
    ac.targeting.put(shard, "c", now_ms() + 60_000)
    assert ac.run(filter_call(shard, ["a", "b", "x", "c"])) == ["a", "c"]


def test_two_shards_in_one_call_are_refused(ac: AdCache, uid: str) -> None:
    ks = (keys.targeting_index(f"interest.{uid}a"), keys.targeting_hold(f"interest.{uid}b"))
    with pytest.raises(CrossSlotError):
        ac.run(Call("ac_targeting_put", ks, ("c", 99999999999999, 0), lambda r: r))


def test_shard_keys_expire_with_their_last_campaign(ac: AdCache, uid: str) -> None:
    shard = f"interest.{uid}"
    end = now_ms() + 60_000
    ac.targeting.put(shard, "c1", end, now_ms() + 30_000)
    assert ac.redis.pexpiretime(keys.targeting_index(shard)) == end
    assert ac.redis.pexpiretime(keys.targeting_hold(shard)) == end
    assert ac.targeting.members(shard) == []  # held
    assert ac.targeting.remove(shard, ["c1", "c2"]) == 1
    assert ac.redis.exists(keys.targeting_index(shard), keys.targeting_hold(shard)) == 0


async def test_async_query(aacs: aio.AdCache, uid: str) -> None:
    cid = f"{uid}-x"
    await aacs.campaigns.create(cid, spec(uid, Targeting.of([f"{uid}a"], ["all"], ["tv"])))
    assert mine(
        await aacs.targeting.query(interests=[f"{uid}a"], location="KR", device="tv"), uid
    ) == [cid]
    await aacs.campaigns.pause(cid)
    assert (
        mine(await aacs.targeting.query(interests=[f"{uid}a"], location="KR", device="tv"), uid)
        == []
    )
    await aacs.campaigns.remove(cid)
    assert await aacs.targeting.members(f"interest.{uid}a") == []


@pytest.mark.parametrize("rounds", [1, 2])
def test_verified_query_drops_and_repairs_stale_ids(
    acs: AdCache, uid: str, rounds: Literal[1, 2]
) -> None:
    t = Targeting.of([f"{uid}a"])
    user = {"interests": [f"{uid}a"]}
    paused, gone, moved, ok = (f"{uid}-{x}" for x in ("paused", "gone", "moved", "ok"))
    for cid in (paused, gone, moved, ok):
        acs.campaigns.create(cid, spec(uid, t))
    ks = {c: (keys.campaign(c), keys.budget(c)) for c in (paused, moved)}
    # Crashes between the record write and the shard calls leave stale ids behind:
    acs.run(Call("ac_campaign_patch", ks[paused], (-1, "status", "paused"), lambda r: r))
    other = " ".join(Targeting.of([f"{uid}b"]).shards())
    acs.run(Call("ac_campaign_patch", ks[moved], (-1, "shards", other), lambda r: r))
    acs.run(Call("ac_campaign_remove", (keys.campaign(gone), keys.budget(gone),
                 keys.budget_resv(gone), keys.budget_resv_exp(gone), keys.budget_settled(gone),
                 keys.budget_settled_exp(gone)), (-1,), lambda r: r))  # fmt: skip
    assert mine(acs.targeting.query(**user), uid) == sorted([paused, gone, moved, ok])
    assert mine(acs.targeting.query(**user, verify=True, rounds=rounds), uid) == [ok]
    # The verified query repaired the shards: the plain query is right again.
    assert mine(acs.targeting.query(**user), uid) == [ok]
    assert moved in acs.targeting.query(interests=[f"{uid}b"])


def test_a_full_shard_reply_is_reported(
    ac: AdCache, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    shard = f"interest.{uid}"
    for n in range(3):
        ac.targeting.put(shard, f"{uid}-{n}", now_ms() + 60_000 + n)
    with caplog.at_level("WARNING", logger="adcache"):
        assert (
            mine(ac.targeting.query(interests=[uid], limit=2), uid) == []
        )  # no device/geo .all match
    assert any(shard in r.getMessage() for r in caplog.records)
    assert ac.targeting.members(shard, limit=2) == [f"{uid}-0", f"{uid}-1"]
