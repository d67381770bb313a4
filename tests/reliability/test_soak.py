"""Soak: a mixed ad-serving workload from several processes against one throwaway server holds
steady latency and memory, fails no call, and every key it leaves carries a TTL.

10 s in the suite; `ADCACHE_SOAK_SECONDS=600` (`make soak`) for ten minutes. The checks are
generous on purpose (this runs on loaded, shared machines): they catch leaks and runaway latency,
not a few slow milliseconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import statistics
import time
import traceback
from dataclasses import dataclass, field

import pytest
import redis

from adcache import AdCache
from adcache.auctions import Bid, Imp
from adcache.campaigns import CampaignSpec
from adcache.caps import Candidate, CapRule
from adcache.stats import Event
from adcache.targeting import Targeting
from adcache_loader.deploy import deploy
from adcache_loader.servers import RedisServer

SECONDS = float(os.environ.get("ADCACHE_SOAK_SECONDS", "10"))
PROCESSES = 3
USERS = 300
CAMPAIGNS = 10
RULES = (CapRule.fixed("campaign", "day", 1_000_000), CapRule.fixed("campaign", "hour", 1_000_000))
CANDIDATES = [Candidate(f"c{i}", RULES, advertiser_id=f"adv{i % 3}") for i in range(5)]
BIDS = [Bid(f"b{k}", "1", f"seat-{k}", f"1.{k}0", cid=f"c{k}") for k in range(3)]
# Latency: the last third's p99 may be this many times the first third's, plus a fixed slack for
# a machine whose neighbours wake up (the first third includes the warm-up of new connections).
P99_FACTOR, P99_SLACK_S = 8.0, 0.050
# Memory and keys: the last third against the first, with slack for the entities whose ids the
# workload keeps minting (auctions, sessions, impression de-dup) before their TTLs retire them, and
# for the settled spend ids a budget keeps for an hour (fields, not keys: they grow with the run).
# A leak of 1 KB per request (~1,000 requests/s here) would outgrow it many times over.
MEM_FACTOR, MEM_SLACK = 2.0, 16 * 2**20 + int(SECONDS * 64 * 2**10)
KEYS_FACTOR, KEYS_SLACK = 2.0, 1_000


def _ids(run: str) -> tuple[list[str], list[str]]:
    return [f"{run}-u{i}" for i in range(USERS)], [f"{run}-c{i}" for i in range(CAMPAIGNS)]


@dataclass
class WorkerReport:
    requests: int = 0
    calls: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (offset s, latency s)


def _worker(url: str, run: str, w: int, start_at: float, seconds: float) -> WorkerReport:
    """One client process: ad requests in a loop, each a short sequence of domain calls with
    short-lived entities (sessions, auctions, impression ids) so the key count reaches a plateau."""
    ac = AdCache(redis.Redis.from_url(url, socket_timeout=10))
    users, campaigns = _ids(run)
    rng = random.Random(w)
    rep = WorkerReport()
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    end = start_at + seconds
    i = 0
    session = ""
    while (now := time.time()) < end:
        i += 1
        u, c = rng.choice(users), rng.choice(campaigns)
        t0 = time.perf_counter()
        try:
            if i % 40 == 1:  # a new visit: sessions come and go
                session = f"{run}-s{w}-{i}"
                ac.sessions.create(session, u, idle_ttl=2, max_lifetime=4, index=False)
                rep.calls += 1
            ac.profiles.get(u)
            ac.sessions.track(session, categories=[f"cat{i % 7}"], keywords=["kw"])
            ac.caps.check(u, CANDIDATES)
            aid = f"{run}-a{w}-{i}"
            ac.auctions.create(aid, [Imp("1", floor="1.00")], tmax_ms=500, exp=1, ttl=2)
            ac.auctions.bid_many(aid, BIDS)
            ac.auctions.close(aid)
            ac.caps.record(u, f"{run}-i{w}-{i}", CANDIDATES[i % 5], dedupe_ttl=2)
            ac.stats.record(c, [Event(impressions=1, cost_micros=1_100, user_id=u)])
            ac.profiles.activity(u, 10)
            rep.calls += 9
            if i % 10 == 0:  # spends settle at a lower rate (settled ids are kept an hour)
                rid = f"{run}-r{w}-{i}"
                if ac.budgets.reserve(c, rid, 2_000, 2).ok:
                    ac.budgets.commit(c, rid, 1_100)
                    rep.calls += 1
                rep.calls += 1
            rep.requests += 1
        except Exception:  # every failure counts; the first few are kept for the message
            rep.failures += 1
            if len(rep.errors) < 5:
                rep.errors.append(traceback.format_exc(limit=3))
        rep.samples.append((now - start_at, time.perf_counter() - t0))
    ac.close()
    return rep


def _run_worker(args: tuple[str, str, int, float, float]) -> WorkerReport:
    return _worker(*args)


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * (len(values) - 1)))] if values else 0.0


@pytest.mark.timeout(int(SECONDS) + 180)
def test_soak_holds_steady_latency_and_memory(redis_binary: str, uid: str) -> None:
    server = RedisServer(redis_binary).start()
    try:
        deploy(server.url)
        run = f"soak-{uid}"
        ac = AdCache(server.client())
        users, campaigns = _ids(run)
        now = int(time.time() * 1000)
        for u in users:
            ac.profiles.set(u, idle_ttl=3600, interests=["a", "b"], segment="s")
        for c in campaigns:
            ac.campaigns.set(
                c,
                CampaignSpec("adv", 2_000_000, 10**12, now - 1000, now + 3_600_000,
                             targeting=Targeting.of(["soak"])),
            )  # fmt: skip
        r = server.client()
        ctx = mp.get_context("spawn")
        memory: list[tuple[float, int, int]] = []  # (offset s, used_memory, dbsize)
        with ctx.Pool(PROCESSES) as pool:
            start_at = time.time() + 3.0  # every process is up and connected before the clock
            pending = pool.map_async(
                _run_worker, [(server.url, run, w, start_at, SECONDS) for w in range(PROCESSES)]
            )
            while not pending.ready():
                t = time.time() - start_at
                if 0 <= t <= SECONDS:
                    memory.append((t, int(r.info("memory")["used_memory"]), int(r.dbsize())))
                pending.wait(max(0.1, SECONDS / 60))
            reports = pending.get(timeout=60)

        # ---- zero failed calls ----
        failures = sum(x.failures for x in reports)
        assert failures == 0, "".join(e for x in reports for e in x.errors)
        requests = sum(x.requests for x in reports)
        assert requests > 30 * PROCESSES, f"the load did not run: {requests} requests"

        # ---- latency: the last third no worse than a generous multiple of the first ----
        samples = [s for x in reports for s in x.samples]
        first = [lat for t, lat in samples if t < SECONDS / 3]
        last = [lat for t, lat in samples if t >= 2 * SECONDS / 3]
        assert first and last
        p99_first, p99_last = _p99(first), _p99(last)
        assert p99_last <= P99_FACTOR * p99_first + P99_SLACK_S, (
            f"p99 grew from {p99_first * 1e3:.1f} ms to {p99_last * 1e3:.1f} ms"
        )

        # ---- memory and keys bounded ----
        mem_first = [m for t, m, _ in memory if t < SECONDS / 3]
        mem_last = [m for t, m, _ in memory if t >= 2 * SECONDS / 3]
        keys_first = [k for t, _, k in memory if t < SECONDS / 3]
        keys_last = [k for t, _, k in memory if t >= 2 * SECONDS / 3]
        assert mem_first and mem_last, memory
        assert statistics.mean(mem_last) <= MEM_FACTOR * statistics.mean(mem_first) + MEM_SLACK, (
            f"used_memory {statistics.mean(mem_first):,.0f} -> {statistics.mean(mem_last):,.0f}"
        )
        assert max(keys_last) <= KEYS_FACTOR * max(keys_first) + KEYS_SLACK, (
            f"DBSIZE {max(keys_first)} -> {max(keys_last)}"
        )

        # ---- every key carries a TTL (none here is owned without one) ----
        no_ttl = []
        for _ in range(300):
            k = r.randomkey()
            if k is None:
                break
            if r.pttl(k) == -1:  # -2: it expired in between, fine
                no_ttl.append(k)
        assert no_ttl == [], f"keys without a TTL: {sorted(set(no_ttl))[:10]}"
        print(
            f"soak {SECONDS:.0f} s, {PROCESSES} processes: {requests} requests, "
            f"{sum(x.calls for x in reports)} calls, 0 failed; p99 {p99_first * 1e3:.1f} -> "
            f"{p99_last * 1e3:.1f} ms; used_memory {statistics.mean(mem_first) / 2**20:.1f} -> "
            f"{statistics.mean(mem_last) / 2**20:.1f} MiB; keys {max(keys_first)} -> {max(keys_last)}"
        )
    finally:
        server.stop()
