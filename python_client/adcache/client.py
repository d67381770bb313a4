"""The synchronous adcache client: one FCALL per operation, sent straight to the owning node.

`AdCache` wraps a redis-py `Redis` or `RedisCluster`. On a cluster it computes the slot from the
key's hash tag and sends the FCALL to that node's connection itself: plain `RedisCluster.fcall`
would first ask a server `COMMAND GETKEYS`, doubling the round trips. MOVED, ASK, TRYAGAIN and
connection errors are handled here, with a topology refresh and bounded retries.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adcache._core import AfterSend, Call, check_library_reply, raise_error_reply, translate_error
from adcache._generated import AdCacheError, DurabilityError, LibraryMissingError
from adcache.facades import SyncFacades

log = logging.getLogger("adcache")
T = TypeVar("T")

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ClusterDownError, SlotNotCoveredError)


@dataclass(frozen=True)
class NodeRef:
    name: str  # host:port
    role: str  # "primary" | "replica"
    client: redis.Redis


def _standalone_name(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return str(kw["path"])
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"


class AdCache(SyncFacades):
    """Typed access to the adcache library on a standalone Redis or a Redis Cluster.

    auto_deploy: when a node has no library (a primary restarted without persistence, a shard
    added by other means), load the bundled library there and retry once. Needs a user allowed to
    run FUNCTION LOAD.
    verify_library: check `ac_version` once per node before its first call, and refuse a library
    older than this client needs.
    read_from_replicas: send read-only functions (FCALL_RO) to replicas too (cluster only).
    durable_replicas: after each write, wait until this many replicas acknowledged it (WAIT, sent
    with the write on the same connection: still one round trip). A write the replicas did not
    confirm within durable_timeout_ms raises DurabilityError: it is on the primary and may be lost
    by a failover, so retry it (the money path is idempotent). 0 (default) does not wait.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        auto_deploy: bool = False,
        verify_library: bool = True,
        read_from_replicas: bool = False,
        max_attempts: int = 5,
        durable_replicas: int = 0,
        durable_timeout_ms: int = 500,
    ) -> None:
        self.redis = client
        self.durable_replicas = durable_replicas
        self.durable_timeout_ms = durable_timeout_ms
        self.is_cluster = isinstance(client, RedisCluster)
        self.auto_deploy = auto_deploy
        self.verify_library = verify_library
        self.read_from_replicas = read_from_replicas
        self.max_attempts = max_attempts
        self._verified: set[str] = set()
        self._lock = threading.Lock()
        self._name = "" if self.is_cluster else _standalone_name(client)  # type: ignore[arg-type]
        self._attach_facades()

    def durable(self, replicas: int = 1, timeout_ms: int = 500) -> AdCache:
        """A view of this client (same connections) whose writes wait for `replicas` replicas."""
        view = copy.copy(self)
        view.durable_replicas, view.durable_timeout_ms = replicas, timeout_ms
        view._attach_facades()
        return view

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
        self.redis.close()

    # ---- routing ----

    def _node_for(self, call: Call[Any]) -> tuple[str, redis.Redis]:
        if not self.is_cluster:
            return self._name, self.redis  # type: ignore[return-value]
        rc: RedisCluster = self.redis  # type: ignore[assignment]
        slot = call.slot
        node: ClusterNode
        if slot is None:
            node = random.choice(rc.get_primaries())
        elif self.read_from_replicas and call.readonly:
            node = rc.nodes_manager.get_node_from_slot(slot, True)
        else:
            # The slot's primary straight from the slot map: this is the hot path, and the
            # public lookup takes a lock and a deprecation wrapper on every call.
            owners = rc.nodes_manager.slots_cache.get(slot)
            node = owners[0] if owners else rc.nodes_manager.get_node_from_slot(slot)
        return node.name, node.redis_connection or rc.get_redis_connection(node)

    def _refresh_topology(self) -> None:
        if self.is_cluster:
            self.redis.nodes_manager.initialize()  # type: ignore[union-attr]

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

    # ---- library checks ----

    def _deploy_on(self, name: str, client: redis.Redis) -> None:
        from adcache_loader.paths import library_source

        log.warning("adcache library missing on %s: loading it (auto_deploy)", name)
        client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())

    def _verify(self, name: str, client: redis.Redis) -> None:
        try:
            reply = client.execute_command("FCALL_RO", "ac_version", 0)
        except ResponseError as e:
            err = translate_error(e, name)
            if isinstance(err, LibraryMissingError) and self.auto_deploy:
                self._deploy_on(name, client)
                reply = client.execute_command("FCALL_RO", "ac_version", 0)
            else:
                raise err from e
        check_library_reply(reply, name)
        with self._lock:
            self._verified.add(name)

    def library_info(self) -> dict[str, dict[str, str]]:
        """`ac_version` of every primary (standalone: the one server), by node name."""
        from adcache._core import str_pairs

        targets: list[tuple[str, redis.Redis]]
        if self.is_cluster:
            rc: RedisCluster = self.redis  # type: ignore[assignment]
            targets = [(n.name, rc.get_redis_connection(n)) for n in rc.get_primaries()]
        else:
            targets = [(self._name, self.redis)]  # type: ignore[list-item]
        out = {}
        for name, client in targets:
            try:
                out[name] = str_pairs(client.execute_command("FCALL_RO", "ac_version", 0))
            except ResponseError as e:
                raise translate_error(e, name) from e
        return out

    # ---- calls ----

    def run(self, call: Call[T]) -> T:
        """Execute one call (one round trip on the owning node) and parse its reply."""
        return call.parse(self.fcall(call))

    def fcall(self, call: Call[Any]) -> Any:
        """Execute one call and return the raw reply, with redirects and retries handled.

        Retries never repeat a write that may have run: a call is sent again after a redirect
        (MOVED, ASK, TRYAGAIN: not executed) or a failure to connect (not sent). A connection lost
        after a write was sent raises: only the caller knows whether the write is idempotent
        (adcache's money and counting paths are, under their request, bid and impression ids).
        Read-only calls are retried after any connection failure.
        """
        cmd = call.command()
        deployed = False
        ask_node: ClusterNode | None = None
        for attempt in range(self.max_attempts):
            name, client = self._node_for(call)
            try:
                if self.verify_library and name not in self._verified:
                    self._verify(name, client)
                if ask_node is not None:
                    name = ask_node.name
                    client = self.redis.get_redis_connection(ask_node)  # type: ignore[union-attr]
                    return raise_error_reply(_Batch(client, [("ASKING",), cmd]).read()[1])
                if self.durable_replicas and not call.readonly:
                    return self._durable_write(name, client, cmd)
                return raise_error_reply(_Batch(client, [cmd]).read()[0])
            except MovedError as e:
                self.redis.nodes_manager.move_slot(e)  # type: ignore[union-attr]
            except AskError as e:
                ask_node = self.redis.get_node(host=e.host, port=e.port)  # type: ignore[union-attr]
                if ask_node is None:
                    self._refresh_topology()
                continue
            except TryAgainError:
                time.sleep(0.05 * (attempt + 1))
            except AfterSend as e:
                if not call.readonly:
                    log.warning(
                        "adcache: %s on %s after %s was sent: not retried",
                        e.cause,
                        name,
                        call.function,
                    )
                    raise e.cause from None
                self._pause(e.cause, name, attempt)
            except _TRANSIENT as e:
                self._pause(e, name, attempt)
            except ResponseError as e:
                err = translate_error(e, name)
                if isinstance(err, LibraryMissingError):
                    with self._lock:
                        self._verified.discard(name)
                    if self.auto_deploy and not deployed:
                        deployed = True
                        self._deploy_on(name, client)
                        continue
                raise err from e
            ask_node = None
        raise AdCacheError(f"{call.function}: gave up after {self.max_attempts} attempts")

    def _pause(self, e: Exception, name: str, attempt: int) -> None:
        """Back off before the next attempt (re-raising on the last one) and refresh the map."""
        if attempt == self.max_attempts - 1:
            raise e
        log.info("adcache: %s on %s, retrying (attempt %d)", e, name, attempt + 1)
        time.sleep(min(0.05 * 2**attempt, 1.0))
        self._refresh_topology()

    def _durable_write(self, name: str, client: redis.Redis, cmd: tuple[Any, ...]) -> Any:
        reply, acked = _Batch(client, [cmd, self._wait_cmd()]).read()
        reply = raise_error_reply(reply)
        self._check_acked(name, acked)
        return reply

    def _wait_cmd(self) -> tuple[Any, ...]:
        return ("WAIT", self.durable_replicas, self.durable_timeout_ms)

    def _check_acked(self, name: str, acked: Any) -> None:
        if isinstance(acked, Exception) or int(acked) < self.durable_replicas:
            raise DurabilityError(
                f"{name}: {acked} of {self.durable_replicas} replicas acknowledged the write "
                f"within {self.durable_timeout_ms} ms",
                node=name,
            )

    def run_many(self, calls: Sequence[Call[Any]], *, raise_on_error: bool = True) -> list[Any]:
        """Execute many calls with one pipeline per node (one round per node).

        Results come back in the order of `calls`. With raise_on_error=False a failed call's slot
        holds its exception instead of raising the first one.
        """
        groups: dict[str, tuple[redis.Redis, list[int]]] = {}
        by_node: dict[str, list[int]] = defaultdict(list)
        for i, call in enumerate(calls):
            name, client = self._node_for(call)
            by_node[name].append(i)
            groups[name] = (client, by_node[name])
        results: list[Any] = [None] * len(calls)
        # Write every node's batch first, then read them all: the nodes work in parallel, so the
        # whole batch costs about one round trip, not one per node.
        sent: list[tuple[str, list[int], _Batch | None]] = []
        for name, (client, idxs) in groups.items():
            batch: _Batch | None = None
            try:
                if self.verify_library and name not in self._verified:
                    self._verify(name, client)
                cmds = [calls[i].command() for i in idxs]
                if self.durable_replicas and not all(calls[i].readonly for i in idxs):
                    cmds.append(self._wait_cmd())  # one WAIT covers the whole batch
                batch = _Batch(client, cmds)
            except _TRANSIENT:
                pass  # not sent: every call of this node is retried on its own below
            except AfterSend as e:
                sent.append((name, idxs, _Failed(e.cause)))  # type: ignore[arg-type]
                continue
            except BaseException:
                self._abandon(sent)
                raise
            sent.append((name, idxs, batch))
        refreshed = False
        for name, idxs, batch in sent:
            try:
                if isinstance(batch, _Failed):
                    raise AfterSend(batch.cause)
                replies = [_Redo()] * len(idxs) if batch is None else batch.read()
                if len(replies) > len(idxs):
                    try:
                        self._check_acked(name, replies.pop())
                    except DurabilityError as e:
                        replies = [
                            r if calls[i].readonly or isinstance(r, Exception) else e
                            for i, r in zip(idxs, replies, strict=True)
                        ]
            except AfterSend as e:
                # Reads are retried; a write that may have run gets the error in its place.
                if not refreshed:
                    self._refresh_topology()
                    refreshed = True
                replies = [_Redo() if calls[i].readonly else e.cause for i in idxs]
            for i, reply in zip(idxs, replies, strict=True):
                results[i] = self._settle(calls[i], name, reply)
        if raise_on_error:
            for r in results:
                if isinstance(r, Exception):
                    raise r
        return results

    @staticmethod
    def _abandon(sent: list[tuple[str, list[int], _Batch | None]]) -> None:
        # Batches already written hold connections with unread replies: drop those connections.
        for _, _, batch in sent:
            if isinstance(batch, _Batch):
                batch._done(broken=True)

    def _settle(self, call: Call[Any], name: str, reply: Any) -> Any:
        if not isinstance(reply, (Exception, _Redo)):
            try:
                return call.parse(reply)
            except Exception as e:
                return e
        # Redirects and lost connections inside a pipeline are retried one by one.
        if isinstance(reply, (_Redo, MovedError, AskError, TryAgainError)):
            try:
                return self.run(call)
            except Exception as e:
                return e
        if isinstance(reply, ResponseError):
            err = translate_error(reply, name)
            if isinstance(err, LibraryMissingError) and self.auto_deploy:
                try:
                    return self.run(call)
                except Exception as e:
                    return e
            return err
        return reply


@dataclass(frozen=True)
class _Failed:
    cause: Exception


class _Batch:
    """Several commands written at once on one pooled connection; `read()` collects the replies,
    an error reply taking its command's place instead of raising. (A redis-py Pipeline does the
    same with more bookkeeping per command: this is the hot path.)

    Failing to get a connected connection raises the connection error itself (nothing was sent);
    a failure once sending began raises AfterSend (the commands may have run)."""

    def __init__(self, client: redis.Redis, cmds: list[tuple[Any, ...]]) -> None:
        self.pool = client.connection_pool
        self.n = len(cmds)
        self.conn = self.pool.get_connection()  # connects (or checks) before anything is sent
        try:
            self.conn.send_packed_command(self.conn.pack_commands(cmds))
        except _TRANSIENT as e:
            self._done(broken=True)
            raise AfterSend(e) from e
        except BaseException:
            self._done(broken=True)
            raise

    def read(self) -> list[Any]:
        out: list[Any] = []
        try:
            for _ in range(self.n):
                try:
                    out.append(self.conn.read_response())
                except ResponseError as e:
                    out.append(e)
        except _TRANSIENT as e:
            self._done(broken=True)
            raise AfterSend(e) from e
        except BaseException:
            self._done(broken=True)
            raise
        self._done(broken=False)
        return out

    def _done(self, *, broken: bool) -> None:
        if broken:
            self.conn.disconnect()
        self.pool.release(self.conn)


class _Redo:
    """Marks a pipelined call whose node failed as a whole: it is retried on its own."""
