"""adcache's own per-node counters move with the business events of every domain."""

from __future__ import annotations

import time
from decimal import Decimal

from clock import calm_offset
from specs import live_spec

from adcache import AdCache
from adcache.caps import Candidate, CapRule


def _counters(ac: AdCache) -> dict[str, int]:
    return ac.monitor.counters().totals


def test_auction_bid_and_close_counters(ac: AdCache, uid: str) -> None:
    from adcache.auctions import Bid, Imp

    before = _counters(ac)
    ac.auctions.create(uid, [Imp("1", floor=Decimal("1.00"))], tmax_ms=60_000)
    for seat, price in (("s1", "2.00"), ("s2", "1.50"), ("s3", "0.50")):
        ac.auctions.bid(uid, Bid(seat=seat, bid_id="b1", imp_id="1", price=Decimal(price)))
    ac.auctions.close(uid)
    after = _counters(ac)

    def d(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    assert (d("auctions_created"), d("auctions_closed")) == (1, 1)
    assert (d("bids_accepted"), d("bids_rejected"), d("bids_lost_100")) == (2, 1, 1)
    assert (d("bids_won"), d("bids_lost_102")) == (1, 1)


def test_caps_blocked_counter(ac: AdCache, uid: str) -> None:
    off = calm_offset(int(time.time() * 1000), ("day",))  # no midnight between the two records
    cand = Candidate(campaign_id=f"{uid}-c", rules=(CapRule("campaign", "day", 1, offset_s=off),))
    before = _counters(ac).get("caps_blocked", 0)
    assert ac.caps.record(uid, f"{uid}-i1", cand).admitted
    assert not ac.caps.record(uid, f"{uid}-i2", cand).admitted
    assert not ac.caps.record(uid, f"{uid}-i2", cand).admitted  # a replay counts nothing
    assert _counters(ac).get("caps_blocked", 0) - before == 1


def test_budget_refusal_counter(ac: AdCache, uid: str) -> None:
    from adcache.targeting import Targeting

    # its own shards: the shared ".all" shards belong to the targeting tests
    spec = live_spec(Targeting.of([uid], [uid], [uid]), budget_micros=1_000)
    ac.campaigns.set(uid, spec)
    before = _counters(ac)
    r = ac.budgets.reserve(uid, f"{uid}-r1", 10_000_000, ttl=30)
    assert not r.ok
    after = _counters(ac)
    key = f"budget_refused_{r.reason}"
    assert after.get(key, 0) - before.get(key, 0) == 1
