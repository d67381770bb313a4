"""What the sync and asyncio clients share: the Call record, reply decoding, error translation,
library-version checks and slot routing. No I/O happens here."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, ResponseError

from adcache._generated import (
    ERRORS,
    FUNCTIONS,
    LIBRARY_VERSION,
    AdCacheError,
    BadArgumentError,
    CorruptStateError,
    CrossSlotError,
    LibraryMissingError,
    LibraryVersionError,
)

T = TypeVar("T")
Arg = str | bytes | int | float

# Redis appends where a raised error came from; the code and message are what callers need.
_SCRIPT_SUFFIX = re.compile(r"\s+script: .*$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One FCALL: function, keys, arguments, and how to turn its reply into a typed value."""

    function: str
    keys: tuple[str, ...]
    args: tuple[Arg, ...]
    parse: Callable[[Any], T]

    @property
    def readonly(self) -> bool:
        return FUNCTIONS[self.function].readonly

    def command(self) -> tuple[Arg, ...]:
        verb = _VERB[self.function]
        return (verb, self.function, len(self.keys), *self.keys, *self.args)

    @property
    def slot(self) -> int | None:
        return key_slot(self.keys[0].encode()) if self.keys else None


_VERB = {name: "FCALL_RO" if spec.readonly else "FCALL" for name, spec in FUNCTIONS.items()}


def raw(reply: Any) -> Any:
    return reply


# ---- reply decoding (works whether the redis client decodes responses or not) ----


def text(v: Any) -> str:
    if type(v) is bytes:
        return v.decode()
    return v if type(v) is str else str(v)


def opt_text(v: Any) -> str | None:
    return None if v is None else text(v)


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


class AfterSend(Exception):
    """A connection failed after commands were (perhaps partly) sent: they may have run, so a
    write is not sent again (see `AdCache.fcall`)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


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


def is_library_missing(err: BaseException) -> bool:
    return isinstance(err, LibraryMissingError)


__all__ = [
    "AdCacheError",
    "Arg",
    "Call",
    "check_library_reply",
    "is_library_missing",
    "node_hint",
    "opt_text",
    "pairs",
    "raw",
    "str_pairs",
    "text",
    "translate_error",
]
