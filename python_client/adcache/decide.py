"""The ad decision: one ad request served end to end by composing the domains.

`cache.decide.decide(AdRequest(...)) -> Decision` reads the user's signals, queries the targeting
index, filters by frequency caps, servability, budget and pacing, prices the candidates by a
relevance rule, runs the auction with a budget reservation behind every bid, and settles the
winners (commit at the clearing price, release the rest, cap, session and stats records).

A request costs four sequential network rounds (see docs/decide.md); each round is one
`run_many`, so calls to different nodes go out together. The path is written once, as a
generator that yields the calls of each round and receives their replies; `Decisions` (sync)
and `AsyncDecisions` (asyncio) only drive it.

Everything is idempotent under the request id: the auction id is the request id, the
reservation id is the request id (reservations live under each campaign's own keys, so
campaign + request names one), the frequency-cap impression id and the stats event id are
`<request id>:<imp id>`. A retried request settles the first attempt's auction instead of
running a new one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from adcache import auctions as auc
from adcache import budgets as bud
from adcache import caps as fc
from adcache import profiles as prof
from adcache import sessions as sess
from adcache import stats as st
from adcache._core import Call
from adcache._generated import AlreadyExistsError, InvalidStateError, NotFoundError
from adcache.campaigns import Campaign
from adcache.campaigns import get_call as campaign_get_call
from adcache.money import Amount, from_micros, impression_cost_micros, to_micros
from adcache.targeting import DIMENSIONS, combine, query_call, user_shards

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache

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
    """reservation_ttl: seconds a bid's budget stays held if the request dies midway.
    auction_ttl: seconds the auction is kept (a retry must come within it; at least
    tmax + 60 s). record_ttl / record_max_stale: the in-process campaign record cache (fresh for
    record_ttl seconds; older ones are used once more while a refresh rides along the next
    round; beyond record_max_stale they are refetched first). track: also append the request's
    context to the session (the one step a retry repeats; it is a signal, not a count).
    expand_interests: add the profile and session interests to the targeting query (one more
    round: the query then waits for the profile). cold_records: what a campaign the record cache
    has never seen costs: "skip" (default) leaves it out of this one request and fetches its
    record alongside round 2, so no request takes more than four rounds; "fetch" reads it first
    (one more round for that request)."""

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
    candidate fits), capped (the winner's cap was reached meanwhile), refused (the commit was
    refused: a late retry with no budget left), mismatch (a retry whose earlier bids won
    instead of the predicted one), removed (a retry whose winning campaign is gone).
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


_PERIODS = frozenset({"minute", "hour", "day", "week", "month"})


def _cap_candidate(c: Campaign) -> fc.Candidate:
    rules = [
        fc.CapRule.fixed("campaign", r.period, r.limit)  # type: ignore[arg-type]
        for r in c.spec.frequency_caps
        if r.period in _PERIODS
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


# ---- the path ----

Replies = list[Any]
Plan = Generator[list[Call[Any]], Replies, Decision]


def _ok(v: Any) -> Any:
    if isinstance(v, BaseException):
        raise v
    return v


def _tokens(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        if _TOKEN.fullmatch(v) and v not in out:
            out.append(v)
    return out


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
        return auc.Bid(
            bid_id=self.cid,
            imp_id=self.imp_id,
            seat=self.seat,
            price=from_micros(self.price),  # exact: back to the same micros on the wire
            cid=self.cid,
            crid=self.creative_id or None,
        )


def _fits(c: Campaign, imp: AdImp) -> str | None:
    """The creative that fits the imp ("" when the campaign has none), None if nothing fits."""
    if not c.spec.creatives:
        return "" if not imp.sizes else None
    for cr in c.spec.creatives:
        if not imp.sizes or (cr.width, cr.height) in imp.sizes or cr.width == 0:
            return cr.creative_id
    return None


class Engine:
    """State shared by the requests of one facade: the record cache, the config, and index
    updates that a commit asked for (sent with the next request's first round)."""

    def __init__(self, cache: Any, config: DecideConfig | None = None) -> None:
        self._c = cache
        self.config = config or DecideConfig()
        self.records = CampaignCache(self.config.record_ttl, self.config.record_max_stale)
        self._pending: list[Call[Any]] = []
        self._refresh: set[str] = set()
        self._lock = threading.Lock()

    def configure(self, config: DecideConfig) -> None:
        self.config = config
        self.records.ttl, self.records.max_stale = config.record_ttl, config.record_max_stale

    def _take_pending(self) -> tuple[list[Call[Any]], list[str]]:
        with self._lock:
            out, self._pending = self._pending, []
            ids, self._refresh = sorted(self._refresh), set()
        return out, ids

    def _add_pending(self, calls: list[Call[Any]]) -> None:
        if calls:
            with self._lock:
                self._pending += calls

    def _stats_config(self) -> st.StatsConfig:
        facade = getattr(self._c, "stats", None)
        cfg = getattr(facade, "config", None)
        return cfg if isinstance(cfg, st.StatsConfig) else st.DEFAULT_CONFIG

    def path(self, req: AdRequest) -> Plan:
        cfg = self.config
        rid = req.request_id
        rounds = 0

        # ---- round 1: signals, the auction, (the context's targeting query) ----
        calls: list[Call[Any]] = [prof.get_call(req.user_id)]
        if req.session_id:
            if cfg.track:
                calls.append(
                    sess.track_call(
                        req.session_id,
                        kind="request",
                        categories=_tokens(req.categories)[:16],
                        keywords=_tokens(req.keywords)[:16],
                    )
                )
            calls.append(sess.context_call(req.session_id, half_life=cfg.session_half_life))
        n_sig = len(calls)
        imps = [auc.Imp(i.imp_id, i.floor) for i in req.imps]
        calls.append(auc.create_call(rid, imps, tmax_ms=cfg.tmax_ms, exp=60.0, ttl=cfg.auction_ttl))
        calls.append(auc.result_call(rid))
        context_interests = _tokens(req.categories)[:MAX_INTERESTS]
        q_names: list[str] = []
        per_dim: dict[str, list[str]] = {}
        if not cfg.expand_interests:
            per_dim = user_shards(context_interests, _loc(req.location), _loc(req.device))
            q_names = sorted({s for d in DIMENSIONS for s in per_dim[d]})
            calls += [query_call(s) for s in q_names]
        pending, refresh = self._take_pending()
        n_r1 = len(calls)
        calls += [campaign_get_call(c) for c in refresh]
        calls += pending
        r = yield calls
        rounds += 1
        if refresh:
            self.records.store(refresh, r[n_r1 : n_r1 + len(refresh)])

        profile: prof.Profile | None = _ok(r[0])
        ctx: sess.SessionContext | None = None
        if req.session_id:
            ctx_reply = r[n_sig - 1]
            ctx = None if isinstance(ctx_reply, NotFoundError) else _ok(ctx_reply)
        created = r[n_sig]
        existing: auc.AuctionResult | None = None
        # The attempt that created the auction owns the request. Another attempt (a retry, or a
        # duplicate still running) gives back only what the auction shows lost, since the
        # reservations are shared by id; the rest expires.
        creator = not isinstance(created, AlreadyExistsError)
        if not creator:
            existing = _ok(r[n_sig + 1])
        else:
            _ok(created)
        profile_interests = frozenset(profile.interests) if profile is not None else frozenset()
        weights = dict(ctx.categories) if ctx is not None else {}

        if existing is not None and existing.state in ("closed", "due"):
            return (yield from self._settle_replay(req, existing, rounds))

        base = n_sig + 2
        if cfg.expand_interests:
            interests = _tokens(
                [*context_interests, *profile_interests, *(n for n, _ in ctx.categories)]
                if ctx is not None
                else [*context_interests, *profile_interests]
            )[:MAX_INTERESTS]
            per_dim = user_shards(interests, _loc(req.location), _loc(req.device))
            q_names = sorted({s for d in DIMENSIONS for s in per_dim[d]})
            r = yield [query_call(s) for s in q_names]
            rounds += 1
            base = 0
        members = {n: _ok(r[base + i]) for i, n in enumerate(q_names)}
        ids = combine(per_dim, members)

        # ---- records: cached; a never-seen campaign rides along round 2 (or costs a round) ----
        usable, stale, missing = self.records.lookup(ids)
        if missing and cfg.cold_records == "fetch":
            r = yield [campaign_get_call(c) for c in missing]
            rounds += 1
            usable.update(self.records.store(missing, [_ok(x) for x in r]))
        elif missing:
            stale = [*stale, *missing]  # fetched with round 2, bidding from the next request on

        # ---- price, fit to an imp, keep the best ----
        rule = cfg.relevance
        priced: list[tuple[int, str, _Entry, int]] = []
        for cid in ids:
            e = usable.get(cid)
            if e is None or e.record.reason in ("paused", "ended", "lifetime_budget"):
                continue
            m = rule.multiplier_bp(e.record.spec.targeting.interests, profile_interests, weights)
            priced.append((RelevanceRule.price(e.record.spec.bid_cpm_micros, m), cid, e, m))
        priced.sort(key=lambda t: (-t[0], t[1]))
        cands: list[_Cand] = []
        load = {i.imp_id: 0 for i in req.imps}
        for price, _cid, e, m in priced:
            if impression_cost_micros(price) <= 0:
                continue
            best: tuple[int, int, AdImp, str] | None = None
            for pos, imp in enumerate(req.imps):
                crid = _fits(e.record, imp)
                if crid is None or price < to_micros(imp.floor):
                    continue
                key = (load[imp.imp_id], pos)
                if best is None or key < best[:2]:
                    best = (key[0], key[1], imp, crid)
            if best is None:
                continue
            load[best[2].imp_id] += 1
            cands.append(_Cand(e, best[2].imp_id, best[3], price, m))
            if len(cands) >= cfg.max_candidates:
                break
        if not cands:
            self._refresh_later(stale)
            return _decision(req, [], "no_bid", len(ids), 0, 0, 0, False, rounds)

        # ---- round 2: caps (one check) + a reservation per candidate (+ record refresh) ----
        calls = [fc.check_call(req.user_id, [c.entry.candidate for c in cands])]
        calls += [
            bud.reserve_call(c.cid, rid, impression_cost_micros(c.price), cfg.reservation_ttl)
            for c in cands
        ]
        calls += [campaign_get_call(c) for c in stale]
        r = yield calls
        rounds += 1
        t_reserved = time.monotonic()
        caps_ok = _ok(r[0])
        if stale:
            self.records.store(stale, r[1 + len(cands) :])
        eligible: list[_Cand] = []
        to_release: list[str] = []
        capped = refused = 0
        for c, d, res in zip(cands, caps_ok, r[1 : 1 + len(cands)], strict=True):
            if isinstance(res, AlreadyExistsError):
                # A retry whose price moved: the earlier attempt's reservation stands (it is
                # that attempt's to settle, or it expires); leave this candidate out.
                refused += 1
                continue
            if isinstance(res, InvalidStateError):
                refused += 1  # an earlier attempt already settled this reservation
                continue
            res = _ok(res)
            if not res.ok:
                refused += 1
            elif not d.allowed:
                capped += 1
                if creator:
                    to_release.append(c.cid)
            else:
                eligible.append(c)

        # ---- round 3: bids + close (one pipeline on the auction's node), the predicted
        # winners' caps recorded, the capped candidates' reservations released ----
        stored: dict[tuple[str, str], int] = {}
        if existing is not None:
            stored = {(b.seat, b.bid_id): b.price_micros for b in existing.bids}
        bids = [c.bid() for c in eligible]
        predicted: dict[str, _Cand] = {}
        for c in eligible:
            p = stored.get((c.seat, c.cid), c.price)
            cur = predicted.get(c.imp_id)
            if cur is None or p > stored.get((cur.seat, cur.cid), cur.price):
                predicted[c.imp_id] = c
        calls = []
        if bids:
            calls += [auc.bid_many_call(rid, bids), auc.close_call(rid)]
        win_imps = sorted(predicted)
        calls += [
            fc.record_call(
                req.user_id,
                f"{rid}:{imp_id}",
                predicted[imp_id].entry.candidate,
                dedupe_ttl=cfg.cap_dedupe_ttl,
            )
            for imp_id in win_imps
        ]
        calls += [bud.release_call(cid, rid) for cid in to_release]
        if not calls:
            return _decision(req, [], "no_bid", len(ids), capped, refused, 0, False, rounds)
        r = yield calls
        rounds += 1
        if not bids:
            return _decision(req, [], "no_bid", len(ids), capped, refused, 0, False, rounds)
        result: auc.AuctionResult = _ok(r[1])
        recorded = {
            imp_id: _ok(x) for imp_id, x in zip(win_imps, r[2 : 2 + len(win_imps)], strict=True)
        }

        # ---- round 4: commit the winners, release the rest, session and stats ----
        by_cid = {c.cid: c for c in eligible}
        late_risk = time.monotonic() - t_reserved > cfg.reservation_ttl / 2
        wins: list[tuple[_Cand, auc.ImpResult, fc.Impression]] = []
        unfilled: list[tuple[str, str]] = []
        winners: set[str] = set()
        for res_imp in result.imps:
            w = res_imp.winner
            guess = predicted.get(res_imp.imp_id)
            rec = recorded.get(res_imp.imp_id)
            if w is None or w.cid is None:
                unfilled.append((res_imp.imp_id, "no_bid"))
                continue
            if guess is None or guess.cid != w.cid or rec is None:
                # Only on a retry whose stored bids outrank the new ones: leave the imp empty.
                unfilled.append((res_imp.imp_id, "mismatch"))
                continue
            if not rec.admitted:
                unfilled.append((res_imp.imp_id, "capped"))
                continue
            winners.add(w.cid)
            wins.append((by_cid[w.cid], res_imp, rec))
        # Losers give their reservation back, and so does a winner this attempt refused (its
        # cap). A winner this attempt did not predict is left alone: another attempt of the same
        # request may be settling it (its reservation expires if none is).
        mine = {c.cid for c in predicted.values()}
        release = [
            b.cid
            for b in result.bids
            if b.cid and b.cid not in winners and (b.status != "won" or b.cid in mine)
        ]
        return (
            yield from self._settle(
                req,
                wins,
                release,
                unfilled,
                len(ids),
                capped,
                refused,
                len(bids),
                False,
                rounds,
                late_risk or not creator,
            )
        )

    def _settle(
        self,
        req: AdRequest,
        wins: list[tuple[_Cand, auc.ImpResult, fc.Impression]],
        release: list[str],
        unfilled: list[tuple[str, str]],
        n_ids: int,
        capped: int,
        refused: int,
        n_bids: int,
        replay: bool,
        rounds: int,
        separate_records: bool,
    ) -> Plan:
        """Commit every admitted winner at its clearing price and release the others; record the
        session impression and the stats. The records go with the commits unless a commit may be
        late (then they wait for the commit's answer, one more round)."""
        rid = req.request_id
        costs = [impression_cost_micros(imp.clearing_micros) for _, imp, _ in wins]
        commits: list[Call[Any]] = [
            bud.commit_call(c.cid, rid, cost) for (c, _, _), cost in zip(wins, costs, strict=True)
        ]
        rel: list[Call[Any]] = [bud.release_call(cid, rid) for cid in sorted(set(release))]
        records = self._records(req, wins, costs)
        if separate_records:
            r = yield commits + rel
            rounds += 1
            done = [_commit_status(x) for x in r[: len(commits)]]
            keep = [i for i, (status, _) in enumerate(done) if status in _CHARGED]
            records = self._records(req, [wins[i] for i in keep], [costs[i] for i in keep])
            if records:
                yield records
                rounds += 1
        else:
            r = yield commits + rel + records
            rounds += 1
            done = [_commit_status(x) for x in r[: len(commits)]]
        placements: list[Placement] = []
        for (c, imp, _), cost, (status, index) in zip(wins, costs, done, strict=True):
            self._add_pending(index)
            if status in _CHARGED:
                placements.append(
                    Placement(
                        imp.imp_id,
                        c.cid,
                        c.seat,
                        c.creative_id,
                        c.price,
                        imp.clearing_micros,
                        cost,
                        c.multiplier,
                    )
                )
            else:
                log.warning("adcache: commit of %s for %s refused (%s)", c.cid, rid, status)
                unfilled.append((imp.imp_id, "refused"))
        return Decision(
            rid,
            tuple(placements),
            tuple(sorted(unfilled)),
            n_ids,
            capped,
            refused,
            n_bids,
            replay,
            rounds,
        )

    def _records(
        self,
        req: AdRequest,
        wins: Sequence[tuple[_Cand, auc.ImpResult, fc.Impression]],
        costs: Sequence[int],
    ) -> list[Call[Any]]:
        out: list[Call[Any]] = []
        cfg = self._stats_config()
        for (c, imp, _rec), cost in zip(wins, costs, strict=True):
            event = st.Event(
                impressions=1,
                cost_micros=cost,
                user_id=req.user_id,
                event_id=f"{req.request_id}:{imp.imp_id}",
            )
            out.append(st.record_call(c.cid, [event], cfg))
            # De-duplicated under the same id as the cap record and the stats event: a retry
            # counts the impression in the session exactly once.
            if req.session_id:
                out.append(
                    sess.impression_call(
                        req.session_id,
                        campaign_id=c.cid,
                        impression_id=f"{req.request_id}:{imp.imp_id}",
                    )
                )
        return out

    def _settle_replay(self, req: AdRequest, result: auc.AuctionResult, rounds: int) -> Plan:
        """A retry whose auction already closed: settle that auction, never a new one."""
        rid = req.request_id
        cfg = self.config
        need = sorted({i.winner.cid for i in result.imps if i.winner and i.winner.cid})
        usable, _, missing = self.records.lookup(need)
        if missing:
            r = yield [campaign_get_call(c) for c in missing]
            rounds += 1
            usable.update(self.records.store(missing, [_ok(x) for x in r]))
        win_imps: list[auc.ImpResult] = []
        removed: list[tuple[str, str]] = []
        calls: list[Call[Any]] = []
        for imp in result.imps:
            w = imp.winner
            if w is None or w.cid is None:
                continue
            if w.cid not in usable:
                removed.append((imp.imp_id, "removed"))  # the campaign is gone: nothing to charge
                continue
            win_imps.append(imp)
            calls.append(
                fc.record_call(
                    req.user_id,
                    f"{rid}:{imp.imp_id}",
                    usable[w.cid].candidate,
                    dedupe_ttl=cfg.cap_dedupe_ttl,
                )
            )
        if result.state == "due":
            calls.append(auc.close_call(rid))
        recs: list[fc.Impression] = []
        if calls:
            r = yield calls
            rounds += 1
            recs = [_ok(x) for x in r[: len(win_imps)]]
        wins: list[tuple[_Cand, auc.ImpResult, fc.Impression]] = []
        unfilled: list[tuple[str, str]] = list(removed)
        winners: set[str] = set()
        for imp, rec in zip(win_imps, recs, strict=True):
            assert imp.winner is not None and imp.winner.cid is not None
            if not rec.admitted:
                unfilled.append((imp.imp_id, "capped"))
                continue
            e = usable[imp.winner.cid]
            winners.add(e.record.campaign_id)
            price, bid = imp.winner.price_micros, e.record.spec.bid_cpm_micros
            m = -(-price * BP // bid) if bid else 0  # the multiplier that gave this price
            cand = _Cand(e, imp.imp_id, imp.winner.crid or "", price, m)
            wins.append((cand, imp, rec))
        for imp in result.imps:
            if imp.winner is None:
                unfilled.append((imp.imp_id, "no_bid"))
        release = [b.cid for b in result.bids if b.cid and b.cid not in winners]
        # A replay may come after the reservations expired: commit first, then the records.
        return (
            yield from self._settle(
                req, wins, release, unfilled, 0, 0, 0, len(result.bids), True, rounds, True
            )
        )

    def _refresh_later(self, stale: list[str]) -> None:
        # Nothing to bid with: refresh the stale records with the next request's first round.
        if stale:
            with self._lock:
                self._refresh.update(stale)


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


def _decision(
    req: AdRequest,
    placements: list[Placement],
    reason: str,
    n_ids: int,
    capped: int,
    refused: int,
    n_bids: int,
    replay: bool,
    rounds: int,
) -> Decision:
    unfilled = tuple((i.imp_id, reason) for i in req.imps)
    return Decision(
        req.request_id, tuple(placements), unfilled, n_ids, capped, refused, n_bids, replay, rounds
    )


# ---- facades ----


class Decisions:
    """The ad decision on a synchronous `AdCache` (`cache.decide`)."""

    def __init__(self, cache: AdCache, config: DecideConfig | None = None) -> None:
        self._c = cache
        self.engine = Engine(cache, config)

    @property
    def config(self) -> DecideConfig:
        return self.engine.config

    @config.setter
    def config(self, value: DecideConfig) -> None:
        self.engine.configure(value)

    def decide(self, request: AdRequest) -> Decision:
        """Serve one request end to end (four rounds with a warm record cache); safe to retry
        with the same request id."""
        plan = self.engine.path(request)
        try:
            calls = next(plan)
            while True:
                calls = plan.send(self._c.run_many(calls, raise_on_error=False))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def flush(self) -> int:
        """Send the index updates commits asked for (normally they ride with the next request)."""
        calls, refresh = self.engine._take_pending()
        if refresh:
            got = self._c.run_many([campaign_get_call(c) for c in refresh], raise_on_error=False)
            self.engine.records.store(refresh, got)
        if calls:
            self._c.run_many(calls, raise_on_error=False)
        return len(calls)


class AsyncDecisions:
    """The ad decision on an asyncio `AdCache` (`cache.decide`)."""

    def __init__(self, cache: aio.AdCache, config: DecideConfig | None = None) -> None:
        self._c = cache
        self.engine = Engine(cache, config)

    @property
    def config(self) -> DecideConfig:
        return self.engine.config

    @config.setter
    def config(self, value: DecideConfig) -> None:
        self.engine.configure(value)

    async def decide(self, request: AdRequest) -> Decision:
        plan = self.engine.path(request)
        try:
            calls = next(plan)
            while True:
                calls = plan.send(await self._c.run_many(calls, raise_on_error=False))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def flush(self) -> int:
        calls, refresh = self.engine._take_pending()
        if refresh:
            got = await self._c.run_many(
                [campaign_get_call(c) for c in refresh], raise_on_error=False
            )
            self.engine.records.store(refresh, got)
        if calls:
            await self._c.run_many(calls, raise_on_error=False)
        return len(calls)


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
]
