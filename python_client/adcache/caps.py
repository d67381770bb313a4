"""Frequency caps (Lua domain `freqcap`): several windows per campaign, advertiser / campaign /
creative levels, a batch check of many candidates in one call, and an all-or-nothing, idempotent
impression record. All counters of one user live under the user's hash tag.

    rules = (CapRule.fixed("campaign", "day", 3), CapRule.recency("campaign", 60))
    cands = [Candidate("camp-1", rules, advertiser_id="adv-1"), ...]
    decisions = cache.caps.check(user_id, cands)          # one FCALL_RO
    cache.caps.record(user_id, impression_id, cands[0])   # one FCALL, counted once per id
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from adcache import _generated as keys
from adcache import zones
from adcache._core import Arg, Call, positive_ms, text
from adcache._facade import Facade, M, forward

Scope = Literal["advertiser", "campaign", "creative"]
WindowKind = Literal["minute", "hour", "day", "week", "month", "rolling", "recency", "lifetime"]
FixedUnit = Literal["minute", "hour", "day", "week", "month"]

SCOPE_WIRE: dict[str, str] = {"advertiser": "a", "campaign": "c", "creative": "k"}
FIXED_UNITS: frozenset[str] = frozenset(get_args(FixedUnit))
WINDOW_KINDS: frozenset[str] = frozenset(get_args(WindowKind))

# Mirrors of the Lua bounds, so a bad rule fails at construction with a clear ValueError.
MAX_CANDIDATES = 500
MAX_RULES = 32
MAX_LIMIT = 1_000_000_000
MAX_ROLLING_LIMIT = 1000
MAX_SECONDS = 366 * 86400
MAX_OFFSET_S = 86399
DEFAULT_DEDUPE_TTL_S = 3600.0


@dataclass(frozen=True, slots=True)
class CapRule:
    """At most `limit` impressions per `window` at one level (`scope`).

    window: "minute" | "hour" | "day" | "week" (from Monday) | "month": calendar windows in a zone
    `offset_s` seconds east of UTC, or in the named time zone `zone` ("America/New_York", or a
    POSIX TZ rule) with its daylight-saving changes (docs/timezones.md); "rolling": the last
    `seconds` seconds, exact; "recency": at least `seconds` seconds between two impressions
    (limit is 1); "lifetime".
    """

    scope: Scope
    window: WindowKind
    limit: int = 1
    seconds: int = 0
    offset_s: int = 0
    zone: str = ""

    def __post_init__(self) -> None:
        if self.scope not in SCOPE_WIRE:
            raise ValueError(f"scope must be advertiser, campaign or creative, not {self.scope!r}")
        if self.window not in WINDOW_KINDS:
            raise ValueError(f"unknown window {self.window!r}")
        top = MAX_ROLLING_LIMIT if self.window in ("rolling", "recency") else MAX_LIMIT
        if not 0 <= self.limit <= top:
            raise ValueError(f"limit must be between 0 and {top}, not {self.limit}")
        if self.window in ("rolling", "recency"):
            if not 1 <= self.seconds <= MAX_SECONDS:
                raise ValueError(f"a {self.window} window needs 1..{MAX_SECONDS} seconds")
            if self.window == "recency" and self.limit != 1:
                raise ValueError("a recency rule allows one impression per period: limit is 1")
        elif self.seconds:
            raise ValueError(f"a {self.window} window takes no seconds")
        if self.offset_s and self.window not in FIXED_UNITS:
            raise ValueError("only calendar windows take an offset")
        if not -MAX_OFFSET_S <= self.offset_s <= MAX_OFFSET_S:
            raise ValueError(f"offset_s must be within ±{MAX_OFFSET_S}")
        if self.zone and (self.window not in FIXED_UNITS or self.offset_s):
            raise ValueError("a zone is for calendar windows, instead of an offset")
        if self.zone and (len(self.zone) > 128 or not self.zone.isprintable() or " " in self.zone):
            raise ValueError(f"not a time zone: {self.zone!r:.60}")

    @classmethod
    def fixed(
        cls, scope: Scope, unit: FixedUnit, limit: int, *, offset_s: int = 0, zone: str = ""
    ) -> CapRule:
        return cls(scope, unit, limit, offset_s=offset_s, zone=zone)

    @classmethod
    def rolling(cls, scope: Scope, seconds: int, limit: int) -> CapRule:
        return cls(scope, "rolling", limit, seconds=seconds)

    @classmethod
    def recency(cls, scope: Scope, seconds: int) -> CapRule:
        return cls(scope, "recency", 1, seconds=seconds)

    @classmethod
    def lifetime(cls, scope: Scope, limit: int) -> CapRule:
        return cls(scope, "lifetime", limit)

    @property
    def window_token(self) -> str:
        """The window as the library spells it (`day@3600`, `day@Europe/Paris`, `rolling:60`)."""
        if self.window in ("rolling", "recency"):
            return f"{self.window}:{self.seconds}"
        if self.zone:
            return f"{self.window}@{zones.wire(self.zone)}"
        if self.offset_s:
            return f"{self.window}@{self.offset_s}"
        return self.window

    def wire(self) -> tuple[str, str, int]:
        return SCOPE_WIRE[self.scope], self.window_token, self.limit


@dataclass(frozen=True, slots=True)
class Candidate:
    """A campaign that may be shown, with every cap that applies to it.

    Advertiser rules count across all campaigns of `advertiser_id`, so pass them with every
    candidate of that advertiser; creative rules need `creative_id`.
    """

    campaign_id: str
    rules: Sequence[CapRule] = ()  # stored as a tuple
    advertiser_id: str = ""
    creative_id: str = ""
    # The ARGV slice, built once: candidates are reused across many checks on the hot path.
    _wire: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        if not isinstance(self.rules, tuple):
            object.__setattr__(self, "rules", tuple(self.rules))
        if len(self.rules) > MAX_RULES:
            raise ValueError(f"at most {MAX_RULES} rules per candidate")
        out = [self.campaign_id, self.advertiser_id, self.creative_id, str(len(self.rules))]
        for r in self.rules:
            scope, window, limit = r.wire()
            out += (scope, window, str(limit))
        object.__setattr__(self, "_wire", tuple(out))

    def wire(self) -> tuple[str, ...]:
        return self._wire


@dataclass(frozen=True, slots=True)
class CapDecision:
    """The check's answer for one candidate."""

    campaign_id: str
    allowed: bool
    remaining: int | None  # impressions left before a rule blocks; None: no rule caps it
    blocked_by: CapRule | None  # the blocking rule that frees up last
    frees_at_ms: int | None  # when it frees up (server epoch ms); None when allowed or never


@dataclass(frozen=True, slots=True)
class Impression:
    """The outcome of recording an impression."""

    impression_id: str
    admitted: bool
    duplicate: bool  # the id was seen: this is the first call's outcome, nothing was counted
    remaining: int | None
    blocked_by: CapRule | None
    frees_at_ms: int | None


@dataclass(frozen=True, slots=True)
class CapCounter:
    """One live counter, as `inspect` shows it."""

    scope: Scope
    entity_id: str
    window: str  # minute..month, rolling:<s>, lifetime
    count: int
    ends_at_ms: int | None  # window end / when the oldest counted impression leaves; None: lifetime


def _frees(v: Any) -> int | None:
    n = int(v)
    return n if n > 0 else None


def _decisions(cands: Sequence[Candidate]) -> Callable[[Any], list[CapDecision]]:
    def parse(reply: Any) -> list[CapDecision]:
        it = iter(reply)
        out = []
        # Replies are integers except the label (skipped): no conversion on the common path.
        for c, ok, rem, idx, _label, frees in zip(cands, it, it, it, it, it, strict=True):
            out.append(
                CapDecision(
                    c.campaign_id,
                    ok == 1,
                    None if rem < 0 else rem,
                    c.rules[idx - 1] if idx > 0 else None,
                    frees if frees > 0 else None,
                )
            )
        return out

    return parse


def _impression(impression_id: str, cand: Candidate) -> Callable[[Any], Impression]:
    def parse(reply: Any) -> Impression:
        ok, rem, idx, _label, frees, dup = reply
        return Impression(
            impression_id=impression_id,
            admitted=int(ok) == 1,
            duplicate=int(dup) == 1,
            remaining=None if int(rem) < 0 else int(rem),
            blocked_by=cand.rules[int(idx) - 1] if int(idx) > 0 else None,
            frees_at_ms=_frees(frees),
        )

    return parse


_SCOPE_NAMES: dict[str, Scope] = {s: s for s in get_args(Scope)}


def _counters(reply: Any) -> list[CapCounter]:
    out = []
    for i in range(0, len(reply or ()), 5):
        scope, ent, window, count, ends = reply[i : i + 5]
        out.append(
            CapCounter(
                scope=_SCOPE_NAMES[text(scope)],
                entity_id=text(ent),
                window=text(window),
                count=int(count),
                ends_at_ms=_frees(ends),
            )
        )
    return out


def _target(scope: Scope | None, entity_id: str | None) -> tuple[Arg, ...]:
    if (scope is None) != (entity_id is None):
        raise ValueError("give both scope and entity_id, or neither")
    if scope is None or entity_id is None:
        return ()
    return (SCOPE_WIRE[scope], entity_id)


def check_call(user_id: str, candidates: Sequence[Candidate]) -> Call[list[CapDecision]]:
    """Which candidates the user's caps allow, in order: one FCALL_RO for up to 500."""
    cands = tuple(candidates)
    args: list[Arg] = [len(cands)]
    for c in cands:
        args += c._wire
    return Call("ac_freqcap_check", (keys.freqcap(user_id),), tuple(args), _decisions(cands))


def record_call(
    user_id: str,
    impression_id: str,
    candidate: Candidate,
    *,
    dedupe_ttl: float = DEFAULT_DEDUPE_TTL_S,
) -> Call[Impression]:
    """Count an impression in every window of the candidate, or refuse it counting nothing.

    A retry with the same impression id (within dedupe_ttl seconds) replays the first outcome.
    """
    ms = positive_ms(dedupe_ttl, "dedupe_ttl")
    return Call(
        "ac_freqcap_record",
        (keys.freqcap(user_id), keys.freqcap_imps(user_id)),
        (impression_id, ms, *candidate.wire()),
        _impression(impression_id, candidate),
    )


def reset_call(user_id: str, scope: Scope | None = None, entity_id: str | None = None) -> Call[int]:
    """Forget the user's counters (all, or one advertiser's/campaign's/creative's)."""
    return Call(
        "ac_freqcap_reset",
        (keys.freqcap(user_id), keys.freqcap_imps(user_id)),
        _target(scope, entity_id),
        int,
    )


def inspect_call(
    user_id: str, scope: Scope | None = None, entity_id: str | None = None
) -> Call[list[CapCounter]]:
    """The user's live counters (FCALL_RO), for support tools."""
    return Call(
        "ac_freqcap_inspect", (keys.freqcap(user_id),), _target(scope, entity_id), _counters
    )


class Caps(Facade[M]):
    """Frequency caps on the sync or asyncio `AdCache` (`cache.caps`)."""

    check = forward(check_call)
    record = forward(record_call)
    reset = forward(reset_call)
    inspect = forward(inspect_call)


AsyncCaps = Caps  # the same class: on an asyncio client its methods return awaitables
