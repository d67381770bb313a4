"""Budgets and spend (Lua domain `budget`): reservations that never let a campaign overspend,
idempotent commits, release on loss, lazy reclaim of expired reservations, daily roll and pacing.

All amounts are integer micros. The flow of one auction: `reserve` the bid's maximum cost when
bidding; on a win `commit` the clearing price (the rest is released); on a loss `release`. The
reservation id is the auction id: a retried commit answers the first result and never charges
twice. When a commit leaves the campaign's budget exhausted the facade takes it out of (lifetime)
or holds it back in (daily) its targeting shards at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adcache._core import Call, positive_ms, str_pairs
from adcache._facade import Facade, M, Plan, call, many, one, plan
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


def _opt(v: str) -> int | None:
    n = int(v)
    return None if n < 0 else n


def _reservation(cid: str, rid: str) -> Callable[[Any], Reservation]:
    def parse(reply: Any) -> Reservation:
        f = str_pairs(reply)
        return Reservation(
            campaign_id=cid,
            reservation_id=rid,
            ok=f["status"] == "reserved",
            reason=f["reason"],
            amount_micros=int(f["amount"]),
            expires_at_ms=int(f["expires_at"]),
            spent_micros=int(f["spent"]),
            day_spent_micros=int(f["day_spent"]),
            reserved_micros=int(f["reserved"]),
            pacing_allowed_micros=_opt(f["pacing_allowed"]),
            replay=f["replay"] == "1",
        )

    return parse


@dataclass(frozen=True, slots=True)
class _CommitReply:
    commit: Commit
    index: list[Call[Any]]


def _commit(cid: str, rid: str) -> Callable[[Any], _CommitReply]:
    def parse(reply: Any) -> _CommitReply:
        f = str_pairs(reply)
        c = Commit(
            campaign_id=cid,
            reservation_id=rid,
            status=f["status"],
            charged_micros=int(f["charged"]),
            released_micros=int(f["released"]),
            spent_micros=int(f["spent"]),
            day_spent_micros=int(f["day_spent"]),
            reserved_micros=int(f["reserved"]),
            exhausted=f["exhausted"],
            replay=f["replay"] == "1",
        )
        index: list[Call[Any]] = []
        if c.exhausted:
            # Lifetime: out of every shard. Daily: held back until the campaign's next day.
            shards = f["shards"].split()
            if f["indexable"] == "1":
                index = apply_calls(cid, shards, (), int(f["end"]), int(f["not_before"]))
            else:
                index = apply_calls(cid, (), shards, 0, 0)
        return _CommitReply(c, index)

    return parse


def _release(cid: str, rid: str) -> Callable[[Any], Release]:
    def parse(reply: Any) -> Release:
        f = str_pairs(reply)
        return Release(
            cid, rid, f["status"], int(f["amount"]), int(f["reserved"]), f["replay"] == "1"
        )

    return parse


def _state(cid: str) -> Callable[[Any], BudgetState]:
    def parse(reply: Any) -> BudgetState:
        f = str_pairs(reply)
        return BudgetState(
            campaign_id=cid,
            budget_micros=int(f["budget"]),
            daily_budget_micros=int(f["daily"]),
            spent_micros=int(f["spent"]),
            day=f["day"],
            day_spent_micros=int(f["day_spent"]),
            reserved_micros=int(f["reserved"]),
            outstanding=int(f["outstanding"]),
            reserved_total_micros=int(f["c_reserved"]),
            committed_micros=int(f["c_committed"]),
            released_micros=int(f["c_released"]),
            reclaimed_micros=int(f["c_reclaimed"]),
            late_micros=int(f["c_late"]),
            refusals=int(f["n_refused"]),
            pacing=f["pacing"],
            pacing_allowed_micros=_opt(f["pacing_allowed"]),
            elapsed_ppm=int(f["elapsed_ppm"]),
            day_start_ms=int(f["day_start"]),
            day_end_ms=int(f["day_end"]),
            servable=f["servable"] == "1",
            reason=f["reason"],
            now_ms=int(f["now"]),
        )

    return parse


# ---- call builders ----


def reserve_call(
    campaign_id: str, reservation_id: str, amount_micros: int, ttl: float
) -> Call[Reservation]:
    """ttl in seconds (fractions allowed; stored as ms, at most one day)."""
    return Call(
        "ac_budget_reserve",
        all_keys(campaign_id),
        (reservation_id, amount_micros, positive_ms(ttl, "ttl")),
        _reservation(campaign_id, reservation_id),
    )


def commit_call(campaign_id: str, reservation_id: str, amount_micros: int) -> Call[_CommitReply]:
    return Call(
        "ac_budget_commit",
        all_keys(campaign_id),
        (reservation_id, amount_micros),
        _commit(campaign_id, reservation_id),
    )


def release_call(campaign_id: str, reservation_id: str) -> Call[Release]:
    return Call(
        "ac_budget_release",
        all_keys(campaign_id),
        (reservation_id,),
        _release(campaign_id, reservation_id),
    )


def state_call(campaign_id: str) -> Call[BudgetState]:
    return Call("ac_budget_state", all_keys(campaign_id), (), _state(campaign_id))


class Budgets(Facade[M]):
    """Budget calls on the sync or asyncio `AdCache` (`cache.budgets`)."""

    @call
    def reserve(
        self, campaign_id: str, reservation_id: str, amount_micros: int, ttl: float
    ) -> Call[Reservation]:
        """Hold amount_micros for ttl seconds; a refusal is a reply (ok False, reason)."""
        return reserve_call(campaign_id, reservation_id, amount_micros, ttl)

    @plan
    def commit(self, campaign_id: str, reservation_id: str, amount_micros: int) -> Plan[Commit]:
        """Charge the clearing price (<= the reservation), release the rest; idempotent."""
        r = yield from one(commit_call(campaign_id, reservation_id, amount_micros))
        if r.index:
            (yield from many(r.index))
        return r.commit

    @call
    def release(self, campaign_id: str, reservation_id: str) -> Call[Release]:
        """Give a reservation back (the bid lost); idempotent."""
        return release_call(campaign_id, reservation_id)

    @call
    def state(self, campaign_id: str) -> Call[BudgetState]:
        """Budget, spend, counters and pacing (reclaims expired reservations first)."""
        return state_call(campaign_id)


AsyncBudgets = Budgets  # the same class: on an asyncio client its methods return awaitables
