"""What the sync and asyncio clients share: the Call record, reply decoding, error translation,
library-version checks and slot routing. No I/O happens here."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any, Generic, Protocol, TypeVar

from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    ResponseError,
    TryAgainError,
)

from adcache._generated import (
    ERRORS,
    FUNCTIONS,
    LIBRARY_VERSION,
    AdCacheError,
    BadArgumentError,
    CorruptStateError,
    CrossSlotError,
    DurabilityError,
    LibraryMissingError,
    LibraryVersionError,
)
from adcache._redispy import pack

T = TypeVar("T")
Arg = str | bytes | int | float

# Redis appends where a raised error came from; the code and message are what callers need.
_SCRIPT_SUFFIX = re.compile(r"\s+script: .*$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One FCALL: function, keys, arguments, and how to turn its reply into a typed value.

    `retry`: the call builder vouches that this call is safe to send again (its function is
    idempotent under an optional id argument, and the id is given); see `repeatable`."""

    function: str
    keys: tuple[str, ...]
    args: tuple[Arg, ...]
    parse: Callable[[Any], T]
    retry: bool = False

    @property
    def readonly(self) -> bool:
        return self.function in _READONLY

    @property
    def repeatable(self) -> bool:
        """Safe to send again after a connection was lost with the call in flight: a read, a
        function marked `@idempotent always`, or one marked `@idempotent with <arg>` whose call
        builder set `retry` (the id is given)."""
        return self.retry or self.function in _REPEATABLE

    def command(self) -> tuple[Arg, ...]:
        return (_VERB[self.function], self.function, len(self.keys), *self.keys, *self.args)

    def packed(self) -> bytes:
        """The command as RESP bytes."""
        return pack(self.command())

    @property
    def slot(self) -> int | None:
        return key_slot(self.keys[0].encode()) if self.keys else None


_VERB = {name: "FCALL_RO" if spec.readonly else "FCALL" for name, spec in FUNCTIONS.items()}
_READONLY = frozenset(name for name, spec in FUNCTIONS.items() if spec.readonly)
_REPEATABLE = _READONLY | {n for n, spec in FUNCTIONS.items() if spec.idempotent == "always"}


def raw(reply: Any) -> Any:
    return reply


# ---- reply decoding (works whether the redis client decodes responses or not) ----


def text(v: Any) -> str:
    if type(v) is bytes:
        return v.decode()
    return v if type(v) is str else str(v)


def pairs(flat: Sequence[Any] | None) -> dict[str, Any]:
    """A flat field/value array as a dict with str keys (values left as they came)."""
    if not flat:
        return {}
    it = iter(flat)
    return {text(k): v for k, v in zip(it, it, strict=True)}


def str_pairs(flat: Sequence[Any] | None) -> dict[str, str]:
    return {k: text(v) for k, v in pairs(flat).items()}


def ints(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


def positive_ms(seconds: float, name: str) -> int:
    """A duration given in seconds (fractions allowed) as whole milliseconds, at least 1: the
    library's durations are milliseconds on the wire."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise BadArgumentError(f"{name} must be positive, got {seconds!r} s")
    return ms


# ---- errors ----


REDO: Any = object()  # a batched call not run, or safe to run again: retried on its own


class AfterSend(Exception):
    """A connection failed after commands were (perhaps partly) sent: they may have run, so a
    write is not sent again (see `AdCache.fcall`). For a batch: the replies read before the
    failure (`got`) and how many commands were written (`written`; None: all)."""

    def __init__(
        self, cause: Exception, got: list[Any] | None = None, written: int | None = None
    ) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.got = got or []
        self.written = written

    def replies(self, calls: Sequence[Call[Any]], idxs: list[int]) -> list[Any]:
        """A batch's replies as far as they are known: each one read; for a command written but
        not answered, REDO when its call is repeatable, else the error; REDO for one never
        written."""
        got = self.got[: len(idxs)]
        upto = len(idxs) if self.written is None else max(len(got), min(self.written, len(idxs)))
        lost = [REDO if calls[i].repeatable else self.cause for i in idxs[len(got) : upto]]
        return got + lost + [REDO] * (len(idxs) - upto)


def raise_error_reply(reply: Any) -> Any:
    """A batched reply as a call's result: an error reply is raised."""
    if isinstance(reply, Exception):
        raise reply
    return reply


def node_hint(node: str) -> str:
    return f"deploy it with `adcache deploy --url redis://{node}` (or build the client with auto_deploy=True)"


def translate_error(exc: ResponseError, node: str) -> Exception:
    """Map an error reply to the typed exception of its code; unknown errors pass through."""
    if isinstance(exc, ClusterCrossSlotError):  # redis-py strips the CROSSSLOT code from it
        return CrossSlotError(f"the keys of one call must share one hash tag ({exc})", node=node)
    msg = _SCRIPT_SUFFIX.sub("", str(exc))
    code, _, rest = msg.partition(" ")
    cls = ERRORS.get(code)
    if cls is not None:
        return cls(rest, node=node)
    if "Function not found" in msg or "Library not found" in msg:
        return LibraryMissingError(
            f"the adcache library is not loaded on {node} ({msg}); {node_hint(node)}", node=node
        )
    if code == "WRONGTYPE":
        return CorruptStateError(f"a key holds the wrong Redis type ({msg})", node=node)
    if code == "CROSSSLOT":  # a cluster refuses keys of several slots before the function runs
        return CrossSlotError(f"the keys of one call must share one hash tag ({msg})", node=node)
    return exc


def needs_retry(e: Exception, node: str) -> bool:
    """An error reply the retry loop deals with (a redirect, a cluster or server not ready, a
    missing library), not the caller."""
    if isinstance(e, (MovedError, AskError, TryAgainError, ClusterDownError)):
        return True
    if not isinstance(e, ResponseError):  # LOADING and the like: not run, try again
        return True
    return isinstance(translate_error(e, node), LibraryMissingError)


def missing_and_not_allowed(node: str, e: Exception) -> LibraryMissingError:
    """auto_deploy found no library on `node` and its user may not load one."""
    return LibraryMissingError(
        f"the adcache library is not loaded on {node} and this user may not load it "
        f"(auto_deploy: {e}); deploy it with `adcache deploy --url redis://{node}` as a user "
        "allowed to run FUNCTION LOAD",
        node=node,
    )


@cache
def library_source() -> str:
    """The rendered library this client was built with (package data; what auto_deploy loads)."""
    return (files("adcache") / "_library" / "adcache.lua").read_text(encoding="utf-8")


# ---- retry policy (see adcache._base) ----


class _Limits(Protocol):
    max_attempts: int
    retry_budget_s: float
    durable_replicas: int
    durable_timeout_ms: int


def gives_up(c: _Limits, call: Call[Any], attempt: int, started: float) -> bool:
    """A call stops after `max_attempts`; one safe to repeat keeps trying for `retry_budget_s`."""
    if attempt < c.max_attempts - 1:
        return False
    return not (call.repeatable and time.monotonic() - started < c.retry_budget_s)


def backoff_s(attempt: int) -> float:
    """Pause before retry `attempt + 1`: 50 ms doubling, at most 0.5 s (a failover is noticed
    within half a second of the promotion)."""
    return float(min(0.05 * 2 ** min(attempt, 10), 0.5))


def check_acked(c: _Limits, name: str, acked: Any) -> None:
    if isinstance(acked, Exception) or int(acked) < c.durable_replicas:
        raise DurabilityError(
            f"{name}: {acked} of {c.durable_replicas} replicas acknowledged the write "
            f"within {c.durable_timeout_ms} ms",
            node=name,
        )


def durable_replies(
    c: _Limits, name: str, calls: Sequence[Call[Any]], idxs: list[int], replies: list[Any]
) -> list[Any]:
    """A batch's replies with its trailing WAIT reply checked: when the replicas did not confirm,
    every write of the batch gets the DurabilityError in its place."""
    try:
        check_acked(c, name, replies.pop())
    except DurabilityError as e:
        return [
            r if calls[i].readonly or isinstance(r, Exception) else e
            for i, r in zip(idxs, replies, strict=True)
        ]
    return replies


def parse_version(v: str) -> tuple[int, int, int]:
    major, minor, patch = (int(x) for x in v.split("."))
    return major, minor, patch


def check_library_reply(reply: Any, node: str) -> dict[str, str]:
    """Validate an `ac_version` reply against the version this client was built for."""
    info = str_pairs(reply)
    deployed = info.get("version", "0.0.0")
    have, need = parse_version(deployed), parse_version(LIBRARY_VERSION)
    if have[0] != need[0] or have < need:
        raise LibraryVersionError(
            f"node {node} runs adcache library {deployed}, this client needs "
            f"{LIBRARY_VERSION} (same major, not older); {node_hint(node)}",
            node=node,
        )
    return info


__all__ = [
    "AdCacheError",
    "Arg",
    "Call",
    "check_library_reply",
    "node_hint",
    "pairs",
    "raw",
    "str_pairs",
    "text",
    "translate_error",
]
