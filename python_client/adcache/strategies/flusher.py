"""The write-back flusher: moves change records from the shards' streams into the source of truth.

One consumer group per stream (the same group name on every shard). A step reads a batch from every
shard (XREADGROUP; after a start or a failed step, first this consumer's own pending entries;
periodically, entries a crashed consumer left pending, with XAUTOCLAIM), applies the whole batch
in one transaction of the `ChangeSink`, and only after the commit acknowledges and deletes the
entries (`ac_cache_wb_ack`). A crash anywhere before the acknowledgement redelivers the entries;
the sink skips those already applied (it keeps the last applied stream id per key), so every change
is applied exactly once, in stream order per key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol, cast

from redis.exceptions import ResponseError

from adcache._core import text
from adcache._facade import Facade, M, Plan, blocking, do, many, plan, sleep
from adcache.caches import Caches, Space, wb_ack_call
from adcache.strategies.metrics import StrategyMetrics, metrics_for
from adcache.strategies.source import ApplyResult, Change, ChangeSink, decode

log = logging.getLogger("adcache.strategies")

DEFAULT_GROUP = "adcache-flush"
_ACK_CHUNK = 1000  # the Lua bound of ids per ac_cache_wb_ack


def _stream_entries(got: Any) -> list[Any]:
    """Entry lists of an XREADGROUP reply as redis-py parses it: RESP2 [[stream, entries]],
    RESP3 {stream: [entries]}."""
    if not got:
        return []
    if isinstance(got, dict):
        return [v[0] for v in got.values() if v]
    return [entries for _, entries in got]


class _Client(Protocol[M]):
    """A sync or asyncio `AdCache`: its facades run in mode `M` (`Sync` or `Async`)."""

    caches: Caches[M]


class Flusher(Facade[M]):
    """Flushes the write-back changes of cache `name` (spread over `shards`) into `sink`, on the
    sync or asyncio `AdCache` (on asyncio the methods return awaitables and the sink, blocking
    such as `SQLiteSource`, runs in a thread).

    consumer: this flusher's name in the group (default host:pid); a restarted flusher under the
    same name first re-reads its own pending entries. claim_idle: entries pending that long on
    another consumer are taken over (XAUTOCLAIM): set it above the longest batch commit.
    """

    def __init__(
        self: Flusher[M],
        cache: _Client[M],
        name: str,
        sink: ChangeSink,
        *,
        shards: int = 16,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        batch: int = 500,
        claim_idle: float = 30.0,
        claim_every: float | None = None,
        metrics: StrategyMetrics | None = None,
    ) -> None:
        super().__init__(cache)
        self.sink = sink
        self.space = Space(name, shards)
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.batch = batch
        self.claim_idle_ms = max(1, round(claim_idle * 1000))
        self.claim_every = claim_idle / 2 if claim_every is None else claim_every
        self.metrics = metrics or metrics_for(name)
        self._recover = True  # read own pending entries first (after a start or a failed step)
        self._next_claim = 0.0
        self._groups_ready = False

    @property
    def redis(self) -> Any:
        return self._c.redis

    def _claim_due(self) -> bool:
        if time.monotonic() < self._next_claim:
            return False
        self._next_claim = time.monotonic() + self.claim_every
        return True

    def _entries(self, stream: str, raws: list[Any]) -> tuple[list[Change], list[str]]:
        """The changes of a stream's entry lists (an entry read twice counts once), and every id
        to acknowledge once they are committed."""
        changes: dict[str, Change] = {}
        dead: list[str] = []  # pending ids whose entry is gone or malformed: acknowledge them
        for entry_id, fields in (e for raw in raws for e in raw or ()):
            eid = text(entry_id)
            if not fields:
                dead.append(eid)
                continue
            f = {text(k): text(v) for k, v in fields.items()}
            op = f.get("op")
            if "k" not in f or op not in ("set", "del"):
                log.error(
                    "flusher %s: malformed change %s on %s: %r", self.consumer, eid, stream, f
                )
                dead.append(eid)
                continue
            if eid not in changes:
                value = decode(f["p"]) if op == "set" else None
                changes[eid] = Change(f["k"], cast(Literal["set", "del"], op), value, stream, eid)
        return list(changes.values()), [*dead, *changes]

    def _plan(self) -> list[tuple[str, str]]:
        """The reads of one step: (stream, "pending" | "claim" | "new"), in this order per
        stream (own pending entries after a start or a failure, claims when due, new entries)."""
        # Own pending entries first, and alone: newer entries wait until they are settled.
        kinds = ["pending"] if self._recover else []
        if self._claim_due():
            kinds.append("claim")
        if not self._recover:
            kinds.append("new")
        return [(stream, what) for stream in self.space.streams() for what in kinds]

    def _full(self, what: str, reply: Any) -> bool:
        """A read of own pending entries that filled a batch: more may be pending."""
        return what == "pending" and sum(len(e) for e in _stream_entries(reply)) >= self.batch

    def _followup(self, plan: list[tuple[str, str]], replies: list[Any]) -> list[tuple[str, str]]:
        """After a read of own pending entries: new entries of the streams whose pending ones all
        came back (a stream with more pending than a batch waits, to keep per-key order)."""
        return [
            (stream, "new")
            for (stream, what), reply in zip(plan, replies, strict=True)
            if what == "pending" and not self._full(what, reply)
        ]

    def _settle(
        self, plan: list[tuple[str, str]], replies: list[Any]
    ) -> tuple[list[Change], dict[str, list[str]]]:
        raws: dict[str, list[Any]] = {}
        ids: dict[str, list[str]] = {}
        for (stream, what), reply in zip(plan, replies, strict=True):
            if what == "claim":
                raws.setdefault(stream, []).append(reply[1])
                deleted = reply[2] if len(reply) > 2 else ()  # claimed ids whose entry is gone
                ids.setdefault(stream, []).extend(text(i) for i in deleted)
            else:
                raws.setdefault(stream, []).extend(_stream_entries(reply))
        changes: list[Change] = []
        for stream, rs in raws.items():
            got, settled = self._entries(stream, rs)
            changes += got
            ids.setdefault(stream, []).extend(settled)
        # A full batch of own pending entries: read them again on the next step.
        self._recover = any(self._full(w, r) for (_, w), r in zip(plan, replies, strict=True))
        return changes, {s: v for s, v in ids.items() if v}

    def _ack_calls(self, ids: dict[str, list[str]], changes: Sequence[Change]) -> list[Any]:
        # Each record's value key goes along (in KEYS) so the ack can unpin it; records that
        # are gone (no key known) come last in each call.
        key_of = {(c.stream, c.entry_id): c.key for c in changes}
        calls = []
        for stream, stream_ids in ids.items():
            entries = [(i, key_of.get((stream, i))) for i in stream_ids]
            entries.sort(key=lambda e: e[1] is None)  # stable: keyed records first, in order
            for n in range(0, len(entries), _ACK_CHUNK):
                chunk = entries[n : n + _ACK_CHUNK]
                vkeys = [self.space.value_key(k) for _, k in chunk if k is not None]
                calls.append(wb_ack_call(stream, self.group, [i for i, _ in chunk], vkeys))
        return calls

    def _failed(self, e: BaseException) -> None:
        self._recover = True  # whatever was read stays pending: re-read it next step
        if "NOGROUP" in str(e):
            # The streams are gone (a Redis restart without persistence, a flush): recreate.
            log.error("flusher %s: consumer group lost; recreating it", self.consumer)
            self._groups_ready = False

    @plan
    def ensure_groups(self) -> Plan[None]:
        """Create the group on every shard's stream (from id 0: nothing written before is lost)."""
        for stream in self.space.streams():
            try:
                yield from do(self.redis.xgroup_create, stream, self.group, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._groups_ready = True

    def _pipelined(self, plan: list[tuple[str, str]]) -> Plan[list[Any]]:
        pipe = self.redis.pipeline(transaction=False)
        for stream, what in plan:
            if what == "claim":
                pipe.xautoclaim(
                    stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.batch
                )
            else:
                start = "0" if what == "pending" else ">"
                pipe.xreadgroup(self.group, self.consumer, {stream: start}, count=self.batch)
        return list((yield from do(pipe.execute)))

    def _read(self) -> Plan[tuple[list[Change], dict[str, list[str]]]]:
        # Every shard's reads in one pipeline: one round trip (per node on a cluster).
        plan = self._plan()
        replies = yield from self._pipelined(plan)
        more = self._followup(plan, replies)
        if more:  # only in a step that re-read its own pending entries
            plan, replies = plan + more, replies + (yield from self._pipelined(more))
        return self._settle(plan, replies)

    @plan
    def step(self) -> Plan[int]:
        """Flush one batch from every shard; returns how many entries it settled."""
        if not self._groups_ready:
            yield from type(self).ensure_groups.fn(self)
        try:
            changes, ids = yield from self._read()
            if not ids:
                return 0
            result = ApplyResult(0, 0)
            if changes:
                result = yield from blocking(self.commit, changes)
            self.after_commit(changes, result)
            yield from many(self._ack_calls(ids, changes))
        except Exception as e:
            self._failed(e)
            raise
        self.metrics.incr("flush", result.applied)
        return sum(len(v) for v in ids.values())

    def commit(self, changes: Sequence[Change]) -> ApplyResult:
        """Apply a batch to the sink in one transaction (blocking: in a thread on asyncio)."""
        if not changes:
            return ApplyResult(0, 0)
        result = self.sink.apply_changes(changes)
        if result.skipped:
            log.info(
                "flusher %s: skipped %d already applied changes", self.consumer, result.skipped
            )
        return result

    def after_commit(self, changes: Sequence[Change], result: ApplyResult) -> None:
        """Called between the commit and the acknowledgement (a hook for subclasses)."""

    @plan
    def backlog(self) -> Plan[int]:
        """Change records not yet flushed (acknowledged entries are deleted from the streams)."""
        total = 0
        for s in self.space.streams():
            total += int((yield from do(self.redis.xlen, s)))
        return total

    @plan
    def drain(self, timeout: float = 30.0, *, idle_sleep: float = 0.05) -> Plan[int]:
        """Flush until every shard's stream is empty (entries of dead consumers are claimed once
        `claim_idle` has passed); returns how many entries were settled. TimeoutError past it."""
        deadline = time.monotonic() + timeout
        total = 0
        while True:
            n = yield from type(self).step.fn(self)
            total += n
            if n == 0:
                if (yield from type(self).backlog.fn(self)) == 0:
                    return total
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"flusher {self.consumer}: backlog left after {timeout}s")
                self._next_claim = min(self._next_claim, time.monotonic() + idle_sleep)
                yield from sleep(idle_sleep)

    @plan
    def run(
        self,
        stop: threading.Event | asyncio.Event,
        *,
        idle_sleep: float = 0.05,
        max_idle: float = 0.5,
    ) -> Plan[None]:
        """Flush until `stop` is set; errors are logged and the batch retried after a pause.
        While the streams are empty the pause doubles from `idle_sleep` up to `max_idle`."""
        pause = idle_sleep
        while not stop.is_set():
            try:
                n = yield from type(self).step.fn(self)
            except Exception:
                log.exception("flusher %s: step failed; retrying", self.consumer)
                yield from sleep(1.0, stop)
                continue
            pause = idle_sleep if n else min(pause * 2, max_idle)
            if n == 0:
                yield from sleep(pause, stop)


AsyncFlusher = Flusher  # the same class: on an asyncio client its methods return awaitables
