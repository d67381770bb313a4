"""What the sync and the asyncio client share beyond `adcache._core`: their options, the retry
loop, the library checks and the settling of `run_many` replies, written once as plans (see
`adcache._facade`). A client drives a plan with its own I/O: the sync client calls the methods a
plan asks for, the asyncio client awaits them. Each client provides the same primitives:

* `_standalone`, `_slots`, `_wrap(cluster node)`, `_name_of(node)`: what routing needs;
* `_send(node, *cmd)`: one command through redis-py (admin: its reply callbacks apply);
* `_exchange(node, payload, n, checked)`: `n` packed commands written at once on the node's
  connection, their replies (error replies in place); AfterSend once sending began;
* `_moved(error)`, `_refresh_topology()`, `nodes()`, `execute_on(ref, *cmd)`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Self, TypeVar

from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adcache._core import (
    REDO,
    AfterSend,
    Call,
    backoff_s,
    check_acked,
    check_library_reply,
    gives_up,
    library_source,
    missing_and_not_allowed,
    raise_error_reply,
    str_pairs,
    translate_error,
)
from adcache._facade import Plan, do, sleep
from adcache._generated import AdCacheError, LibraryMissingError
from adcache._redispy import node_address, pack
from adcache.facades import FACADES

log = logging.getLogger("adcache")
R = TypeVar("R")

TRANSIENT = (RedisConnectionError, RedisTimeoutError, ClusterDownError, SlotNotCoveredError)
ASKING = pack(("ASKING",))


class ClientBase(Generic[R]):
    """The options and the logic of both clients; see `adcache.AdCache` for the options."""

    is_async = False

    def __init__(
        self,
        client: R,
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
        self.auto_deploy = auto_deploy
        self.verify_library = verify_library
        self.read_from_replicas = read_from_replicas
        self.max_attempts = max_attempts
        self.retry_budget_s = retry_budget_s
        self._verified: set[str] = set()  # set.add/discard are atomic: threads need no lock
        self._setup()
        self._attach_facades()

    _setup: Callable[[], None]  # the client's own state: connections, slot map

    def _attach_facades(self) -> None:
        for name, cls in FACADES.items():
            setattr(self, name, cls(self))

    def durable(self, replicas: int = 1, timeout_ms: int = 500) -> Self:
        """A view of this client (same connections) whose writes wait for `replicas` replicas."""
        view = copy.copy(self)
        view.durable_replicas, view.durable_timeout_ms = replicas, timeout_ms
        view._attach_facades()
        return view

    def _wait_cmd(self) -> bytes:
        return pack(("WAIT", self.durable_replicas, self.durable_timeout_ms))

    # ---- library checks ----

    def _deploy_on(self, node: Any) -> Plan[None]:
        name = self._name_of(node)
        log.warning("adcache library missing on %s: loading it (auto_deploy)", name)
        try:
            yield from do(self._send, node, "FUNCTION", "LOAD", "REPLACE", library_source())
        except NoPermissionError as e:
            raise missing_and_not_allowed(name, e) from e

    def _verify(self, node: Any) -> Plan[None]:
        """Check `ac_version` on a node before its first call (auto_deploy: load it if missing)."""
        name = self._name_of(node)
        try:
            reply = yield from do(self._send, node, "FCALL_RO", "ac_version", 0)
        except ResponseError as e:
            err = translate_error(e, name)
            if not (isinstance(err, LibraryMissingError) and self.auto_deploy):
                raise err from e
            yield from self._deploy_on(node)
            reply = yield from do(self._send, node, "FCALL_RO", "ac_version", 0)
        check_library_reply(reply, name)
        self._verified.add(name)

    def _library_info(self) -> Plan[dict[str, dict[str, str]]]:
        out = {}
        for ref in (yield from do(self.nodes, replicas=False)):
            try:
                reply = yield from do(self.execute_on, ref, "FCALL_RO", "ac_version", 0)
            except ResponseError as e:
                raise translate_error(e, ref.name) from e
            out[ref.name] = str_pairs(reply)
        return out

    # ---- routing (no I/O) ----

    def _node_for(self, call: Call[Any]) -> Any:
        """The node a call goes to: the slot of its first key's hash tag (cached per slot),
        a replica for a read when read_from_replicas, any primary for a keyless call."""
        if not self.is_cluster:
            return self._standalone
        rc: Any = self.redis
        if not call.keys:
            return self._wrap(random.choice(rc.get_primaries()))
        if self.read_from_replicas and call.readonly:
            return self._wrap(rc.get_node_from_key(call.keys[0], replica=True))
        slot = key_slot(call.keys[0].encode())
        node = self._slots[slot]
        if node is None:
            node = self._slots[slot] = self._wrap(rc.get_node_from_key(call.keys[0]))
        return node

    def _ask_node(self, e: AskError) -> Any:
        host, port = node_address(e)
        cn = self.redis.get_node(host=host, port=port)  # type: ignore[attr-defined]
        return None if cn is None else self._wrap(cn)

    def _route_moved(self, e: MovedError) -> None:
        """After a topology refresh: route the moved slot to the node the redirect named."""
        host, port = node_address(e)
        cn = self.redis.get_node(host=host, port=port)  # type: ignore[attr-defined]
        if cn is not None:
            self._slots[e.slot_id] = self._wrap(cn)

    # ---- one call ----

    def _fcall(self, call: Call[Any], payload: bytes) -> Plan[Any]:
        """One call with redirects and retries (see `AdCache.fcall` for the rules)."""
        repeatable = call.repeatable
        deployed = False
        ask_node: Any = None
        started = time.monotonic()
        for attempt in itertools.count():
            node = self._node_for(call)
            name = self._name_of(node)
            try:
                if self.verify_library and name not in self._verified:
                    yield from self._verify(node)
                if ask_node is not None:
                    node, name = ask_node, self._name_of(ask_node)
                    replies = yield from do(self._exchange, node, ASKING + payload, 2)
                    return raise_error_reply(replies[1])
                if self.durable_replicas and not call.readonly:
                    replies = yield from do(self._exchange, node, payload + self._wait_cmd(), 2)
                    reply = raise_error_reply(replies[0])
                    check_acked(self, name, replies[1])
                    return reply
                replies = yield from do(self._exchange, node, payload, 1, not repeatable)
                return raise_error_reply(replies[0])
            except MovedError as e:
                yield from do(self._moved, e)
                self._give_up_after(e, call, attempt, started, redirect=True)
            except AskError as e:
                ask_node = self._ask_node(e)
                if ask_node is None:
                    yield from do(self._refresh_topology)
                self._give_up_after(e, call, attempt, started, redirect=True)
                continue
            except TryAgainError as e:
                self._give_up_after(e, call, attempt, started, redirect=True)
                yield from sleep(0.05 * min(attempt + 1, 10))
            except AfterSend as e:
                if not repeatable:  # a write that may have run is never sent twice
                    log.warning(
                        "adcache: %s on %s after %s was sent: not retried",
                        e.cause,
                        name,
                        call.function,
                    )
                    raise e.cause from None
                yield from self._pause(e.cause, name, call, attempt, started)
            except TRANSIENT as e:
                yield from self._pause(e, name, call, attempt, started)
            except ResponseError as e:
                err = translate_error(e, name)
                if isinstance(err, LibraryMissingError):
                    self._verified.discard(name)
                    if self.auto_deploy and not deployed:
                        deployed = True
                        yield from self._deploy_on(node)
                        continue
                raise err from e
            ask_node = None
        raise AssertionError("unreachable")  # pragma: no cover

    def _give_up_after(
        self, e: Exception, call: Call[Any], attempt: int, started: float, *, redirect: bool
    ) -> None:
        """Raise once a call has used its attempts (a repeatable one: its time budget)."""
        if not gives_up(self, call, attempt, started):
            return
        if redirect:
            raise AdCacheError(f"{call.function}: gave up after {attempt + 1} attempts ({e})")
        raise e

    def _pause(
        self, e: Exception, name: str, call: Call[Any], attempt: int, started: float
    ) -> Plan[None]:
        """Back off before the next attempt (re-raising once the call may not try again) and
        refresh the map."""
        self._give_up_after(e, call, attempt, started, redirect=False)
        log.info("adcache: %s on %s, retrying (attempt %d)", e, name, attempt + 1)
        yield from sleep(backoff_s(attempt))
        yield from do(self._refresh_topology)

    # ---- many calls ----

    def _groups(self, calls: Sequence[Call[Any]]) -> dict[str, tuple[Any, list[int]]]:
        """The calls' indexes by the node they go to (its name: the node, the indexes)."""
        if not self.is_cluster and calls:  # one server takes every call
            node = self._node_for(calls[0])
            return {self._name_of(node): (node, list(range(len(calls))))}
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, call in enumerate(calls):
            node = self._node_for(call)
            name = self._name_of(node)
            group = groups.get(name)
            if group is None:
                groups[name] = (node, [i])
            else:
                group[1].append(i)
        return groups

    def _batch(self, calls: Sequence[Call[Any]], idxs: list[int]) -> tuple[bytes, int]:
        """One node's calls packed (and one WAIT covering them all in durable mode), and how
        many replies they give."""
        payload = b"".join([calls[i].packed() for i in idxs])
        if self.durable_replicas and not all(calls[i].readonly for i in idxs):
            return payload + self._wait_cmd(), len(idxs) + 1
        return payload, len(idxs)

    def _settle(
        self,
        calls: Sequence[Call[Any]],
        name: str,
        idxs: list[int],
        replies: list[Any],
        results: list[Any],
    ) -> Plan[None]:
        """Put one node's replies, parsed, in `results`: redirects and calls whose node failed as
        a whole are run again one by one, an error reply becomes its typed exception."""
        for i, reply in zip(idxs, replies, strict=True):
            call = calls[i]
            if reply is not REDO and not isinstance(reply, Exception):
                try:
                    results[i] = call.parse(reply)
                except Exception as e:
                    results[i] = e
                continue
            again = reply is REDO or isinstance(reply, (MovedError, AskError, TryAgainError))
            if not again and isinstance(reply, ResponseError):
                reply = translate_error(reply, name)
                if isinstance(reply, LibraryMissingError):
                    self._verified.discard(name)
                    again = self.auto_deploy
            if not again:
                results[i] = reply
                continue
            try:
                results[i] = yield call
            except Exception as e:
                results[i] = e

    @staticmethod
    def _results(results: list[Any], raise_on_error: bool) -> list[Any]:
        if raise_on_error:
            for r in results:
                if isinstance(r, Exception):
                    raise r
        return results

    # ---- what each client provides (see the module doc) ----

    is_cluster: bool
    _standalone: Any  # the node every call goes to on a standalone server
    _slots: list[Any]  # slot -> node, filled on use, emptied by a topology refresh
    _wrap: Callable[[Any], Any]  # a redis-py cluster node as the client holds it
    _name_of: Callable[[Any], str]
    _send: Callable[..., Any]
    _exchange: Callable[..., Any]
    _moved: Callable[[MovedError], Any]
    _refresh_topology: Callable[[], Any]
    nodes: Callable[..., Any]
    execute_on: Callable[..., Any]
