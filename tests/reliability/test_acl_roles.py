"""Roles from `adcache acl --role`: each user can do its job and nothing of the others' jobs, and
`adcache acl --url` refuses an open default user. Against a real server, through the client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from redis.exceptions import NoPermissionError
from specs import live_spec

from adcache import AdCache, AdCacheError
from adcache import _generated as keys
from adcache.auctions import Bid, Imp
from adcache.caches import Space
from adcache.campaigns import CampaignSpec, set_call
from adcache.caps import Candidate, CapRule
from adcache.stats import Event
from adcache.targeting import Targeting
from adcache_loader import acl as acl_mod
from adcache_loader.cli import main
from adcache_loader.deploy import deploy
from adcache_loader.paths import library_source
from adcache_loader.servers import RedisServer

ROLES = ("reader", "tracker", "bidder", "campaigns", "users", "cache", "app")
SECRET = "s3cret"


def _role_args() -> list[str]:
    args: list[str] = []
    for role in ROLES:
        args += ["--role", role, "--password", f"{role}={SECRET}"]
    return [*args, "--deploy-password", SECRET, "--app-password", SECRET]


@pytest.fixture(scope="module")
def roles_server(redis_binary: str) -> Iterator[RedisServer]:
    s = RedisServer(redis_binary).start()
    deploy(s.url)
    r = CliRunner().invoke(main, ["acl", "--url", s.url, "--allow-open-default", *_role_args()])
    assert r.exit_code == 0, r.output
    assert "still open" in r.output
    yield s
    s.stop()


def _as(server: RedisServer, role: str) -> AdCache:
    name = "adcache-app" if role == "app" else f"adcache-{role}"
    return AdCache(redis.Redis(port=server.port, username=name, password=SECRET))


def _denied(fn: Any) -> None:
    with pytest.raises(NoPermissionError):
        fn()


def _spec(uid: str) -> CampaignSpec:
    targeting = Targeting.of([f"{uid}-i"], [f"{uid}-g"], ["mobile"])
    return live_spec(targeting, advertiser_id=f"adv-{uid}", budget_micros=100_000)


def _cap(uid: str) -> Candidate:
    return Candidate(f"{uid}-c", [CapRule.fixed("campaign", "day", 5)])


def test_commands_are_read_from_the_library_per_function() -> None:
    access = acl_mod.function_access()
    assert set(access) == set(keys.FUNCTIONS)
    assert "pfadd" in access["ac_stats_record"].commands
    assert access["ac_version"].commands == frozenset()
    for f in access.values():
        if f.readonly:  # a no-writes function runs no write command
            assert not f.commands & {"hset", "del", "zadd", "set", "pexpireat", "hincrby"}, f
    assert acl_mod.key_pattern("stats_hour") == "ad:{c:*}:st:h:*"
    assert acl_mod.key_pattern("campaign") == "ad:{c:*}:camp"


def test_campaigns_role_manages_campaigns_and_nothing_else(
    roles_server: RedisServer, uid: str
) -> None:
    c = _as(roles_server, "campaigns")
    c.campaigns.create(uid, _spec(uid))
    assert c.campaigns.get(uid) is not None
    _denied(lambda: c.stats.record(uid, [Event(impressions=1)]))
    _denied(lambda: c.caps.record(uid, "i1", _cap(uid)))
    _denied(lambda: c.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60))
    _denied(lambda: c.redis.set(f"ad:{uid}", "junk"))


def test_tracker_records_stats_and_caps_but_cannot_touch_budgets(
    roles_server: RedisServer, uid: str
) -> None:
    _as(roles_server, "campaigns").campaigns.create(uid, _spec(uid))
    t = _as(roles_server, "tracker")
    assert t.stats.record(uid, [Event(impressions=1, user_id="u1", event_id="e1")]).recorded == 1
    assert t.caps.record(uid, "i1", _cap(uid)).remaining == 4
    assert t.stats.summary(uid, days=1).impressions == 1
    _denied(lambda: t.budgets.reserve(uid, "r1", 1_000, 10))
    _denied(lambda: t.campaigns.get(uid))
    _denied(lambda: t.redis.hset(keys.budget(uid), "spent", 0))
    _denied(lambda: t.redis.delete(keys.campaign(uid)))
    _denied(lambda: t.redis.set(f"ad:junk-{uid}", "x"))  # no key outside its patterns
    # What a writer keeps (docs/security.md): the commands its functions run, on its own keys.
    t.redis.hset(keys.freqcap(uid), "stray", "1")
    assert t.redis.hget(keys.freqcap(uid), "stray") == b"1"


def test_bidder_runs_auctions_and_budgets_and_reads_all(
    roles_server: RedisServer, uid: str
) -> None:
    _as(roles_server, "campaigns").campaigns.create(uid, _spec(uid))
    b = _as(roles_server, "bidder")
    b.auctions.create(uid, [Imp("1", floor="1.00")], tmax_ms=60_000)
    b.auctions.bid(uid, Bid(bid_id="b1", imp_id="1", seat="s1", price="2.00"))
    assert b.auctions.close(uid).winner("1") is not None
    r = b.budgets.reserve(uid, "r1", 1_000, 10)
    assert r.ok
    assert b.budgets.commit(uid, "r1", 1_000).status == "committed"
    assert b.campaigns.get(uid) is not None  # reads: every read-only function
    assert b.caps.check(uid, [_cap(uid)]) is not None
    _denied(lambda: b.caps.record(uid, "i1", _cap(uid)))
    _denied(lambda: b.stats.record(uid, [Event(impressions=1)]))
    _denied(lambda: b.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60))
    _denied(lambda: b.redis.hset(keys.freqcap(uid), "x", "1"))  # read-only outside its keys
    assert b.redis.hget(keys.campaign(uid), "status") is not None
    # The budget functions take the campaign record as a key, so the bidder holds HSET on it:
    # the documented limit (docs/security.md) that a separate campaigns user does not remove.
    b.redis.hset(keys.campaign(uid), "stray", "1")
    # ... and it may run ac_campaign_set (the record and the budget), though not the index puts.
    assert b.run(set_call(uid, _spec(uid))).version >= 2
    _denied(lambda: b.campaigns.set(uid, _spec(uid)))


def test_reader_reads_and_cannot_write(roles_server: RedisServer, uid: str) -> None:
    _as(roles_server, "users").sessions.create(uid, "u", idle_ttl=60, max_lifetime=60)
    rd = _as(roles_server, "reader")
    assert rd.sessions.get(uid) is not None
    assert rd.caps.check(uid, [_cap(uid)]) is not None
    _denied(lambda: rd.sessions.touch(uid))
    _denied(lambda: rd.sessions.create(f"{uid}2", "u", idle_ttl=60, max_lifetime=60))
    _denied(lambda: rd.redis.hset(keys.session(uid), "x", "1"))
    _denied(lambda: rd.redis.delete(keys.session(uid)))
    assert rd.redis.exists(keys.session(uid)) == 1  # reading directly is allowed


def test_users_and_cache_roles_stay_in_their_domains(roles_server: RedisServer, uid: str) -> None:
    u = _as(roles_server, "users")
    u.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60)
    u.profiles.set(uid, score_milli=5)
    u.segments.add(uid, f"{uid}-seg", ttl=60)
    _denied(lambda: u.auctions.create(uid, [Imp("1", floor="1.00")], tmax_ms=60_000))
    k = _as(roles_server, "cache")
    sp = Space(f"{uid}x")
    lk = k.caches.get(sp, "key", "tok", lock_ttl_ms=5000)
    assert lk is not None
    _denied(lambda: k.sessions.get(uid))
    _denied(lambda: k.profiles.get(uid))


def test_app_role_runs_everything_but_no_stray_key(roles_server: RedisServer, uid: str) -> None:
    a = _as(roles_server, "app")
    a.campaigns.create(uid, _spec(uid))
    assert a.budgets.reserve(uid, "r1", 1_000, 10).ok
    a.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60)
    assert a.stats.record(uid, [Event(impressions=1)]).recorded == 1
    _denied(lambda: a.redis.set(f"ad:junk-{uid}", "x"))
    _denied(lambda: a.redis.execute_command("FUNCTION", "FLUSH"))
    _denied(lambda: a.redis.execute_command("CONFIG", "SET", "maxmemory", "1"))


def test_acl_refuses_an_open_default_user(redis_binary: str) -> None:
    with RedisServer(redis_binary) as s:
        r = CliRunner().invoke(main, ["acl", "--url", s.url, *_role_args()])
        assert r.exit_code == 1
        assert "refused" in r.output and "default" in r.output
        assert "--allow-open-default" in r.output
        users = s.client().execute_command("ACL", "USERS")
        assert [u.decode() for u in users] == ["default"]  # nothing applied
        # Closed with a password, the same command applies.
        admin = s.client()
        admin.execute_command("ACL", "SETUSER", "default", "on", ">adminpw")
        url = f"redis://default:adminpw@127.0.0.1:{s.port}"
        r = CliRunner().invoke(main, ["acl", "--url", url, *_role_args()])
        assert r.exit_code == 0, r.output
        assert "still open" not in r.output


def test_error_replies_from_roles_are_permission_errors_not_adcache_errors(
    roles_server: RedisServer, uid: str
) -> None:
    t = _as(roles_server, "tracker")
    with pytest.raises(NoPermissionError) as e:
        t.budgets.reserve(uid, "r1", 1_000, 10)
    assert not isinstance(e.value, AdCacheError)


def test_acl_prints_roles_and_rejects_unknown_ones() -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["acl", "--role", "tracker", "--role", "audit=stats,read"])
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if x.startswith("ACL SETUSER")]
    assert [x.split()[2] for x in lines] == ["adcache-tracker", "adcache-audit", "adcache-deploy"]
    tracker, audit = lines[0].split(), lines[1].split()
    assert "~ad:{u:*}:fc" in tracker and "~ad:{c:*}:st:h:*" in tracker and "+pfadd" in tracker
    assert not any(w.startswith("~ad:{c:*}:budget") for w in tracker)
    assert "%R~ad:*" in audit and "%R~ad:*" not in tracker
    assert "default" in r.output  # the reminder to keep the default user closed
    r = runner.invoke(main, ["acl", "--role", "nope"])
    assert r.exit_code == 2 and "unknown role" in r.output
    r = runner.invoke(main, ["acl", "--role", "x=nodomain"])
    assert r.exit_code == 2


def test_a_command_the_analysis_cannot_see_is_refused() -> None:
    src = library_source()
    with pytest.raises(acl_mod.LibraryParseError):
        acl_mod.function_access(src.replace("redis.call('HSET'", "redis.call(cmd_hset", 1))
    with pytest.raises(acl_mod.LibraryParseError):
        acl_mod.function_access(src.replace("redis.call('HSET', ", "(redis.call)('HSET', ", 1))
