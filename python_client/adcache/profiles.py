"""User profiles: idle TTL, field-level patches, compare-and-set, atomic score increments
(Lua domain `profile`).

The behaviour score is an integer in thousandths (`score_milli`): 75.5 points is 75500. Convert
with `score_from_points` / `Profile.score_points`, which are exact (Decimal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from adcache import _generated as keys
from adcache._core import Call, ints, positive_ms, str_pairs, text
from adcache._facade import Facade, M, Plan, forward, many, plan
from adcache._generated import BadArgumentError

SCORE_SCALE = 1000
# Sentinel of "any version" for expected_version.
ANY = "-"


def score_from_points(points: Decimal | int | str) -> int:
    """Points (e.g. Decimal('75.5')) to thousandths; refuses values finer than 0.001."""
    try:
        d = Decimal(points) * SCORE_SCALE
    except (InvalidOperation, ValueError, TypeError) as e:
        raise BadArgumentError(f"score {points!r} is not a number") from e
    if not d.is_finite():
        raise BadArgumentError(f"score {points!r} is not finite")
    if d != d.to_integral_value():
        raise BadArgumentError(f"score {points} has more than 3 decimals")
    return int(d)


@dataclass(frozen=True, slots=True)
class Profile:
    """A profile record. Times are epoch milliseconds of the server clock."""

    user_id: str
    version: int
    score_milli: int
    last_activity_ms: int | None
    created_ms: int
    updated_ms: int
    idle_ttl_ms: int
    ttl_ms: int
    segment: str | None = None
    interests: tuple[str, ...] = ()
    demographics: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def score_points(self) -> Decimal:
        return Decimal(self.score_milli) / SCORE_SCALE


@dataclass(frozen=True, slots=True)
class ProfileWrite:
    version: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Activity:
    score_milli: int
    last_activity_ms: int
    version: int
    expires_at_ms: int
    created: bool


def _parse(user_id: str) -> Any:
    def parse(reply: Any) -> Profile | None:
        if not reply:
            return None
        f = str_pairs(reply)
        return Profile(
            user_id=user_id,
            version=int(f["v"]),
            score_milli=int(f.get("score", "0")),
            last_activity_ms=int(f["last"]) if "last" in f else None,
            created_ms=int(f["created"]),
            updated_ms=int(f["updated"]),
            idle_ttl_ms=int(f["idle"]),
            ttl_ms=int(f["pttl"]),
            segment=f.get("segment"),
            interests=_split(f.get("interests", "")),
            demographics={k[2:]: v for k, v in f.items() if k.startswith("d.")},
            attributes={k[2:]: v for k, v in f.items() if k.startswith("x.")},
        )

    return parse


def _idle(idle_ttl: float | None) -> int:
    # None keeps the stored idle TTL (30 days for a new profile): 0 on the wire.
    if idle_ttl is None:
        return 0
    return positive_ms(idle_ttl, "idle_ttl")


def _tokens(values: Iterable[str], what: str) -> list[str]:
    out = list(values)
    for v in out:
        # The server stores tokens comma-joined; say so here rather than split one in two.
        if "," in v:
            raise BadArgumentError(f"{what} {v!r} contains a comma")
    return out


def _split(v: Any) -> tuple[str, ...]:
    """A comma-joined token list as the server stores it (interests, categories, keywords)."""
    t = text(v)
    return tuple(t.split(",")) if t else ()


def _fields(
    score_milli: int | None,
    last_activity_ms: int | None,
    segment: str | None,
    interests: Iterable[str] | None,
    demographics: Mapping[str, str | None] | None,
    attributes: Mapping[str, str | None] | None,
) -> list[str | int]:
    """Wire pairs; None in a mapping (or an empty string) deletes that field in a patch."""
    out: list[str | int] = []
    if score_milli is not None:
        out += ["score", int(score_milli)]
    if last_activity_ms is not None:
        out += ["last", int(last_activity_ms)]
    if segment is not None:
        out += ["segment", segment]
    if interests is not None:
        out += ["interests", ",".join(_tokens(interests, "interest"))]
    for prefix, m in (("d.", demographics), ("x.", attributes)):
        for k, v in (m or {}).items():
            out += [prefix + k, "" if v is None else v]
    return out


def _put(
    function: str,
    user_id: str,
    idle_ttl: float | None,
    expected_version: int | None,
    fields: list[str | int],
) -> Call[ProfileWrite]:
    expected = ANY if expected_version is None else int(expected_version)
    args = (_idle(idle_ttl), expected, *fields)
    return Call(function, (keys.profile(user_id),), args, lambda r: ProfileWrite(*ints(r)))


def get_call(user_id: str) -> Call[Profile | None]:
    """The profile, or None when unknown or expired (FCALL_RO)."""
    return Call("ac_profile_get", (keys.profile(user_id),), (), _parse(user_id))


def set_call(
    user_id: str,
    *,
    idle_ttl: float | None = None,
    expected_version: int | None = None,
    score_milli: int | None = None,
    last_activity_ms: int | None = None,
    segment: str | None = None,
    interests: Iterable[str] | None = None,
    demographics: Mapping[str, str] | None = None,
    attributes: Mapping[str, str] | None = None,
) -> Call[ProfileWrite]:
    """Replace the whole profile (fields not given are gone; score 0 unless given).
    VersionConflictError when expected_version (0: must not exist) is not the stored one."""
    f = _fields(score_milli, last_activity_ms, segment, interests, demographics, attributes)
    return _put("ac_profile_set", user_id, idle_ttl, expected_version, f)


def patch_call(
    user_id: str,
    *,
    idle_ttl: float | None = None,
    expected_version: int | None = None,
    score_milli: int | None = None,
    last_activity_ms: int | None = None,
    segment: str | None = None,
    interests: Iterable[str] | None = None,
    demographics: Mapping[str, str | None] | None = None,
    attributes: Mapping[str, str | None] | None = None,
) -> Call[ProfileWrite]:
    """Change only the given fields, in one call (creates the profile when absent).
    segment '' clears it; None in demographics/attributes deletes that key."""
    f = _fields(score_milli, last_activity_ms, segment, interests, demographics, attributes)
    return _put("ac_profile_patch", user_id, idle_ttl, expected_version, f)


def activity_call(
    user_id: str,
    score_delta_milli: int = 0,
    *,
    idle_ttl: float | None = None,
    missing: Literal["create", "fail"] = "create",
) -> Call[Activity]:
    """Add to the score, set last activity to now, refresh the idle TTL: one atomic call."""

    def parse(reply: Any) -> Activity:
        score, last, version, exp, created = ints(reply)
        return Activity(score, last, version, exp, created == 1)

    args = (int(score_delta_milli), _idle(idle_ttl), missing)
    return Call("ac_profile_activity", (keys.profile(user_id),), args, parse)


class Profiles(Facade[M]):
    """Profile calls on the sync or asyncio `AdCache` (`cache.profiles`)."""

    get = forward(get_call)
    set = forward(set_call)
    patch = forward(patch_call)
    activity = forward(activity_call)

    @plan
    def get_many(self, user_ids: list[str]) -> Plan[list[Profile | None]]:
        """Many profiles, one pipelined round per node, in the order of `user_ids`."""
        return (yield from many([get_call(u) for u in user_ids]))


AsyncProfiles = Profiles  # the same class: on an asyncio client its methods return awaitables
