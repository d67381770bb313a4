"""The synchronous adcache client: one FCALL per operation, sent straight to the owning node.

`AdCache` wraps a redis-py `Redis` or `RedisCluster`. On a cluster it computes the slot from the
key's hash tag and sends the FCALL to that node's connection itself: plain `RedisCluster.fcall`
would first ask a server `COMMAND GETKEYS`, doubling the round trips. MOVED, ASK, TRYAGAIN and
connection errors are handled here, with a topology refresh and bounded retries.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adcache._base import TRANSIENT, ClientBase
from adcache._core import (
    REDO,
    AfterSend,
    Arg,
    Call,
    durable_replies,
    needs_retry,
    translate_error,
)
from adcache._facade import _drive_sync
from adcache._redispy import pool_connection, reader, refresh, standalone_name
from adcache.facades import SyncFacades

log = logging.getLogger("adcache")
T = TypeVar("T")


@dataclass(frozen=True)
class NodeRef:
    name: str  # host:port
    role: str  # "primary" | "replica"
    client: redis.Redis


class _Node:
    """One server as the client uses it: a few connections checked out of its redis-py pool and
    kept (a call takes one and puts it back: no pool round trip, no per-call socket check).
    `deque.pop`/`append` are atomic, so threads share a node without a lock; a connection is
    used by one call at a time."""

    __slots__ = ("client", "idle", "name")
    MAX_IDLE = 64

    def __init__(self, name: str, client: redis.Redis) -> None:
        self.name = name
        self.client = client
        self.idle: deque[Any] = deque()

    def take(self) -> Any:
        try:
            return self.idle.pop()
        except IndexError:
            return pool_connection(self.client.connection_pool)  # connected and checked

    def take_checked(self) -> Any:
        """A connection known usable before a write that must not be sent twice: a kept
        connection the server closed meanwhile is replaced (so the write is sent once, on a
        live one, instead of being lost in flight)."""
        conn = self.take()
        try:
            if not conn.can_read():
                return conn
        except (RedisConnectionError, RedisTimeoutError, OSError):
            pass
        self.drop(conn)
        return pool_connection(self.client.connection_pool)

    def give(self, conn: Any) -> None:
        if len(self.idle) < self.MAX_IDLE:
            self.idle.append(conn)
        else:
            self.client.connection_pool.release(conn)

    def drop(self, conn: Any) -> None:
        conn.disconnect()
        self.client.connection_pool.release(conn)

    def close(self) -> None:
        while self.idle:
            self.drop(self.idle.pop())

    def exchange(self, payload: bytes, n: int, *, checked: bool = False) -> list[Any]:
        """Write `n` packed commands at once and read their replies (error replies in place)."""
        return _Batch(self, payload, n, checked=checked).read()

    def one(self, payload: bytes) -> Any:
        """One packed command: its reply; an error reply is raised (the hot path: no batch)."""
        conn = self.take()
        try:
            conn.send_packed_command((payload,), check_health=False)
            reply = reader(conn)()
        except _LOST as e:
            self.drop(conn)
            raise AfterSend(_lost(e)) from e
        except BaseException:
            self.drop(conn)
            raise
        self.give(conn)
        if isinstance(reply, ResponseError):
            raise reply
        return reply


_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


def _lost(e: BaseException) -> Exception:
    """A lost connection as redis-py's ConnectionError (the parser may raise a bare OSError)."""
    if isinstance(e, (RedisConnectionError, RedisTimeoutError)):
        return e
    return RedisConnectionError(f"connection lost: {e}")


class AdCache(SyncFacades, ClientBase[redis.Redis | RedisCluster]):
    """Typed access to the adcache library on a standalone Redis or a Redis Cluster.

    auto_deploy: when a node has no library (a primary restarted without persistence, a shard
    added by other means), load the bundled library there and retry once. Needs a user allowed to
    run FUNCTION LOAD (without it, LibraryMissingError names the node and the deploy command).
    verify_library: check `ac_version` once per node before its first call, and refuse a library
    older than this client needs.
    read_from_replicas: send read-only functions (FCALL_RO) to replicas too (cluster only).
    max_attempts: attempts of a call that is not safe to repeat (redirects and refused connections
    included).
    retry_budget_s: how long a call that is safe to repeat (a read, or a write idempotent under
    the ids it carries: see `Call.repeatable`) keeps being retried through a failover, with
    backoff and a topology refresh between tries, before its last error is raised.
    durable_replicas: after each write, wait until this many replicas acknowledged it (WAIT, sent
    with the write on the same connection: still one round trip). A write the replicas did not
    confirm within durable_timeout_ms raises DurabilityError: it is on the primary and may be lost
    by a failover, so retry it (the money path is idempotent). 0 (default) does not wait.
    """

    def _setup(self) -> None:
        self.is_cluster = isinstance(self.redis, RedisCluster)
        self._nodes: dict[str, _Node] = {}  # by host:port
        self._slots: list[_Node | None] = [None] * 16384  # slot -> primary, filled on use
        self._standalone: _Node | None = None
        self._wrap = self._node
        self._name = ""
        if not isinstance(self.redis, RedisCluster):
            self._name = standalone_name(self.redis.connection_pool)
            self._standalone = _Node(self._name, self.redis)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool | None = None, **kwargs: Any) -> AdCache:
        """Connect to `url`; `cluster=None` asks the server whether it is a cluster node."""
        if cluster is None:
            probe = redis.Redis.from_url(url)
            try:
                cluster = str(probe.info("cluster").get("cluster_enabled", 0)) == "1"
            finally:
                probe.close()
        client: redis.Redis | RedisCluster
        client = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
        return cls(client, **kwargs)

    def close(self) -> None:
        for node in [self._standalone, *self._nodes.values()]:
            if node is not None:
                node.close()
        self.redis.close()

    # ---- routing ----

    def _node(self, cn: ClusterNode) -> _Node:
        node = self._nodes.get(cn.name)
        if node is None:
            rc: RedisCluster = self.redis  # type: ignore[assignment]
            node = self._nodes.setdefault(cn.name, _Node(cn.name, rc.get_redis_connection(cn)))
        return node

    def _name_of(self, node: _Node) -> str:
        return node.name

    def _refresh_topology(self) -> None:
        if self.is_cluster:
            self._slots = [None] * 16384
            try:
                refresh(self.redis)  # type: ignore[arg-type]
            except (*TRANSIENT, RedisClusterException) as e:  # the next try refreshes again
                log.info("adcache: topology refresh failed: %s", e)

    def _moved(self, e: MovedError) -> None:
        """A slot moved: reload the map from the cluster, and route the slot to the node the
        redirect named."""
        self._refresh_topology()
        self._route_moved(e)

    def nodes(self, *, replicas: bool = True) -> list[NodeRef]:
        """Every node the client knows (standalone: the one server), for admin and monitoring
        commands sent to one node at a time with `ref.client`."""
        if not self.is_cluster:
            return [NodeRef(self._name, "primary", self.redis)]  # type: ignore[arg-type]
        rc: RedisCluster = self.redis  # type: ignore[assignment]
        found = rc.get_nodes() if replicas else rc.get_primaries()
        return [
            NodeRef(
                n.name,
                "replica" if n.server_type == "replica" else "primary",
                rc.get_redis_connection(n),
            )
            for n in sorted(found, key=lambda n: n.name)
        ]

    def execute_on(self, ref: NodeRef, *cmd: Arg) -> Any:
        """One command on one node (admin and monitoring: no routing, no retries)."""
        return ref.client.execute_command(*cmd)

    def execute_many_on(self, ref: NodeRef, cmds: list[tuple[Arg, ...]]) -> list[Any]:
        """Several commands on one node in one round trip; error replies are returned in place."""
        pipe = ref.client.pipeline(transaction=False)
        for cmd in cmds:
            pipe.execute_command(*cmd)
        return pipe.execute(raise_on_error=False)

    def _send(self, node: _Node, *cmd: Arg) -> Any:
        return node.client.execute_command(*cmd)

    def _exchange(self, node: _Node, payload: bytes, n: int, checked: bool = False) -> list[Any]:
        return node.exchange(payload, n, checked=checked)

    def library_info(self) -> dict[str, dict[str, str]]:
        """`ac_version` of every primary (standalone: the one server), by node name."""
        return _drive_sync(self, self._library_info())

    # ---- calls ----

    def run(self, call: Call[T]) -> T:
        """Execute one call (one round trip on the owning node) and parse its reply."""
        return call.parse(self.fcall(call))

    def fcall(self, call: Call[Any]) -> Any:
        """Execute one call and return the raw reply, with redirects and retries handled.

        Retries never repeat a write that may have run unless it is safe to: a call is sent again
        after a redirect (MOVED, ASK, TRYAGAIN: not executed) or a failure to connect (not sent).
        A connection lost after the call was sent raises for a write, unless the call is
        `repeatable` (a read, or a write idempotent under the ids it carries): those are retried
        through a failover for up to `retry_budget_s`.
        """
        payload = call.packed()
        node = self._node_for(call)
        if node.name in self._verified and not self.durable_replicas and call.repeatable:
            # The hot path: a kept connection, one write, one read. Anything unusual (an error
            # reply, a lost connection) goes the general way below, which may send it again:
            # this call is safe to repeat.
            try:
                return node.one(payload)
            except ResponseError as e:
                if not needs_retry(e, node.name):
                    raise translate_error(e, node.name) from e
            except (AfterSend, *TRANSIENT):
                pass
        return _drive_sync(self, self._fcall(call, payload))

    def run_many(self, calls: Sequence[Call[Any]], *, raise_on_error: bool = True) -> list[Any]:
        """Execute many calls with one pipeline per node (one round per node).

        Results come back in the order of `calls`. With raise_on_error=False a failed call's slot
        holds its exception instead of raising the first one.
        """
        results: list[Any] = [None] * len(calls)
        # Write every node's batch first, then read them all: the nodes work in parallel, so the
        # whole batch costs about one round trip, not one per node.
        sent: list[tuple[str, list[int], _Batch | AfterSend | None]] = []
        for name, (node, idxs) in self._groups(calls).items():
            batch: _Batch | AfterSend | None = None
            try:
                if self.verify_library and name not in self._verified:
                    _drive_sync(self, self._verify(node))
                batch = _Batch(node, *self._batch(calls, idxs))
            except TRANSIENT:
                pass  # not sent: every call of this node is retried on its own below
            except AfterSend as e:
                batch = e
            except BaseException:
                for _, _, b in sent:
                    if isinstance(b, _Batch):
                        b.abandon()
                raise
            sent.append((name, idxs, batch))
        refreshed = False
        for name, idxs, batch in sent:
            try:
                if isinstance(batch, AfterSend):
                    raise batch
                replies = [REDO] * len(idxs) if batch is None else batch.read()
                if len(replies) > len(idxs):
                    replies = durable_replies(self, name, calls, idxs, replies)
            except AfterSend as e:
                # Repeatable calls are retried; a write that may have run gets the error.
                if not refreshed:
                    self._refresh_topology()
                    refreshed = True
                if self.durable_replicas:
                    e.got = []  # a reply read is not vouched for until its WAIT answered
                replies = e.replies(calls, idxs)
            _drive_sync(self, self._settle(calls, name, idxs, replies, results))
        return self._results(results, raise_on_error)


class _Batch:
    """Several packed commands written at once on one kept connection; `read()` collects the
    replies, an error reply taking its command's place instead of raising.

    Failing to get a connected connection raises the connection error itself (nothing was sent);
    a failure once sending began raises AfterSend (the commands may have run) with the replies
    read before it."""

    __slots__ = ("conn", "n", "node")

    def __init__(self, node: _Node, payload: bytes, n: int, *, checked: bool = False) -> None:
        self.node = node
        self.n = n
        self.conn = node.take_checked() if checked else node.take()
        try:
            self.conn.send_packed_command((payload,), check_health=False)
        except _LOST as e:
            node.drop(self.conn)
            raise AfterSend(_lost(e)) from e
        except BaseException:
            node.drop(self.conn)
            raise

    def read(self) -> list[Any]:
        conn = self.conn
        out: list[Any] = []
        try:
            read = reader(conn)
            for _ in range(self.n):
                out.append(read())
        except _LOST as e:
            self.node.drop(conn)
            raise AfterSend(_lost(e), out) from e
        except BaseException:
            self.node.drop(conn)
            raise
        self.node.give(conn)
        return out

    def abandon(self) -> None:
        """Written but never read: its connection holds unread replies, so it is closed."""
        self.node.drop(self.conn)
