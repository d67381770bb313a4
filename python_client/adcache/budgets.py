"""Budgets and spend (Lua domain `budget`): reservations that never let a campaign overspend,
idempotent commits, release on loss, lazy reclaim of expired reservations, daily roll and pacing.

All amounts are integer micros. The flow of one auction: `reserve` the bid's maximum cost when
bidding; on a win `commit` the clearing price (the rest is released); on a loss `release`. The
reservation id is the auction id: a retried commit answers the first result and never charges
twice. When a commit leaves the campaign's budget exhausted the facade takes it out of (lifetime)
or holds it back in (daily) its targeting shards at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adcache._core import Call, positive_ms, str_pairs
from adcache._facade import Facade, M, Plan, forward, many, one, plan
from adcache._records import Fields
from adcache.campaigns import all_keys
from adcache.targeting import apply_calls


@dataclass(frozen=True, slots=True)
class Reservation:
    """ok False: refused, `reason` says why (paused, ended, not_started, lifetime_budget,
    daily_budget, pacing, expired). replay: a retry of a reservation that already stood."""

    campaign_id: str
    reservation_id: str
    ok: bool
    reason: str
    amount_micros: int
    expires_at_ms: int
    spent_micros: int
    day_spent_micros: int
    reserved_micros: int
    pacing_allowed_micros: int | None
    replay: bool


@dataclass(frozen=True, slots=True)
class Commit:
    """status: committed | late (the reservation had expired; charged because the budget allowed
    it) | refused (late, and the budget did not allow it: nothing charged).
    exhausted: "" or lifetime_budget | daily_budget (the campaign stopped being servable)."""

    campaign_id: str
    reservation_id: str
    status: str
    charged_micros: int
    released_micros: int
    spent_micros: int
    day_spent_micros: int
    reserved_micros: int
    exhausted: str
    replay: bool


@dataclass(frozen=True, slots=True)
class Release:
    """status: released, or what had happened to the reservation already (committed, late,
    refused, expired), or unknown."""

    campaign_id: str
    reservation_id: str
    status: str
    amount_micros: int
    reserved_micros: int
    replay: bool


@dataclass(frozen=True, slots=True)
class BudgetState:
    """Budget figures, the reservation counters and pacing.

    Invariants: reserved_total == committed + released + reclaimed + reserved (outstanding);
    spent == committed + late. pacing_allowed: what today's spend + reservations may reach now
    (None when pacing is off); elapsed_ppm: the part of the day gone, in millionths."""

    campaign_id: str
    budget_micros: int
    daily_budget_micros: int
    spent_micros: int
    day: str
    day_spent_micros: int
    reserved_micros: int
    outstanding: int
    reserved_total_micros: int
    committed_micros: int
    released_micros: int
    reclaimed_micros: int
    late_micros: int
    refusals: int
    pacing: str
    pacing_allowed_micros: int | None
    elapsed_ppm: int
    day_start_ms: int
    day_end_ms: int
    servable: bool
    reason: str
    now_ms: int


_RESERVATION = Fields(Reservation)
_COMMIT = Fields(Commit)
_RELEASE = Fields(Release)
_STATE = Fields(
    BudgetState,
    daily_budget_micros="daily",
    reserved_total_micros="c_reserved",
    committed_micros="c_committed",
    released_micros="c_released",
    reclaimed_micros="c_reclaimed",
    late_micros="c_late",
    refusals="n_refused",
)


@dataclass(frozen=True, slots=True)
class _CommitReply:
    commit: Commit
    index: list[Call[Any]]


# ---- call builders ----


def reserve_call(
    campaign_id: str, reservation_id: str, amount_micros: int, ttl: float
) -> Call[Reservation]:
    """Hold amount_micros for ttl seconds (fractions allowed; stored as ms, at most one day); a
    refusal is a reply (ok False, reason)."""

    def parse(reply: Any) -> Reservation:
        f = str_pairs(reply)
        ok = f["status"] == "reserved"
        return _RESERVATION.read(f, campaign_id=campaign_id, reservation_id=reservation_id, ok=ok)

    args = (reservation_id, amount_micros, positive_ms(ttl, "ttl"))
    return Call("ac_budget_reserve", all_keys(campaign_id), args, parse)


def commit_call(campaign_id: str, reservation_id: str, amount_micros: int) -> Call[_CommitReply]:
    def parse(reply: Any) -> _CommitReply:
        f = str_pairs(reply)
        c = _COMMIT.read(f, campaign_id=campaign_id, reservation_id=reservation_id)
        index: list[Call[Any]] = []
        if c.exhausted:
            # Lifetime: out of every shard. Daily: held back until the campaign's next day.
            shards = f["shards"].split()
            if f["indexable"] == "1":
                index = apply_calls(campaign_id, shards, (), int(f["end"]), int(f["not_before"]))
            else:
                index = apply_calls(campaign_id, (), shards, 0, 0)
        return _CommitReply(c, index)

    return Call("ac_budget_commit", all_keys(campaign_id), (reservation_id, amount_micros), parse)


def release_call(campaign_id: str, reservation_id: str) -> Call[Release]:
    """Give a reservation back (the bid lost); idempotent."""
    parse = _RELEASE.parser(campaign_id=campaign_id, reservation_id=reservation_id)
    return Call("ac_budget_release", all_keys(campaign_id), (reservation_id,), parse)


def state_call(campaign_id: str) -> Call[BudgetState]:
    """Budget, spend, counters and pacing (reclaims expired reservations first)."""
    return Call(
        "ac_budget_state", all_keys(campaign_id), (), _STATE.parser(campaign_id=campaign_id)
    )


class Budgets(Facade[M]):
    """Budget calls on the sync or asyncio `AdCache` (`cache.budgets`)."""

    reserve = forward(reserve_call)
    release = forward(release_call)
    state = forward(state_call)

    @plan
    def commit(self, campaign_id: str, reservation_id: str, amount_micros: int) -> Plan[Commit]:
        """Charge the clearing price (<= the reservation), release the rest; idempotent."""
        r = yield from one(commit_call(campaign_id, reservation_id, amount_micros))
        if r.index:
            (yield from many(r.index))
        return r.commit


AsyncBudgets = Budgets  # the same class: on an asyncio client its methods return awaitables
