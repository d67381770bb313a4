"""Generated from lua/keyspace.yaml, lua/errors.yaml and the contract headers by `adcache render`.

Do not edit: edit lua/ and re-render.
"""

from __future__ import annotations

from dataclasses import dataclass

LIBRARY_NAME = 'adcache'
LIBRARY_VERSION = '0.1.0'
LIBRARY_SHA256 = '3e234d18d90220747197776d5fccf7516f1b6ae1233047b8efa49ada60afa6e1'
KEY_PREFIX = 'ad'
MAX_ID_BYTES = 128
ENTITY_TAGS = {'user': 'u', 'campaign': 'c', 'auction': 'a', 'session': 's', 'segment': 'g', 'targeting': 't', 'cache': 'k'}


# ---- key builders: one per key pattern of the keyspace ----


def session(session_id: str) -> str:
    """session record: user id, attributes (a.<name>), created/expires/idle bookkeeping (hash; TTL: idle TTL given at create, slid forward by touch, never past the absolute lifetime)."""
    return f"ad:{{s:{session_id}}}:sess"


def cache_value(cache_id: str, key: str | int) -> str:
    """cached value: p (payload), x (logical expiry ms), d (load time ms), n (1 = negative entry); while dirty, w (stream id of its change) and e (expiry once flushed) (hash; TTL: logical TTL (with jitter) plus the stale grace, set by every fill or write; none while dirty (a write-back not flushed yet), given back by ac_cache_wb_ack)."""
    return f"ad:{{k:{cache_id}}}:v:{key}"


def cache_lock(cache_id: str, key: str | int) -> str:
    """loader lock of one key: the owner's random token (one loader per key at a time) (string; TTL: the loader lock TTL; deleted by the fill of its owner and by every write or invalidation)."""
    return f"ad:{{k:{cache_id}}}:l:{key}"


def cache_writer(cache_id: str, key: str | int) -> str:
    """write-through: the token of the writer that began writing the key last (overlapping writes drop the key) (string; TTL: the lock TTL; deleted by the cache write of its owner)."""
    return f"ad:{{k:{cache_id}}}:w:{key}"


def cache_tag(cache_id: str, name: str | int) -> str:
    """keys of this shard carrying the tag <name> (tag invalidation fans out over the shards) (set; TTL: extended to the longest TTL of its members at each fill; deleted by tag invalidation)."""
    return f"ad:{{k:{cache_id}}}:t:{name}"


def cache_stream(cache_id: str) -> str:
    """write-back change records of this shard (fields k, op, p), read by the flusher group (stream; TTL: owner: the write-back flusher deletes each entry once its change is committed)."""
    return f"ad:{{k:{cache_id}}}:wb"


def tag_of(entity: str, entity_id: str) -> str:
    """The hash tag (with braces) of an entity id: every key of that entity contains it."""
    return "{" + ENTITY_TAGS[entity] + ":" + entity_id + "}"


# ---- functions: name -> contract (readonly ones go through FCALL_RO) ----


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    domain: str
    readonly: bool
    keys: tuple[str, ...]
    argv: str
    errors: tuple[str, ...]


FUNCTIONS: dict[str, FunctionSpec] = {
    'ac_cache_fill': FunctionSpec('ac_cache_fill', 'cache', False, ('cache_value', 'cache_lock', 'cache_tag...'), 'token kind(value|negative) payload ttl_ms grace_ms load_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_cache_get': FunctionSpec('ac_cache_get', 'cache', False, ('cache_value', 'cache_lock'), 'token lock_ttl_ms refresh(0|1: take the lock even when the value is fresh)', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_cache_get_many': FunctionSpec('ac_cache_get_many', 'cache', False, ('cache_value...', 'cache_lock...'), 'token lock_ttl_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_cache_invalidate': FunctionSpec('ac_cache_invalidate', 'cache', False, ('cache_value', 'cache_lock'), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT')),
    'ac_cache_invalidate_tag': FunctionSpec('ac_cache_invalidate_tag', 'cache', False, ('cache_tag',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_WRONGTYPE')),
    'ac_cache_release': FunctionSpec('ac_cache_release', 'cache', False, ('cache_value', 'cache_lock'), 'token', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG')),
    'ac_cache_set': FunctionSpec('ac_cache_set', 'cache', False, ('cache_value', 'cache_lock', 'cache_writer', 'cache_tag...'), 'token kind(value|negative) payload ttl_ms grace_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_cache_wb_ack': FunctionSpec('ac_cache_wb_ack', 'cache', False, ('cache_stream', 'cache_value...'), 'group id... (the first ids are those of the value keys, in KEYS order; then ids whose record is gone)', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE', 'ADCACHE_NOTFOUND')),
    'ac_cache_wb_write': FunctionSpec('ac_cache_wb_write', 'cache', False, ('cache_value', 'cache_lock', 'cache_stream', 'cache_tag...'), 'op(set|del) payload ttl_ms grace_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_cache_write_begin': FunctionSpec('ac_cache_write_begin', 'cache', False, ('cache_value', 'cache_lock', 'cache_writer'), 'token ttl_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG')),
    'ac_session_create': FunctionSpec('ac_session_create', 'session', False, ('session',), 'user_id idle_ttl_ms max_lifetime_ms [attr_name attr_value]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_EXISTS')),
    'ac_session_delete': FunctionSpec('ac_session_delete', 'session', False, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY')),
    'ac_session_get': FunctionSpec('ac_session_get', 'session', True, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY')),
    'ac_session_touch': FunctionSpec('ac_session_touch', 'session', False, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_version': FunctionSpec('ac_version', 'version', True, (), 'none', ()),
}


# ---- errors: one exception class per code of lua/errors.yaml ----


class AdCacheError(Exception):
    """Base of every error adcache raises. `code` is the stable first word of the reply."""

    code = "ADCACHE_ERROR"

    def __init__(self, message: str, *, node: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.node = node


class BadArgumentError(AdCacheError):
    """an argument is missing, of the wrong type, malformed or out of range."""

    code = 'ADCACHE_BADARG'


class ArityError(AdCacheError):
    """the number of keys or arguments does not match the function's contract."""

    code = 'ADCACHE_ARITY'


class BadKeyError(AdCacheError):
    """a key does not match the keyspace pattern the function expects at that position."""

    code = 'ADCACHE_BADKEY'


class CrossSlotError(AdCacheError):
    """the keys of one call do not share one hash tag."""

    code = 'ADCACHE_CROSSSLOT'


class NotFoundError(AdCacheError):
    """the entity the call needs does not exist (or has expired)."""

    code = 'ADCACHE_NOTFOUND'


class AlreadyExistsError(AdCacheError):
    """the entity the call would create exists already."""

    code = 'ADCACHE_EXISTS'


class VersionConflictError(AdCacheError):
    """compare-and-set failed: the stored version is not the expected one."""

    code = 'ADCACHE_CONFLICT'


class InvalidStateError(AdCacheError):
    """the entity is in a state that forbids this call."""

    code = 'ADCACHE_STATE'


class LimitExceededError(AdCacheError):
    """the call asks for more items than the library allows in one call."""

    code = 'ADCACHE_LIMIT'


class CorruptStateError(AdCacheError):
    """a key of the keyspace holds data the library did not write (wrong type or shape)."""

    code = 'ADCACHE_WRONGTYPE'


class LibraryMissingError(AdCacheError):
    """the adcache library is not loaded on the node that owns the keys."""

    code = 'ADCACHE_NOLIB'


class LibraryVersionError(AdCacheError):
    """the adcache library on a node is older than this client needs."""

    code = 'ADCACHE_OLDLIB'


ERRORS: dict[str, type[AdCacheError]] = {
    'ADCACHE_BADARG': BadArgumentError,
    'ADCACHE_ARITY': ArityError,
    'ADCACHE_BADKEY': BadKeyError,
    'ADCACHE_CROSSSLOT': CrossSlotError,
    'ADCACHE_NOTFOUND': NotFoundError,
    'ADCACHE_EXISTS': AlreadyExistsError,
    'ADCACHE_CONFLICT': VersionConflictError,
    'ADCACHE_STATE': InvalidStateError,
    'ADCACHE_LIMIT': LimitExceededError,
    'ADCACHE_WRONGTYPE': CorruptStateError,
    'ADCACHE_NOLIB': LibraryMissingError,
    'ADCACHE_OLDLIB': LibraryVersionError,
}
