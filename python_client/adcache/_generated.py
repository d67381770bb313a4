"""Generated from lua/keyspace.yaml, lua/errors.yaml and the contract headers by `adcache render`.

Do not edit: edit lua/ and re-render.
"""

from __future__ import annotations

from dataclasses import dataclass

LIBRARY_NAME = 'adcache'
LIBRARY_VERSION = '0.1.0'
LIBRARY_SHA256 = 'a2a674d4f6259bed63d8a26a0dd75263ff9483a73fa1b92383c244eaf4a7935a'
KEY_PREFIX = 'ad'
MAX_ID_BYTES = 128
ENTITY_TAGS = {'user': 'u', 'campaign': 'c', 'auction': 'a', 'session': 's', 'segment': 'g', 'targeting': 't', 'cache': 'k'}


# ---- key builders: one per key pattern of the keyspace ----


def session(session_id: str) -> str:
    """session record: user id, attributes (a.<name>), created/expires/idle bookkeeping (hash; TTL: idle TTL given at create, slid forward by touch, never past the absolute lifetime)."""
    return f"ad:{{s:{session_id}}}:sess"


def freqcap(user_id: str) -> str:
    """all frequency-cap counters of one user: <scope>:<entity id>|<window> = count (fixed, lifetime) or impression times (rolling); ~s = when the next sweep is due (hash; TTL: PEXPIREAT the end of the longest window counted in it (fixed: calendar end; rolling: last impression + N s; lifetime: last impression + 400 days); only ever moved later; stale fields removed lazily on record)."""
    return f"ad:{{u:{user_id}}}:fc"


def freqcap_imps(user_id: str) -> str:
    """recorded impression ids of one user: <impression id> = forget-at ms and the first outcome (idempotent record); ~n = when the next sweep is due (hash; TTL: PEXPIREAT the latest dedupe deadline of the impression ids it holds; expired ids removed lazily on record)."""
    return f"ad:{{u:{user_id}}}:fcimp"


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
    'ac_freqcap_check': FunctionSpec('ac_freqcap_check', 'freqcap', True, ('freqcap',), 'n_candidates, then per candidate: campaign_id advertiser_id creative_id n_rules [scope window limit]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_freqcap_inspect': FunctionSpec('ac_freqcap_inspect', 'freqcap', True, ('freqcap',), '[scope entity_id]', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_freqcap_record': FunctionSpec('ac_freqcap_record', 'freqcap', False, ('freqcap', 'freqcap_imps'), 'impression_id dedupe_ttl_ms campaign_id advertiser_id creative_id n_rules [scope window limit]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_freqcap_reset': FunctionSpec('ac_freqcap_reset', 'freqcap', False, ('freqcap', 'freqcap_imps'), '[scope entity_id]  (scope a, c or k; none: everything of the user)', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG')),
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
