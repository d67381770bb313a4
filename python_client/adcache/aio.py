"""The asyncio adcache client: the twin of `adcache.client.AdCache`, with the same names.

Wraps `redis.asyncio.Redis` or `redis.asyncio.RedisCluster`. On a cluster every FCALL goes
straight to the node that owns the slot of its hash tag; `run_many` sends one pipeline per node,
all nodes at once.

Calls travel on one pipelined link per node and event loop: a connection redis-py opened (and
authenticated), whose replies are parsed as they arrive and handed to the calls in the order they
were written. Any number of tasks share it without a lock (a write and its place in the queue
happen together, between two awaits), and a task cancelled mid-call leaves it consistent (its
reply is read and dropped).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    InvalidResponse,
    MovedError,
    NoPermissionError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adcache._core import (
    _REDO,
    AfterSend,
    Arg,
    Call,
    backoff_s,
    check_acked,
    check_library_reply,
    durable_replies,
    gives_up,
    library_source,
    missing_and_not_allowed,
    needs_retry,
    raise_error_reply,
    str_pairs,
    translate_error,
)
from adcache._generated import AdCacheError, LibraryMissingError
from adcache._redispy import (
    adopt,
    async_ensure_initialized,
    async_node_connection,
    async_node_release,
    async_pool_connection,
    async_refresh,
    node_address,
    pack,
    socket_timeout,
    standalone_name,
)
from adcache.facades import AsyncFacades

log = logging.getLogger("adcache")
T = TypeVar("T")

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ClusterDownError, SlotNotCoveredError)

__all__ = ["AdCache", "AsyncNodeRef"]


@dataclass(frozen=True)
class AsyncNodeRef:
    name: str  # host:port
    role: str  # "primary" | "replica"
    node: ClusterNode | None  # None on a standalone server


class _Waiter:
    __slots__ = ("deadline", "fut", "n", "out")

    def __init__(self, fut: asyncio.Future[list[Any]], n: int, deadline: float) -> None:
        self.fut, self.n, self.deadline = fut, n, deadline
        self.out: list[Any] = []


class _Link(asyncio.Protocol):
    """One pipelined connection to a node: commands are written as they come, replies parsed by
    hiredis as they arrive and given to the waiters in order."""

    def __init__(self, conn: Any, release: Any) -> None:
        transport, self.conn, parse_error, encoding, errors, self.streams = adopt(conn)
        kwargs: dict[str, Any] = {"protocolError": InvalidResponse, "replyError": parse_error}
        if encoding is not None:
            kwargs.update(encoding=encoding, errors=errors)
        self.reader = hiredis.Reader(**kwargs)
        self.waiters: deque[_Waiter] = deque()
        self.loop = asyncio.get_running_loop()
        self.timeout = socket_timeout(conn)
        self.release = release
        self.lost: Exception | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport = transport
        transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        try:
            while waiters:
                reply = self.reader.gets()
                if reply is False:
                    return
                w = waiters[0]
                w.out.append(reply)
                if len(w.out) == w.n:
                    waiters.popleft()
                    if not w.fut.done():  # a cancelled caller's replies are read and dropped
                        w.fut.set_result(w.out)
        except InvalidResponse as e:
            self._fail(RedisConnectionError(f"protocol error: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    def eof_received(self) -> bool | None:
        self._fail(RedisConnectionError("connection closed by the server"))
        return None

    def _fail(self, e: Exception) -> None:
        if self.lost is None:
            self.lost = e
        while self.waiters:
            w = self.waiters.popleft()
            if not w.fut.done():
                w.fut.set_exception(e)
        self.close()

    @property
    def usable(self) -> bool:
        return self.lost is None and asyncio.get_running_loop() is self.loop

    def send(self, payload: bytes, n: int) -> asyncio.Future[list[Any]]:
        """Write `n` packed commands; the future gets their replies (error replies in place)."""
        if self.lost is not None:  # nothing written
            raise RedisConnectionError(str(self.lost))
        fut: asyncio.Future[list[Any]] = self.loop.create_future()
        deadline = 0.0
        if self.timeout is not None:
            deadline = self.loop.time() + self.timeout
            if self.watchdog is None:
                self.watchdog = self.loop.call_at(deadline, self._check_deadline)
        self.waiters.append(_Waiter(fut, n, deadline))
        self.transport.write(payload)
        return fut

    def _check_deadline(self) -> None:
        """The socket timeout (one timer per link, not one per call): a reply that has not come
        in time fails the link, and with it every call waiting on it (replies would now go to
        the wrong callers)."""
        self.watchdog = None
        if not self.waiters:
            return
        head = self.waiters[0].deadline
        if self.loop.time() >= head:
            self._fail(RedisTimeoutError(f"no reply within {self.timeout} s"))
        else:
            self.watchdog = self.loop.call_at(head, self._check_deadline)

    async def exchange(self, payload: bytes, n: int) -> list[Any]:
        """`send` and wait: a lost connection or a timeout raises AfterSend (the commands may
        have run)."""
        fut = self.send(payload, n)  # raises if the link is down: nothing written
        try:
            return await fut
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise AfterSend(e) from e

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if not self.transport.is_closing():
            self.transport.close()
        release, self.release = self.release, None
        if release is not None:
            release(self.conn)


class AdCache(AsyncFacades):
    """Asyncio twin of `adcache.AdCache`; see that class for the options."""

    is_async = True

    def __init__(
        self,
        client: aredis.Redis | RedisCluster,
        *,
        auto_deploy: bool = False,
        verify_library: bool = True,
        read_from_replicas: bool = False,
        max_attempts: int = 5,
        retry_budget_s: float = 10.0,
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
        self.retry_budget_s = retry_budget_s
        self._verified: set[str] = set()
        self._links: dict[str, _Link] = {}  # by node name
        self._slots: list[ClusterNode | None] = [None] * 16384
        self._name = "" if self.is_cluster else standalone_name(client.connection_pool)  # type: ignore[union-attr]
        self._attach_facades()

    def durable(self, replicas: int = 1, timeout_ms: int = 500) -> AdCache:
        """A view of this client (same connections) whose writes wait for `replicas` replicas."""
        view = copy.copy(self)
        view.durable_replicas, view.durable_timeout_ms = replicas, timeout_ms
        view._attach_facades()
        return view

    @classmethod
    async def from_url(cls, url: str, *, cluster: bool | None = None, **kwargs: Any) -> AdCache:
        if cluster is None:
            probe = aredis.Redis.from_url(url)
            try:
                cluster = str((await probe.info("cluster")).get("cluster_enabled", 0)) == "1"
            finally:
                await probe.aclose()
        client: aredis.Redis | RedisCluster
        if cluster:
            client = RedisCluster.from_url(url)
            await client.initialize()
        else:
            client = aredis.Redis.from_url(url)
        return cls(client, **kwargs)

    async def aclose(self) -> None:
        for link in list(self._links.values()):
            link.close()
        self._links.clear()
        await self.redis.aclose()

    # ---- routing ----

    async def _ensure_initialized(self) -> None:
        if isinstance(self.redis, RedisCluster):
            await async_ensure_initialized(self.redis)

    def _node_for(self, call: Call[Any]) -> ClusterNode | None:
        if not self.is_cluster:
            return None
        rc: RedisCluster = self.redis  # type: ignore[assignment]
        if not call.keys:
            return random.choice(rc.get_primaries())
        if self.read_from_replicas and call.readonly:
            return rc.get_node_from_key(call.keys[0], replica=True)
        slot = key_slot(call.keys[0].encode())
        node = self._slots[slot]
        if node is None:
            node = self._slots[slot] = rc.get_node_from_key(call.keys[0])
        return node

    async def _link(self, node: ClusterNode | None) -> _Link:
        name = self._name if node is None else node.name
        link = self._links.get(name)
        if link is not None and link.usable:
            return link
        if link is not None:
            link.close()
        if node is None:
            pool = self.redis.connection_pool  # type: ignore[union-attr]
            conn = await async_pool_connection(pool)
            release: Any = pool.release
        else:
            conn = await async_node_connection(node)
            release = functools.partial(async_node_release, node)
        link = self._links[name] = _Link(conn, _released(release))
        return link

    async def _refresh_topology(self) -> None:
        if isinstance(self.redis, RedisCluster):
            self._slots = [None] * 16384
            try:
                await async_refresh(self.redis)
            except (*_TRANSIENT, RedisClusterException) as e:
                log.info("adcache: topology refresh failed: %s", e)

    async def _moved(self, e: MovedError) -> None:
        host, port = node_address(e)
        await self._refresh_topology()
        node = self.redis.get_node(host=host, port=port)  # type: ignore[union-attr]
        if node is not None:
            self._slots[e.slot_id] = node

    async def _send(self, node: ClusterNode | None, *cmd: Arg) -> Any:
        """One command through redis-py (admin: its reply callbacks apply)."""
        if node is None:
            return await self.redis.execute_command(*cmd)
        return await node.execute_command(*cmd)

    async def nodes(self, *, replicas: bool = True) -> list[AsyncNodeRef]:
        """Every node the client knows (standalone: the one server); send to one with
        `execute_on` / `execute_many_on`."""
        await self._ensure_initialized()
        if not isinstance(self.redis, RedisCluster):
            return [AsyncNodeRef(self._name, "primary", None)]
        found = self.redis.get_nodes() if replicas else self.redis.get_primaries()
        return [
            AsyncNodeRef(n.name, "replica" if n.server_type == "replica" else "primary", n)
            for n in sorted(found, key=lambda n: n.name)
        ]

    async def execute_on(self, ref: AsyncNodeRef, *cmd: Arg) -> Any:
        """One command on one node (admin and monitoring: no routing, no retries)."""
        return await self._send(ref.node, *cmd)

    async def execute_many_on(self, ref: AsyncNodeRef, cmds: list[tuple[Arg, ...]]) -> list[Any]:
        """Several commands on one node in one round trip; error replies are returned in place."""
        link = await self._link(ref.node)
        return await link.exchange(b"".join(pack(c) for c in cmds), len(cmds))

    # ---- library checks ----

    async def _deploy_on(self, name: str, node: ClusterNode | None) -> None:
        log.warning("adcache library missing on %s: loading it (auto_deploy)", name)
        try:
            await self._send(node, "FUNCTION", "LOAD", "REPLACE", library_source())
        except NoPermissionError as e:
            raise missing_and_not_allowed(name, e) from e

    async def _verify(self, name: str, node: ClusterNode | None) -> None:
        try:
            reply = await self._send(node, "FCALL_RO", "ac_version", 0)
        except ResponseError as e:
            err = translate_error(e, name)
            if isinstance(err, LibraryMissingError) and self.auto_deploy:
                await self._deploy_on(name, node)
                reply = await self._send(node, "FCALL_RO", "ac_version", 0)
            else:
                raise err from e
        check_library_reply(reply, name)
        self._verified.add(name)

    async def library_info(self) -> dict[str, dict[str, str]]:
        out = {}
        for ref in await self.nodes(replicas=False):
            try:
                out[ref.name] = str_pairs(await self._send(ref.node, "FCALL_RO", "ac_version", 0))
            except ResponseError as e:
                raise translate_error(e, ref.name) from e
        return out

    # ---- calls ----

    async def run(self, call: Call[T]) -> T:
        return call.parse(await self.fcall(call))

    async def fcall(self, call: Call[Any]) -> Any:
        """See `adcache.AdCache.fcall`: the same rules."""
        payload = call.packed()
        if not self.durable_replicas and call.repeatable:
            node = self._node_for(call)
            name = self._name if node is None else node.name
            link = self._links.get(name)
            if link is not None and link.usable and name in self._verified:
                # The hot path: one write on the node's link, one reply. A lost link or an
                # error reply go the general way below (this call is safe to repeat).
                try:
                    reply = (await link.send(payload, 1))[0]
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    pass
                else:
                    if not isinstance(reply, Exception):
                        return reply
                    if isinstance(reply, ResponseError) and not needs_retry(reply, name):
                        raise translate_error(reply, name) from reply
        return await self._fcall(call, payload)

    async def _fcall(self, call: Call[Any], payload: bytes) -> Any:
        await self._ensure_initialized()
        repeatable = call.repeatable
        deployed = False
        ask_node: ClusterNode | None = None
        started = time.monotonic()
        for attempt in itertools.count():
            node = self._node_for(call)
            name = node.name if node is not None else self._name
            try:
                if self.verify_library and name not in self._verified:
                    await self._verify(name, node)
                if ask_node is not None:
                    name = ask_node.name
                    link = await self._link(ask_node)
                    return raise_error_reply((await link.exchange(_ASKING + payload, 2))[1])
                link = await self._link(node)
                if self.durable_replicas and not call.readonly:
                    reply, acked = await link.exchange(payload + self._wait_cmd(), 2)
                    reply = raise_error_reply(reply)
                    check_acked(self, name, acked)
                    return reply
                return raise_error_reply((await link.exchange(payload, 1))[0])
            except MovedError as e:
                await self._moved(e)
                self._give_up_after(e, call, attempt, started, redirect=True)
            except AskError as e:
                host, port = node_address(e)
                ask_node = self.redis.get_node(host=host, port=port)  # type: ignore[union-attr]
                if ask_node is None:
                    await self._refresh_topology()
                self._give_up_after(e, call, attempt, started, redirect=True)
                continue
            except TryAgainError as e:
                self._give_up_after(e, call, attempt, started, redirect=True)
                await asyncio.sleep(0.05 * min(attempt + 1, 10))
            except AfterSend as e:
                if not repeatable:  # a write that may have run is never sent twice
                    log.warning(
                        "adcache: %s on %s after %s was sent: not retried",
                        e.cause,
                        name,
                        call.function,
                    )
                    raise e.cause from None
                await self._pause(e.cause, name, call, attempt, started)
            except _TRANSIENT as e:
                await self._pause(e, name, call, attempt, started)
            except ResponseError as e:
                err = translate_error(e, name)
                if isinstance(err, LibraryMissingError):
                    self._verified.discard(name)
                    if self.auto_deploy and not deployed:
                        deployed = True
                        await self._deploy_on(name, node)
                        continue
                raise err from e
            ask_node = None
        raise AssertionError("unreachable")  # pragma: no cover

    def _give_up_after(
        self, e: Exception, call: Call[Any], attempt: int, started: float, *, redirect: bool
    ) -> None:
        if not gives_up(self, call, attempt, started):
            return
        if redirect:
            raise AdCacheError(f"{call.function}: gave up after {attempt + 1} attempts ({e})")
        raise e

    async def _pause(
        self, e: Exception, name: str, call: Call[Any], attempt: int, started: float
    ) -> None:
        self._give_up_after(e, call, attempt, started, redirect=False)
        log.info("adcache: %s on %s, retrying (attempt %d)", e, name, attempt + 1)
        await asyncio.sleep(backoff_s(attempt))
        await self._refresh_topology()

    def _wait_cmd(self) -> bytes:
        return pack(("WAIT", self.durable_replicas, self.durable_timeout_ms))

    async def run_many(
        self, calls: Sequence[Call[Any]], *, raise_on_error: bool = True
    ) -> list[Any]:
        """Many calls, one pipeline per node, all nodes concurrently; results in call order."""
        await self._ensure_initialized()
        groups: dict[str, tuple[ClusterNode | None, list[int]]] = {}
        for i, call in enumerate(calls):
            node = self._node_for(call)
            name = node.name if node is not None else self._name
            group = groups.get(name)
            if group is None:
                groups[name] = (node, [i])
            else:
                group[1].append(i)
        results: list[Any] = [None] * len(calls)

        async def one(name: str, node: ClusterNode | None, idxs: list[int]) -> None:
            try:
                if self.verify_library and name not in self._verified:
                    await self._verify(name, node)
                payload = b"".join([calls[i].packed() for i in idxs])
                n = len(idxs)
                durable = self.durable_replicas and not all(calls[i].readonly for i in idxs)
                if durable:
                    payload += self._wait_cmd()  # one WAIT covers the whole batch
                    n += 1
                link = await self._link(node)
                replies = await link.exchange(payload, n)
                if durable:
                    replies = durable_replies(self, name, calls, idxs, replies)
            except _TRANSIENT:  # not sent: each call is retried on its own
                replies = [_REDO] * len(idxs)
            except AfterSend as e:  # repeatable calls are retried; other writes get the error
                await self._refresh_topology()
                replies = [_REDO if calls[i].repeatable else e.cause for i in idxs]
            for i, reply in zip(idxs, replies, strict=True):
                call = calls[i]
                if reply is _REDO or isinstance(reply, Exception):
                    results[i] = await self._settle(call, name, reply)
                    continue
                try:
                    results[i] = call.parse(reply)
                except Exception as e:
                    results[i] = e

        if len(groups) == 1:
            await one(*next((n, g[0], g[1]) for n, g in groups.items()))
        else:
            await asyncio.gather(*(one(n, node, idxs) for n, (node, idxs) in groups.items()))
        if raise_on_error:
            for r in results:
                if isinstance(r, Exception):
                    raise r
        return results

    async def _settle(self, call: Call[Any], name: str, reply: Any) -> Any:
        if reply is _REDO or isinstance(reply, (MovedError, AskError, TryAgainError)):
            try:
                return await self.run(call)
            except Exception as e:
                return e
        if isinstance(reply, ResponseError):
            err = translate_error(reply, name)
            if isinstance(err, LibraryMissingError):
                self._verified.discard(name)
                if self.auto_deploy:
                    try:
                        return await self.run(call)
                    except Exception as e:
                        return e
            return err
        return reply


def _released(release: Any) -> Any:
    """A pool's release (a coroutine for the standalone pool, a plain call for a cluster node)
    as a plain callable that never raises."""

    def give_back(conn: Any) -> None:
        try:
            res = release(conn)
        except Exception:  # the pool may be closed already
            return
        if asyncio.iscoroutine(res):
            task = asyncio.ensure_future(res)
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    return give_back


_ASKING = pack(("ASKING",))
