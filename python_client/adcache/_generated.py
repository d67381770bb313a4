"""Generated from lua/keyspace.yaml, lua/errors.yaml and the contract headers by `adcache render`.

Do not edit: edit lua/ and re-render.
"""

from __future__ import annotations

from dataclasses import dataclass

LIBRARY_NAME = 'adcache'
LIBRARY_VERSION = '0.6.0'
LIBRARY_SHA256 = 'dbc28d60293939db94a6a462385299a76ef758c176010285a7ab3cbda47107dd'
# The time zones the library knows by name (lua/zones.txt); adcache.zones sends others
# as their POSIX TZ rule.
LIBRARY_ZONES = frozenset(
    "America/Chicago America/Los_Angeles America/New_York Asia/Kathmandu Australia/Lord_Howe "
    "Europe/London Europe/Paris Pacific/Chatham".split()
)
KEY_PREFIX = 'ad'
MAX_ID_BYTES = 128
ENTITY_TAGS = {'user': 'u', 'campaign': 'c', 'auction': 'a', 'session': 's', 'segment': 'g', 'targeting': 't', 'cache': 'k'}


# ---- key builders: one per key pattern of the keyspace ----


def _id(value: str, name: str) -> str:
    """An entity id as a key can hold it: non-empty, no braces (they would break the hash
    tag), at most MAX_ID_BYTES. The library checks the same; failing here costs no call."""
    if not value or "{" in value or "}" in value or len(value.encode()) > MAX_ID_BYTES:
        raise BadArgumentError(
            f"{name} must be 1 to {MAX_ID_BYTES} bytes without {{ or }}, got {value!r:.60}"
        )
    return value


def session(session_id: str) -> str:
    """session record: user id, attributes (a.<name>), created/expires/idle bookkeeping (hash; TTL: idle TTL given at create, slid forward by touch, never past the absolute lifetime)."""
    return f"ad:{{s:{_id(session_id, 'session_id')}}}:sess"


def session_history(session_id: str) -> str:
    """recent context, newest first, capped by LTRIM: '<ms> <kind> <categories> <keywords> <referrer>' (tab-separated) (list; TTL: same PEXPIREAT as the session record (set by create, track and touch); deleted with it)."""
    return f"ad:{{s:{_id(session_id, 'session_id')}}}:hist"


def user_sessions(user_id: str) -> str:
    """index of a user's sessions: session id -> upper bound of its end (deadline + slack, ms) (zset; TTL: PEXPIREAT the latest member score; members past their score are pruned on add)."""
    return f"ad:{{u:{_id(user_id, 'user_id')}}}:sessions"


def auction(auction_id: str) -> str:
    """auction meta: type, deadline, increment, arrival counter, state, per-imp config (i.<imp>), results (r.<imp>), billing marks (b.<imp>) (hash; TTL: PEXPIREAT created + ttl_ms, set at create (ttl_ms >= tmax + billing window))."""
    return f"ad:{{a:{_id(auction_id, 'auction_id')}}}:auc"


def auction_bids(auction_id: str) -> str:
    """every bid received, accepted or refused: bid id -> msgpack record (seat, imp, price, deal, cid, crid, adomain, urls, arrival seq, status, reason) (hash; TTL: the same PEXPIREAT as the auction meta, set on every write)."""
    return f"ad:{{a:{_id(auction_id, 'auction_id')}}}:bids"


def freqcap(user_id: str) -> str:
    """all frequency-cap counters of one user: <scope>:<entity id>|<window> = count (fixed, lifetime) or impression times (rolling); ~s = when the next sweep is due (hash; TTL: PEXPIREAT the end of the longest window counted in it (fixed: calendar end; rolling: last impression + N s; lifetime: last impression + 400 days); only ever moved later; stale fields removed lazily on record)."""
    return f"ad:{{u:{_id(user_id, 'user_id')}}}:fc"


def freqcap_imps(user_id: str) -> str:
    """recorded impression ids of one user: <impression id> = forget-at ms and the first outcome (idempotent record); ~n = when the next sweep is due (hash; TTL: PEXPIREAT the latest dedupe deadline of the impression ids it holds; expired ids removed lazily on record)."""
    return f"ad:{{u:{_id(user_id, 'user_id')}}}:fcimp"


def campaign(campaign_id: str) -> str:
    """campaign record: advertiser, status, bid (CPM micros), budgets, dates, day offset, pacing, shards (targeting), fcap and creatives (JSON), version (hash; TTL: owned by ac_campaign_remove; also expires 30 days after the campaign's end (re-armed by every set/patch))."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:camp"


def budget(campaign_id: str) -> str:
    """spend state: spent (lifetime), day + dspent (today), reserved (outstanding total), counters c_reserved/c_committed/c_released/c_reclaimed/c_late (hash; TTL: same expiry as the campaign record (re-armed on every budget write); deleted by ac_campaign_remove)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:budget"


def budget_resv(campaign_id: str) -> str:
    """outstanding reservations: reservation id -> amount (micros) (hash; TTL: entries leave on commit, release or reclaim after their expiry; key as the campaign record)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:resv"


def budget_resv_exp(campaign_id: str) -> str:
    """outstanding reservations by expiry: reservation id scored by expires_at_ms (lazy reclaim) (zset; TTL: mirrors budget_resv (members leave with their reservation); key as the campaign record)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:resvx"


def budget_settled(campaign_id: str) -> str:
    """settled reservations for idempotent retries: reservation id -> state:charged:released (hash; TTL: entries forgotten 1 hour after settling (lazy prune); key as the campaign record)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:settled"


def budget_settled_exp(campaign_id: str) -> str:
    """settled reservations scored by forget_at_ms (zset; TTL: mirrors budget_settled; key as the campaign record)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:settledx"


def targeting_index(targeting_id: str) -> str:
    """one targeting shard (<dimension>.<value>): campaign id scored by the campaign's end_ms (zset; TTL: members removed by ac_targeting_remove or pruned once ended; the key expires at its latest member's end)."""
    return f"ad:{{t:{_id(targeting_id, 'targeting_id')}}}:idx"


def targeting_hold(targeting_id: str) -> str:
    """campaigns of the shard not servable before a time (start date, daily budget spent): id scored by not_before_ms (zset; TTL: as targeting_index; members pruned once their hold has passed)."""
    return f"ad:{{t:{_id(targeting_id, 'targeting_id')}}}:hold"


def profile(user_id: str) -> str:
    """user profile: v, score (thousandths), last, created, updated, idle, segment, interests, d.<name>, x.<name> (hash; TTL: idle TTL (field idle, ms) from the last set, patch or activity)."""
    return f"ad:{{u:{_id(user_id, 'user_id')}}}:prof"


def user_segments(user_id: str) -> str:
    """a user's segment memberships: segment id -> expiry (ms) (zset; TTL: PEXPIREAT the latest membership expiry; expired members pruned on every write)."""
    return f"ad:{{u:{_id(user_id, 'user_id')}}}:segs"


def segment_members(segment_id: str) -> str:
    """users of a segment: user id -> time added (ms), for newest-first paging (zset; TTL: PEXPIREAT the latest member expiry (kept equal to segment_expiry's))."""
    return f"ad:{{g:{_id(segment_id, 'segment_id')}}}:members"


def segment_expiry(segment_id: str) -> str:
    """users of a segment: user id -> membership expiry (ms) (zset; TTL: PEXPIREAT the latest member expiry; expired members pruned (both zsets) on every write)."""
    return f"ad:{{g:{_id(segment_id, 'segment_id')}}}:expiry"


def stats_meta(campaign_id: str) -> str:
    """stats bookkeeping of a campaign: first_ms, last_ms, events, duplicates; the anchor key of every stats call (hash; TTL: set at every record to the end of the current day + the day retention: it outlives every daily bucket)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:st"


def stats_hour(campaign_id: str, hour: str | int) -> str:
    """hourly bucket (hour = YYYYMMDDHH of the configured UTC offset): impressions, clicks, conversions, cost_micros, revenue_micros (hash; TTL: anchored: end of the hour + the hour retention (default 48 h); set by every record, never extended)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:st:h:{hour}"


def stats_day(campaign_id: str, day: str | int) -> str:
    """daily bucket (day = YYYYMMDD of the configured UTC offset): impressions, clicks, conversions, cost_micros, revenue_micros (hash; TTL: anchored: end of the day + the day retention (default 90 days); set by every record, never extended)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:st:d:{day}"


def stats_reach_hour(campaign_id: str, hour: str | int) -> str:
    """HyperLogLog of the user ids seen in the hour (unique reach) (hyperloglog; TTL: as stats_hour)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:st:rh:{hour}"


def stats_reach_day(campaign_id: str, day: str | int) -> str:
    """HyperLogLog of the user ids seen in the day (unique reach) (hyperloglog; TTL: as stats_day)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:st:rd:{day}"


def stats_dedup(campaign_id: str, hour: str | int) -> str:
    """event ids recorded in the hour, to drop retried deliveries within the de-dup window (set; TTL: anchored: end of the hour + the de-dup window)."""
    return f"ad:{{c:{_id(campaign_id, 'campaign_id')}}}:st:ev:{hour}"


def cache_value(cache_id: str, key: str | int) -> str:
    """cached value: p (payload), x (logical expiry ms), d (load time ms), n (1 = negative entry); while dirty, w (stream id of its change) and e (expiry once flushed) (hash; TTL: logical TTL (with jitter) plus the stale grace, set by every fill or write; none while dirty (a write-back not flushed yet), given back by ac_cache_wb_ack)."""
    return f"ad:{{k:{_id(cache_id, 'cache_id')}}}:v:{key}"


def cache_lock(cache_id: str, key: str | int) -> str:
    """loader lock of one key: the owner's random token (one loader per key at a time) (string; TTL: the loader lock TTL; deleted by the fill of its owner and by every write or invalidation)."""
    return f"ad:{{k:{_id(cache_id, 'cache_id')}}}:l:{key}"


def cache_writer(cache_id: str, key: str | int) -> str:
    """write-through: the token of the writer that began writing the key last (overlapping writes drop the key) (string; TTL: the lock TTL; deleted by the cache write of its owner)."""
    return f"ad:{{k:{_id(cache_id, 'cache_id')}}}:w:{key}"


def cache_tag(cache_id: str, name: str | int) -> str:
    """keys of this shard carrying the tag <name> (tag invalidation fans out over the shards) (set; TTL: extended to the longest TTL of its members at each fill; deleted by tag invalidation)."""
    return f"ad:{{k:{_id(cache_id, 'cache_id')}}}:t:{name}"


def cache_stream(cache_id: str) -> str:
    """write-back change records of this shard (fields k, op, p), read by the flusher group (stream; TTL: owner: the write-back flusher deletes each entry once its change is committed)."""
    return f"ad:{{k:{_id(cache_id, 'cache_id')}}}:wb"


# name, tag letter, suffix (<param> placeholders), Redis type, TTL policy
KEYSPACE: tuple[tuple[str, str, str, str, str], ...] = (
    ('session', 's', 'sess', 'hash', 'idle TTL given at create, slid forward by touch, never past the absolute lifetime'),
    ('session_history', 's', 'hist', 'list', 'same PEXPIREAT as the session record (set by create, track and touch); deleted with it'),
    ('user_sessions', 'u', 'sessions', 'zset', 'PEXPIREAT the latest member score; members past their score are pruned on add'),
    ('auction', 'a', 'auc', 'hash', 'PEXPIREAT created + ttl_ms, set at create (ttl_ms >= tmax + billing window)'),
    ('auction_bids', 'a', 'bids', 'hash', 'the same PEXPIREAT as the auction meta, set on every write'),
    ('freqcap', 'u', 'fc', 'hash', 'PEXPIREAT the end of the longest window counted in it (fixed: calendar end; rolling: last impression + N s; lifetime: last impression + 400 days); only ever moved later; stale fields removed lazily on record'),
    ('freqcap_imps', 'u', 'fcimp', 'hash', 'PEXPIREAT the latest dedupe deadline of the impression ids it holds; expired ids removed lazily on record'),
    ('campaign', 'c', 'camp', 'hash', "owned by ac_campaign_remove; also expires 30 days after the campaign's end (re-armed by every set/patch)"),
    ('budget', 'c', 'budget', 'hash', 'same expiry as the campaign record (re-armed on every budget write); deleted by ac_campaign_remove'),
    ('budget_resv', 'c', 'resv', 'hash', 'entries leave on commit, release or reclaim after their expiry; key as the campaign record'),
    ('budget_resv_exp', 'c', 'resvx', 'zset', 'mirrors budget_resv (members leave with their reservation); key as the campaign record'),
    ('budget_settled', 'c', 'settled', 'hash', 'entries forgotten 1 hour after settling (lazy prune); key as the campaign record'),
    ('budget_settled_exp', 'c', 'settledx', 'zset', 'mirrors budget_settled; key as the campaign record'),
    ('targeting_index', 't', 'idx', 'zset', "members removed by ac_targeting_remove or pruned once ended; the key expires at its latest member's end"),
    ('targeting_hold', 't', 'hold', 'zset', 'as targeting_index; members pruned once their hold has passed'),
    ('profile', 'u', 'prof', 'hash', 'idle TTL (field idle, ms) from the last set, patch or activity'),
    ('user_segments', 'u', 'segs', 'zset', 'PEXPIREAT the latest membership expiry; expired members pruned on every write'),
    ('segment_members', 'g', 'members', 'zset', "PEXPIREAT the latest member expiry (kept equal to segment_expiry's)"),
    ('segment_expiry', 'g', 'expiry', 'zset', 'PEXPIREAT the latest member expiry; expired members pruned (both zsets) on every write'),
    ('stats_meta', 'c', 'st', 'hash', 'set at every record to the end of the current day + the day retention: it outlives every daily bucket'),
    ('stats_hour', 'c', 'st:h:<hour>', 'hash', 'anchored: end of the hour + the hour retention (default 48 h); set by every record, never extended'),
    ('stats_day', 'c', 'st:d:<day>', 'hash', 'anchored: end of the day + the day retention (default 90 days); set by every record, never extended'),
    ('stats_reach_hour', 'c', 'st:rh:<hour>', 'hyperloglog', 'as stats_hour'),
    ('stats_reach_day', 'c', 'st:rd:<day>', 'hyperloglog', 'as stats_day'),
    ('stats_dedup', 'c', 'st:ev:<hour>', 'set', 'anchored: end of the hour + the de-dup window'),
    ('cache_value', 'k', 'v:<key>', 'hash', 'logical TTL (with jitter) plus the stale grace, set by every fill or write; none while dirty (a write-back not flushed yet), given back by ac_cache_wb_ack'),
    ('cache_lock', 'k', 'l:<key>', 'string', 'the loader lock TTL; deleted by the fill of its owner and by every write or invalidation'),
    ('cache_writer', 'k', 'w:<key>', 'string', 'the lock TTL; deleted by the cache write of its owner'),
    ('cache_tag', 'k', 't:<name>', 'set', 'extended to the longest TTL of its members at each fill; deleted by tag invalidation'),
    ('cache_stream', 'k', 'wb', 'stream', 'owner: the write-back flusher deletes each entry once its change is committed'),
)


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
    idempotent: str = ""  # safe to repeat: "always", when this argument is given, or ""


FUNCTIONS: dict[str, FunctionSpec] = {
    'ac_auction_bid': FunctionSpec('ac_auction_bid', 'auction', False, ('auction', 'auction_bids'), '[seat bid_id imp_id price_micros deal_id cid crid adomain nurl lurl burl]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_auction_bid_close': FunctionSpec('ac_auction_bid_close', 'auction', False, ('auction', 'auction_bids'), '[seat bid_id imp_id price_micros deal_id cid crid adomain nurl lurl burl]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE'), 'always'),
    'ac_auction_bill': FunctionSpec('ac_auction_bill', 'auction', False, ('auction', 'auction_bids'), 'seat bid_id', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_auction_close': FunctionSpec('ac_auction_close', 'auction', False, ('auction', 'auction_bids'), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_auction_create': FunctionSpec('ac_auction_create', 'auction', False, ('auction',), 'at tmax_ms exp_ms ttl_ms increment_micros n_wseat [wseat]... n_bseat [bseat]... n_imps [imp_id floor_micros private n_deals [deal_id deal_floor_micros deal_at n_deal_wseat [deal_wseat]...]...]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_EXISTS', 'ADCACHE_WRONGTYPE')),
    'ac_auction_open': FunctionSpec('ac_auction_open', 'auction', False, ('auction', 'auction_bids'), 'at tmax_ms exp_ms ttl_ms increment_micros n_wseat [wseat]... n_bseat [bseat]... n_imps [imp_id floor_micros private n_deals [deal_id deal_floor_micros deal_at n_deal_wseat [deal_wseat]...]...]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_auction_result': FunctionSpec('ac_auction_result', 'auction', True, ('auction', 'auction_bids'), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_WRONGTYPE')),
    'ac_budget_commit': FunctionSpec('ac_budget_commit', 'budget', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'reservation_id amount_micros', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_NOTFOUND', 'ADCACHE_STATE', 'ADCACHE_WRONGTYPE'), 'always'),
    'ac_budget_release': FunctionSpec('ac_budget_release', 'budget', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'reservation_id', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE'), 'always'),
    'ac_budget_reserve': FunctionSpec('ac_budget_reserve', 'budget', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'reservation_id amount_micros ttl_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_NOTFOUND', 'ADCACHE_EXISTS', 'ADCACHE_STATE', 'ADCACHE_WRONGTYPE'), 'always'),
    'ac_budget_state': FunctionSpec('ac_budget_state', 'budget', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE'), 'always'),
    'ac_cache_fill': FunctionSpec('ac_cache_fill', 'cache', False, ('cache_value', 'cache_lock', 'cache_tag...'), 'token kind payload ttl_ms grace_ms load_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_cache_get': FunctionSpec('ac_cache_get', 'cache', False, ('cache_value', 'cache_lock'), 'token lock_ttl_ms refresh', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_cache_get_many': FunctionSpec('ac_cache_get_many', 'cache', False, ('cache_value...', 'cache_lock...'), 'token lock_ttl_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_cache_invalidate': FunctionSpec('ac_cache_invalidate', 'cache', False, ('cache_value', 'cache_lock'), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_WRONGTYPE')),
    'ac_cache_invalidate_tag': FunctionSpec('ac_cache_invalidate_tag', 'cache', False, ('cache_tag',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_WRONGTYPE')),
    'ac_cache_release': FunctionSpec('ac_cache_release', 'cache', False, ('cache_value', 'cache_lock'), 'token', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_cache_set': FunctionSpec('ac_cache_set', 'cache', False, ('cache_value', 'cache_lock', 'cache_writer', 'cache_tag...'), 'token kind payload ttl_ms grace_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_cache_wb_ack': FunctionSpec('ac_cache_wb_ack', 'cache', False, ('cache_stream', 'cache_value...'), 'group id...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE', 'ADCACHE_NOTFOUND')),
    'ac_cache_wb_write': FunctionSpec('ac_cache_wb_write', 'cache', False, ('cache_value', 'cache_lock', 'cache_stream', 'cache_tag...'), 'op payload ttl_ms grace_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_cache_write_begin': FunctionSpec('ac_cache_write_begin', 'cache', False, ('cache_value', 'cache_lock', 'cache_writer'), 'token ttl_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_campaign_get': FunctionSpec('ac_campaign_get', 'campaign', True, ('campaign', 'budget'), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_WRONGTYPE')),
    'ac_campaign_patch': FunctionSpec('ac_campaign_patch', 'campaign', False, ('campaign', 'budget'), 'expected_version field value [field value]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_NOTFOUND', 'ADCACHE_CONFLICT', 'ADCACHE_WRONGTYPE')),
    'ac_campaign_remove': FunctionSpec('ac_campaign_remove', 'campaign', False, ('campaign', 'budget', 'budget_resv', 'budget_resv_exp', 'budget_settled', 'budget_settled_exp'), 'expected_version', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_CONFLICT', 'ADCACHE_WRONGTYPE')),
    'ac_campaign_set': FunctionSpec('ac_campaign_set', 'campaign', False, ('campaign', 'budget'), 'expected_version [field value]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_CONFLICT', 'ADCACHE_WRONGTYPE')),
    'ac_freqcap_check': FunctionSpec('ac_freqcap_check', 'freqcap', True, ('freqcap',), 'n_candidates [campaign_id advertiser_id creative_id n_rules [scope window limit]...]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_freqcap_inspect': FunctionSpec('ac_freqcap_inspect', 'freqcap', True, ('freqcap',), '[scope entity_id]', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_freqcap_record': FunctionSpec('ac_freqcap_record', 'freqcap', False, ('freqcap', 'freqcap_imps'), 'impression_id dedupe_ttl_ms campaign_id advertiser_id creative_id n_rules [scope window limit]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE'), 'always'),
    'ac_freqcap_reset': FunctionSpec('ac_freqcap_reset', 'freqcap', False, ('freqcap', 'freqcap_imps'), '[scope entity_id]', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_monitor_counters': FunctionSpec('ac_monitor_counters', 'monitor', True, (), 'none', ('ADCACHE_ARITY',)),
    'ac_profile_activity': FunctionSpec('ac_profile_activity', 'profile', False, ('profile',), 'score_delta idle_ttl_ms missing', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_profile_get': FunctionSpec('ac_profile_get', 'profile', True, ('profile',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_WRONGTYPE')),
    'ac_profile_patch': FunctionSpec('ac_profile_patch', 'profile', False, ('profile',), 'idle_ttl_ms expected_version [field value]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_CONFLICT', 'ADCACHE_WRONGTYPE')),
    'ac_profile_set': FunctionSpec('ac_profile_set', 'profile', False, ('profile',), 'idle_ttl_ms expected_version [field value]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_CONFLICT', 'ADCACHE_WRONGTYPE')),
    'ac_segment_add': FunctionSpec('ac_segment_add', 'segment', False, ('segment_members', 'segment_expiry'), 'user_id ttl_ms max_members', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_segment_join': FunctionSpec('ac_segment_join', 'segment', False, ('user_segments',), 'segment_id expires_at_ms max_segments', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_segment_leave': FunctionSpec('ac_segment_leave', 'segment', False, ('user_segments',), 'segment_id', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_segment_members': FunctionSpec('ac_segment_members', 'segment', True, ('segment_members', 'segment_expiry'), 'cursor count', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_segment_of': FunctionSpec('ac_segment_of', 'segment', True, ('user_segments',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_WRONGTYPE')),
    'ac_segment_remove': FunctionSpec('ac_segment_remove', 'segment', False, ('segment_members', 'segment_expiry'), 'user_id', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_session_context': FunctionSpec('ac_session_context', 'session', True, ('session', 'session_history'), 'half_life_ms top', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_session_create': FunctionSpec('ac_session_create', 'session', False, ('session', 'session_history...'), 'user_id idle_ttl_ms max_lifetime_ms [attr_name attr_value]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_EXISTS', 'ADCACHE_WRONGTYPE')),
    'ac_session_delete': FunctionSpec('ac_session_delete', 'session', False, ('session', 'session_history...'), '[user_id]', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_session_get': FunctionSpec('ac_session_get', 'session', True, ('session',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_WRONGTYPE')),
    'ac_session_history': FunctionSpec('ac_session_history', 'session', True, ('session', 'session_history'), 'count', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_session_impression': FunctionSpec('ac_session_impression', 'session', False, ('session',), 'session_cap campaign_id campaign_cap [impression_id]', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE'), 'impression_id'),
    'ac_session_index_add': FunctionSpec('ac_session_index_add', 'session', False, ('user_sessions',), 'session_id max_lifetime_ms max_sessions', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_session_index_list': FunctionSpec('ac_session_index_list', 'session', True, ('user_sessions',), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_WRONGTYPE')),
    'ac_session_index_remove': FunctionSpec('ac_session_index_remove', 'session', False, ('user_sessions',), 'session_id...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_session_touch': FunctionSpec('ac_session_touch', 'session', False, ('session', 'session_history...'), 'none', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_session_track': FunctionSpec('ac_session_track', 'session', False, ('session', 'session_history'), 'kind max_history referrer n_categories [category]... [keyword]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_NOTFOUND', 'ADCACHE_WRONGTYPE')),
    'ac_stats_record': FunctionSpec('ac_stats_record', 'stats', False, ('stats_meta',), 'offset_s hour_retention_s day_retention_s dedup_s [impressions clicks conversions cost_micros revenue_micros user_id event_id]...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE'), 'event_id'),
    'ac_stats_series': FunctionSpec('ac_stats_series', 'stats', False, ('stats_meta',), 'unit n offset_s', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_stats_summary': FunctionSpec('ac_stats_summary', 'stats', False, ('stats_meta',), 'unit n offset_s [reach]', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_targeting_put': FunctionSpec('ac_targeting_put', 'targeting', False, ('targeting_index', 'targeting_hold'), 'campaign_id end_ms not_before_ms', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_WRONGTYPE')),
    'ac_targeting_query': FunctionSpec('ac_targeting_query', 'targeting', True, ('targeting_index', 'targeting_hold'), '[limit [campaign_id]...]', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
    'ac_targeting_remove': FunctionSpec('ac_targeting_remove', 'targeting', False, ('targeting_index', 'targeting_hold'), 'campaign_id...', ('ADCACHE_ARITY', 'ADCACHE_BADKEY', 'ADCACHE_CROSSSLOT', 'ADCACHE_BADARG', 'ADCACHE_LIMIT', 'ADCACHE_WRONGTYPE')),
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
