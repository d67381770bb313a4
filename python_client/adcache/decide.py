"""The ad decision: one ad request served end to end by composing the domains.

`cache.decide.decide(AdRequest(...)) -> Decision` reads the user's signals, queries the targeting
index, prices the candidates by a relevance rule, checks their frequency caps, reserves budget
for each imp's likely winner (servability, budget and pacing are checked by the reservation),
runs the auction, and settles the winners (cap record, commit at the clearing price, session and
stats records). Only a winner is charged, and only against a reservation.

A request costs four sequential network rounds, each one `run_many` (calls to different nodes go
out together). The path is written once, as a plan (`Engine.path`) that yields each round as one
`Many` step, for the sync and the asyncio client alike. Everything is keyed by the request id,
so a retry is safe: it settles the first attempt's auction instead of running a new one. See
docs/decide.md.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from adcache import auctions as auc
from adcache import budgets as bud
from adcache import caps as fc
from adcache import profiles as prof
from adcache import sessions as sess
from adcache import stats as st
from adcache._core import Call
from adcache._core import raise_error_reply as _ok
from adcache._facade import Facade, M, Many, Plan, plan
from adcache._generated import AlreadyExistsError, InvalidStateError, NotFoundError
from adcache.campaigns import Campaign
from adcache.campaigns import get_call as campaign_get_call
from adcache.money import Amount, from_micros, impression_cost_micros, to_micros
from adcache.targeting import combine, query_call, shard_names, user_shards

log = logging.getLogger("adcache.decide")

BP = 10_000  # basis points in 1.0
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_IMPS = 32
MAX_INTERESTS = 16  # interest shards one query reads at most


# ---- what goes in ----


@dataclass(frozen=True, slots=True)
class AdImp:
    """One impression of the request: id, floor (CPM amount), accepted sizes ((w, h); empty:
    any size)."""

    imp_id: str
    floor: Amount = 0
    sizes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class AdRequest:
    """An ad request: ids, the page context (categories, keywords, location, device) and one or
    more impressions. `request_id` names the auction and makes retries safe (at most 100 bytes,
    no braces, as it is part of other ids)."""

    request_id: str
    user_id: str
    imps: tuple[AdImp, ...]
    session_id: str | None = None
    categories: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    location: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("imps", "categories", "keywords"):
            v = getattr(self, name)
            if not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))
        if not self.imps or len(self.imps) > MAX_IMPS:
            raise ValueError(f"a request has 1 to {MAX_IMPS} impressions")
        if len({i.imp_id for i in self.imps}) != len(self.imps):
            raise ValueError("impression ids must be unique within a request")
        if not self.request_id or len(self.request_id.encode()) > 100:
            raise ValueError("request_id must be 1-100 bytes")


@dataclass(frozen=True, slots=True)
class RelevanceRule:
    """How a campaign's bid is adjusted to the user (all integers, basis points of the bid).

    multiplier = 10000
               + profile_bp                        if the profile lists one of the campaign's interests
               + session_bp × W / 1000, at most session_max_bp
                 where W = the summed session weight (1000 = one fresh page view) of the
                 campaign's interests in the session context
    capped at max_bp. price = floor(bid_cpm_micros × multiplier / 10000). A campaign that
    targets every interest gets 10000 (its bid as is)."""

    profile_bp: int = 2000
    session_bp: int = 1500
    session_max_bp: int = 3000
    max_bp: int = 15000

    def multiplier_bp(
        self,
        campaign_interests: Iterable[str],
        profile_interests: frozenset[str],
        session_weights: dict[str, int],
    ) -> int:
        mine = set(campaign_interests)
        if not mine:
            return BP
        m = BP
        if mine & profile_interests:
            m += self.profile_bp
        w = sum(session_weights.get(i, 0) for i in mine)
        m += min(self.session_max_bp, self.session_bp * w // 1000)
        return min(m, self.max_bp)

    @staticmethod
    def price(bid_cpm_micros: int, multiplier_bp: int) -> int:
        return bid_cpm_micros * multiplier_bp // BP


@dataclass(frozen=True, slots=True)
class DecideConfig:
    """Settings of the decision path (docs/decide.md); durations in seconds, tmax_ms in ms.

    reservation_ttl: a bid's budget stays held this long if the request dies midway.
    auction_ttl: the auction is kept this long, the retry window (at least tmax + 60 s).
    record_ttl / record_max_stale: a cached campaign record is fresh for record_ttl; an older one
    is used once more while its refresh rides along the next round; past record_max_stale it
    counts as never seen (cold_records).
    track: also append the request's context to the session (a signal: a retry repeats it).
    expand_interests: add the profile and session interests to the targeting query (one more
    round). cold_records: a campaign the record cache never saw is left out of the request and
    fetched alongside round 2 ("skip": never more than four rounds) or read first ("fetch": one
    more round). refusal_ttl: a campaign refused a reservation, or exhausted by a commit, is left
    out this long. index_ttl: a targeting shard's members are kept this long. capped_ttl: a
    user's cap refusing a campaign is remembered this long (never past when it frees up), so
    round 2 reserves for the imp's next candidate; it is still checked and may still bid.
    refusal_ttl, index_ttl, capped_ttl 0: not remembered."""

    reservation_ttl: float = 30.0
    tmax_ms: int = 10_000
    auction_ttl: float = 600.0
    max_candidates: int = 6
    record_ttl: float = 5.0
    record_max_stale: float = 60.0
    session_half_life: float = 600.0
    cap_dedupe_ttl: float = 3600.0
    track: bool = False
    expand_interests: bool = False
    cold_records: Literal["skip", "fetch"] = "skip"
    refusal_ttl: float = 5.0
    index_ttl: float = 1.0
    capped_ttl: float = 5.0
    relevance: RelevanceRule = field(default_factory=RelevanceRule)


# ---- what comes back ----


@dataclass(frozen=True, slots=True)
class Placement:
    """A served impression: the winning campaign, its priced bid and the clearing price (CPM
    micros), the cost charged (micros, clearing / 1000) and the relevance multiplier applied."""

    imp_id: str
    campaign_id: str
    advertiser_id: str
    creative_id: str
    bid_micros: int
    clearing_micros: int
    cost_micros: int
    relevance_bp: int


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one request. unfilled: (imp id, reason) with reason no_bid (no eligible
    candidate fits), capped (the winner's cap was reached meanwhile), refused (the winner was
    refused its reservation, or its commit: a late retry with no budget left), mismatch (a retry
    whose earlier bids won instead of the predicted one), removed (a retry whose winning campaign
    is gone).
    candidates: campaigns the targeting query matched; capped / refused: candidates left out by
    the cap check / refused a reservation; bids: bids in the auction. replay: the auction of an
    earlier attempt was settled. rounds: sequential network rounds used."""

    request_id: str
    placements: tuple[Placement, ...]
    unfilled: tuple[tuple[str, str], ...]
    candidates: int
    capped: int
    refused: int
    bids: int
    replay: bool
    rounds: int

    @property
    def served(self) -> bool:
        return bool(self.placements)

    def placement(self, imp_id: str) -> Placement | None:
        for p in self.placements:
            if p.imp_id == imp_id:
                return p
        return None


# ---- the campaign record cache ----


@dataclass(frozen=True, slots=True)
class _Entry:
    record: Campaign
    candidate: fc.Candidate
    fetched: float


def _cap_candidate(c: Campaign) -> fc.Candidate:
    rules = [
        fc.CapRule.fixed("campaign", r.period, r.limit)  # type: ignore[arg-type]
        for r in c.spec.frequency_caps
        if r.period in fc.FIXED_UNITS
    ]
    return fc.Candidate(c.campaign_id, rules, advertiser_id=c.spec.advertiser_id)


class CampaignCache:
    """Campaign records by id, kept in process: the bid, caps, creatives and targeting change
    rarely, and every money decision is re-checked on the server (reserve checks servability,
    budget and pacing atomically), so a record a few seconds old is safe to price with."""

    def __init__(self, ttl: float, max_stale: float) -> None:
        self.ttl, self.max_stale = ttl, max_stale
        self._d: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def lookup(self, ids: Sequence[str]) -> tuple[dict[str, _Entry], list[str], list[str]]:
        """(usable entries, ids to refresh alongside, ids to fetch before use)."""
        now = time.monotonic()
        usable: dict[str, _Entry] = {}
        stale: list[str] = []
        missing: list[str] = []
        with self._lock:
            for cid in ids:
                e = self._d.get(cid)
                if e is None or now - e.fetched > self.max_stale:
                    missing.append(cid)
                    continue
                usable[cid] = e
                if now - e.fetched > self.ttl:
                    stale.append(cid)
            self.hits += len(usable)
            self.misses += len(missing)
        return usable, stale, missing

    def store(self, ids: Sequence[str], records: Sequence[Any]) -> dict[str, _Entry]:
        now = time.monotonic()
        out: dict[str, _Entry] = {}
        with self._lock:
            for cid, rec in zip(ids, records, strict=True):
                if isinstance(rec, Campaign):
                    out[cid] = self._d[cid] = _Entry(rec, _cap_candidate(rec), now)
                elif rec is None:
                    self._d.pop(cid, None)
        return out

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


class ShardCache:
    """Targeting shard members by shard name, kept in process for `ttl` seconds: a request
    queries only the shards it does not hold fresh. Money and caps do not depend on it (the
    server checks them); what may lag by up to `ttl` is a change of the index (a campaign added,
    re-targeted, paused or taken out)."""

    MAX = 4096  # shard names held at most (names come from requests)

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._d: dict[str, tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def lookup(self, names: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
        """(fresh members by shard, shards to query)."""
        if self.ttl <= 0:
            return {}, list(names)
        now = time.monotonic()
        fresh: dict[str, list[str]] = {}
        missing: list[str] = []
        with self._lock:
            for n in names:
                got = self._d.get(n)
                if got is not None and now - got[0] <= self.ttl:
                    fresh[n] = got[1]
                else:
                    missing.append(n)
        return fresh, missing

    def store(self, members: dict[str, list[str]]) -> None:
        if self.ttl <= 0 or not members:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._d) + len(members) > self.MAX:
                self._d = {n: v for n, v in self._d.items() if now - v[0] <= self.ttl}
                if len(self._d) + len(members) > self.MAX:
                    self._d.clear()
            for n, ids in members.items():
                self._d[n] = (now, ids)


# ---- the path ----

# Reasons a refused reservation is remembered for (see DecideConfig.refusal_ttl).
_REFUSALS = frozenset(
    {"paused", "ended", "not_started", "lifetime_budget", "daily_budget", "pacing"}
)


def _tokens(values: Iterable[str]) -> list[str]:
    """The valid tokens among `values`, once each, in order."""
    return list(dict.fromkeys(v for v in values if _TOKEN.fullmatch(v)))


@dataclass(slots=True)
class _Cand:
    entry: _Entry
    imp_id: str
    creative_id: str
    price: int
    multiplier: int

    @property
    def cid(self) -> str:
        return self.entry.record.campaign_id

    @property
    def seat(self) -> str:
        return self.entry.record.spec.advertiser_id

    def bid(self) -> auc.Bid:
        """The bid: id and `cid` the campaign's, seat the advertiser (the price is exact: back
        to the same micros on the wire)."""
        price = from_micros(self.price)
        return auc.Bid(
            self.cid, self.imp_id, self.seat, price, cid=self.cid, crid=self.creative_id or None
        )

    def placement(self, won: auc.ImpWin, cost: int) -> Placement:
        return Placement(
            won.imp_id,
            self.cid,
            self.seat,
            self.creative_id,
            self.price,
            won.clearing_micros,
            cost,
            self.multiplier,
        )

    def reserve(self, rid: str, ttl: float) -> Call[bud.Reservation]:
        """The most this bid can cost: its own price (the clearing price is never above it)."""
        return bud.reserve_call(self.cid, rid, impression_cost_micros(self.price), ttl)


def _fits(c: Campaign, imp: AdImp) -> str | None:
    """The creative that fits the imp ("" when the campaign has none), None if nothing fits."""
    if not c.spec.creatives:
        return "" if not imp.sizes else None
    for cr in c.spec.creatives:
        if not imp.sizes or (cr.width, cr.height) in imp.sizes or cr.width == 0:
            return cr.creative_id
    return None


class _Round:
    """The calls of one round. `add` returns the slot of the call's reply in the round's replies,
    which the round's plan keeps under a name."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: list[Call[Any]] = []

    def add(self, call: Call[Any]) -> int:
        self.calls.append(call)
        return len(self.calls) - 1

    def by(self, named: Iterable[tuple[str, Call[Any]]]) -> dict[str, int]:
        return {name: self.add(call) for name, call in named}


# Each round's plan: where in the round's replies each answer the path reads is.


@dataclass(frozen=True, slots=True)
class _SignalSlots:
    """Round 1."""

    profile: int
    context: int | None  # no session
    open: int  # the auction's create, or the one an earlier attempt left
    queries: dict[str, int]  # targeting shard -> slot (empty with expand_interests)
    refresh: dict[str, int]  # campaign id -> its record


@dataclass(frozen=True, slots=True)
class _CheckSlots:
    """Round 2."""

    check: int
    reserves: dict[str, int]  # campaign id (the top candidate of its imp) -> its reservation
    refresh: dict[str, int]  # campaign id -> its record


@dataclass(frozen=True, slots=True)
class _AuctionSlots:
    """Round 3."""

    close: int  # the bids and the close
    records: dict[str, int]  # imp id -> the cap record of its predicted winner
    reserves: dict[str, int]  # campaign id (a predicted winner not reserved yet) -> reservation


@dataclass(slots=True)
class _Attempt:
    """One attempt at a request, as the rounds fill it in."""

    req: AdRequest
    rounds: int = 0
    creator: bool = True  # this attempt created the auction (it owns the request)
    existing: auc.AuctionResult | None = None  # the auction an earlier attempt left
    profile_interests: frozenset[str] = frozenset()
    weights: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    capped: int = 0
    refused: int = 0
    held: dict[str, _Cand] = field(default_factory=dict)  # reservations this attempt holds
    t_reserved: float = 0.0

    @property
    def rid(self) -> str:
        return self.req.request_id

    def bidding(self, eligible: list[_Cand]) -> list[_Cand]:
        """The bids that can change an outcome: per imp the best two (the winner, and the
        runner-up that sets the second price); a lower bid could neither win nor move the
        price. On a retry every eligible candidate bids (the stored bids may outrank some)."""
        if self.existing is not None:
            return eligible
        seen: Counter[str] = Counter()
        out: list[_Cand] = []
        for c in eligible:  # by price, best first
            seen[c.imp_id] += 1
            if seen[c.imp_id] <= 2:
                out.append(c)
        return out

    def decision(
        self,
        placements: Sequence[Placement] = (),
        unfilled: Iterable[tuple[str, str]] | None = None,
        n_bids: int = 0,
        replay: bool = False,
    ) -> Decision:
        if unfilled is None:
            unfilled = [(i.imp_id, "no_bid") for i in self.req.imps]
        return Decision(
            self.rid,
            tuple(placements),
            tuple(sorted(unfilled)),
            self.matched,
            self.capped,
            self.refused,
            n_bids,
            replay,
            self.rounds,
        )


Win = tuple[_Cand, auc.ImpWin]


def _send(a: _Attempt, calls: list[Call[Any]]) -> Plan[list[Any]]:
    """One round: its calls pipelined per node, their replies (an error reply in its place). No
    calls: no round."""
    if not calls:
        return []
    replies: list[Any] = yield Many(calls, raise_on_error=False)
    a.rounds += 1
    return replies


class Engine:
    """State shared by the requests of one facade: the record cache, the config, campaigns
    refused a reservation lately, and index updates that a commit asked for (sent with the next
    request's first round)."""

    def __init__(self, cache: Any, config: DecideConfig | None = None) -> None:
        self._c = cache
        self.config = config or DecideConfig()
        self.records = CampaignCache(self.config.record_ttl, self.config.record_max_stale)
        self.shards = ShardCache(self.config.index_ttl)
        self._pending: list[Call[Any]] = []
        self._refresh: set[str] = set()
        self._refused: dict[str, float] = {}
        self._capped: dict[tuple[str, str], float] = {}  # (user, campaign) -> until (monotonic)
        self._lock = threading.Lock()

    def configure(self, config: DecideConfig) -> None:
        self.config = config
        self.records.ttl, self.records.max_stale = config.record_ttl, config.record_max_stale
        self.shards.ttl = config.index_ttl

    def _take_pending(self) -> tuple[list[Call[Any]], list[str]]:
        with self._lock:
            out, self._pending = self._pending, []
            ids, self._refresh = sorted(self._refresh), set()
        return out, ids

    def _add_pending(self, calls: list[Call[Any]]) -> None:
        if calls:
            with self._lock:
                self._pending += calls

    def _refresh_later(self, stale: list[str]) -> None:
        # Nothing to bid with: refresh the stale records with the next request's first round.
        if stale:
            with self._lock:
                self._refresh.update(stale)

    def _leave_out(self, cid: str) -> None:
        """Leave a campaign out of this client's requests for refusal_ttl (it was refused a
        reservation, or a commit exhausted its budget)."""
        ttl = self.config.refusal_ttl
        if ttl <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._refused) > 10_000:
                self._refused = {k: t for k, t in self._refused.items() if t > now}
            self._refused[cid] = now + ttl

    def _remember_capped(self, user: str, cid: str, frees_at_ms: int | None) -> None:
        """Remember for capped_ttl (at most until the server said it frees up) that the user's
        cap refuses the campaign: round 2 then reserves for another candidate. A memory that is
        wrong costs only a reservation in round 3 (the fallback), never an outcome."""
        ttl = self.config.capped_ttl
        if frees_at_ms is not None:
            ttl = min(ttl, frees_at_ms / 1000 - time.time())
        if ttl <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._capped) > 10_000:  # bounded: forget the expired, or all
                self._capped = {k: t for k, t in self._capped.items() if t > now}
                if len(self._capped) > 10_000:
                    self._capped.clear()
            self._capped[(user, cid)] = now + ttl

    def _cap_record(self, a: _Attempt, imp_id: str, e: _Entry) -> Call[fc.Impression]:
        """The cap record of the imp's winner, under the impression id `<request id>:<imp id>`."""
        iid = f"{a.rid}:{imp_id}"
        return fc.record_call(
            a.req.user_id, iid, e.candidate, dedupe_ttl=self.config.cap_dedupe_ttl
        )

    def _stats_config(self) -> st.StatsConfig:
        facade = getattr(self._c, "stats", None)
        cfg = getattr(facade, "config", None)
        return cfg if isinstance(cfg, st.StatsConfig) else st.DEFAULT_CONFIG

    # ---- the path: one method per round ----

    def path(self, req: AdRequest) -> Plan[Decision]:
        """The rounds of one request: a plan yielding each round as one `Many` step (its replies
        come back in order, an error reply in its place) and returning the Decision."""
        a = _Attempt(req)
        ids = yield from self._signals(a)
        if a.existing is not None and a.existing.state in ("closed", "due"):
            return (yield from self._settle_replay(a, a.existing))
        if ids is None:
            ids = yield from self._expanded_query(a)
        a.matched = len(ids)
        usable, stale = yield from self._records(a, ids)
        cands = self._candidates(a, ids, usable)
        if not cands:
            self._refresh_later(stale)
            return a.decision()
        eligible = yield from self._check_and_reserve(a, cands, stale)
        auction = yield from self._auction(a, eligible)
        if auction is None:
            return a.decision()
        wins, release, unfilled = self._outcome(a, *auction)
        late = time.monotonic() - a.t_reserved > self.config.reservation_ttl / 2
        return (
            yield from self._settle(
                a, wins, release, unfilled, len(a.bidding(eligible)), False, late or not a.creator
            )
        )

    def _signals(self, a: _Attempt) -> Plan[list[str] | None]:
        """Round 1: profile, session context (+ track), the auction's create and result, the
        query of each of the context's targeting shards not held fresh (`ShardCache`), and what
        earlier requests left to send. Returns the matched campaign ids (None with
        expand_interests: the query waits for the signals)."""
        cfg, req = self.config, a.req
        rnd = _Round()
        profile = rnd.add(prof.get_call(req.user_id))
        context = None
        if req.session_id:
            if cfg.track:
                cats, words = _tokens(req.categories)[:16], _tokens(req.keywords)[:16]
                rnd.add(
                    sess.track_call(req.session_id, kind="request", categories=cats, keywords=words)
                )
            context = rnd.add(sess.context_call(req.session_id, half_life=cfg.session_half_life))
        imps = [auc.Imp(i.imp_id, i.floor) for i in req.imps]
        opened = rnd.add(
            auc.open_call(a.rid, imps, tmax_ms=cfg.tmax_ms, exp=60.0, ttl=cfg.auction_ttl)
        )
        per_dim: dict[str, list[str]] = {}
        if not cfg.expand_interests:
            per_dim = _shards(req, _tokens(req.categories)[:MAX_INTERESTS])
        members, missing = self.shards.lookup(shard_names(per_dim))
        queries = rnd.by((s, query_call(s)) for s in missing)
        pending, refresh = self._take_pending()
        refreshes = rnd.by((c, campaign_get_call(c)) for c in refresh)
        slots = _SignalSlots(profile, context, opened, queries, refreshes)
        rnd.calls += pending
        r = yield from _send(a, rnd.calls)

        if slots.refresh:
            self.records.store(list(slots.refresh), [r[i] for i in slots.refresh.values()])
        p: prof.Profile | None = _ok(r[slots.profile])
        if p is not None:
            a.profile_interests = frozenset(p.interests)
        if slots.context is not None and not isinstance(r[slots.context], NotFoundError):
            ctx: sess.SessionContext | None = _ok(r[slots.context])
            if ctx is not None:
                a.weights = dict(ctx.categories)
        # The attempt that created the auction owns the request. Another attempt (a retry, or a
        # duplicate still running) gives back only what the auction shows lost, since the
        # reservations are shared by id; the rest expires.
        a.existing = _ok(r[slots.open])
        a.creator = a.existing is None
        if cfg.expand_interests:
            return None
        got = {s: _ok(r[i]) for s, i in slots.queries.items()}
        self.shards.store(got)
        return combine(per_dim, {**members, **got})

    def _expanded_query(self, a: _Attempt) -> Plan[list[str]]:
        """expand_interests: the query with the profile's and the session's interests added to
        the page's; one more round unless every shard is held fresh."""
        interests = _tokens([*a.req.categories, *a.profile_interests, *a.weights])
        per_dim = _shards(a.req, interests[:MAX_INTERESTS])
        members, missing = self.shards.lookup(shard_names(per_dim))
        if missing:
            r = yield from _send(a, [query_call(s) for s in missing])
            got = {s: _ok(x) for s, x in zip(missing, r, strict=True)}
            self.shards.store(got)
            members.update(got)
        return combine(per_dim, members)

    def _records(self, a: _Attempt, ids: list[str]) -> Plan[tuple[dict[str, _Entry], list[str]]]:
        """The matched campaigns' records from the cache: (usable, to refresh in round 2). A
        campaign never seen is fetched first with cold_records="fetch" (one more round), else
        left out of this request and fetched in round 2."""
        usable, stale, missing = self.records.lookup(ids)
        if missing and self.config.cold_records == "fetch":
            r = yield from _send(a, [campaign_get_call(c) for c in missing])
            usable.update(self.records.store(missing, [_ok(x) for x in r]))
            return usable, stale
        return usable, [*stale, *missing]

    def _candidates(self, a: _Attempt, ids: list[str], usable: dict[str, _Entry]) -> list[_Cand]:
        """Price every usable campaign, fit it to an imp, keep the best max_candidates (by price,
        then id). Campaigns whose cached state cannot serve, or refused a reservation in the last
        refusal_ttl seconds, are left out."""
        cfg, now = self.config, time.monotonic()
        priced: list[tuple[int, str, _Entry, int]] = []
        for cid in ids:
            e = usable.get(cid)
            if e is None or not e.record.indexed or self._refused.get(cid, 0.0) > now:
                continue
            spec = e.record.spec
            m = cfg.relevance.multiplier_bp(
                spec.targeting.interests, a.profile_interests, a.weights
            )
            priced.append((RelevanceRule.price(spec.bid_cpm_micros, m), cid, e, m))
        priced.sort(key=lambda t: (-t[0], t[1]))
        floors = [to_micros(i.floor) for i in a.req.imps]
        load = {i.imp_id: 0 for i in a.req.imps}
        cands: list[_Cand] = []
        for price, _cid, e, m in priced:
            if impression_cost_micros(price) <= 0:
                continue
            # the fitting imp with the fewest bids so far, then the first in the request
            fitting = [
                (load[imp.imp_id], pos, imp.imp_id, crid)
                for pos, imp in enumerate(a.req.imps)
                if price >= floors[pos] and (crid := _fits(e.record, imp)) is not None
            ]
            if not fitting:
                continue
            _, _, imp_id, crid = min(fitting)
            load[imp_id] += 1
            cands.append(_Cand(e, imp_id, crid, price, m))
            if len(cands) >= cfg.max_candidates:
                break
        return cands

    def _check_and_reserve(
        self, a: _Attempt, cands: list[_Cand], stale: list[str]
    ) -> Plan[list[_Cand]]:
        """Round 2: the caps of every candidate (one check), a reservation for the top candidate
        of each imp only (the likely winner), stale records refreshed. Returns the eligible
        candidates: allowed by their caps and not refused a reservation."""
        cfg, user = self.config, a.req.user_id
        now, capped = time.monotonic(), self._capped
        tops: dict[str, _Cand] = {}
        for c in cands:  # by price, best first; skip what this client saw capped for the user
            if not (capped and capped.get((user, c.cid), 0.0) > now):
                tops.setdefault(c.imp_id, c)
        rnd = _Round()
        slots = _CheckSlots(
            rnd.add(fc.check_call(a.req.user_id, [c.entry.candidate for c in cands])),
            rnd.by((c.cid, c.reserve(a.rid, cfg.reservation_ttl)) for c in tops.values()),
            rnd.by((cid, campaign_get_call(cid)) for cid in stale),
        )
        r = yield from _send(a, rnd.calls)
        a.t_reserved = time.monotonic()
        if slots.refresh:
            self.records.store(list(slots.refresh), [r[i] for i in slots.refresh.values()])
        caps: list[fc.CapDecision] = _ok(r[slots.check])
        eligible: list[_Cand] = []
        for c, cap in zip(cands, caps, strict=True):
            slot = slots.reserves.get(c.cid)
            if slot is not None and not self._held(a, c, r[slot]):
                continue  # refused a reservation
            if not cap.allowed:
                a.capped += 1
                self._remember_capped(user, c.cid, cap.frees_at_ms)
            else:
                eligible.append(c)
        return eligible

    def _held(self, a: _Attempt, c: _Cand, reply: Any) -> bool:
        """Whether a reservation reply leaves this attempt holding the candidate's reservation."""
        if isinstance(reply, (AlreadyExistsError, InvalidStateError, NotFoundError)):
            # A retry whose price moved (the earlier attempt's reservation stands: that attempt's
            # to settle, or it expires), one an earlier attempt already settled, or a campaign
            # deleted since its record was cached.
            a.refused += 1
            return False
        res: bud.Reservation = _ok(reply)
        if not res.ok:
            a.refused += 1
            if res.reason in _REFUSALS:
                self._leave_out(c.cid)
            return False
        a.held[c.cid] = c
        return True

    def _auction(
        self, a: _Attempt, eligible: list[_Cand]
    ) -> Plan[tuple[list[auc.ImpWin], dict[str, _Cand], dict[str, fc.Impression]] | None]:
        """Round 3: the bids that can change an outcome (`_Attempt.bidding`) and the close (one
        call on the auction's node); each imp's predicted winner's cap recorded, and reserved if
        round 2 did not; the reservations of capped candidates released. Returns (the closed
        auction's winners by imp, the predicted winners and their cap records by imp), or None
        when nothing bid."""
        cfg, rid = self.config, a.rid
        # The auction holds only this request's bids (and on a retry the earlier attempt's, at
        # their first price): each imp's winner is known before the close (ties: earlier bid).
        bids = a.existing.bids if a.existing is not None else ()
        stored = {(b.seat, b.bid_id): b.price_micros for b in bids}
        predicted: dict[str, _Cand] = {}
        for c in eligible:
            cur = predicted.get(c.imp_id)
            p = stored.get((c.seat, c.cid), c.price)
            if cur is None or p > stored.get((cur.seat, cur.cid), cur.price):
                predicted[c.imp_id] = c
        rnd = _Round()
        close = -1
        if eligible:
            close = rnd.add(auc.bid_close_call(rid, [c.bid() for c in a.bidding(eligible)]))
        slots = _AuctionSlots(
            close,
            rnd.by((i, self._cap_record(a, i, c.entry)) for i, c in sorted(predicted.items())),
            rnd.by(
                (c.cid, c.reserve(rid, cfg.reservation_ttl))
                for c in predicted.values()
                if c.cid not in a.held
            ),
        )
        if a.creator:
            # a capped candidate's reservation (round 2) is not needed
            ok = {c.cid for c in eligible}
            for cid in [cid for cid in a.held if cid not in ok]:
                rnd.add(bud.release_call(cid, rid))
                del a.held[cid]
        r = yield from _send(a, rnd.calls)
        if close < 0:
            return None
        by_cid = {c.cid: c for c in predicted.values()}
        for cid, i in slots.reserves.items():
            self._held(a, by_cid[cid], r[i])
        recorded = {imp_id: _ok(r[i]) for imp_id, i in slots.records.items()}
        for imp_id, rec in recorded.items():
            if not rec.admitted or rec.remaining == 0:  # capped now (or by this impression)
                self._remember_capped(a.req.user_id, predicted[imp_id].cid, rec.frees_at_ms)
        return _ok(r[slots.close]), predicted, recorded

    def _outcome(
        self,
        a: _Attempt,
        result: list[auc.ImpWin],
        predicted: dict[str, _Cand],
        recorded: dict[str, fc.Impression],
    ) -> tuple[list[Win], list[str], list[tuple[str, str]]]:
        """What the closed auction means: (the wins to charge, the reservations to give back,
        the unfilled imps and why)."""
        wins: list[Win] = []
        unfilled: list[tuple[str, str]] = []
        for imp in result:
            guess, rec = predicted.get(imp.imp_id), recorded.get(imp.imp_id)
            if imp.cid is None:
                unfilled.append((imp.imp_id, "no_bid"))
            elif guess is None or guess.cid != imp.cid or rec is None:
                # Only on a retry whose stored bids outrank the new ones: leave the imp empty.
                unfilled.append((imp.imp_id, "mismatch"))
            elif not rec.admitted:
                unfilled.append((imp.imp_id, "capped"))
            elif imp.cid not in a.held:
                unfilled.append((imp.imp_id, "refused"))  # its reservation was refused
            else:
                wins.append((guess, imp))
        # Held reservations of losers go back, and so does a winner this attempt refused (its
        # cap). A winner this attempt did not predict is left alone: another attempt of the same
        # request may be settling it (its reservation expires if none is).
        winners = {c.cid for c, _ in wins}
        mine = {c.cid for c in predicted.values()}
        won = {imp.cid for imp in result if imp.cid is not None}
        release = [cid for cid in a.held if cid not in winners and (cid not in won or cid in mine)]
        return wins, release, unfilled

    def _settle(
        self,
        a: _Attempt,
        wins: list[Win],
        release: list[str],
        unfilled: list[tuple[str, str]],
        n_bids: int,
        replay: bool,
        separate_records: bool,
    ) -> Plan[Decision]:
        """Round 4: commit every win at its clearing price and release the given reservations;
        record the session impression and the stats. The records go with the commits unless a
        commit may be late or contested (then they wait for the commits' answers: one more
        round)."""
        rid = a.rid
        costs = [impression_cost_micros(imp.clearing_micros) for _, imp in wins]
        rnd = _Round()
        commits = [
            rnd.add(bud.commit_call(c.cid, rid, cost))
            for (c, _), cost in zip(wins, costs, strict=True)
        ]
        rnd.calls += [bud.release_call(cid, rid) for cid in sorted(set(release))]
        if not separate_records:
            rnd.calls += self._stats_records(a.req, wins, costs)
        r = yield from _send(a, rnd.calls)
        done = [_commit_status(r[i]) for i in commits]
        if separate_records:
            ok = [i for i, (status, _) in enumerate(done) if status in _CHARGED]
            yield from _send(
                a, self._stats_records(a.req, [wins[i] for i in ok], [costs[i] for i in ok])
            )
        placements: list[Placement] = []
        for (c, imp), cost, (status, index) in zip(wins, costs, done, strict=True):
            if index:  # the commit exhausted the budget: the index updates go with the next
                self._add_pending(index)  # request; meanwhile this client leaves it out
                self._leave_out(c.cid)
            if status in _CHARGED:
                placements.append(c.placement(imp, cost))
            else:
                log.warning("adcache: commit of %s for %s refused (%s)", c.cid, rid, status)
                unfilled.append((imp.imp_id, "refused"))
        return a.decision(placements, unfilled, n_bids, replay)

    def _stats_records(
        self, req: AdRequest, wins: Sequence[Win], costs: Sequence[int]
    ) -> list[Call[Any]]:
        out: list[Call[Any]] = []
        cfg = self._stats_config()
        for (c, imp), cost in zip(wins, costs, strict=True):
            # One id for the cap record, the stats event and the session impression: a retry
            # counts the impression exactly once everywhere.
            iid = f"{req.request_id}:{imp.imp_id}"
            event = st.Event(impressions=1, cost_micros=cost, user_id=req.user_id, event_id=iid)
            out.append(st.record_call(c.cid, [event], cfg))
            if req.session_id:
                out.append(
                    sess.impression_call(req.session_id, campaign_id=c.cid, impression_id=iid)
                )
        return out

    def _settle_replay(self, a: _Attempt, result: auc.AuctionResult) -> Plan[Decision]:
        """A retry whose auction already closed: settle that auction, never a new one. Rounds:
        (the winners' records if not cached), the winners' cap records (+ the close if due), then
        the commits and releases, then the stats and session records."""
        need = sorted({i.winner.cid for i in result.imps if i.winner and i.winner.cid})
        usable, _, missing = self.records.lookup(need)
        r = yield from _send(a, [campaign_get_call(c) for c in missing])
        usable.update(self.records.store(missing, [_ok(x) for x in r]))
        unfilled: list[tuple[str, str]] = []
        rnd = _Round()
        records: list[tuple[auc.ImpWin, str, int]] = []  # (a win, its campaign, its cap record)
        for imp in result.imps:
            w = imp.winner
            if w is None or w.cid is None:
                unfilled.append((imp.imp_id, "no_bid"))
            elif w.cid not in usable:
                unfilled.append((imp.imp_id, "removed"))  # the campaign is gone: nothing to charge
            else:
                won = auc.ImpWin(imp.imp_id, w.cid, w.price_micros, w.crid, imp.clearing_micros)
                records.append(
                    (won, w.cid, rnd.add(self._cap_record(a, imp.imp_id, usable[w.cid])))
                )
        if result.state == "due":
            rnd.add(auc.bid_close_call(a.rid, []))  # record the close (its reply: the same outcome)
        r = yield from _send(a, rnd.calls)
        wins: list[Win] = []
        for won, cid, i in records:
            if not _ok(r[i]).admitted:
                unfilled.append((won.imp_id, "capped"))
                continue
            e, price = usable[cid], won.price_micros
            bid = e.record.spec.bid_cpm_micros
            m = -(-price * BP // bid) if bid else 0  # the multiplier that gave this price
            wins.append((_Cand(e, won.imp_id, won.crid or "", price, m), won))
        # Which bidders hold a reservation is not known here: give back every loser's (a
        # release of a reservation that does not exist changes nothing).
        winners = {c.cid for c, _ in wins}
        release = [b.cid for b in result.bids if b.cid and b.cid not in winners]
        # A replay may come after the reservations expired: commit first, then the records.
        return (yield from self._settle(a, wins, release, unfilled, len(result.bids), True, True))


_CHARGED = ("committed", "late")


def _commit_status(reply: Any) -> tuple[str, list[Call[Any]]]:
    """A commit's status and the index calls it asks for. A reservation another attempt of the
    same request released (or that was forgotten) charges nothing: status "gone"."""
    if isinstance(reply, (InvalidStateError, NotFoundError)):
        log.warning("adcache: commit not possible: %s", reply)
        return "gone", []
    r = _ok(reply)
    return r.commit.status, r.index


def _loc(v: str | None) -> str | None:
    return v if v and _TOKEN.fullmatch(v) else None


def _shards(req: AdRequest, interests: list[str]) -> dict[str, list[str]]:
    return user_shards(interests, _loc(req.location), _loc(req.device))


# ---- facades ----


class Decisions(Facade[M]):
    """The ad decision on the sync or asyncio `AdCache` (`cache.decide`)."""

    def __init__(self, cache: Any, config: DecideConfig | None = None) -> None:
        super().__init__(cache)
        self.engine = Engine(cache, config)

    @property
    def config(self) -> DecideConfig:
        return self.engine.config

    @config.setter
    def config(self, value: DecideConfig) -> None:
        self.engine.configure(value)

    @plan
    def decide(self, request: AdRequest) -> Plan[Decision]:
        """Serve one request end to end (four rounds with a warm record cache); safe to retry
        with the same request id."""
        return (yield from self.engine.path(request))

    @plan
    def flush(self) -> Plan[int]:
        """Send the index updates commits asked for (normally they ride with the next request)."""
        calls, refresh = self.engine._take_pending()
        if refresh:
            got = yield Many([campaign_get_call(c) for c in refresh], raise_on_error=False)
            self.engine.records.store(refresh, got)
        if calls:
            yield Many(calls, raise_on_error=False)
        return len(calls)


AsyncDecisions = Decisions  # the same class: on an asyncio client its methods return awaitables


__all__ = [
    "AdImp",
    "AdRequest",
    "AsyncDecisions",
    "CampaignCache",
    "DecideConfig",
    "Decision",
    "Decisions",
    "Placement",
    "RelevanceRule",
    "ShardCache",
]
