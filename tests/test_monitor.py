"""Monitoring: cluster-wide health and hit rate, per-node adcache counters summed, the Prometheus
endpoint scraped over HTTP, the key-hygiene audit, and the CLI commands (non-interactively)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from adcache import AdCache, aio
from adcache import _generated as keys
from adcache.metrics import (
    ProcessCounters,
    _counter_metrics,
    build_registry,
    register_collector,
    serve,
    unregister_collector,
)
from adcache.monitor import classify, key_patterns, parse_info
from adcache.stats import Event
from adcache_loader.cli import main
from adcache_loader.paths import library_source


def _spread(cache: AdCache, uid: str, n: int = 12) -> list[str]:
    """Campaign ids whose keys land on every primary of a cluster."""
    cids = [f"{uid}-{i}" for i in range(n)]
    if cache.is_cluster:
        nodes = {cache.redis.get_node_from_key(keys.stats_meta(c)).name for c in cids}  # type: ignore[union-attr]
        assert len(nodes) == 3
    return cids


def test_health_sums_every_node(acs: AdCache, uid: str) -> None:
    cids = _spread(acs, uid)
    for c in cids:
        acs.redis.set(f"{uid}:{c}", "v", ex=60)  # plain keys, one slot each, spread like cids
    before = acs.monitor.health()
    assert len(before.nodes) == (3 if acs.is_cluster else 1)
    assert all(n.up and n.used_memory > 0 and n.connected_clients >= 1 for n in before.nodes)
    for c in cids:
        assert acs.redis.get(f"{uid}:{c}") == b"v"  # hit
        assert acs.redis.get(f"{uid}:{c}:missing") is None  # miss
        assert acs.redis.get(f"{uid}:{c}:missing2") is None  # miss
    after = acs.monitor.health()
    assert after.total("keyspace_hits") - before.total("keyspace_hits") == len(cids)
    assert after.total("keyspace_misses") - before.total("keyspace_misses") == 2 * len(cids)
    hits, misses = after.total("keyspace_hits"), after.total("keyspace_misses")
    assert after.hit_rate == hits / (hits + misses)
    if acs.is_cluster:
        moved = [
            a.keyspace_hits - b.keyspace_hits
            for a, b in zip(after.nodes, before.nodes, strict=True)
        ]
        assert all(m > 0 for m in moved), "every node served some of the lookups"
    assert after.total("used_memory") == sum(n.used_memory for n in after.nodes)


def test_function_calls_from_commandstats(acs: AdCache, uid: str) -> None:
    acs.stats.record(uid, [Event(impressions=1)])
    acs.sessions.get(uid)
    f = acs.monitor.health().functions
    assert f["fcall"].calls >= 1 and f["fcall_ro"].calls >= 1 and f["fcall"].usec >= 0


def test_counters_per_node_summed(acs: AdCache, uid: str) -> None:
    cids = _spread(acs, uid)
    before = acs.monitor.counters()
    ev = Event(impressions=1, event_id="same")
    for c in cids:
        acs.stats.record(c, [ev, ev, Event(clicks=1)])
    after = acs.monitor.counters()
    assert not after.errors
    assert after.get("stats_events") - before.get("stats_events") == 2 * len(cids)
    assert after.get("stats_duplicates") - before.get("stats_duplicates") == len(cids)
    if acs.is_cluster:
        assert sum(1 for c in after.per_node.values() if c.get("stats_events")) == 3
    assert after.totals["stats_events"] == sum(
        c.get("stats_events", 0) for c in after.per_node.values()
    )


def test_counters_reset_when_the_library_is_reloaded(lib_standalone: object, uid: str) -> None:
    url = lib_standalone.url  # type: ignore[attr-defined]
    cache = AdCache(redis.Redis.from_url(url))
    try:
        cache.stats.record(uid, [Event(impressions=1)])
        assert cache.monitor.counters().get("stats_events") >= 1
        cache.redis.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
        assert cache.monitor.counters().totals == {}
    finally:
        cache.close()


def test_counters_on_a_node_without_the_library_are_reported(redis_binary: str) -> None:
    from adcache_loader.servers import RedisServer

    with RedisServer(redis_binary) as server:
        cache = AdCache(server.client(), verify_library=False)
        try:
            c = cache.monitor.counters()
            assert c.totals == {} and list(c.errors) == [cache._name]
        finally:
            cache.close()


def test_counter_families_map_to_labels() -> None:
    fams = {
        f.name: f
        for f in _counter_metrics(
            {
                "auctions_created": 5,
                "bids_won": 3,
                "bids_lost_102": 2,
                "bids_lost": 4,
                "budget_refused_exhausted": 1,
                "caps_blocked": 7,
            }
        )
    }
    assert {s.labels["reason"]: s.value for s in fams["adcache_bids_lost"].samples} == {"102": 2}
    assert {s.labels["outcome"]: s.value for s in fams["adcache_bids"].samples} == {
        "won": 3,
        "lost": 4,
    }
    assert fams["adcache_budget_refused"].samples[0].labels == {"reason": "exhausted"}
    assert fams["adcache_caps_blocked"].samples[0].value == 7
    assert fams["adcache_auctions_created"].samples[0].name == "adcache_auctions_created_total"


def _scrape(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(body)}


def test_metrics_endpoint_over_http(acs: AdCache, uid: str) -> None:
    cids = _spread(acs, uid)
    for c in cids:
        acs.stats.record(c, [Event(impressions=1, user_id="user-secret-1")])

    def strategy_collector(cache: AdCache) -> object:
        class C:
            def collect(self) -> list[CounterMetricFamily]:
                fam = CounterMetricFamily("adcache_cache_hits", "hits per cache", labels=["cache"])
                fam.add_metric(["profiles"], 42)
                return [fam]

        return C()

    register_collector(strategy_collector)  # type: ignore[arg-type]
    server, thread = serve(acs, 0)
    try:
        fams = _scrape(server.server_port)
    finally:
        server.shutdown()
        unregister_collector(strategy_collector)  # type: ignore[arg-type]
        thread.join(timeout=5)
    nodes = 3 if acs.is_cluster else 1
    up = fams["adcache_node_up"]
    assert len(up.samples) == nodes and all(s.value == 1 for s in up.samples)  # type: ignore[attr-defined]
    hits = fams["adcache_keyspace_hits"]
    assert hits.type == "counter"  # type: ignore[attr-defined]
    assert {s.name for s in hits.samples} == {"adcache_keyspace_hits_total"}  # type: ignore[attr-defined]
    assert len(hits.samples) == nodes  # type: ignore[attr-defined]
    mem = fams["adcache_memory_used_bytes"]
    assert mem.type == "gauge" and all(s.value > 0 for s in mem.samples)  # type: ignore[attr-defined]
    ratio = fams["adcache_keyspace_hit_ratio"].samples[0].value  # type: ignore[attr-defined]
    assert 0 <= ratio <= 1
    events = fams["adcache_stats_events"].samples[0]  # type: ignore[attr-defined]
    assert events.name == "adcache_stats_events_total" and events.value >= len(cids)
    calls = {s.labels["cmd"] for s in fams["adcache_function_calls"].samples}  # type: ignore[attr-defined]
    assert "fcall" in calls
    assert fams["adcache_cache_hits"].samples[0].value == 42  # type: ignore[attr-defined]
    for fam in fams.values():
        for s in fam.samples:  # type: ignore[attr-defined]
            assert not any("user" in k for k in s.labels), "no user ids as labels"
            assert "user-secret" not in str(s.labels)


def test_process_counters_register_and_expose(ac: AdCache) -> None:
    events = ProcessCounters("cache_events", "Cache events.", ("cache", "event"))
    events.incr("profiles", "hit")
    events.incr("profiles", "hit", n=2)
    events.incr("profiles", "miss")
    with pytest.raises(ValueError):
        events.incr("profiles")

    def factory(cache: AdCache) -> ProcessCounters:
        return events

    register_collector(factory)
    register_collector(factory)  # twice: no effect
    try:
        text = generate_latest(build_registry(ac)).decode()
    finally:
        unregister_collector(factory)
    fam = {f.name: f for f in text_string_to_metric_families(text)}["adcache_cache_events"]
    got = {(s.labels["cache"], s.labels["event"]): s.value for s in fam.samples}
    assert got == {("profiles", "hit"): 3, ("profiles", "miss"): 1}


def test_cli_top_on_a_cluster(lib_cluster: object) -> None:
    url = lib_cluster.seed_url  # type: ignore[attr-defined]
    res = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["top", "--url", url, "--once"])
    assert res.exit_code == 0, res.output
    assert "nodes up 3/3" in res.output


def test_registry_built_after_unregister_has_no_extra(ac: AdCache) -> None:
    reg = build_registry(ac)
    names = {m.name for m in reg.collect()}
    assert "adcache_cache_hits" not in names and "adcache_node_up" in names


# ---- audit ----


def test_key_patterns_come_from_the_keyspace(uid: str) -> None:
    names = {p.name for p in key_patterns()}
    assert {"session", "stats_meta", "stats_hour", "stats_reach_day", "stats_dedup"} <= names
    pat = classify(keys.stats_hour(uid, "2026010203"))
    assert pat is not None and pat.name == "stats_hour" and pat.redis_type == "hash"
    assert classify(keys.stats_reach_day(uid, "20260102")).redis_type == "string"  # type: ignore[union-attr]
    assert classify(f"ad:{{c:{uid}}}:nope") is None
    assert classify(f"ad:{{x:{uid}}}:st") is None


def test_audit_finds_keys_without_ttl_unknown_and_wrong_type(acs: AdCache, uid: str) -> None:
    cids = _spread(acs, uid, 6)
    for c in cids:
        acs.stats.record(c, [Event(impressions=1, user_id="u", event_id="e")])
    no_ttl = keys.stats_day(cids[0], "20200101")
    acs.redis.hset(no_ttl, "impressions", 1)
    unknown = f"ad:{{c:{cids[1]}}}:mystery"
    acs.redis.set(unknown, "x", ex=600)
    wrong = keys.stats_hour(cids[2], "2020010101")
    acs.redis.set(wrong, "x", ex=600)
    try:
        r = acs.monitor.audit(count=50, max_report=100_000)
        assert r.complete and r.scanned >= 6 * 5
        assert len(r.per_node) == (3 if acs.is_cluster else 1)
        assert no_ttl in r.no_ttl and unknown in r.unknown and unknown not in r.no_ttl
        assert any(w.startswith(wrong + " (string") for w in r.wrong_type)
        assert not any(k.startswith(f"ad:{{c:{cids[3]}}}") for k in r.no_ttl)
        assert r.by_pattern["stats_meta"] >= 6 and not r.ok
        small = acs.monitor.audit(count=10, max_keys=5)
        assert small.scanned == 5 and not small.complete
    finally:
        acs.redis.delete(no_ttl)
        acs.redis.delete(unknown)
        acs.redis.delete(wrong)


async def test_async_monitor(aacs: aio.AdCache, uid: str) -> None:
    await aacs.stats.record(uid, [Event(impressions=1)])
    h = await aacs.monitor.health()
    assert h.nodes_up == len(h.nodes) >= 1 and h.total("used_memory") > 0
    c = await aacs.monitor.counters()
    assert c.get("stats_events") >= 1 and not c.errors
    bad = f"ad:{{c:{uid}}}:nope"
    await aacs.redis.set(bad, "x")
    try:
        r = await aacs.monitor.audit(count=100, max_report=100_000)
        assert bad in r.unknown and bad in r.no_ttl and r.complete
    finally:
        await aacs.redis.delete(bad)


def test_parse_info_text() -> None:
    info = parse_info(
        b"# Stats\r\nkeyspace_hits:5\r\ncmdstat_fcall:calls=3,usec=9,usec_per_call=3.00\r\n"
    )
    assert info["keyspace_hits"] == "5" and info["cmdstat_fcall"]["calls"] == "3"


# ---- CLI ----

WIDE = {"COLUMNS": "240", "LINES": "200"}  # rich sizes tables to the (simulated) terminal


@pytest.fixture
def url(lib_standalone: object) -> str:
    return str(lib_standalone.url)  # type: ignore[attr-defined]


def test_cli_top_once(ac: AdCache, url: str, uid: str) -> None:
    ac.stats.record(uid, [Event(impressions=3, clicks=1, cost_micros=3_000)])
    res = CliRunner(env=WIDE).invoke(main, ["top", "--url", url, "--once", "--campaign", uid])
    assert res.exit_code == 0, res.output
    assert "hit rate" in res.output and "stats_events" in res.output and uid in res.output
    res = CliRunner(env=WIDE).invoke(
        main, ["top", "--url", url, "--iterations", "2", "--interval", "0.05"]
    )
    assert res.exit_code == 0, res.output


def test_cli_stats(ac: AdCache, url: str, uid: str) -> None:
    ac.stats.record(uid, [Event(impressions=4, clicks=1, cost_micros=2_000_000, user_id="u")])
    res = CliRunner(env=WIDE).invoke(main, ["stats", uid, "--url", url, "--days", "7", "--series"])
    assert res.exit_code == 0, res.output
    assert "25.00 %" in res.output and "500.0000" in res.output  # CTR and CPM
    res = CliRunner(env=WIDE).invoke(main, ["stats", uid, "--url", url, "--hours", "2"])
    assert res.exit_code == 0 and "2 hours" in res.output
    res = CliRunner(env=WIDE).invoke(main, ["stats", uid, "--url", url, "--days", "91"])
    assert res.exit_code == 2


def test_cli_audit_and_metrics_once(ac: AdCache, url: str, uid: str) -> None:
    bad = f"ad:{{c:{uid}}}:nope"
    ac.redis.set(bad, "x")
    try:
        res = CliRunner(env=WIDE).invoke(main, ["audit", "--url", url, "--max-report", "100000"])
        assert res.exit_code == 1 and "scanned" in res.output and "unknown pattern" in res.output
    finally:
        ac.redis.delete(bad)
    res = CliRunner(env=WIDE).invoke(main, ["metrics", "--url", url, "--once"])
    assert res.exit_code == 0, res.output
    names = {f.name for f in text_string_to_metric_families(res.output)}
    assert {"adcache_node_up", "adcache_keyspace_hit_ratio", "adcache_memory_max_bytes"} <= names


def test_strategy_counters_are_exported(ac: AdCache, uid: str, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from adcache.metrics import exposition
    from adcache.strategies import CachePolicy, SQLiteSource, StrategyCache

    source = SQLiteSource(tmp_path / "truth.sqlite")
    source.save("k1", {"v": 1})
    cache = StrategyCache(ac, f"{uid}c", source, CachePolicy(shards=4))
    assert cache.get("k1") == {"v": 1}  # a miss and a load
    assert cache.get("k1") == {"v": 1}  # a hit
    samples = {
        (s.labels["cache"], s.labels["event"]): s.value
        for fam in text_string_to_metric_families(exposition(ac))
        if fam.name == "adcache_strategy_events"
        for s in fam.samples
        if s.name.endswith("_total")
    }
    assert samples[(f"{uid}c", "hit")] == 1
    assert samples[(f"{uid}c", "miss")] == 1
    assert samples[(f"{uid}c", "load")] == 1
