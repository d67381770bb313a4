"""Cache primitives (Lua domain `cache`): the server side of `adcache.strategies`.

A cache is named; its keys are spread over `shards` hash tags `{k:<name>.<shard>}` with
`shard = crc32(key) % shards`, so a value, its loader lock, its tag sets and its shard's write-back
stream share one slot. Most code uses `adcache.strategies`; these are the one-call building blocks.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from adcache import _generated as keys
from adcache._core import Call, text
from adcache._facade import Facade, M, Plan, forward, many, plan
from adcache._generated import BadArgumentError

MAX_KEY_BYTES = 512
Status = Literal["hit", "neg", "stale", "load", "reload", "wait"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """What `ac_cache_get` found. `payload` is the cached text ('' when there is none);
    `remaining_ms` is the time to the logical expiry (negative when stale; the lock's TTL for
    `wait`); `load_ms` is how long the cached value took to load (drives early refresh)."""

    status: Status
    payload: str
    remaining_ms: int
    load_ms: int

    @property
    def locked(self) -> bool:
        """The caller holds the loader lock and must load (then fill)."""
        return self.status in ("load", "reload")


def _check_name(name: str, what: str, max_bytes: int) -> str:
    b = name.encode()
    if not b or len(b) > max_bytes or "{" in name or "}" in name:
        raise BadArgumentError(f"{what} must be 1..{max_bytes} bytes without braces, got {name!r}")
    return name


def shard_of(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % shards


def cache_id(name: str, shard: int) -> str:
    return f"{name}.{shard}"


@dataclass(frozen=True, slots=True)
class Space:
    """The key space of one named cache: where each key, tag set and stream lives."""

    name: str
    shards: int = 16

    def __post_init__(self) -> None:
        _check_name(self.name, "cache name", keys.MAX_ID_BYTES - 8)
        if not 1 <= self.shards <= 4096:
            raise BadArgumentError("shards must be between 1 and 4096")

    def shard(self, key: str) -> int:
        return shard_of(_check_name(key, "cache key", MAX_KEY_BYTES), self.shards)

    def id_of(self, key: str) -> str:
        return cache_id(self.name, self.shard(key))

    def value_key(self, key: str) -> str:
        return keys.cache_value(self.id_of(key), key)

    def lock_key(self, key: str) -> str:
        return keys.cache_lock(self.id_of(key), key)

    def writer_key(self, key: str) -> str:
        return keys.cache_writer(self.id_of(key), key)

    def tag_keys(self, key: str, tags: Sequence[str]) -> tuple[str, ...]:
        cid = self.id_of(key)
        return tuple(keys.cache_tag(cid, _check_name(t, "tag", MAX_KEY_BYTES)) for t in tags)

    def stream(self, shard: int) -> str:
        return keys.cache_stream(cache_id(self.name, shard))

    def streams(self) -> list[str]:
        return [self.stream(s) for s in range(self.shards)]


def _vl(space: Space, key: str) -> tuple[str, str]:
    """The value and lock keys of `key`: every call on one key names both."""
    return space.value_key(key), space.lock_key(key)


def _ok(reply: Any) -> bool:
    return int(reply) == 1


def _payload(payload: str | None) -> tuple[str, str]:
    """The entry kind and payload on the wire; None is a negative entry (no such key)."""
    return "negative" if payload is None else "value", payload or ""


def _lookup(reply: Any) -> Lookup:
    status, payload, remaining, load_ms = reply
    return Lookup(text(status), text(payload), int(remaining), int(load_ms))  # type: ignore[arg-type]


def get_call(
    space: Space, key: str, token: str, *, lock_ttl_ms: int, refresh: bool = False
) -> Call[Lookup]:
    """Read a value, or take its loader lock when missing or stale."""
    args = (token, lock_ttl_ms, "1" if refresh else "0")
    return Call("ac_cache_get", _vl(space, key), args, _lookup)


MAX_BATCH = 500  # keys per ac_cache_get_many (the Lua bound)


def _lookups(reply: Any) -> list[Lookup]:
    return [_lookup(reply[i : i + 4]) for i in range(0, len(reply), 4)]


def get_many_calls(
    space: Space, keys_: Sequence[str], token: str, *, lock_ttl_ms: int
) -> list[tuple[list[str], Call[list[Lookup]]]]:
    """One `ac_cache_get_many` per shard (per MAX_BATCH keys): (the keys, their call)."""
    by_shard: dict[int, list[str]] = {}
    for k in keys_:
        by_shard.setdefault(space.shard(k), []).append(k)
    out: list[tuple[list[str], Call[list[Lookup]]]] = []
    for group in by_shard.values():
        for i in range(0, len(group), MAX_BATCH):
            chunk = group[i : i + MAX_BATCH]
            ks = tuple(space.value_key(k) for k in chunk) + tuple(space.lock_key(k) for k in chunk)
            out.append((chunk, Call("ac_cache_get_many", ks, (token, lock_ttl_ms), _lookups)))
    return out


def fill_call(
    space: Space,
    key: str,
    token: str,
    payload: str | None,
    *,
    ttl_ms: int,
    grace_ms: int,
    load_ms: int,
    tags: Sequence[str] = (),
) -> Call[bool]:
    """Store a loaded value if `token` still owns the lock; False when it was lost.
    payload None stores a negative entry (the source has no such key)."""
    ks = (*_vl(space, key), *space.tag_keys(key, tags))
    return Call("ac_cache_fill", ks, (token, *_payload(payload), ttl_ms, grace_ms, load_ms), _ok)


def release_call(space: Space, key: str, token: str) -> Call[bool]:
    """Give up the loader lock after a failed load."""
    return Call("ac_cache_release", _vl(space, key), (token,), _ok)


def write_begin_call(space: Space, key: str, token: str, *, ttl_ms: int) -> Call[bool]:
    """Before a write-through's database write: register as the key's writer."""
    ks = (*_vl(space, key), space.writer_key(key))
    return Call("ac_cache_write_begin", ks, (token, ttl_ms), _ok)


def set_call(
    space: Space,
    key: str,
    token: str,
    payload: str | None,
    *,
    ttl_ms: int,
    grace_ms: int,
    tags: Sequence[str] = (),
) -> Call[bool]:
    """After a write-through's database write: store if no other writer began since `token`
    did (see write_begin_call); else the key is dropped and the reply is False."""
    ks = (*_vl(space, key), space.writer_key(key), *space.tag_keys(key, tags))
    return Call("ac_cache_set", ks, (token, *_payload(payload), ttl_ms, grace_ms), _ok)


def invalidate_call(space: Space, key: str) -> Call[bool]:
    return Call("ac_cache_invalidate", _vl(space, key), (), _ok)


def invalidate_tag_calls(space: Space, tag: str) -> list[Call[int]]:
    """One call per shard: a tag's keys may live in any shard."""
    _check_name(tag, "tag", MAX_KEY_BYTES)
    return [
        Call("ac_cache_invalidate_tag", (keys.cache_tag(cache_id(space.name, s), tag),), (), int)
        for s in range(space.shards)
    ]


def wb_write_call(
    space: Space,
    key: str,
    payload: str | None,
    *,
    ttl_ms: int,
    grace_ms: int,
    tags: Sequence[str] = (),
) -> Call[str]:
    """payload None records a delete (and caches a negative entry)."""
    ks = (*_vl(space, key), keys.cache_stream(space.id_of(key)), *space.tag_keys(key, tags))
    args = ("del" if payload is None else "set", payload or "", ttl_ms, grace_ms)
    return Call("ac_cache_wb_write", ks, args, text)


def wb_ack_call(
    stream: str, group: str, ids: Sequence[str], value_keys: Sequence[str] = ()
) -> Call[int]:
    """Acknowledge `ids`; `value_keys[i]` is the value key written by `ids[i]` (unpinned if that
    record is still its latest write); ids past the value keys (records gone) are only acked."""
    return Call("ac_cache_wb_ack", (stream, *value_keys), (group, *ids), int)


class Caches(Facade[M]):
    """Cache primitives on the sync or asyncio `AdCache` (`cache.caches`)."""

    get = forward(get_call)
    fill = forward(fill_call)
    release = forward(release_call)
    write_begin = forward(write_begin_call)
    set = forward(set_call)
    invalidate = forward(invalidate_call)
    wb_write = forward(wb_write_call)
    wb_ack = forward(wb_ack_call)

    @plan
    def invalidate_tag(self, space: Space, tag: str) -> Plan[int]:
        """Drop every value carrying `tag`, over all shards (one pipelined round per node)."""
        return sum((yield from many(invalidate_tag_calls(space, tag))))


AsyncCaches = Caches  # the same class: on an asyncio client its methods return awaitables
