"""The ad decision end to end: invariants under concurrency, faults between steps, retries,
the number of sequential rounds, and the asyncio twin."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from specs import live_spec

from adcache import AdCache, aio
from adcache import _generated as keys
from adcache._core import Call
from adcache.decide import AdImp, AdRequest, DecideConfig, Decision, RelevanceRule
from adcache_loader import simulate as sim
from adcache_loader.servers import LocalCluster, Standalone


def _cluster_cache(lib_cluster: Any) -> AdCache:
    return AdCache(lib_cluster.client())


class CountingCache(AdCache):
    """Counts sequential network rounds (every run_many and every single run is one) and the
    calls of each function."""

    rounds = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.functions: Counter[str] = Counter()  # calls per function

    def run_many(self, calls: Sequence[Call[Any]], *, raise_on_error: bool = True) -> list[Any]:
        self.rounds += 1
        self.functions.update(c.function for c in calls)
        return super().run_many(calls, raise_on_error=raise_on_error)

    def run(self, call: Call[Any]) -> Any:
        self.rounds += 1
        return super().run(call)


class FaultyCache(AdCache):
    """Loses the connection at round `fail_at`: before sending it ("before"), or after the
    server executed it but before the replies reach the caller ("after")."""

    fail_at = 0
    mode = "before"
    seen = 0

    def run_many(self, calls: Sequence[Call[Any]], *, raise_on_error: bool = True) -> list[Any]:
        self.seen += 1
        if self.seen == self.fail_at and self.mode == "before":
            raise RedisConnectionError("injected: connection lost before the round")
        out = super().run_many(calls, raise_on_error=raise_on_error)
        if self.seen == self.fail_at:
            raise RedisConnectionError("injected: connection lost after the round")
        return out


def test_relevance_rule_is_integer_and_capped() -> None:
    rule = RelevanceRule()
    assert rule.multiplier_bp((), frozenset({"a"}), {"a": 5000}) == 10_000  # targets all
    assert rule.multiplier_bp(("a",), frozenset(), {}) == 10_000
    assert rule.multiplier_bp(("a",), frozenset({"a"}), {}) == 12_000
    assert rule.multiplier_bp(("a", "b"), frozenset(), {"a": 1000}) == 11_500
    assert rule.multiplier_bp(("a",), frozenset(), {"a": 1000, "b": 9000}) == 11_500
    assert rule.multiplier_bp(("a",), frozenset({"a"}), {"a": 9000}) == 15_000  # capped
    assert RelevanceRule.price(2_500_001, 11_500) == 2_875_001  # floor(x * 1.15)


def test_bad_requests_are_refused_before_any_call() -> None:
    with pytest.raises(ValueError):
        AdRequest("r", "u", ())
    with pytest.raises(ValueError):
        AdRequest("r", "u", (AdImp("1"), AdImp("1")))
    with pytest.raises(ValueError):
        AdRequest("x" * 101, "u", (AdImp("1"),))


def test_end_to_end_on_the_cluster(lib_cluster: LocalCluster, uid: str) -> None:
    """2,000 requests from 4 threads (each its own client) on the 3-primary cluster, then the
    stored state is checked against what was served."""
    pop = sim.generate(
        uid, n_users=150, n_campaigns=30, n_requests=2000, cap_period="month", seed=11
    )
    admin = _cluster_cache(lib_cluster)
    try:
        sim.setup(admin, pop)
        res = sim.drive(lambda: _cluster_cache(lib_cluster), pop.requests, threads=4)
        assert res.errors == []
        assert len(res.decisions) == 2000
        a = sim.audit(admin, pop, res.decisions)
        assert a.served > 200
        assert a.overspend == 0
        assert a.cap_violations == 0
        assert a.spend_mismatches == []
        assert a.stats_mismatches == []
        assert a.outstanding == {}
        # budgets really were the limit for some campaigns (else the check proves little)
        tight = [
            c
            for c, s in a.spent.items()
            if a.budgets[c] - s < pop.campaigns[c].bid_cpm_micros // 1000
        ]
        assert tight
        assert sum(d.capped for d in res.decisions) > 0
        assert max(d.rounds for d in res.decisions) <= 5
        # every key the path wrote has a TTL or an owner, and a known pattern and type
        report = admin.monitor.audit(max_keys=200_000, max_report=10_000)
        assert not [k for k in (*report.no_ttl, *report.unknown, *report.wrong_type) if uid in k]
        # one more round only when a client first sees a campaign (4 clients, 30 campaigns)
        assert max(d.rounds for d in res.decisions) <= 4
    finally:
        admin.close()


def test_never_more_than_four_rounds(lib_standalone: Standalone, uid: str) -> None:
    pop = sim.generate(uid, n_users=20, n_campaigns=12, n_requests=60, seed=3)
    admin = AdCache(lib_standalone.client())
    cache = CountingCache(lib_standalone.client())
    try:
        sim.setup(admin, pop)
        # A campaign the record cache has never seen is skipped once and fetched alongside
        # round 2 (cold_records="skip", the default): even a cold client stays within 4 rounds.
        before = cache.rounds
        cold = cache.decide.decide(pop.requests[0])
        assert cold.rounds == cache.rounds - before <= 4
        assert not cold.served and cold.candidates > 0
        warm_up = [
            cache.decide.decide(replace(req, request_id=req.request_id + "w"))
            for req in pop.requests[20:]
        ]
        assert max(d.rounds for d in warm_up) <= 4
        assert sum(d.served for d in warm_up) > 10  # skipped campaigns bid from the next request on
        fcalls_before = _fcalls(admin)
        counts = []
        for req in pop.requests[20:]:
            before = cache.rounds
            cache.functions = Counter()
            d = cache.decide.decide(req)
            counts.append(cache.rounds - before)
            assert d.rounds == cache.rounds - before
            # budget calls only where a bid can win: each imp's top candidate, and a fallback
            # winner when the top one is capped or refused; one commit per placement
            f = cache.functions
            assert f["ac_budget_reserve"] <= 2 * len(req.imps)
            assert f["ac_budget_commit"] == len(d.placements)
            assert f["ac_budget_release"] <= f["ac_budget_reserve"] - f["ac_budget_commit"]
            assert f["ac_auction_bid_close"] <= 1 and d.bids <= 2 * len(req.imps)
            assert f["ac_auction_bid"] + f["ac_auction_close"] + f["ac_auction_create"] == 0
        assert max(counts) <= 4
        assert counts.count(4) > 10  # most requests go the whole way
        # the FCALLs of those requests all went through those rounds (several per round)
        assert _fcalls(admin) - fcalls_before > 4 * len(counts)
    finally:
        cache.close()
        admin.close()


def _fcalls(cache: AdCache) -> int:
    stats = cache.redis.info("commandstats")
    return sum(int(stats.get(k, {}).get("calls", 0)) for k in ("cmdstat_fcall", "cmdstat_fcall_ro"))


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_fault_between_steps_then_retries(lib_cluster: LocalCluster, uid: str, mode: str) -> None:
    """The connection is lost at each round in turn; after the reservations expire nothing is
    held, spent or counted beyond what was served, and retries never charge or count twice."""
    pop = sim.generate(uid, n_users=6, n_campaigns=8, n_requests=16, seed=5)
    cfg = DecideConfig(reservation_ttl=1.0, cold_records="fetch")
    admin = _cluster_cache(lib_cluster)
    try:
        sim.setup(admin, pop)
        # warm the record cache so each request takes the plain four rounds
        ids = list(pop.campaigns)
        warmed = admin.campaigns.get_many(ids)
        decisions = []
        injected = 0
        for n, req in enumerate(pop.requests):
            faulty = FaultyCache(lib_cluster.client())
            faulty.decide.config = cfg
            faulty.decide.engine.records.store(ids, warmed)
            faulty.fail_at, faulty.mode = 1 + n % 4, mode
            try:
                faulty.decide.decide(req)  # a request that ends sooner is not hit
            except RedisConnectionError:
                injected += 1
            faulty.close()
        assert injected >= 6
        time.sleep(1.3)  # the reservations of the dead attempts expire
        states = [admin.budgets.state(c) for c in pop.campaigns]
        assert all(s.outstanding == 0 and s.reserved_micros == 0 for s in states)
        # retry every request on a healthy client: each settles once
        healthy = _cluster_cache(lib_cluster)
        healthy.decide.config = cfg
        try:
            for req in pop.requests:
                decisions.append(healthy.decide.decide(req))
            snapshot = _snapshot(admin, pop)
            again = [healthy.decide.decide(req) for req in pop.requests]
            assert [_served(d) for d in again] == [_served(d) for d in decisions]
            assert all(d.replay for d in again if d.placements)
            assert _snapshot(admin, pop) == snapshot
        finally:
            healthy.close()
        assert sum(len(d.placements) for d in decisions) >= 3
        a = sim.audit(admin, pop, decisions)
        assert a.overspend == 0 and a.cap_violations == 0
        assert a.spend_mismatches == [] and a.stats_mismatches == []
        assert a.outstanding == {}
    finally:
        admin.close()


def _served(d: Decision) -> list[tuple[str, str, int, int]]:
    return [(p.imp_id, p.campaign_id, p.clearing_micros, p.cost_micros) for p in d.placements]


def _snapshot(cache: AdCache, pop: sim.Population) -> tuple[Any, ...]:
    states = [cache.budgets.state(c) for c in pop.campaigns]
    sums = cache.stats.summaries(list(pop.campaigns), days=1)
    caps = [
        sorted((k.entity_id, k.count) for k in cache.caps.inspect(u.user_id)) for u in pop.users
    ]
    return (
        [(s.spent_micros, s.committed_micros, s.late_micros) for s in states],
        [(m.impressions, m.cost_micros) for m in sums],
        caps,
    )


async def test_async_twin_on_the_cluster(
    lib_cluster: LocalCluster, aac_cluster: aio.AdCache, uid: str
) -> None:
    """400 requests as 16 concurrent asyncio tasks over one asyncio client."""
    pop = sim.generate(uid, n_users=60, n_campaigns=15, n_requests=400, cap_period="month", seed=9)
    admin = _cluster_cache(lib_cluster)
    try:
        sim.setup(admin, pop)
        queues: dict[int, list[AdRequest]] = {}
        for r in pop.requests:
            queues.setdefault(hash(r.user_id) % 16, []).append(r)
        out: list[Decision] = []

        # "fetch": a first attempt never skips a campaign, so a replay must equal it exactly
        aac_cluster.decide.config = DecideConfig(cold_records="fetch")

        async def worker(reqs: list[AdRequest]) -> None:
            for r in reqs:
                out.append(await aac_cluster.decide.decide(r))

        await asyncio.gather(*(worker(q) for q in queues.values()))
        await aac_cluster.decide.flush()
        assert len(out) == 400
        a = sim.audit(admin, pop, out)
        assert a.served > 50
        assert a.ok, a
        assert max(d.rounds for d in out) <= 5
        # a retry through the asyncio client replays
        d = out[0]
        req = next(r for r in pop.requests if r.request_id == d.request_id)
        again = await aac_cluster.decide.decide(req)
        assert _served(again) == _served(d)
    finally:
        admin.close()


def test_one_user_from_many_clients_at_once_never_passes_a_cap(
    lib_cluster: LocalCluster, uid: str
) -> None:
    """Requests of the same two users from 6 clients at once: the check and the record race,
    and the record (atomic, before any commit) keeps every campaign within its cap."""
    import threading

    pop = sim.generate(uid, n_users=2, n_campaigns=10, n_requests=240, cap_period="month", seed=4)
    admin = _cluster_cache(lib_cluster)
    try:
        sim.setup(admin, pop)
        out: list[Decision] = []
        lock = threading.Lock()

        def work(part: Sequence[AdRequest]) -> None:
            cache = _cluster_cache(lib_cluster)
            try:
                for r in part:
                    d = cache.decide.decide(r)
                    with lock:
                        out.append(d)
            finally:
                cache.close()

        ts = [threading.Thread(target=work, args=(pop.requests[i::6],)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(out) == 240
        a = sim.audit(admin, pop, out)
        assert a.served > 0
        assert a.ok, a
        # every cap was reached: the users saw all they were allowed to, and no more
        assert sum(d.capped for d in out) > 0
    finally:
        admin.close()


def test_tracking_and_profile_interests_in_the_query(lib_standalone: Standalone, uid: str) -> None:
    """track=True appends the request to the session; expand_interests=True adds the profile's
    interests to the query (one more round) and finds campaigns the page alone would not."""
    from adcache.targeting import Targeting

    cache = AdCache(lib_standalone.client())
    try:
        cid = f"{uid}c"
        spec = live_spec(
            Targeting.of([f"{uid}x"]), advertiser_id=f"{uid}a", bid_cpm_micros=2_000_000
        )
        cache.campaigns.set(cid, spec)
        cache.profiles.set(f"{uid}u", interests=[f"{uid}x"])
        cache.sessions.create(f"{uid}s", f"{uid}u", idle_ttl=60, max_lifetime=600)
        req = AdRequest(f"{uid}r1", f"{uid}u", (AdImp("1"),), session_id=f"{uid}s",
                        categories=("news",))  # fmt: skip
        cache.decide.config = DecideConfig(track=True, cold_records="fetch")
        d = cache.decide.decide(req)
        assert not d.served and d.candidates == 0  # the page is about news
        hist = cache.sessions.history(f"{uid}s")
        assert hist is not None and hist[0].kind == "request" and hist[0].categories == ("news",)
        cache.decide.config = DecideConfig(expand_interests=True, cold_records="fetch")
        d = cache.decide.decide(replace(req, request_id=f"{uid}r2"))
        assert d.served and d.placements[0].campaign_id == cid
        assert d.placements[0].relevance_bp == 12_000  # the profile lists the interest
        assert d.rounds == 6  # one more for the query, one for the first sighting
        s = cache.sessions.get(f"{uid}s")
        assert s is not None and s.impressions == 1
    finally:
        cache.close()


def test_the_same_request_sent_by_several_clients_at_once_is_charged_once(
    lib_cluster: LocalCluster, uid: str
) -> None:
    import threading

    pop = sim.generate(uid, n_users=10, n_campaigns=10, n_requests=20, seed=8)
    admin = _cluster_cache(lib_cluster)
    try:
        sim.setup(admin, pop)
        got: dict[str, list[Decision]] = {r.request_id: [] for r in pop.requests}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work() -> None:
            cache = _cluster_cache(lib_cluster)
            try:
                for r in pop.requests:
                    try:
                        d = cache.decide.decide(r)
                    except Exception as e:  # a losing duplicate may find its reservation gone
                        with lock:
                            errors.append(e)
                        continue
                    with lock:
                        got[r.request_id].append(d)
            finally:
                cache.close()

        ts = [threading.Thread(target=work) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(errors) <= 4, errors
        # settle every request once more on one client: that is the outcome of record
        final = [admin.decide.decide(r) for r in pop.requests]
        assert sum(d.served for d in final) > 0
        for d in final:
            for other in got[d.request_id]:
                # a duplicate serves part or all of what the request's auction settled, never
                # something else (an imp whose winner it did not predict is left to the others)
                assert set(_served(other)) <= set(_served(d))
        a = sim.audit(admin, pop, final)
        assert a.ok, a
    finally:
        admin.close()


class CallLog(AdCache):
    """Records the function of every call, per round."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[list[str]] = []

    def run_many(self, calls: Sequence[Call[Any]], *, raise_on_error: bool = True) -> list[Any]:
        self.log.append([c.function for c in calls])
        return super().run_many(calls, raise_on_error=raise_on_error)

    def count(self, function: str) -> int:
        return sum(r.count(function) for r in self.log)


def _capped_campaign(admin: AdCache, uid: str, name: str, bid: int, budget: int, cap: int) -> str:
    """A live campaign `<uid><name>` targeting interest `<uid>x`, capped at `cap` a month."""
    from adcache.campaigns import FrequencyCapRule
    from adcache.targeting import Targeting

    cid = f"{uid}{name}"
    admin.campaigns.set(
        cid,
        live_spec(
            Targeting.of([f"{uid}x"]),
            advertiser_id=f"{uid}adv{name}",
            bid_cpm_micros=bid,
            budget_micros=budget,
            frequency_caps=(FrequencyCapRule(cap, "month"),),
        ),
    )
    return cid


def test_reservations_only_where_a_bid_can_win(lib_standalone: Standalone, uid: str) -> None:
    """Round 2 reserves only each imp's top candidate; a capped top is released and the next
    one reserved with the bids (round 3); a campaign refused a reservation is left out of the
    next requests for refusal_ttl."""
    admin = AdCache(lib_standalone.client())
    cache = CallLog(lib_standalone.client())
    campaign = functools.partial(_capped_campaign, admin, uid)
    try:
        high = campaign("h", 4_000_000, 1_000_000, 1)  # wins first, then capped for the user
        # servable (its budget pays one impression at its bid, 3,000), but the profile lifts its
        # price by 20 %: the reservation (3,600) is over its budget
        mid = campaign("m", 3_000_000, 3_000, 5)
        low = campaign("l", 1_000_000, 1_000_000, 5)
        admin.profiles.set(f"{uid}u", interests=[f"{uid}x"])
        # capped_ttl=0: this client does not remember that `high` is capped for the user, so
        # round 2 reserves for it again (test_a_remembered_cap_moves_the_reservation: with it)
        cache.decide.config = DecideConfig(cold_records="fetch", refusal_ttl=60.0, capped_ttl=0)

        def decide(n: int) -> Decision:
            cache.log.clear()
            return cache.decide.decide(
                AdRequest(f"{uid}r{n}", f"{uid}u", (AdImp("1"),), categories=(f"{uid}x",))
            )

        d = decide(1)  # round 2 reserves for `high` only: it wins
        assert [p.campaign_id for p in d.placements] == [high]
        assert d.rounds == 5  # +1: the records were fetched first
        assert d.bids == 2  # `low` could neither win nor set the price: it does not bid
        assert cache.count("ac_budget_reserve") == 1 and cache.count("ac_budget_release") == 0
        assert cache.count("ac_budget_commit") == 1
        assert d.placements[0].clearing_micros == 3_610_000  # second price: `mid` bids 3.60

        d = decide(2)  # `high` is capped: released; `mid` is refused at round 3; nothing served
        assert d.capped == 1 and d.refused == 1 and d.unfilled == (("1", "refused"),)
        assert d.rounds == 3  # nothing to settle
        assert [r.count("ac_budget_reserve") for r in cache.log] == [0, 1, 1]
        assert [r.count("ac_budget_release") for r in cache.log] == [0, 0, 1]
        assert cache.count("ac_budget_commit") == 0
        # `mid` is left out from now on; `low` bids alone and wins at the floor
        d = decide(3)
        assert [p.campaign_id for p in d.placements] == [low]
        assert d.capped == 1 and d.refused == 0 and d.bids == 1
        assert cache.count("ac_budget_reserve") == 2  # `high` (top, capped) and `low` (round 3)
        assert cache.count("ac_budget_release") == 1
        states = {c: admin.budgets.state(c) for c in (high, mid, low)}
        assert states[mid].spent_micros == 0 and states[mid].refusals == 1
        assert all(s.outstanding == 0 and s.reserved_micros == 0 for s in states.values())
        assert states[high].spent_micros == 3_610
        assert states[low].spent_micros == d.placements[0].cost_micros > 0
    finally:
        cache.close()
        admin.close()


def test_a_remembered_cap_moves_the_reservation(lib_standalone: Standalone, uid: str) -> None:
    """A campaign this client saw capped for the user (its cap record left nothing) still gets
    checked, but round 2 reserves for the imp's next candidate instead: no reservation to give
    back, no fallback in round 3. A memory that is wrong costs only that fallback."""
    admin = AdCache(lib_standalone.client())
    cache = CallLog(lib_standalone.client())
    campaign = functools.partial(_capped_campaign, admin, uid)
    try:
        high = campaign("h", 4_000_000, 1_000_000, 1)  # wins first, then capped for the user
        mid = campaign("m", 3_000_000, 3_000, 5)  # its reservation (3,600) is over its budget
        low = campaign("l", 1_000_000, 1_000_000, 5)
        admin.profiles.set(f"{uid}u", interests=[f"{uid}x"])
        cache.decide.config = DecideConfig(cold_records="fetch", refusal_ttl=60.0)

        def decide(n: int, user: str = "u") -> Decision:
            cache.log.clear()
            return cache.decide.decide(
                AdRequest(f"{uid}r{n}", f"{uid}{user}", (AdImp("1"),), categories=(f"{uid}x",))
            )

        d = decide(1)  # `high` wins; its cap record says nothing is left: remembered
        assert [p.campaign_id for p in d.placements] == [high]
        assert cache.count("ac_budget_reserve") == 1 and cache.count("ac_budget_release") == 0

        d = decide(2)  # round 2 reserves for `mid` (refused), round 3 for `low`, which wins
        assert [p.campaign_id for p in d.placements] == [low]
        assert d.capped == 1 and d.refused == 1 and d.rounds == 4
        assert [r.count("ac_budget_reserve") for r in cache.log] == [0, 1, 1, 0]
        assert cache.count("ac_budget_release") == 0
        assert cache.count("ac_freqcap_check") == 1  # `high` is still checked (and capped)

        d = decide(3)  # `mid` left out (refused), `high` remembered: one reservation, for `low`
        assert [p.campaign_id for p in d.placements] == [low]
        assert d.capped == 1 and d.refused == 0
        assert [r.count("ac_budget_reserve") for r in cache.log] == [0, 1, 0, 0]
        assert cache.count("ac_budget_release") == 0

        # another user is not affected: `high` is reserved in round 2 and wins
        d = decide(4, user="v")
        assert [p.campaign_id for p in d.placements] == [high]
        assert [r.count("ac_budget_reserve") for r in cache.log] == [0, 1, 0, 0]

        # a wrong memory (the cap freed meanwhile): `high` is reserved in round 3 and still wins
        cache.decide.engine._capped[(f"{uid}v", high)] = time.monotonic() + 60
        admin.redis.delete(keys.freqcap(f"{uid}v"), keys.freqcap_imps(f"{uid}v"))
        d = decide(5, user="v")
        assert [p.campaign_id for p in d.placements] == [high]
        assert [r.count("ac_budget_reserve") for r in cache.log] == [0, 1, 1, 0]
        assert [r.count("ac_budget_release") for r in cache.log] == [0, 0, 0, 1]  # `low`'s
        states = {c: admin.budgets.state(c) for c in (high, mid, low)}
        assert all(s.outstanding == 0 and s.reserved_micros == 0 for s in states.values())
        assert states[mid].spent_micros == 0
    finally:
        cache.close()
        admin.close()


def test_shard_members_are_kept_for_index_ttl(lib_standalone: Standalone, uid: str) -> None:
    """A request queries only the targeting shards it does not hold fresh; index_ttl=0 queries
    every time; a campaign added to the index shows once the shard's entry is older than
    index_ttl."""
    from adcache.targeting import Targeting

    admin = AdCache(lib_standalone.client())
    cache = CallLog(lib_standalone.client())
    try:

        def campaign(name: str) -> str:
            cid = f"{uid}{name}"
            admin.campaigns.set(cid, live_spec(Targeting.of([f"{uid}x"]), advertiser_id=f"{uid}a"))
            return cid

        campaign("c1")
        cache.decide.config = DecideConfig(cold_records="fetch", index_ttl=0.5)

        def decide(n: int) -> Decision:
            cache.log.clear()
            return cache.decide.decide(
                AdRequest(f"{uid}r{n}", f"{uid}u", (AdImp("1"),), categories=(f"{uid}x",))
            )

        assert decide(1).candidates == 1 and cache.count("ac_targeting_query") == 4
        campaign("c2")
        d = decide(2)  # the shards are held: no query, the new campaign is not seen yet
        assert d.candidates == 1 and cache.count("ac_targeting_query") == 0
        time.sleep(0.6)
        d = decide(3)
        assert d.candidates == 2 and cache.count("ac_targeting_query") == 4
        cache.decide.config = DecideConfig(cold_records="fetch", index_ttl=0)
        decide(4)
        assert cache.count("ac_targeting_query") == 4
    finally:
        cache.close()
        admin.close()
