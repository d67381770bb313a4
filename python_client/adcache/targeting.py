"""The targeting index (Lua domain `targeting`): one shard per `<dimension>.<value>`.

A campaign is listed in one shard per targeted value (`interest.sports`, `geo.US`,
`device.mobile`), or in `<dimension>.all` when it targets everyone on that dimension. Each shard
has its own hash tag `{t:<dimension>.<value>}`, so the index spreads over a cluster.

Matching rule for a user (interests I, location L, device D): per dimension, the union of the
shards of the user's values and the dimension's `all` shard; a campaign matches when it is in that
union for every dimension (intersection over dimensions). A user without a value on a dimension
matches only the campaigns targeting `all` on it. Shard members are scored by the campaign's end
time and may be held back until a time (start date, daily budget spent), so a query never returns
an ended or held campaign; paused, removed and exhausted campaigns are removed by the client when
their record changes (see docs/campaign.md).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from adcache import _generated as keys
from adcache._core import Call, text
from adcache._facade import Facade, M, Plan, forward, many, plan

if TYPE_CHECKING:
    from adcache.campaigns import Campaign

log = logging.getLogger("adcache")

DIMENSIONS = ("interest", "geo", "device")
ALL = "all"
_VALUE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The Lua side caps one query reply; the same cap applies here.
MAX_QUERY = 5000


def shard(dimension: str, value: str) -> str:
    """The shard name `<dimension>.<value>` (ValueError on an unknown dimension or bad value)."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown targeting dimension {dimension!r}")
    if not _VALUE.fullmatch(value):
        raise ValueError(f"targeting value {value!r} must be 1-64 of [A-Za-z0-9_-]")
    return f"{dimension}.{value}"


def _values(values: Iterable[str]) -> tuple[str, ...]:
    vs = tuple(sorted(set(values)))
    # "all" absorbs every other value of its dimension.
    return () if ALL in vs else vs


@dataclass(frozen=True, slots=True)
class Targeting:
    """What a campaign targets. An empty tuple (or one holding "all") means everyone."""

    interests: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        interests: Iterable[str] = (),
        locations: Iterable[str] = (),
        devices: Iterable[str] = (),
    ) -> Targeting:
        return cls(_values(interests), _values(locations), _values(devices))

    def shards(self) -> list[str]:
        """The shards the campaign is listed in (sorted)."""
        out: list[str] = []
        for dim, vals in zip(
            DIMENSIONS, (self.interests, self.locations, self.devices), strict=True
        ):
            out += [shard(dim, v) for v in _values(vals)] or [shard(dim, ALL)]
        return sorted(out)

    @classmethod
    def from_shards(cls, names: Iterable[str]) -> Targeting:
        by_dim: dict[str, list[str]] = {d: [] for d in DIMENSIONS}
        for name in names:
            dim, _, value = name.partition(".")
            by_dim[dim].append(value)
        return cls.of(by_dim["interest"], by_dim["geo"], by_dim["device"])


def user_shards(
    interests: Iterable[str] = (), location: str | None = None, device: str | None = None
) -> dict[str, list[str]]:
    """Per dimension, the shards whose union is what a user matches on that dimension."""
    wanted = {
        "interest": list(interests),
        "geo": [location] if location else [],
        "device": [device] if device else [],
    }
    return {
        dim: sorted({shard(dim, v) for v in vals if v != ALL} | {shard(dim, ALL)})
        for dim, vals in wanted.items()
    }


def shard_names(per_dim: dict[str, list[str]], dims: Iterable[str] = DIMENSIONS) -> list[str]:
    """The distinct shards of `user_shards` on the given dimensions, sorted."""
    return sorted({s for d in dims if d in per_dim for s in per_dim[d]})


def combine(per_dim: dict[str, list[str]], members: dict[str, list[str]]) -> list[str]:
    """Union within a dimension, intersection across dimensions; sorted ids."""
    result: set[str] | None = None
    for shards in per_dim.values():
        ids: set[str] = set()
        for s in shards:
            ids.update(members[s])
        result = ids if result is None else result & ids
        if not result:
            return []
    return sorted(result or ())


def _ids(reply: Any) -> list[str]:
    if not reply:
        return []
    if isinstance(reply[0], bytes):
        return [x.decode() for x in reply]
    return [text(x) for x in reply]


def _shard_keys(name: str) -> tuple[str, str]:
    return keys.targeting_index(name), keys.targeting_hold(name)


def put_call(shard_name: str, campaign_id: str, end_ms: int, not_before_ms: int = 0) -> Call[bool]:
    """List a campaign in one shard until end_ms, held back before not_before_ms (idempotent)."""
    return Call(
        "ac_targeting_put",
        _shard_keys(shard_name),
        (campaign_id, end_ms, not_before_ms),
        lambda r: int(r) == 1,
    )


def remove_call(shard_name: str, campaign_ids: Sequence[str]) -> Call[int]:
    """Remove campaigns from one shard (idempotent); at most 100 ids per call."""
    return Call("ac_targeting_remove", _shard_keys(shard_name), tuple(campaign_ids), int)


def query_call(shard_name: str, limit: int = MAX_QUERY) -> Call[list[str]]:
    """The campaign ids of one shard that are servable now (not ended, not held)."""
    return Call("ac_targeting_query", _shard_keys(shard_name), (limit,), _ids)


def filter_call(shard_name: str, candidates: Sequence[str]) -> Call[list[str]]:
    """Which of `candidates` (at most 5000) the shard lists as servable now."""
    return Call("ac_targeting_query", _shard_keys(shard_name), (MAX_QUERY, *candidates), _ids)


def apply_calls(
    campaign_id: str,
    add: Iterable[str],
    remove: Iterable[str],
    end_ms: int,
    not_before_ms: int,
) -> list[Call[Any]]:
    """The shard calls that bring the index in line with a campaign's state (all idempotent)."""
    calls: list[Call[Any]] = [remove_call(s, [campaign_id]) for s in remove]
    calls += [put_call(s, campaign_id, end_ms, not_before_ms) for s in add]
    return calls


def _query_calls(
    per_dim: dict[str, list[str]], dims: Iterable[str], limit: int
) -> tuple[list[str], list[Call[list[str]]]]:
    names = shard_names(per_dim, dims)
    return names, [query_call(s, limit) for s in names]


def _second_round(
    per_dim: dict[str, list[str]], first: dict[str, list[str]], limit: int
) -> tuple[list[str], list[Call[list[str]]]]:
    """Round two of a two-round query: the other dimensions' shards, asked only about the
    candidates the first dimension produced (whole shards when there are too many)."""
    candidates = sorted({c for ids in first.values() for c in ids})
    rest = [d for d in per_dim if d != DIMENSIONS[0]]
    if not candidates:
        return [], []
    if len(candidates) > MAX_QUERY:
        return _query_calls(per_dim, rest, limit)
    names = shard_names(per_dim, rest)
    return names, [filter_call(s, candidates) for s in names]


def _members(names: list[str], replies: list[Any], limit: int) -> dict[str, list[str]]:
    members = dict(zip(names, replies, strict=True))
    for name, ids in members.items():
        if len(ids) >= limit:
            # A full reply may have been cut: campaigns ending latest could be missing.
            log.warning("adcache: targeting shard %s hit the query limit %d", name, limit)
    return members


def _matches(shards: Iterable[str], per_dim: dict[str, list[str]]) -> bool:
    mine = set(shards)
    return all(mine.intersection(wanted) for wanted in per_dim.values())


def verify_candidates(
    per_dim: dict[str, list[str]],
    members: dict[str, list[str]],
    ids: list[str],
    records: Sequence[Campaign | None],
) -> tuple[list[str], list[Call[Any]]]:
    """Check query results against the campaign records: keep the servable, matching ones, and
    build the shard calls that repair what a half-applied change left behind."""
    from adcache.campaigns import reindex_calls  # campaigns imports this module

    keep: list[str] = []
    fixes: list[Call[Any]] = []
    for cid, rec in zip(ids, records, strict=True):
        if rec is not None and rec.servable and _matches(rec.spec.targeting.shards(), per_dim):
            keep.append(cid)
            continue
        listed = {s for s, m in members.items() if cid in m}
        if rec is not None and rec.indexed:
            fixes += reindex_calls(rec)  # e.g. the hold of a spent daily budget
            listed -= set(rec.spec.targeting.shards())
        fixes += [remove_call(s, [cid]) for s in sorted(listed)]
    return keep, fixes


class TargetingIndex(Facade[M]):
    """Targeting index calls on the sync or asyncio `AdCache` (`cache.targeting`)."""

    members = forward(query_call)
    put = forward(put_call)
    remove = forward(remove_call)

    @plan
    def query(
        self,
        *,
        interests: Iterable[str] = (),
        location: str | None = None,
        device: str | None = None,
        limit: int = MAX_QUERY,
        verify: bool = False,
        rounds: Literal[1, 2] = 1,
    ) -> Plan[list[str]]:
        """Ids of the servable campaigns matching a user: one call per shard, pipelined per node.

        rounds=2: first the interest shards, then the other shards asked only about those
        candidates: one more round trip, far fewer ids moved when `.all` shards are large.
        verify: also read the candidates' records (a second pipelined round) and return only the
        servable ones, repairing the index where a change was left half-applied.
        """
        from adcache.campaigns import get_call

        per_dim = user_shards(interests, location, device)
        names, calls = _query_calls(per_dim, DIMENSIONS if rounds == 1 else DIMENSIONS[:1], limit)
        members = _members(names, (yield from many(calls)), limit)
        if rounds == 2:
            names, calls = _second_round(per_dim, members, limit)
            if not calls:
                return []
            members.update(_members(names, (yield from many(calls)), limit))
        ids = combine(per_dim, members)
        if not verify or not ids:
            return ids
        records = yield from many([get_call(c) for c in ids])
        keep, fixes = verify_candidates(per_dim, members, ids, records)
        if fixes:
            log.info("adcache: repairing the targeting index (%d shard calls)", len(fixes))
            (yield from many(fixes))
        return keep


AsyncTargetingIndex = TargetingIndex  # the same class serves the asyncio client
