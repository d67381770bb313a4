"""Campaign records (Lua domain `campaign`): one hash per campaign, compare-and-set versions,
derived servability, and the targeting index kept in step with every change.

A write (set, patch, remove) replies with the shards to add the campaign to and to remove it
from; the facade applies them at once with idempotent per-shard calls (`adcache.targeting`), so
re-running the write, or `reindex`, converges the index after a crash between the two steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, Unpack

from adcache import _generated as keys
from adcache import zones
from adcache._core import Call, str_pairs
from adcache._facade import Facade, M, Plan, forward, many, one, plan
from adcache._records import Fields
from adcache.targeting import Targeting, apply_calls

Status = Literal["active", "paused"]
Pacing = Literal["off", "even"]
# Reasons a campaign is not servable (the empty string when it is).
NOT_INDEXED = frozenset({"paused", "ended", "lifetime_budget"})


@dataclass(frozen=True, slots=True)
class FrequencyCapRule:
    """At most `limit` impressions per user per calendar `period` (minute|hour|day|week|month)."""

    limit: int
    period: str


@dataclass(frozen=True, slots=True)
class Creative:
    creative_id: str
    width: int = 0
    height: int = 0
    mime: str = ""
    url: str = ""


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """What a client writes. Money in integer micros; the bid is a CPM price; times in epoch ms.

    day_offset_s: where the campaign's day starts (seconds east of UTC) for the daily budget.
    day_zone: the campaign's time zone by name ("America/New_York", or a POSIX TZ rule) instead
    of day_offset_s: the daily budget and pacing follow its local days, 23 or 25 hours long
    across a daylight-saving change (docs/campaign.md).
    pacing "even": spend follows the day, see docs/campaign.md (tolerance in basis points, floor
    in micros that may be spent at any time of the day).
    """

    advertiser_id: str
    bid_cpm_micros: int
    budget_micros: int
    start_ms: int
    end_ms: int
    targeting: Targeting = field(default_factory=Targeting)
    status: Status = "active"
    daily_budget_micros: int = 0
    day_offset_s: int = 0
    pacing: Pacing = "off"
    pacing_tolerance_bp: int = 1000
    pacing_floor_micros: int = 0
    frequency_caps: tuple[FrequencyCapRule, ...] = ()
    creatives: tuple[Creative, ...] = ()
    day_zone: str = ""


class CampaignChanges(TypedDict, total=False):
    """The fields a patch may change (names and types of CampaignSpec)."""

    advertiser_id: str
    bid_cpm_micros: int
    budget_micros: int
    start_ms: int
    end_ms: int
    targeting: Targeting
    status: Status
    daily_budget_micros: int
    day_offset_s: int
    day_zone: str
    pacing: Pacing
    pacing_tolerance_bp: int
    pacing_floor_micros: int
    frequency_caps: tuple[FrequencyCapRule, ...]
    creatives: tuple[Creative, ...]


@dataclass(frozen=True, slots=True)
class Campaign:
    """A campaign as read: the record, its version, budget figures and derived servability.

    reason: "" when servable, else paused | ended | lifetime_budget | not_started | daily_budget.
    """

    campaign_id: str
    spec: CampaignSpec
    version: int
    created_ms: int
    updated_ms: int
    spent_micros: int
    day: str
    day_spent_micros: int
    reserved_micros: int
    servable: bool
    reason: str
    not_before_ms: int
    now_ms: int

    @property
    def indexed(self) -> bool:
        """Whether the campaign belongs in the targeting index (perhaps held until not_before)."""
        return self.reason not in NOT_INDEXED


@dataclass(frozen=True, slots=True)
class Written:
    """The outcome of a write: the new version, servability, and the shards changed."""

    campaign_id: str
    version: int
    servable: bool
    reason: str
    end_ms: int
    not_before_ms: int
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def index_calls(self) -> list[Call[Any]]:
        return apply_calls(
            self.campaign_id, self.added, self.removed, self.end_ms, self.not_before_ms
        )


# ---- encoding ----

_FIELD = {
    "advertiser_id": "advertiser",
    "status": "status",
    "bid_cpm_micros": "bid",
    "budget_micros": "budget",
    "daily_budget_micros": "daily",
    "start_ms": "start",
    "end_ms": "end",
    "day_offset_s": "tz",
    "day_zone": "tz",
    "pacing": "pacing",
    "pacing_tolerance_bp": "tol_bp",
    "pacing_floor_micros": "floor",
    "targeting": "shards",
    "frequency_caps": "fcap",
    "creatives": "creatives",
}


def _encode(name: str, value: Any) -> str:
    if name == "targeting":
        return " ".join(value.shards())
    if name == "frequency_caps":
        return json.dumps([[r.limit, r.period] for r in value], separators=(",", ":"))
    if name == "creatives":
        return json.dumps(
            [[c.creative_id, c.width, c.height, c.mime, c.url] for c in value],
            separators=(",", ":"),
        )
    if name == "day_zone":
        return zones.wire(value)
    if isinstance(value, bool):
        raise TypeError(f"{name} cannot be a bool")
    return str(value)


def _field_args(changes: dict[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    for name, value in changes.items():
        if name == "day_zone" and not value:
            continue  # no zone: the offset names the day (a patch of day_offset_s sets it)
        out += [_FIELD[name], _encode(name, value)]
    return tuple(out)


def _spec_fields(spec: CampaignSpec) -> dict[str, Any]:
    out = {name: getattr(spec, name) for name in _FIELD}
    if spec.day_zone:
        del out["day_offset_s"]  # both are the record's tz: the zone wins
    return out


def _is_int(v: str) -> bool:
    return v.lstrip("-").isdigit()


def _decode_spec(f: dict[str, str]) -> CampaignSpec:
    tz = f["tz"]  # an offset in seconds, or a zone
    return _SPEC.read(
        f,
        status="paused" if f["status"] == "paused" else "active",
        day_offset_s=int(tz) if _is_int(tz) else 0,
        day_zone="" if _is_int(tz) else tz,
        pacing="even" if f["pacing"] == "even" else "off",
        targeting=Targeting.from_shards(f["shards"].split()),
        frequency_caps=tuple(FrequencyCapRule(int(a), str(b)) for a, b in json.loads(f["fcap"])),
        creatives=tuple(_CREATIVE.row(c) for c in json.loads(f["creatives"])),
    )


_SPEC = Fields(CampaignSpec, **_FIELD)
_CREATIVE = Fields(Creative)  # a creative's JSON array: its fields in order
_CAMPAIGN = Fields(Campaign)
_WRITTEN = Fields(Written, added="add", removed="remove")


def _record(campaign_id: str) -> Callable[[Any], Campaign | None]:
    def parse(reply: Any) -> Campaign | None:
        if not reply:
            return None
        f = str_pairs(reply)
        return _CAMPAIGN.read(f, campaign_id=campaign_id, spec=_decode_spec(f))

    return parse


def _removed(reply: Any) -> tuple[bool, tuple[str, ...]]:
    f = str_pairs(reply)
    return f["removed"] == "1", tuple(f["remove"].split())


def _keys2(campaign_id: str) -> tuple[str, str]:
    return keys.campaign(campaign_id), keys.budget(campaign_id)


def all_keys(campaign_id: str) -> tuple[str, ...]:
    """Every key of a campaign, in the order the budget functions take them."""
    return (
        keys.campaign(campaign_id),
        keys.budget(campaign_id),
        keys.budget_resv(campaign_id),
        keys.budget_resv_exp(campaign_id),
        keys.budget_settled(campaign_id),
        keys.budget_settled_exp(campaign_id),
    )


# ---- call builders ----


def set_call(campaign_id: str, spec: CampaignSpec, *, expected_version: int = -1) -> Call[Written]:
    """Create or replace; expected_version -1 any, 0 must not exist, n must be at version n."""
    return Call(
        "ac_campaign_set",
        _keys2(campaign_id),
        (expected_version, *_field_args(_spec_fields(spec))),
        _WRITTEN.parser(campaign_id=campaign_id),
    )


def patch_call(
    campaign_id: str, changes: CampaignChanges, *, expected_version: int = -1
) -> Call[Written]:
    """Change the named CampaignSpec fields; expected_version -1 any, n must be at version n."""
    unknown = set(changes) - set(_FIELD)
    if unknown:
        raise TypeError(f"unknown campaign fields: {sorted(unknown)}")
    return Call(
        "ac_campaign_patch",
        _keys2(campaign_id),
        (expected_version, *_field_args(dict(changes))),
        _WRITTEN.parser(campaign_id=campaign_id),
    )


def get_call(campaign_id: str) -> Call[Campaign | None]:
    """The campaign with its budget figures and servability, or None (FCALL_RO)."""
    return Call("ac_campaign_get", _keys2(campaign_id), (), _record(campaign_id))


def remove_call(
    campaign_id: str, *, expected_version: int = -1
) -> Call[tuple[bool, tuple[str, ...]]]:
    return Call("ac_campaign_remove", all_keys(campaign_id), (expected_version,), _removed)


def reindex_calls(c: Campaign) -> list[Call[Any]]:
    """Index calls that bring the shards in line with a campaign as read."""
    shards = c.spec.targeting.shards()
    if c.indexed:
        return apply_calls(c.campaign_id, shards, (), c.spec.end_ms, c.not_before_ms)
    return apply_calls(c.campaign_id, (), shards, c.spec.end_ms, 0)


def _indexed(write: Call[Written]) -> Plan[Written]:
    """A write, then the index calls its reply asks for."""
    w = yield from one(write)
    yield from many(w.index_calls())
    return w


class Campaigns(Facade[M]):
    """Campaign calls on the sync or asyncio `AdCache` (`cache.campaigns`)."""

    @plan
    def set(
        self, campaign_id: str, spec: CampaignSpec, *, expected_version: int = -1
    ) -> Plan[Written]:
        """Create or replace a campaign and update its targeting shards."""
        return (yield from _indexed(set_call(campaign_id, spec, expected_version=expected_version)))

    @plan
    def create(self, campaign_id: str, spec: CampaignSpec) -> Plan[Written]:
        """Create; VersionConflictError when the campaign exists."""
        return (yield from _indexed(set_call(campaign_id, spec, expected_version=0)))

    @plan
    def patch(
        self, campaign_id: str, *, expected_version: int = -1, **changes: Unpack[CampaignChanges]
    ) -> Plan[Written]:
        """Change some fields (names of CampaignSpec); NotFoundError when unknown."""
        return (
            yield from _indexed(patch_call(campaign_id, changes, expected_version=expected_version))
        )

    @plan
    def pause(self, campaign_id: str) -> Plan[Written]:
        """Set the status to paused: the campaign leaves its targeting shards."""
        return (yield from _indexed(patch_call(campaign_id, {"status": "paused"})))

    @plan
    def resume(self, campaign_id: str) -> Plan[Written]:
        """Set the status to active: the campaign is put back in its shards (unless ended or spent)."""
        return (yield from _indexed(patch_call(campaign_id, {"status": "active"})))

    get = forward(get_call)

    @plan
    def get_many(self, campaign_ids: Sequence[str]) -> Plan[list[Campaign | None]]:
        """Many campaigns, one pipelined round per node."""
        return (yield from many([get_call(c) for c in campaign_ids]))

    @plan
    def remove(self, campaign_id: str, *, expected_version: int = -1) -> Plan[bool]:
        """Delete a campaign and its budget state, and take it out of its shards."""
        removed, shards = yield from one(
            remove_call(campaign_id, expected_version=expected_version)
        )
        yield from many(apply_calls(campaign_id, (), shards, 0, 0))
        return removed

    @plan
    def reindex(self, campaign_id: str) -> Plan[Campaign | None]:
        """Re-apply a campaign's shards from its record (repairs a half-applied change)."""
        c = yield from one(get_call(campaign_id))
        if c is not None:
            yield from many(reindex_calls(c))
        return c


AsyncCampaigns = Campaigns  # the same class: on an asyncio client its methods return awaitables
