"""Budgets end to end: reservations never overspend, idempotent commits, release, expiry and
reclaim, daily roll (UTC-offset trick), pacing, bad input; standalone and cluster."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from adcache import (
    AdCache,
    AlreadyExistsError,
    BadArgumentError,
    Call,
    InvalidStateError,
    NotFoundError,
    aio,
)
from adcache.budgets import BudgetState, reserve_call
from adcache.campaigns import CampaignSpec, all_keys
from adcache.targeting import Targeting

DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def offset_for(local_ms_of_day: int) -> int:
    """A day offset (s, within +-12 h) that makes the local time of day about `local_ms_of_day`."""
    off = (local_ms_of_day - now_ms() % DAY_MS) % DAY_MS
    if off > DAY_MS // 2:
        off -= DAY_MS
    return round(off / 1000)


def midnight_soon() -> int:
    """A day offset that puts the campaign's midnight 2-3 s ahead."""
    return offset_for(DAY_MS - 2500)


def spec(uid: str, **kw: Any) -> CampaignSpec:
    base: dict[str, Any] = {
        "advertiser_id": "adv-" + uid,
        "bid_cpm_micros": 1_000_000,  # one impression costs at least 1000 micros
        "budget_micros": 100_000,
        "start_ms": now_ms() - 60_000,
        "end_ms": now_ms() + 3_600_000,
        "targeting": Targeting.of([f"{uid}-i"], [f"{uid}-g"], ["mobile"]),
    }
    base.update(kw)
    return CampaignSpec(**base)


def invariant(st: BudgetState) -> None:
    assert st.reserved_total_micros == (
        st.committed_micros + st.released_micros + st.reclaimed_micros + st.reserved_micros
    )
    assert st.spent_micros == st.committed_micros + st.late_micros
    assert st.spent_micros <= st.budget_micros


def dump(ac: AdCache, cid: str) -> dict[str, Any]:
    """Every key of a campaign, raw (to prove a failed call wrote nothing)."""
    out: dict[str, Any] = {}
    for k in all_keys(cid):
        t = ac.redis.type(k)
        t = t.decode() if isinstance(t, bytes) else t
        if t == "hash":
            out[k] = ac.redis.hgetall(k)
        elif t == "zset":
            out[k] = ac.redis.zrange(k, 0, -1, withscores=True)
        else:
            out[k] = t
    return out


def test_reserve_commit_release(acs: AdCache, uid: str) -> None:
    acs.campaigns.create(uid, spec(uid))
    r = acs.budgets.reserve(uid, "a1", 30_000, 10)
    assert r.ok and r.reason == "" and r.reserved_micros == 30_000 and not r.replay
    c = acs.budgets.commit(uid, "a1", 12_345)
    assert c.status == "committed" and c.charged_micros == 12_345 and c.released_micros == 17_655
    assert c.spent_micros == 12_345 and c.reserved_micros == 0 and c.exhausted == ""
    assert acs.budgets.reserve(uid, "a2", 40_000, 10).ok
    rel = acs.budgets.release(uid, "a2")
    assert rel.status == "released" and rel.amount_micros == 40_000 and rel.reserved_micros == 0
    again = acs.budgets.release(uid, "a2")
    assert again.status == "released" and again.amount_micros == 0 and again.replay
    assert acs.budgets.release(uid, "a1").status == "committed"
    assert acs.budgets.release(uid, "never").status == "unknown"
    st = acs.budgets.state(uid)
    assert st.spent_micros == 12_345 and st.reserved_total_micros == 70_000
    assert st.released_micros == 17_655 + 40_000 and st.outstanding == 0
    invariant(st)


def test_reserve_refused_past_lifetime_budget(acs: AdCache, uid: str) -> None:
    acs.campaigns.create(uid, spec(uid, budget_micros=50_000))
    assert acs.budgets.reserve(uid, "a1", 30_000, 10).ok
    r = acs.budgets.reserve(uid, "a2", 20_001, 10)
    assert not r.ok and r.reason == "lifetime_budget" and r.reserved_micros == 30_000
    assert acs.budgets.reserve(uid, "a3", 20_000, 10).ok
    st = acs.budgets.state(uid)
    assert st.refusals == 1 and st.reserved_micros == 50_000
    invariant(st)


def test_commit_is_idempotent(acs: AdCache, uid: str) -> None:
    acs.campaigns.create(uid, spec(uid))
    acs.budgets.reserve(uid, "a1", 10_000, 10)
    first = acs.budgets.commit(uid, "a1", 8_000)
    for amount in (8_000, 9_000, 1):  # a retry answers the first result, whatever it says
        again = acs.budgets.commit(uid, "a1", amount)
        assert again.replay and again.status == "committed"
        assert (again.charged_micros, again.released_micros) == (8_000, 2_000)
    assert first.spent_micros == acs.budgets.state(uid).spent_micros == 8_000
    with pytest.raises(InvalidStateError):
        acs.budgets.reserve(uid, "a1", 10_000, 10)  # a settled id cannot be reserved again


def test_reserve_retry_is_answered_not_doubled(acs: AdCache, uid: str) -> None:
    acs.campaigns.create(uid, spec(uid))
    a = acs.budgets.reserve(uid, "a1", 10_000, 10)
    b = acs.budgets.reserve(uid, "a1", 10_000, 10)
    assert b.ok and b.replay and b.expires_at_ms == a.expires_at_ms and b.reserved_micros == 10_000
    before = dump(acs, uid)
    with pytest.raises(AlreadyExistsError):
        acs.budgets.reserve(uid, "a1", 11_000, 10)
    assert dump(acs, uid) == before


def test_expired_reservations_are_reclaimed_and_late_commit(acs: AdCache, uid: str) -> None:
    acs.campaigns.create(uid, spec(uid, budget_micros=50_000))
    assert acs.budgets.reserve(uid, "a1", 20_000, 0.5).ok
    assert acs.budgets.reserve(uid, "a2", 20_000, 0.5).ok
    assert acs.budgets.reserve(uid, "a3", 10_000, 30).ok
    assert not acs.budgets.reserve(uid, "a4", 20_000, 30).ok  # 50_000 held
    time.sleep(0.7)
    st = acs.budgets.state(uid)  # reclaims the two expired ones
    assert st.reclaimed_micros == 40_000 and st.reserved_micros == 10_000 and st.outstanding == 1
    invariant(st)
    # The impression of a1 was served after all: charged late, the budget allows it.
    late = acs.budgets.commit(uid, "a1", 15_000)
    assert late.status == "late" and late.charged_micros == 15_000 and late.released_micros == 0
    assert acs.budgets.commit(uid, "a1", 15_000).replay
    # Fill the budget, then a late commit that would overspend is refused (nothing charged).
    assert acs.budgets.reserve(uid, "a5", 25_000, 30).ok
    refused = acs.budgets.commit(uid, "a2", 1_000)
    assert refused.status == "refused" and refused.charged_micros == 0
    with pytest.raises(BadArgumentError):
        acs.budgets.commit(uid, "a3", 10_001)
    st = acs.budgets.state(uid)
    assert st.spent_micros == 15_000 and st.late_micros == 15_000
    invariant(st)


def test_commit_after_expiry_before_reclaim_is_late(ac: AdCache, uid: str) -> None:
    ac.campaigns.create(uid, spec(uid))
    ac.budgets.reserve(uid, "a1", 5_000, 0.1)
    time.sleep(0.2)
    c = ac.budgets.commit(uid, "a1", 5_000)  # no call reclaimed it yet: this one does
    assert c.status == "late" and c.charged_micros == 5_000
    st = ac.budgets.state(uid)
    assert st.reclaimed_micros == 5_000 and st.late_micros == 5_000
    invariant(st)


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        ("ac_budget_reserve", ("a9", "-5", "1000")),
        ("ac_budget_reserve", ("a9", "0", "1000")),
        ("ac_budget_reserve", ("a9", "1.5", "1000")),
        ("ac_budget_reserve", ("a9", "100", "0")),
        ("ac_budget_reserve", ("a9", "100", "-1")),
        ("ac_budget_reserve", ("a9", "100", str(DAY_MS + 1))),
        ("ac_budget_reserve", ("a{9}", "100", "1000")),
        ("ac_budget_reserve", ("", "100", "1000")),
        ("ac_budget_commit", ("a1", "-1")),
        ("ac_budget_commit", ("a1", "10001")),  # above the reservation
        ("ac_budget_commit", ("a1", "x")),
    ],
)
def test_bad_input_is_typed_and_changes_nothing(
    acs: AdCache, uid: str, fn: str, args: tuple[str, ...]
) -> None:
    acs.campaigns.create(uid, spec(uid))
    acs.budgets.reserve(uid, "a1", 10_000, 30)
    before = dump(acs, uid)
    with pytest.raises(BadArgumentError):
        acs.run(Call(fn, all_keys(uid), args, lambda r: r))
    assert dump(acs, uid) == before


def test_unknown_campaign_and_reservation(acs: AdCache, uid: str) -> None:
    with pytest.raises(NotFoundError):
        acs.budgets.reserve(uid, "a1", 1_000, 10)
    with pytest.raises(NotFoundError):
        acs.budgets.commit(uid, "a1", 1_000)
    with pytest.raises(NotFoundError):
        acs.budgets.release(uid, "a1")
    with pytest.raises(NotFoundError):
        acs.budgets.state(uid)
    assert all(acs.redis.exists(k) == 0 for k in all_keys(uid))
    acs.campaigns.create(uid, spec(uid))
    before = dump(acs, uid)
    with pytest.raises(NotFoundError):
        acs.budgets.commit(uid, "never-reserved", 1_000)
    assert dump(acs, uid) == before
    acs.budgets.reserve(uid, "a1", 1_000, 10)
    acs.budgets.release(uid, "a1")
    before = dump(acs, uid)
    with pytest.raises(InvalidStateError):
        acs.budgets.commit(uid, "a1", 1_000)  # released: the bid lost
    assert dump(acs, uid) == before


def test_paused_ended_and_not_started_refuse(ac: AdCache, uid: str) -> None:
    ac.campaigns.create(uid, spec(uid, status="paused"))
    assert ac.budgets.reserve(uid, "a1", 1_000, 10).reason == "paused"
    later = spec(uid + "b", start_ms=now_ms() + 60_000)
    ac.campaigns.create(uid + "b", later)
    assert ac.budgets.reserve(uid + "b", "a1", 1_000, 10).reason == "not_started"
    ended = spec(uid + "c", start_ms=now_ms() - 60_000, end_ms=now_ms() - 1)
    ac.campaigns.create(uid + "c", ended)
    assert ac.budgets.reserve(uid + "c", "a1", 1_000, 10).reason == "ended"


def test_daily_budget_resets_at_the_campaigns_midnight(ac: AdCache, uid: str) -> None:
    ac.campaigns.create(
        uid,
        spec(
            uid, budget_micros=1_000_000, daily_budget_micros=50_000, day_offset_s=midnight_soon()
        ),
    )
    assert ac.budgets.reserve(uid, "a1", 50_000, 30).ok
    assert ac.budgets.commit(uid, "a1", 50_000).exhausted == "daily_budget"
    r = ac.budgets.reserve(uid, "a2", 1_000, 30)
    assert not r.ok and r.reason == "daily_budget"
    c = ac.campaigns.get(uid)
    assert c is not None and not c.servable and c.reason == "daily_budget"
    day = c.day
    deadline = time.time() + 5
    while time.time() < deadline:
        time.sleep(0.2)
        if ac.budgets.state(uid).day != day:
            break
    st = ac.budgets.state(uid)
    assert st.day != day and st.day_spent_micros == 0 and st.spent_micros == 50_000
    assert st.servable
    r = ac.budgets.reserve(uid, "a3", 40_000, 30)
    assert r.ok and r.day_spent_micros == 0
    assert ac.budgets.commit(uid, "a3", 40_000).day_spent_micros == 40_000
    st = ac.budgets.state(uid)
    assert st.spent_micros == 90_000 and st.day_spent_micros == 40_000
    invariant(st)


def test_pacing_follows_the_day(ac: AdCache, uid: str) -> None:
    # Local noon: half the day is gone, so with no tolerance about half the daily budget may go.
    ac.campaigns.create(
        uid,
        spec(
            uid,
            budget_micros=10_000_000,
            daily_budget_micros=1_000_000,
            day_offset_s=offset_for(DAY_MS // 2),
            pacing="even",
            pacing_tolerance_bp=0,
        ),
    )
    st = ac.budgets.state(uid)
    assert st.pacing == "even" and 490_000 <= st.elapsed_ppm <= 510_000
    assert st.pacing_allowed_micros is not None
    assert 490_000 <= st.pacing_allowed_micros <= 510_000
    assert ac.budgets.reserve(uid, "a1", 400_000, 30).ok
    r = ac.budgets.reserve(uid, "a2", 200_000, 30)
    assert not r.ok and r.reason == "pacing" and r.pacing_allowed_micros is not None
    assert ac.budgets.reserve(uid, "a3", 50_000, 30).ok
    # Tolerance 50%: up to about 750_000 by noon.
    ac.campaigns.patch(uid, pacing_tolerance_bp=5_000)
    assert ac.budgets.reserve(uid, "a4", 250_000, 30).ok
    assert ac.budgets.reserve(uid, "a5", 100_000, 30).reason == "pacing"


def test_pacing_floor_lets_the_day_start(ac: AdCache, uid: str) -> None:
    ac.campaigns.create(
        uid,
        spec(
            uid,
            budget_micros=10_000_000,
            daily_budget_micros=1_000_000,
            day_offset_s=offset_for(5_000),  # 5 s after the campaign's midnight
            pacing="even",
            pacing_tolerance_bp=1_000,
            pacing_floor_micros=20_000,
        ),
    )
    assert ac.budgets.reserve(uid, "a1", 15_000, 30).ok
    assert ac.budgets.reserve(uid, "a2", 10_000, 30).reason == "pacing"
    assert ac.budgets.state(uid).pacing_allowed_micros in range(20_000, 21_000)


def _worker(
    make: Any, cid: str, wid: int, out: dict[str, int], lock: threading.Lock, stop_after: int
) -> None:
    cache = make()
    rng = random.Random(wid)
    tally = {"reserved": 0, "charged": 0, "released": 0, "refused": 0}
    try:
        refusals = 0
        i = 0
        while refusals < stop_after:
            i += 1
            rid = f"w{wid}-{i}"
            amount = rng.randrange(1_000, 20_000)
            r = cache.budgets.reserve(cid, rid, amount, 30)
            if not r.ok:
                refusals += 1
                tally["refused"] += 1
                continue
            tally["reserved"] += amount
            if rng.random() < 0.3:
                tally["released"] += cache.budgets.release(cid, rid).amount_micros
                continue
            price = rng.randrange(0, amount + 1)
            c = cache.budgets.commit(cid, rid, price)
            if rng.random() < 0.2:
                again = cache.budgets.commit(cid, rid, price)  # a retry must not charge twice
                assert again.replay and again.charged_micros == c.charged_micros
            tally["charged"] += c.charged_micros
            tally["released"] += c.released_micros
    finally:
        cache.close()
        with lock:
            for k, v in tally.items():
                out[k] = out.get(k, 0) + v


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_32_clients_never_overspend(request: pytest.FixtureRequest, uid: str, where: str) -> None:
    target = request.getfixturevalue("lib_standalone" if where == "standalone" else "lib_cluster")

    def make() -> AdCache:
        return AdCache(target.client())

    setup = make()
    budget = 400_000
    setup.campaigns.create(uid, spec(uid, budget_micros=budget))
    out: dict[str, int] = {}
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_worker, args=(make, uid, w, out, lock, 5)) for w in range(32)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    st = setup.budgets.state(uid)
    setup.close()
    assert st.spent_micros <= budget
    assert st.spent_micros == out["charged"] == st.committed_micros
    assert st.reserved_total_micros == out["reserved"]
    assert (
        st.committed_micros + st.released_micros + st.reclaimed_micros == st.reserved_total_micros
    )
    assert st.released_micros == out["released"] and st.reserved_micros == 0
    assert st.refusals == out["refused"] >= 32 * 5
    # Most of the budget was spent before the refusals stopped everyone.
    assert st.spent_micros > budget // 4


async def test_async_twin(aacs: aio.AdCache, uid: str) -> None:
    await aacs.campaigns.create(uid, spec(uid, budget_micros=10_000))
    r = await aacs.budgets.reserve(uid, "a1", 10_000, 10)
    assert r.ok
    c = await aacs.budgets.commit(uid, "a1", 9_500)
    assert c.charged_micros == 9_500 and c.exhausted == "lifetime_budget"
    assert (await aacs.budgets.release(uid, "a1")).status == "committed"
    st = await aacs.budgets.state(uid)
    assert st.spent_micros == 9_500 and not st.servable and st.reason == "lifetime_budget"


def test_late_commit_behind_the_sweep_bound_is_not_charged_twice(ac: AdCache, uid: str) -> None:
    # More expired reservations than one call reclaims (100): the late one is the last in line.
    ac.campaigns.create(uid, spec(uid, budget_micros=10_000_000))
    pipe_calls = [reserve_call(uid, f"r{i}", 1_000, 0.3) for i in range(105)]
    ac.run_many(pipe_calls)
    time.sleep(0.45)
    late = ac.budgets.commit(uid, "r104", 1_000)
    assert late.status == "late" and late.charged_micros == 1_000
    st = ac.budgets.state(uid)  # sweeps the rest
    assert st.reserved_micros == 0 and st.spent_micros == 1_000
    again = ac.budgets.commit(uid, "r104", 1_000)
    assert again.replay and again.status == "late"
    st = ac.budgets.state(uid)
    assert st.spent_micros == 1_000 and st.reclaimed_micros == 105_000
    invariant(st)


def test_commit_after_pause_still_charges_and_release_after_expiry(ac: AdCache, uid: str) -> None:
    ac.campaigns.create(uid, spec(uid))
    assert ac.budgets.reserve(uid, "a1", 5_000, 30).ok
    ac.campaigns.pause(uid)  # the impression was already bought: the win is billed
    assert ac.budgets.reserve(uid, "a2", 5_000, 30).reason == "paused"
    c = ac.budgets.commit(uid, "a1", 4_000)
    assert c.status == "committed" and c.charged_micros == 4_000
    ac.campaigns.resume(uid)
    ac.budgets.reserve(uid, "a3", 5_000, 0.1)
    time.sleep(0.2)
    st = ac.budgets.state(uid)  # reclaims a3
    assert st.reclaimed_micros == 5_000
    rel = ac.budgets.release(uid, "a3")
    assert rel.status == "expired" and rel.amount_micros == 0
    invariant(ac.budgets.state(uid))
