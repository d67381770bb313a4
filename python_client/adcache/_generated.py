"""Generated from lua/keyspace.yaml, lua/errors.yaml and the contract headers by `adcache render`.

Do not edit: edit lua/ and re-render.
"""

from __future__ import annotations

from dataclasses import dataclass

LIBRARY_NAME = 'adcache'
LIBRARY_VERSION = '0.1.0'
LIBRARY_SHA256 = '89090b8eb73c17069567bf0aaf31b8a7988e67b66a2e8e1a289a48ae036a42f5'
KEY_PREFIX = 'ad'
MAX_ID_BYTES = 128
ENTITY_TAGS = {'user': 'u', 'campaign': 'c', 'auction': 'a', 'session': 's', 'segment': 'g', 'targeting': 't', 'cache': 'k'}


# ---- key builders: one per key pattern of the keyspace ----


def session(session_id: str) -> str:
    """session record: user id, attributes (a.<name>), created/expires/idle bookkeeping (hash; TTL: idle TTL given at create, slid forward by touch, never past the absolute lifetime)."""
    return f"ad:{{s:{session_id}}}:sess"


def campaign(campaign_id: str) -> str:
    """campaign record: advertiser, status, bid (CPM micros), budgets, dates, day offset, pacing, shards (targeting), fcap and creatives (JSON), version (hash; TTL: owned by ac_campaign_remove; also expires 30 days after the campaign's end (re-armed by every set/patch))."""
    return f"ad:{{c:{campaign_id}}}:camp"


def budget(campaign_id: str) -> str:
    """spend state: spent (lifetime), day + dspent (today), reserved (outstanding total), counters c_reserved/c_committed/c_released/c_reclaimed/c_late (hash; TTL: same expiry as the campaign record (re-armed on every budget write); deleted by ac_campaign_remove)."""
    return f"ad:{{c:{campaign_id}}}:budget"


def budget_resv(campaign_id: str) -> str:
    """outstanding reservations: reservation id -> amount (micros) (hash; TTL: entries leave on commit, release or reclaim after their expiry; key as the campaign record)."""
    return f"ad:{{c:{campaign_id}}}:resv"


def budget_resv_exp(campaign_id: str) -> str:
    """outstanding reservations by expiry: reservation id scored by expires_at_ms (lazy reclaim) (zset; TTL: mirrors budget_resv (members leave with their reservation); key as the campaign record)."""
    return f"ad:{{c:{campaign_id}}}:resvx"


def budget_settled(campaign_id: str) -> str:
    """settled reservations for idempotent retries: reservation id -> state:charged:released (hash; TTL: entries forgotten 1 hour after settling (lazy prune); key as the campaign record)."""
    return f"ad:{{c:{campaign_id}}}:settled"


def budget_settled_exp(campaign_id: str) -> str:
    """settled reservations scored by forget_at_ms (zset; TTL: mirrors budget_settled; key as the campaign record)."""
    return f"ad:{{c:{campaign_id}}}:settledx"


def targeting_index(targeting_id: str) -> str:
    """one targeting shard (<dimension>.<value>): campaign id scored by the campaign's end_ms (zset; TTL: members removed by ac_targeting_remove or pruned once ended; the key expires at its latest member's end)."""
    return f"ad:{{t:{targeting_id}}}:idx"


def targeting_hold(targeting_id: str) -> str:
    """campaigns of the shard not servable before a time (start date, daily budget spent): id scored by not_before_ms (zset; TTL: as targeting_index; members pruned once their hold has passed)."""
    return f"ad:{{t:{targeting_id}}}:hold"


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
    'ac_budget_commit': FunctionSpec('ac_budget_commit', 'budget', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'reservation_id amount_micros', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_NOTFOUND', 'ADCACHE_STATE', 'ADCACHE_WRONGTYPE')),
    'ac_budget_release': FunctionSpec('ac_budget_release', 'budget', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'reservation_id', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_budget_reserve': FunctionSpec('ac_budget_reserve', 'budget', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'reservation_id amount_micros ttl_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_NOTFOUND', 'ADCACHE_EXISTS', 'ADCACHE_STATE', 'ADCACHE_WRONGTYPE')),
    'ac_budget_state': FunctionSpec('ac_budget_state', 'budget', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_campaign_get': FunctionSpec('ac_campaign_get', 'campaign', True, ('campaign', 'budget'), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_WRONGTYPE')),
    'ac_campaign_patch': FunctionSpec('ac_campaign_patch', 'campaign', False, ('campaign', 'budget'), 'expected_version (-1 any, n) field value [field value]... (fields as for ac_campaign_set)', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_NOTFOUND', 'ADCACHE_CONFLICT', 'ADCACHE_WRONGTYPE')),
    'ac_campaign_remove': FunctionSpec('ac_campaign_remove', 'campaign', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'expected_version (-1 any, n)', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_CONFLICT', 'ADCACHE_WRONGTYPE')),
    'ac_campaign_set': FunctionSpec('ac_campaign_set', 'campaign', False, ('campaign', 'budget'), 'expected_version (-1 any, 0 must not exist, n) [field value]... fields: advertiser status bid budget start end shards (required), daily tz pacing tol_bp floor fcap creatives', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_CONFLICT', 'ADCACHE_WRONGTYPE')),
    'ac_session_create': FunctionSpec('ac_session_create', 'session', False, ('session',), 'user_id idle_ttl_ms max_lifetime_ms [attr_name attr_value]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_EXISTS')),
    'ac_session_delete': FunctionSpec('ac_session_delete', 'session', False, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY')),
    'ac_session_get': FunctionSpec('ac_session_get', 'session', True, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY')),
    'ac_session_touch': FunctionSpec('ac_session_touch', 'session', False, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_targeting_put': FunctionSpec('ac_targeting_put', 'targeting', False, ('targeting_index', 'targeting_hold'), 'campaign_id end_ms not_before_ms (0: no hold)', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG')),
    'ac_targeting_query': FunctionSpec('ac_targeting_query', 'targeting', True, ('targeting_index', 'targeting_hold'), '[limit (default and maximum 5000)] [campaign_id]... (at most 5000 candidates)', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT')),
    'ac_targeting_remove': FunctionSpec('ac_targeting_remove', 'targeting', False, ('targeting_index', 'targeting_hold'), 'campaign_id [campaign_id]... (at most 100)', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT')),
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
