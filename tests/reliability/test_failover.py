"""Failover: a primary is killed under a load of budget commits and cap records. The client
recovers after the promotion (retrying each step under its ids, which makes the retries safe);
with the durable mode (WAIT for a replica, sent with each write) no acknowledged commit or cap
record is lost, and the default mode's loss window is measured (it may lose what the replica had
not received)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

import pytest
from redis.exceptions import ClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from specs import live_spec

from adcache import AdCache, AdCacheError, DurabilityError
from adcache import _generated as keys
from adcache.caps import Candidate, CapRule
from adcache.targeting import Targeting
from adcache_loader.deploy import deploy
from adcache_loader.servers import LocalCluster

log = logging.getLogger(__name__)
COST = 1_000  # micros per impression


@dataclass
class Load:
    committed: list[str] = field(default_factory=list)  # acknowledged commits
    admitted: int = 0  # acknowledged cap records that counted
    answer_times: list[float] = field(default_factory=list)  # a step answered (or was refused)
    unconfirmed: int = 0
    failed_attempts: int = 0


def _step(load: Load, stop: threading.Event, fn: object) -> object:
    """Run one idempotent step until it is acknowledged (or the test stops)."""
    while not stop.is_set():
        try:
            out = fn()  # type: ignore[operator]
            load.answer_times.append(time.monotonic())
            return out
        except DurabilityError:
            # On the primary, not confirmed by a replica: retried under the same ids (a replay
            # counts nothing) until a replica confirms it. After the only replica of a shard is
            # promoted this keeps being refused: the safe answer.
            load.unconfirmed += 1
            load.answer_times.append(time.monotonic())
            time.sleep(0.02)
        except (RedisConnectionError, RedisTimeoutError, ClusterDownError, AdCacheError) as e:
            if isinstance(e, AdCacheError) and "gave up" not in str(e):
                raise
            load.failed_attempts += 1
            time.sleep(0.05)
    return None


def _run_load(
    cache: AdCache, cid: str, user: str, prefix: str, stop: threading.Event, load: Load
) -> None:
    cand = Candidate(campaign_id=cid, rules=(CapRule("campaign", "lifetime", 1_000_000),))
    for k in itertools.count():
        rid = f"{prefix}r{k}"
        if (
            _step(load, stop, lambda rid=rid: cache.budgets.reserve(cid, rid, COST, ttl=600))
            is None
        ):
            return
        commit = _step(load, stop, lambda rid=rid: cache.budgets.commit(cid, rid, COST))
        if commit is None:
            return
        load.committed.append(rid)
        rec = _step(load, stop, lambda k=k: cache.caps.record(user, f"{prefix}i{k}", cand))
        if rec is None:
            return
        load.admitted += 1 if rec.admitted else 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "default"])
def test_failover_under_commits_and_cap_records(
    cluster_with_replicas: LocalCluster, uid: str, durable: bool
) -> None:
    cl = cluster_with_replicas
    deploy(cl.seed_url)
    base = AdCache(cl.client())
    cache = base.durable(replicas=1, timeout_ms=300) if durable else base
    # The campaign and the user both live on the primary that will die.
    cid = cl.id_on(0, f"{uid}c", keys.campaign)
    user = cl.id_on(0, f"{uid}u", keys.freqcap)
    # Set up durably in both modes: the campaign record is not what is under test.
    spec = live_spec(Targeting.of([uid]), budget_micros=10**12)
    base.durable(replicas=1, timeout_ms=2000).campaigns.set(cid, spec)
    load, stop = Load(), threading.Event()
    t = threading.Thread(target=_run_load, args=(cache, cid, user, uid, stop, load))
    t.start()
    time.sleep(1.0)
    committed_before_kill = len(load.committed)
    t_kill = time.monotonic()
    cl.kill_primary_and_wait_failover(0)
    t_promoted = time.monotonic()
    deadline = t_promoted + 15
    while (
        not (load.answer_times and load.answer_times[-1] > t_promoted)
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    t.join(20)
    assert committed_before_kill > 10, "the load must be running when the primary dies"
    assert load.answer_times[-1] > t_promoted, "the client did not reach the promoted primary"
    stalled = max(b - a for a, b in itertools.pairwise(load.answer_times))

    check = AdCache(cl.client())
    state = check.budgets.state(cid)
    counted = sum(c.count for c in check.caps.inspect(user))
    lost_commits = max(0, len(load.committed) * COST - state.committed_micros) // COST
    lost_caps = max(0, load.admitted - counted)
    log.warning(
        "failover (%s): %d commits and %d cap records acknowledged; lost %d commits, %d cap "
        "records; %d unconfirmed answers, %d failed attempts; steps stalled %.1fs, promotion %.1fs",
        "durable" if durable else "default",
        len(load.committed),
        load.admitted,
        lost_commits,
        lost_caps,
        load.unconfirmed,
        load.failed_attempts,
        stalled,
        t_promoted - t_kill,
    )
    # Never more charged than acknowledged plus the one step in flight: retries replay.
    assert state.committed_micros <= (len(load.committed) + 1) * COST
    if durable:
        assert lost_commits == 0, "durable mode lost acknowledged commits"
        assert lost_caps == 0, "durable mode lost acknowledged cap records"
    else:
        # The default mode's window (acknowledged by the primary, not yet replicated) is measured
        # and reported, not asserted to be empty: see docs/reliability.md.
        assert lost_commits <= len(load.committed)
