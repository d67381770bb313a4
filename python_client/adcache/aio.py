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
import functools
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    InvalidResponse,
    MovedError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from adcache._base import TRANSIENT, ClientBase
from adcache._core import (
    REDO,
    AfterSend,
    Arg,
    Call,
    durable_replies,
    needs_retry,
    raw,
    translate_error,
)
from adcache._facade import _drive_async
from adcache._redispy import (
    adopt,
    async_ensure_initialized,
    async_node_connection,
    async_node_release,
    async_pool_connection,
    async_refresh,
    pack,
    socket_timeout,
    standalone_name,
)
from adcache.facades import AsyncFacades

log = logging.getLogger("adcache")
T = TypeVar("T")

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


class AdCache(AsyncFacades, ClientBase[aredis.Redis | RedisCluster]):
    """Asyncio twin of `adcache.AdCache`; see that class for the options."""

    is_async = True

    def _setup(self) -> None:
        self.is_cluster = isinstance(self.redis, RedisCluster)
        self._links: dict[str, _Link] = {}  # by node name
        self._slots: list[ClusterNode | None] = [None] * 16384
        self._standalone = None
        self._wrap = _same
        self._name = ""
        if not isinstance(self.redis, RedisCluster):
            self._name = standalone_name(self.redis.connection_pool)

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

    def _name_of(self, node: ClusterNode | None) -> str:
        return self._name if node is None else node.name

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
            except (*TRANSIENT, RedisClusterException) as e:
                log.info("adcache: topology refresh failed: %s", e)

    async def _moved(self, e: MovedError) -> None:
        await self._refresh_topology()
        self._route_moved(e)

    async def _send(self, node: ClusterNode | None, *cmd: Arg) -> Any:
        """One command through redis-py (admin: its reply callbacks apply)."""
        if node is None:
            return await self.redis.execute_command(*cmd)
        return await node.execute_command(*cmd)

    async def _exchange(
        self, node: ClusterNode | None, payload: bytes, n: int, checked: bool = False
    ) -> list[Any]:
        return await (await self._link(node)).exchange(payload, n)

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
        return await self._exchange(ref.node, b"".join(pack(c) for c in cmds), len(cmds))

    async def library_info(self) -> dict[str, dict[str, str]]:
        return await _drive_async(self, self._library_info())

    # ---- calls ----

    def run(self, call: Call[T]) -> Coroutine[Any, Any, T]:
        """Execute one call and parse its reply (a coroutine: `await cache.run(call)`)."""
        return self._call(call, call.parse)

    def fcall(self, call: Call[Any]) -> Coroutine[Any, Any, Any]:
        """See `adcache.AdCache.fcall`: the same rules (a coroutine of the raw reply)."""
        return self._call(call, raw)

    async def _call(self, call: Call[Any], parse: Callable[[Any], T]) -> T:
        # `run` and `fcall` hand this coroutine to the caller: one frame per call, not two.
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
                        return parse(reply)
                    if isinstance(reply, ResponseError) and not needs_retry(reply, name):
                        raise translate_error(reply, name) from reply
        await self._ensure_initialized()
        return parse(await _drive_async(self, self._fcall(call, payload)))

    async def run_many(
        self, calls: Sequence[Call[Any]], *, raise_on_error: bool = True
    ) -> list[Any]:
        """Many calls, one pipeline per node, all nodes concurrently; results in call order."""
        await self._ensure_initialized()
        results: list[Any] = [None] * len(calls)

        async def one(name: str, node: ClusterNode | None, idxs: list[int]) -> None:
            try:
                if self.verify_library and name not in self._verified:
                    await _drive_async(self, self._verify(node))
                payload, n = self._batch(calls, idxs)
                replies = await self._exchange(node, payload, n)
                if n > len(idxs):
                    replies = durable_replies(self, name, calls, idxs, replies)
            except TRANSIENT:  # not sent: each call is retried on its own
                replies = [REDO] * len(idxs)
            except AfterSend as e:  # repeatable calls are retried; other writes get the error
                await self._refresh_topology()
                replies = e.replies(calls, idxs)
            await _drive_async(self, self._settle(calls, name, idxs, replies, results))

        groups = self._groups(calls)
        if len(groups) == 1:
            await one(*next((n, g[0], g[1]) for n, g in groups.items()))
        else:
            await asyncio.gather(*(one(n, node, idxs) for n, (node, idxs) in groups.items()))
        return self._results(results, raise_on_error)


def _same(node: ClusterNode) -> ClusterNode:
    return node


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
