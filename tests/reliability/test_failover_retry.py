"""Failover without failed calls: a primary is killed under a load of calls that are safe to repeat
(budget reserve and commit under a reservation id, cap records under an impression id, stats
events with event ids, session impressions with an id, reads). The client retries each through
the promotion (`retry_budget_s`), so the caller sees no error: 0 failed, 0 lost, 0 doubled.

Which calls are safe to repeat is declared in the contract headers (`--- @idempotent`) and the
call builders (an optional id given), and pinned by `test_repeatable_calls_are_the_declared_ones`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from specs import live_spec

from adcache import AdCache
from adcache import _generated as keys
from adcache._generated import FUNCTIONS
from adcache.budgets import commit_call, release_call, reserve_call, state_call
from adcache.caps import Candidate, CapRule
from adcache.caps import record_call as cap_record_call
from adcache.sessions import create_call, get_call, impression_call
from adcache.stats import Event
from adcache.stats import record_call as stats_record_call
from adcache.targeting import Targeting
from adcache_loader.deploy import deploy
from adcache_loader.servers import LocalCluster

log = logging.getLogger(__name__)
COST = 1_000


def test_repeatable_calls_are_the_declared_ones() -> None:
    cand = Candidate(campaign_id="c", rules=(CapRule("campaign", "lifetime", 5),))
    safe = [
        reserve_call("c", "r", 1, 60),
        commit_call("c", "r", 1),
        release_call("c", "r"),
        cap_record_call("u", "i", cand),
        stats_record_call("c", [Event(impressions=1, event_id="e1")]),
        impression_call("s", cap=3, impression_id="i"),
        get_call("s"),
        state_call("c"),
    ]
    unsafe = [
        stats_record_call("c", [Event(impressions=1, event_id="e1"), Event(impressions=1)]),
        impression_call("s", cap=3),
        create_call("s", "u", idle_ttl=1, max_lifetime=1),
    ]
    assert [c.function for c in safe if not c.repeatable] == []
    assert [c.function for c in unsafe if c.repeatable] == []
    assert all(
        spec.idempotent in ("", "always") or spec.idempotent.endswith("_id")
        for spec in FUNCTIONS.values()
    )


@dataclass
class Load:
    failed: list[str] = field(default_factory=list)
    committed: int = 0
    admitted: int = 0
    events: int = 0
    session_imps: int = 0
    reads: int = 0
    answers: list[float] = field(default_factory=list)


def _run(load: Load, stop: threading.Event, steps: list[Callable[[int], Any]]) -> None:
    for k in itertools.count():
        if stop.is_set():
            return
        for step in steps:
            try:
                step(k)
            except Exception as e:  # any error reaching the caller is a failed call
                load.failed.append(f"{type(e).__name__}: {e}")
            load.answers.append(time.monotonic())


def test_a_failover_fails_no_idempotent_call(cluster_with_replicas: LocalCluster, uid: str) -> None:
    cl = cluster_with_replicas
    deploy(cl.seed_url)
    cache = AdCache(cl.client())  # the default retry budget (10 s)
    # Every entity lives on the primary that will die.
    cid = cl.id_on(0, f"{uid}c", keys.campaign)
    user = cl.id_on(0, f"{uid}u", keys.freqcap)
    sid = cl.id_on(0, f"{uid}s", keys.session)
    setup = cache.durable(replicas=1, timeout_ms=2000)
    setup.campaigns.set(cid, live_spec(Targeting.of([uid]), budget_micros=10**12))
    setup.run(create_call(sid, "u", idle_ttl=600, max_lifetime=600))
    cand = Candidate(campaign_id=cid, rules=(CapRule("campaign", "lifetime", 10**6),))
    load, stop = Load(), threading.Event()

    def reserve(k: int) -> None:
        assert cache.budgets.reserve(cid, f"r{k}", COST, ttl=600).ok

    def commit(k: int) -> None:
        cache.budgets.commit(cid, f"r{k}", COST)
        load.committed += 1

    def cap(k: int) -> None:
        load.admitted += cache.caps.record(user, f"i{k}", cand).admitted

    def stats(k: int) -> None:
        load.events += cache.stats.record(cid, [Event(impressions=1, event_id=f"e{k}")]).recorded

    def impression(k: int) -> None:
        load.session_imps += cache.sessions.record_impression(sid, impression_id=f"i{k}").allowed

    def read(k: int) -> None:
        assert cache.sessions.get(sid) is not None
        load.reads += 1

    t = threading.Thread(
        target=_run, args=(load, stop, [reserve, commit, cap, stats, impression, read])
    )
    t.start()
    time.sleep(1.0)
    before = load.committed
    t_kill = time.monotonic()
    cl.kill_primary_and_wait_failover(0)
    t_promoted = time.monotonic()
    deadline = t_promoted + 15
    while (
        not (load.answers and load.answers[-1] > t_promoted + 0.5) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    stop.set()
    t.join(30)
    assert not t.is_alive()
    assert before > 10, "the load must be running when the primary dies"
    after_kill = [a for a in load.answers if a > t_kill]
    recovery = max(b - a for a, b in itertools.pairwise([t_kill, *after_kill]))

    check = AdCache(cl.client())
    committed = check.budgets.state(cid).committed_micros // COST
    counted = sum(c.count for c in check.caps.inspect(user))
    events = check.stats.summary(cid, days=1, reach=False).impressions
    session = check.sessions.get(sid)
    assert session is not None
    msg = (
        f"failover with retries: {len(load.failed)} failed calls; commits {load.committed} "
        f"acknowledged / {committed} stored; cap records {load.admitted} / {counted}; stats "
        f"events {load.events} / {events}; session impressions {load.session_imps} / "
        f"{session.impressions}; {load.reads} reads; promotion {t_promoted - t_kill:.1f}s, "
        f"longest wait for an answer {recovery:.1f}s"
    )
    log.warning(msg)
    print(msg)
    assert load.failed == [], load.failed[:5]
    # Nothing lost, nothing doubled: every store holds exactly what was acknowledged, give or
    # take the one step the thread was in when it stopped (answered after the count was read).
    assert committed == load.committed
    assert counted == load.admitted
    assert events == load.events
    assert session.impressions == load.session_imps
