"""Generated from lua/keyspace.yaml, lua/errors.yaml and the contract headers by `adcache render`.

Do not edit: edit lua/ and re-render.
"""

from __future__ import annotations

from dataclasses import dataclass

LIBRARY_NAME = 'adcache'
LIBRARY_VERSION = '0.1.0'
LIBRARY_SHA256 = '0a78b2cdfbc5db9e7b3438b63342249ade86f33daad523e30c00c6344857304a'
KEY_PREFIX = 'ad'
MAX_ID_BYTES = 128
ENTITY_TAGS = {'user': 'u', 'campaign': 'c', 'auction': 'a', 'session': 's', 'segment': 'g', 'targeting': 't', 'cache': 'k'}


# ---- key builders: one per key pattern of the keyspace ----


def session(session_id: str) -> str:
    """session record: user id, attributes (a.<name>), created/expires/idle bookkeeping (hash; TTL: idle TTL given at create, slid forward by touch, never past the absolute lifetime)."""
    return f"ad:{{s:{session_id}}}:sess"


def stats_meta(campaign_id: str) -> str:
    """stats bookkeeping of a campaign: first_ms, last_ms, events, duplicates; the anchor key of every stats call (hash; TTL: set at every record to the end of the current day + the day retention: it outlives every daily bucket)."""
    return f"ad:{{c:{campaign_id}}}:st"


def stats_hour(campaign_id: str, hour: str | int) -> str:
    """hourly bucket (hour = YYYYMMDDHH of the configured UTC offset): impressions, clicks, conversions, cost_micros, revenue_micros (hash; TTL: anchored: end of the hour + the hour retention (default 48 h); set by every record, never extended)."""
    return f"ad:{{c:{campaign_id}}}:st:h:{hour}"


def stats_day(campaign_id: str, day: str | int) -> str:
    """daily bucket (day = YYYYMMDD of the configured UTC offset): impressions, clicks, conversions, cost_micros, revenue_micros (hash; TTL: anchored: end of the day + the day retention (default 90 days); set by every record, never extended)."""
    return f"ad:{{c:{campaign_id}}}:st:d:{day}"


def stats_reach_hour(campaign_id: str, hour: str | int) -> str:
    """HyperLogLog of the user ids seen in the hour (unique reach) (hyperloglog; TTL: as stats_hour)."""
    return f"ad:{{c:{campaign_id}}}:st:rh:{hour}"


def stats_reach_day(campaign_id: str, day: str | int) -> str:
    """HyperLogLog of the user ids seen in the day (unique reach) (hyperloglog; TTL: as stats_day)."""
    return f"ad:{{c:{campaign_id}}}:st:rd:{day}"


def stats_dedup(campaign_id: str, hour: str | int) -> str:
    """event ids recorded in the hour, to drop retried deliveries within the de-dup window (set; TTL: anchored: end of the hour + the de-dup window)."""
    return f"ad:{{c:{campaign_id}}}:st:ev:{hour}"


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
    'ac_monitor_counters': FunctionSpec('ac_monitor_counters', 'monitor', True, (), 'none', ('ADCACHE_ARITY',)),
    'ac_session_create': FunctionSpec('ac_session_create', 'session', False, ('session',), 'user_id idle_ttl_ms max_lifetime_ms [attr_name attr_value]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_EXISTS')),
    'ac_session_delete': FunctionSpec('ac_session_delete', 'session', False, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY')),
    'ac_session_get': FunctionSpec('ac_session_get', 'session', True, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY')),
    'ac_session_touch': FunctionSpec('ac_session_touch', 'session', False, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_stats_record': FunctionSpec('ac_stats_record', 'stats', False, ('stats_meta',), 'offset_s hour_retention_s day_retention_s dedup_s [impressions clicks conversions cost_micros revenue_micros user_id event_id]... (7 values per event, at most 1000 events; user_id and event_id may be empty strings)', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_stats_series': FunctionSpec('ac_stats_series', 'stats', False, ('stats_meta',), 'unit (hour|day) n (days <= 90, hours <= 168) offset_s', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_stats_summary': FunctionSpec('ac_stats_summary', 'stats', False, ('stats_meta',), 'unit (hour|day) n (days <= 90, hours <= 168) offset_s', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
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


class DurabilityError(AdCacheError):
    """durable mode: the write was applied on the primary but fewer replicas than asked acknowledged it in time (retry: adcache writes are idempotent where money is concerned)."""

    code = 'ADCACHE_NOTDURABLE'


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
    'ADCACHE_NOTDURABLE': DurabilityError,
}
