"""Bytes per active entity, from `MEMORY USAGE <key> SAMPLES 0` over every key of freshly created
entities (all keys under the entity's hash tag), averaged over 20 of each. Measured in a database
of its own on the standalone server, so a SCAN of the tag sees only these entities.

    PYTHONPATH=python_client:loader:. python -m benchmarks --only memory
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import redis

from adcache import AdCache
from adcache.auctions import Bid, Imp
from adcache.campaigns import CampaignSpec
from adcache.caps import Candidate, CapRule
from adcache.stats import Event
from adcache.targeting import Targeting
from benchmarks.env import BenchEnv
from benchmarks.harness import Result

DB = 7
N = 20
CAP_RULES = (
    CapRule.fixed("campaign", "day", 3),
    CapRule.fixed("campaign", "week", 10),
    CapRule.recency("campaign", 300),
)


def _bytes(r: redis.Redis, tag: str, *, drop: bool = False) -> tuple[int, int]:
    """Total MEMORY USAGE and key count of every key under one hash tag (then deleted)."""
    total = n = 0
    found = list(r.scan_iter(match=f"ad:{{{tag}}}:*", count=1000))
    for k in found:
        total += int(r.memory_usage(k, samples=0) or 0)
        n += 1
    if drop and found:
        r.delete(*found)
    return total, n


def run(env: BenchEnv) -> list[Result]:
    r = redis.Redis.from_url(env.standalone_url, db=DB)
    ac = AdCache(r)
    run_id = uuid.uuid4().hex[:6]
    now = int(time.time() * 1000)

    def user_caps(i: int) -> str:
        u = f"m-{run_id}-caps-{i}"
        for c in range(5):
            cand = Candidate(f"campaign-{c:03d}", CAP_RULES, advertiser_id="advertiser-1")
            ac.caps.record(u, f"imp-{c}", cand, dedupe_ttl=3600)
        return f"u:{u}"

    def auction(i: int) -> str:
        a = f"m-{run_id}-auc-{i}"
        ac.auctions.create(a, [Imp("1", floor="1.00")], tmax_ms=1000, exp=60, ttl=120)
        ac.auctions.bid_many(
            a, [Bid(f"b{k}", "1", f"seat-{k}", f"2.{k}0", cid=f"c-{k}") for k in range(3)]
        )
        ac.auctions.close(a)
        return f"a:{a}"

    def session(i: int) -> str:
        s = f"m-{run_id}-sess-{i}"
        ac.sessions.create(s, f"m-{run_id}-owner-{i}", idle_ttl=1800, max_lifetime=3600)
        for k in range(20):
            ac.sessions.track(
                s, categories=[f"cat{k % 7}", f"cat{k % 5}"], keywords=[f"kw{k % 4}"], referrer="r"
            )
        return f"s:{s}"

    def stats_day(i: int) -> str:
        c = f"m-{run_id}-stats-{i}"
        for b in range(10):
            ac.stats.record(
                c,
                [
                    Event(impressions=1, cost_micros=1_500, user_id=f"u{(b * 100 + k) % 200}",
                          event_id=f"e{b}-{k}")
                    for k in range(100)
                ],
            )  # fmt: skip
        return f"c:{c}"

    def stats_day_no_ids(i: int) -> str:
        c = f"m-{run_id}-stats-n-{i}"
        for b in range(10):
            ac.stats.record(
                c,
                [
                    Event(impressions=1, cost_micros=1_500, user_id=f"u{(b * 100 + k) % 200}")
                    for k in range(100)
                ],
            )
        return f"c:{c}"

    def profile(i: int) -> str:
        u = f"m-{run_id}-prof-{i}"
        ac.profiles.set(
            u,
            idle_ttl=3600,
            score_milli=75_500,
            segment="high_value",
            interests=["tech", "gaming", "sports"],
            demographics={"age": "28", "gender": "M", "location": "Seoul"},
        )
        return f"u:{u}"

    def budget(i: int) -> str:
        c = f"m-{run_id}-camp-{i}"
        ac.campaigns.set(
            c,
            CampaignSpec("adv", 2_000_000, 10**9, now - 1000, now + 3_600_000,
                         targeting=Targeting.of(["mem"])),
        )  # fmt: skip
        for k in range(10):
            ac.budgets.reserve(c, f"r{k}", 2_000, 60)
            ac.budgets.commit(c, f"r{k}", 1_500)
        return f"c:{c}"

    entities: list[tuple[str, str, Callable[[int], str]]] = [
        ("user caps", "5 campaigns × (day, week, recency), 5 impressions", user_caps),
        ("auction", "1 imp, 3 bids, closed", auction),
        (
            "session",
            "20 page views tracked (its entry in the user's index is under the user)",
            session,
        ),
        (
            "campaign stats day",
            "1,000 events from 200 users, each with an event id (counters, "
            "reach, the hour's de-dup set of event ids)",
            stats_day,
        ),
        (
            "campaign stats day, no event ids",
            "the same 1,000 events without event ids (no de-dup set)",
            stats_day_no_ids,
        ),
        ("profile", "3 interests, 3 demographics, segment, score", profile),
        ("campaign budget", "campaign record + budget, 10 reservations committed", budget),
    ]
    out: list[Result] = []
    for name, shape, make in entities:
        tags = [make(i) for i in range(N)]
        totals = [_bytes(r, t) for t in tags]
        for t in tags:
            _bytes(r, t, drop=True)
        per = sum(t[0] for t in totals) / N
        nkeys = sum(t[1] for t in totals) / N
        out.append(
            Result(
                group="memory",
                case=name,
                ops=N,
                seconds=0.0,
                ops_per_s=0.0,
                p50_us=0.0,
                p99_us=0.0,
                note=f"{per:,.0f} B in {nkeys:.1f} keys; {shape}",
                extra={"kind": "memory", "bytes": round(per), "keys": nkeys, "shape": shape},
            )
        )
    ac.close()
    return out
