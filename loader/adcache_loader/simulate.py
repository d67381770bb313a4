"""`adcache simulate`: a generated population driven through the ad decision, then audited.

Users with interests and locations, campaigns with budgets, caps and targeting, sessions with
page views; requests go through `cache.decide` from several threads (each with its own client),
and the stored state is checked against what was served: no campaign over its budget, no user
over a cap, spend equal to the sum of the winners' clearing prices, stats equal to the served
impressions, no reservation left outstanding. Also used by the tests and the benchmark.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adcache import AdCache
from adcache.campaigns import CampaignSpec, Creative, FrequencyCapRule
from adcache.decide import AdImp, AdRequest, Decision
from adcache.targeting import Targeting

INTERESTS = (
    "sports", "tech", "travel", "auto", "finance", "food",
    "fashion", "gaming", "music", "health", "news", "home",
)  # fmt: skip
LOCATIONS = ("US", "KR", "JP", "DE", "FR", "GB")
DEVICES = ("mobile", "desktop", "tablet")
SIZES = ((300, 250), (728, 90), (320, 50))


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    session_id: str
    interests: tuple[str, ...]
    location: str
    device: str


@dataclass(frozen=True, slots=True)
class Population:
    prefix: str
    campaigns: dict[str, CampaignSpec]
    users: tuple[User, ...]
    requests: tuple[AdRequest, ...]


def generate(
    prefix: str,
    *,
    n_users: int = 200,
    n_campaigns: int = 40,
    n_requests: int = 1000,
    cap_period: str = "day",
    seed: int = 7,
    budget_scale: float = 1.0,
) -> Population:
    """A reproducible population; ids start with `prefix` (no braces or colons)."""
    rnd = random.Random(seed)
    now = int(time.time() * 1000)
    campaigns: dict[str, CampaignSpec] = {}
    for i in range(n_campaigns):
        interests = () if rnd.random() < 0.2 else tuple(rnd.sample(INTERESTS, rnd.randint(1, 3)))
        locs = () if rnd.random() < 0.4 else tuple(rnd.sample(LOCATIONS, rnd.randint(1, 3)))
        devs = () if rnd.random() < 0.6 else (rnd.choice(DEVICES),)
        bid = rnd.randint(50, 500) * 10_000  # 0.50 to 5.00 CPM
        budget = max(int(rnd.randint(10, 60) * bid / 1000 * budget_scale), bid // 1000)
        # 10-60 impressions at the bid (more at second-price clearing)
        even = rnd.random() < 0.25
        sizes = rnd.sample(SIZES, rnd.randint(1, 2))
        campaigns[f"{prefix}c{i}"] = CampaignSpec(
            advertiser_id=f"{prefix}adv{i % 8}",
            bid_cpm_micros=bid,
            budget_micros=budget,
            daily_budget_micros=budget if even else 0,
            start_ms=now - 3_600_000,
            end_ms=now + 7 * 86_400_000,
            targeting=Targeting.of(interests, locs, devs),
            pacing="even" if even else "off",
            pacing_floor_micros=budget // 2 if even else 0,
            frequency_caps=(FrequencyCapRule(rnd.randint(1, 3), cap_period),),
            creatives=tuple(
                Creative(f"cr{i}x{j}", w, h, "image/png", f"https://cdn.example/{i}/{j}.png")
                for j, (w, h) in enumerate(sizes)
            ),
        )
    users = tuple(
        User(
            f"{prefix}u{i}",
            f"{prefix}s{i}",
            tuple(rnd.sample(INTERESTS, rnd.randint(1, 4))),
            rnd.choice(LOCATIONS),
            rnd.choice(DEVICES),
        )
        for i in range(n_users)
    )
    requests: list[AdRequest] = []
    for n in range(n_requests):
        u = rnd.choice(users)
        cats = (
            rnd.sample(u.interests, min(len(u.interests), rnd.randint(1, 2)))
            if rnd.random() < 0.6
            else rnd.sample(INTERESTS, rnd.randint(1, 2))
        )
        imps = tuple(
            AdImp(f"i{k}", floor=rnd.choice(("0", "0.25", "0.5", "1")), sizes=(rnd.choice(SIZES),))
            for k in range(rnd.choice((1, 1, 1, 2)))
        )
        requests.append(
            AdRequest(
                f"{prefix}r{n}",
                u.user_id,
                imps,
                session_id=u.session_id,
                categories=tuple(cats),
                keywords=("kw" + cats[0],),
                location=u.location,
                device=u.device,
            )
        )
    return Population(prefix, campaigns, users, tuple(requests))


def setup(cache: AdCache, pop: Population, *, views: int = 3, seed: int = 7) -> None:
    """Write the campaigns (and their index entries), profiles, sessions and page views."""
    rnd = random.Random(seed)
    for cid, spec in pop.campaigns.items():
        cache.campaigns.set(cid, spec)
    from adcache import profiles, sessions

    calls: list[Any] = []
    for u in pop.users:
        calls.append(profiles.set_call(u.user_id, interests=list(u.interests), idle_ttl=3600))
        calls.append(
            sessions.create_call(u.session_id, u.user_id, idle_ttl=1800, max_lifetime=7200)
        )
    cache.run_many(calls)
    calls = []
    for u in pop.users:
        for _ in range(rnd.randint(1, views)):
            cats = rnd.sample(u.interests, min(len(u.interests), 2))
            calls.append(sessions.track_call(u.session_id, kind="view", categories=cats))
    cache.run_many(calls)


@dataclass
class RunResult:
    decisions: list[Decision] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    record_hit_rate: float | None = None


def drive(
    make_cache: Callable[[], AdCache],
    requests: Sequence[AdRequest],
    *,
    threads: int = 4,
    progress: Callable[[int], None] | None = None,
    configure: Callable[[AdCache], None] | None = None,
) -> RunResult:
    """Serve the requests from `threads` threads, each with its own client."""
    out = RunResult()
    lock = threading.Lock()
    hits = [0, 0]

    def work(part: Sequence[AdRequest]) -> None:
        cache = make_cache()
        if configure is not None:
            configure(cache)
        try:
            for req in part:
                t = time.perf_counter()
                try:
                    d = cache.decide.decide(req)
                except Exception as e:
                    with lock:
                        out.errors.append(f"{req.request_id}: {e!r}")
                    continue
                ms = (time.perf_counter() - t) * 1000
                with lock:
                    out.decisions.append(d)
                    out.latencies_ms.append(ms)
                if progress is not None:
                    progress(1)
            cache.decide.flush()
        finally:
            with lock:
                hits[0] += cache.decide.engine.records.hits
                hits[1] += cache.decide.engine.records.misses
            cache.close()

    # A user's requests stay on one thread, in order, as one browser sends them.
    parts: list[list[AdRequest]] = [[] for _ in range(threads)]
    for r in requests:
        parts[hash(r.user_id) % threads].append(r)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(p,)) for p in parts if p]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.seconds = time.perf_counter() - t0
    total = hits[0] + hits[1]
    out.record_hit_rate = hits[0] / total if total else None
    return out


@dataclass
class Audit:
    served: int
    requests: int
    spent: dict[str, int]
    budgets: dict[str, int]
    overspend: int
    cap_violations: int
    spend_mismatches: list[str]
    stats_mismatches: list[str]
    outstanding: dict[str, int]

    @property
    def ok(self) -> bool:
        return not (
            self.overspend
            or self.cap_violations
            or self.spend_mismatches
            or self.stats_mismatches
            or any(self.outstanding.values())
        )


def audit(cache: AdCache, pop: Population, decisions: Sequence[Decision]) -> Audit:
    """Check the stored state against the decisions."""
    from adcache import budgets, stats

    cost: Counter[str] = Counter()
    served: Counter[str] = Counter()
    per_user: Counter[tuple[str, str]] = Counter()
    user_of = {r.request_id: r.user_id for r in pop.requests}
    for d in decisions:
        for p in d.placements:
            cost[p.campaign_id] += p.cost_micros
            served[p.campaign_id] += 1
            per_user[(user_of.get(d.request_id, "?"), p.campaign_id)] += 1
    ids = list(pop.campaigns)
    states = cache.run_many([budgets.state_call(c) for c in ids])
    sums = cache.run_many([stats.summary_call(c, "day", 1, cache.stats.config) for c in ids])
    spent = {s.campaign_id: s.spent_micros for s in states}
    overspend = sum(max(0, s.spent_micros - s.budget_micros) for s in states)
    spend_mm = [
        f"{s.campaign_id}: spent {s.spent_micros} != clearing sum {cost[s.campaign_id]}"
        for s in states
        if s.spent_micros != cost[s.campaign_id]
    ]
    stats_mm = [
        f"{m.campaign_id}: stats {m.impressions} imps / {m.cost_micros} != "
        f"{served[m.campaign_id]} / {cost[m.campaign_id]}"
        for m in sums
        if m.impressions != served[m.campaign_id] or m.cost_micros != cost[m.campaign_id]
    ]
    limit = {
        c: min((r.limit for r in s.frequency_caps), default=0) for c, s in pop.campaigns.items()
    }
    violations = sum(1 for (_, c), n in per_user.items() if limit.get(c, 0) and n > limit[c])
    # and the stored counters themselves
    users = sorted({u for u, _ in per_user})
    for _u, counters in zip(users, cache.run_many([_inspect(u) for u in users]), strict=True):
        for k in counters:
            if k.scope == "campaign" and k.entity_id in limit and k.count > limit[k.entity_id]:
                violations += 1
    return Audit(
        served=sum(served.values()),
        requests=len(decisions),
        spent=spent,
        budgets={s.campaign_id: s.budget_micros for s in states},
        overspend=overspend,
        cap_violations=violations,
        spend_mismatches=spend_mm,
        stats_mismatches=stats_mm,
        outstanding={s.campaign_id: s.outstanding for s in states if s.outstanding},
    )


def _inspect(user_id: str) -> Any:
    from adcache.caps import inspect_call

    return inspect_call(user_id)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def by_campaign(decisions: Sequence[Decision]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for d in decisions:
        for p in d.placements:
            out[p.campaign_id].append(p.clearing_micros)
    return out


@dataclass
class Report:
    result: RunResult
    audit: Audit
    hit_rate: float | None


def run_simulation(
    url: str,
    *,
    cluster: bool | None,
    requests: int,
    users: int,
    campaigns: int,
    threads: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Generate, set up, drive and audit one population on a deployed server or cluster."""
    prefix = f"sim{int(time.time()) % 1_000_000}"
    pop = generate(prefix, n_users=users, n_campaigns=campaigns, n_requests=requests, seed=seed)
    admin = AdCache.from_url(url, cluster=cluster)
    try:
        is_cluster = admin.is_cluster
        setup(admin, pop, seed=seed)
        res = drive(
            lambda: AdCache.from_url(url, cluster=is_cluster),
            pop.requests,
            threads=threads,
            progress=progress,
        )
        return Report(res, audit(admin, pop, res.decisions), admin.monitor.health().hit_rate)
    finally:
        admin.close()


def summary_rows(rep: Report) -> list[tuple[str, str]]:
    """The figures `adcache simulate` prints, as (name, value) rows."""
    res, a = rep.result, rep.audit
    n = len(res.decisions)
    spent, budget = sum(a.spent.values()), sum(a.budgets.values())
    exhausted = sum(1 for c, s in a.spent.items() if a.budgets[c] - s < a.budgets[c] // 50)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x * 100:.1f} %"

    return [
        ("requests", f"{n} ({len(res.errors)} failed) in {res.seconds:.1f} s"),
        ("decisions / s", f"{n / res.seconds:,.0f}" if res.seconds else "-"),
        ("served rate", pct(sum(d.served for d in res.decisions) / n if n else None)),
        ("impressions", f"{a.served}"),
        (
            "spend / budgets",
            f"{spent:,} / {budget:,} micros ({pct(spent / budget if budget else None)}), "
            f"{exhausted} of {len(a.budgets)} campaigns at their budget",
        ),
        ("overspend", f"{a.overspend} micros"),
        ("cap violations", f"{a.cap_violations}"),
        (
            "spend = clearing prices",
            "yes" if not a.spend_mismatches else f"NO: {a.spend_mismatches[:3]}",
        ),
        ("stats = served", "yes" if not a.stats_mismatches else f"NO: {a.stats_mismatches[:3]}"),
        ("reservations left", f"{sum(a.outstanding.values())}"),
        (
            "decision p50 / p99",
            f"{percentile(res.latencies_ms, 0.5):.2f} / "
            f"{percentile(res.latencies_ms, 0.99):.2f} ms",
        ),
        (
            "rounds per request",
            " ".join(
                f"{k}:{v}" for k, v in sorted(Counter(d.rounds for d in res.decisions).items())
            ),
        ),
        ("redis hit rate (cache.monitor)", pct(rep.hit_rate)),
        ("campaign record cache hit rate", pct(res.record_hit_rate)),
    ]
