"""Failover: a primary is killed under a write load. The client recovers after the promotion; with
the durable mode (WAIT for a replica, sent with each write) no acknowledged write is lost, and the
default mode's loss window is measured (it may lose the writes the replica had not received)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from redis.crc import key_slot
from redis.exceptions import ClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adcache import AdCache, AdCacheError, AlreadyExistsError, DurabilityError
from adcache import _generated as keys
from adcache_loader.deploy import deploy
from adcache_loader.servers import LocalCluster

log = logging.getLogger(__name__)


@dataclass
class Load:
    acked: list[str] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    answer_times: list[float] = field(
        default_factory=list
    )  # acknowledged or refused as unconfirmed
    unconfirmed: int = 0
    failed_attempts: int = 0


def _ids_on(cluster: LocalCluster, index: int, prefix: str) -> Iterator[str]:
    """Session ids whose keys live on primaries[index], without end."""
    owned: set[int] = set()
    for lo, hi in cluster._owned_slots(cluster.primaries[index]):
        owned.update(range(lo, hi + 1))
    for i in itertools.count():
        sid = f"{prefix}-{i}"
        if key_slot(keys.session(sid).encode()) in owned:
            yield sid


def _run_load(cache: AdCache, ids: Iterator[str], stop: threading.Event, load: Load) -> None:
    for sid in ids:
        while not stop.is_set():
            try:
                cache.sessions.create(sid, "u", idle_ttl=600, max_lifetime=600, index=False)
                load.acked.append(sid)
                load.ack_times.append(time.monotonic())
                load.answer_times.append(time.monotonic())
                break
            except DurabilityError as e:
                if not load.unconfirmed:
                    log.info("first unconfirmed write: %s", e)
                # Applied on the primary, not confirmed by a replica: not acknowledged. (After the only
                # replica of a shard is promoted, every durable write lands here until a replica
                # is attached again: the safe answer.)
                load.unconfirmed += 1
                load.answer_times.append(time.monotonic())
                break
            except AlreadyExistsError:
                break  # an earlier attempt was applied but its reply was lost: not acknowledged
            except (RedisConnectionError, RedisTimeoutError, ClusterDownError, AdCacheError) as e:
                if isinstance(e, AdCacheError) and "gave up" not in str(e):
                    raise
                load.failed_attempts += 1
                time.sleep(0.05)
        if stop.is_set():
            return


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "default"])
def test_failover_under_write_load(
    cluster_with_replicas: LocalCluster, uid: str, durable: bool
) -> None:
    cl = cluster_with_replicas
    deploy(cl.seed_url)
    base = AdCache(cl.client())
    cache = base.durable(replicas=1, timeout_ms=300) if durable else base
    load, stop = Load(), threading.Event()
    t = threading.Thread(target=_run_load, args=(cache, _ids_on(cl, 0, uid), stop, load))
    t.start()
    time.sleep(0.7)
    acked_before_kill = len(load.acked)
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
    t.join(15)
    assert acked_before_kill > 20, "the load must be running when the primary dies"
    assert load.answer_times[-1] > t_promoted, "the client did not reach the promoted primary"
    stalled = max(b - a for a, b in itertools.pairwise(load.answer_times))
    got = AdCache(cl.client()).sessions.get_many(load.acked)
    lost = [sid for sid, s in zip(load.acked, got, strict=True) if s is None]
    log.warning(
        "failover (%s): %d acknowledged, %d lost, %d unconfirmed, %d failed attempts, "
        "writes stalled %.1fs, promotion took %.1fs",
        "durable" if durable else "default",
        len(load.acked),
        len(lost),
        load.unconfirmed,
        load.failed_attempts,
        stalled,
        t_promoted - t_kill,
    )
    if durable:
        assert lost == [], "durable mode lost acknowledged writes"
    else:
        # The default mode's window (acknowledged by the primary, not yet replicated) is measured
        # and reported, not asserted to be empty: see docs/reliability.md.
        assert len(lost) <= len(load.acked)
