"""The asyncio adcache client: the twin of `adcache.client.AdCache`, with the same names.

Wraps `redis.asyncio.Redis` or `redis.asyncio.RedisCluster`. On a cluster every FCALL goes
straight to the node that owns the slot of its hash tag; `run_many` sends one pipeline per node,
all nodes at once.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
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

from adcache._core import (
    AfterSend,
    Arg,
    Call,
    check_library_reply,
    raise_error_reply,
    str_pairs,
    translate_error,
)
from adcache._generated import AdCacheError, DurabilityError, LibraryMissingError
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


class AdCache(AsyncFacades):
    """Asyncio twin of `adcache.AdCache`; see that class for the options."""

    def __init__(
        self,
        client: aredis.Redis | RedisCluster,
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
        if self.is_cluster:
            self._name = ""
        else:
            kw = client.connection_pool.connection_kwargs  # type: ignore[union-attr]
            self._name = str(kw["path"]) if "path" in kw else f"{kw.get('host')}:{kw.get('port')}"
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
        await self.redis.aclose()

    # ---- routing ----

    async def _ensure_initialized(self) -> None:
        rc = self.redis
        if isinstance(rc, RedisCluster) and not rc.nodes_manager.slots_cache:
            await rc.initialize()

    def _node_for(self, call: Call[Any]) -> ClusterNode | None:
        if not self.is_cluster:
            return None
        rc: RedisCluster = self.redis  # type: ignore[assignment]
        slot = call.slot
        if slot is None:
            return random.choice(rc.get_primaries())
        if self.read_from_replicas and call.readonly:
            return rc.nodes_manager.get_node_from_slot(slot, True)
        owners = rc.nodes_manager.slots_cache.get(slot)  # hot path: the slot's primary directly
        return owners[0] if owners else rc.nodes_manager.get_node_from_slot(slot)

    async def _send(self, node: ClusterNode | None, *cmd: Arg) -> Any:
        if node is None:
            return await self.redis.execute_command(*cmd)
        return await node.execute_command(*cmd)

    async def _send_many(
        self, node: ClusterNode | None, cmds: list[tuple[Arg, ...]], *, asking: bool = False
    ) -> list[Any]:
        """Several commands on one connection, written at once; error replies are returned in
        place. A failure to connect raises the connection error (nothing was sent); a failure
        once sending began raises AfterSend (the commands may have run)."""
        allc = [("ASKING",), *cmds] if asking else cmds
        if node is None:
            pool = self.redis.connection_pool  # type: ignore[union-attr]
            conn = await pool.get_connection()  # connected before anything is sent
            release = pool.release
        else:
            conn = node.acquire_connection()
            try:
                await conn.connect()
            except BaseException:
                node.release(conn)
                raise
            release = node.release  # type: ignore[assignment]
        try:
            await conn.send_packed_command(conn.pack_commands(allc))
            out: list[Any] = []
            for _ in allc:
                try:
                    out.append(await conn.read_response())
                except ResponseError as e:
                    out.append(e)
            return out[1:] if asking else out
        except _TRANSIENT as e:
            await conn.disconnect()
            raise AfterSend(e) from e
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            res = release(conn)  # the standalone pool's release is a coroutine
            if asyncio.iscoroutine(res):
                await res

    async def _refresh_topology(self) -> None:
        if isinstance(self.redis, RedisCluster):
            await self.redis.nodes_manager.initialize()

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
        return await self._send_many(ref.node, cmds)

    # ---- library checks ----

    async def _deploy_on(self, name: str, node: ClusterNode | None) -> None:
        from adcache_loader.paths import library_source

        log.warning("adcache library missing on %s: loading it (auto_deploy)", name)
        await self._send(node, "FUNCTION", "LOAD", "REPLACE", library_source())

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
        await self._ensure_initialized()
        targets: list[tuple[str, ClusterNode | None]]
        if isinstance(self.redis, RedisCluster):
            targets = [(n.name, n) for n in self.redis.get_primaries()]
        else:
            targets = [(self._name, None)]
        out = {}
        for name, node in targets:
            try:
                out[name] = str_pairs(await self._send(node, "FCALL_RO", "ac_version", 0))
            except ResponseError as e:
                raise translate_error(e, name) from e
        return out

    # ---- calls ----

    async def run(self, call: Call[T]) -> T:
        return call.parse(await self.fcall(call))

    async def fcall(self, call: Call[Any]) -> Any:
        await self._ensure_initialized()
        cmd = call.command()
        deployed = False
        ask_node: ClusterNode | None = None
        for attempt in range(self.max_attempts):
            node = self._node_for(call)
            name = node.name if node is not None else self._name
            try:
                if self.verify_library and name not in self._verified:
                    await self._verify(name, node)
                if ask_node is not None:
                    name = ask_node.name
                    return raise_error_reply(
                        (await self._send_many(ask_node, [cmd], asking=True))[0]
                    )
                if self.durable_replicas and not call.readonly:
                    reply, acked = await self._send_many(node, [cmd, self._wait_cmd()])
                    reply = raise_error_reply(reply)
                    self._check_acked(name, acked)
                    return reply
                return raise_error_reply((await self._send_many(node, [cmd]))[0])
            except MovedError as e:
                await self.redis.nodes_manager.move_slot(e)  # type: ignore[union-attr]
            except AskError as e:
                ask_node = self.redis.get_node(host=e.host, port=e.port)  # type: ignore[union-attr]
                if ask_node is None:
                    await self._refresh_topology()
                continue
            except TryAgainError:
                await asyncio.sleep(0.05 * (attempt + 1))
            except AfterSend as e:
                if not call.readonly:  # a write that may have run is never sent twice
                    log.warning(
                        "adcache: %s on %s after %s was sent: not retried",
                        e.cause,
                        name,
                        call.function,
                    )
                    raise e.cause from None
                await self._pause(e.cause, name, attempt)
            except _TRANSIENT as e:
                await self._pause(e, name, attempt)
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
        raise AdCacheError(f"{call.function}: gave up after {self.max_attempts} attempts")

    async def _pause(self, e: Exception, name: str, attempt: int) -> None:
        if attempt == self.max_attempts - 1:
            raise e
        log.info("adcache: %s on %s, retrying (attempt %d)", e, name, attempt + 1)
        await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        await self._refresh_topology()

    def _wait_cmd(self) -> tuple[Arg, ...]:
        return ("WAIT", self.durable_replicas, self.durable_timeout_ms)

    def _check_acked(self, name: str, acked: Any) -> None:
        if isinstance(acked, Exception) or int(acked) < self.durable_replicas:
            raise DurabilityError(
                f"{name}: {acked} of {self.durable_replicas} replicas acknowledged the write "
                f"within {self.durable_timeout_ms} ms",
                node=name,
            )

    async def run_many(
        self, calls: Sequence[Call[Any]], *, raise_on_error: bool = True
    ) -> list[Any]:
        """Many calls, one pipeline per node, all nodes concurrently; results in call order."""
        await self._ensure_initialized()
        groups: dict[str, tuple[ClusterNode | None, list[int]]] = {}
        by_node: dict[str, list[int]] = defaultdict(list)
        for i, call in enumerate(calls):
            node = self._node_for(call)
            name = node.name if node is not None else self._name
            by_node[name].append(i)
            groups[name] = (node, by_node[name])
        results: list[Any] = [None] * len(calls)

        async def one(name: str, node: ClusterNode | None, idxs: list[int]) -> None:
            try:
                if self.verify_library and name not in self._verified:
                    await self._verify(name, node)
                cmds = [calls[i].command() for i in idxs]
                durable = self.durable_replicas and not all(calls[i].readonly for i in idxs)
                if durable:
                    cmds.append(self._wait_cmd())  # one WAIT covers the whole batch
                replies = await self._send_many(node, cmds)
                if durable:
                    try:
                        self._check_acked(name, replies.pop())
                    except DurabilityError as e:
                        replies = [
                            r if calls[i].readonly or isinstance(r, Exception) else e
                            for i, r in zip(idxs, replies, strict=True)
                        ]
            except _TRANSIENT:  # not sent: each call is retried on its own
                replies = [_REDO] * len(idxs)
            except AfterSend as e:  # reads are retried; a write that may have run gets the error
                await self._refresh_topology()
                replies = [_REDO if calls[i].readonly else e.cause for i in idxs]
            for i, reply in zip(idxs, replies, strict=True):
                results[i] = await self._settle(calls[i], name, reply)

        await asyncio.gather(*(one(n, node, idxs) for n, (node, idxs) in groups.items()))
        if raise_on_error:
            for r in results:
                if isinstance(r, Exception):
                    raise r
        return results

    async def _settle(self, call: Call[Any], name: str, reply: Any) -> Any:
        if reply is not _REDO and not isinstance(reply, Exception):
            try:
                return call.parse(reply)
            except Exception as e:
                return e
        if reply is _REDO or isinstance(reply, (MovedError, AskError, TryAgainError)):
            try:
                return await self.run(call)
            except Exception as e:
                return e
        if isinstance(reply, ResponseError):
            err = translate_error(reply, name)
            if isinstance(err, LibraryMissingError) and self.auto_deploy:
                try:
                    return await self.run(call)
                except Exception as e:
                    return e
            return err
        return reply


_REDO = object()  # a pipelined call whose node failed as a whole: retried on its own
