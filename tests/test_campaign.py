"""Campaign records end to end: round trip of every field, compare-and-set versions, derived
servability with its reasons, bad input (typed error, nothing written); standalone and cluster."""

from __future__ import annotations

import time
from typing import Any

import pytest

from adcache import (
    AdCache,
    ArityError,
    BadArgumentError,
    Call,
    CorruptStateError,
    CrossSlotError,
    LimitExceededError,
    NotFoundError,
    VersionConflictError,
    aio,
)
from adcache import _generated as keys
from adcache.campaigns import CampaignSpec, Creative, FrequencyCapRule, all_keys
from adcache.targeting import Targeting


def now_ms() -> int:
    return int(time.time() * 1000)


def spec(uid: str, **kw: Any) -> CampaignSpec:
    base: dict[str, Any] = {
        "advertiser_id": "adv-" + uid,
        "bid_cpm_micros": 2_500_000,
        "budget_micros": 10_000_000,
        "start_ms": now_ms() - 60_000,
        "end_ms": now_ms() + 3_600_000,
        "targeting": Targeting.of([f"{uid}-tech", f"{uid}-games"], [f"{uid}-KR"], ["mobile"]),
    }
    base.update(kw)
    return CampaignSpec(**base)


def test_set_get_round_trip(acs: AdCache, uid: str) -> None:
    s = spec(
        uid,
        daily_budget_micros=1_000_000,
        day_offset_s=9 * 3600,
        pacing="even",
        pacing_tolerance_bp=2_000,
        pacing_floor_micros=5_000,
        frequency_caps=(FrequencyCapRule(3, "day"), FrequencyCapRule(10, "week")),
        creatives=(Creative("cr-1", 300, 250, "image/png", "https://cdn.example/a.png"),),
    )
    w = acs.campaigns.create(uid, s)
    assert w.version == 1 and w.servable and w.reason == "" and w.removed == ()
    assert set(w.added) == set(s.targeting.shards())
    c = acs.campaigns.get(uid)
    assert c is not None
    assert c.spec == s and c.version == 1 and c.servable and c.indexed
    assert c.spent_micros == 0 and c.reserved_micros == 0 and c.created_ms == c.updated_ms
    assert acs.campaigns.get(uid + "-none") is None
    many = acs.campaigns.get_many([uid, uid + "-none"])
    assert many[0] is not None and many[0].spec == s and many[1] is None


def test_versions_compare_and_set(acs: AdCache, uid: str) -> None:
    acs.campaigns.create(uid, spec(uid))
    with pytest.raises(VersionConflictError):
        acs.campaigns.create(uid, spec(uid, bid_cpm_micros=1))
    w = acs.campaigns.patch(uid, expected_version=1, bid_cpm_micros=3_000_000)
    assert w.version == 2
    before = acs.redis.hgetall(keys.campaign(uid))
    with pytest.raises(VersionConflictError):
        acs.campaigns.patch(uid, expected_version=1, bid_cpm_micros=1)
    with pytest.raises(VersionConflictError):
        acs.campaigns.set(uid, spec(uid), expected_version=5)
    with pytest.raises(VersionConflictError):
        acs.campaigns.remove(uid, expected_version=1)
    assert acs.redis.hgetall(keys.campaign(uid)) == before
    assert acs.campaigns.set(uid, spec(uid, budget_micros=1), expected_version=2).version == 3
    c = acs.campaigns.get(uid)
    assert c is not None and c.version == 3 and c.spec.budget_micros == 1
    assert c.spec.bid_cpm_micros == 2_500_000  # set replaces the whole record
    assert acs.campaigns.patch(uid, bid_cpm_micros=7).version == 4  # -1: unconditional


def test_servability_reasons(ac: AdCache, uid: str) -> None:
    cases = {
        "paused": spec(uid, status="paused"),
        "not_started": spec(uid, start_ms=now_ms() + 60_000, end_ms=now_ms() + 120_000),
        "ended": spec(uid, start_ms=now_ms() - 120_000, end_ms=now_ms() - 60_000),
        "": spec(uid),
    }
    for reason, s in cases.items():
        cid = f"{uid}-{reason or 'ok'}"
        w = ac.campaigns.create(cid, s)
        c = ac.campaigns.get(cid)
        assert c is not None and c.reason == reason == w.reason
        assert c.servable is (reason == "")
    nb = ac.campaigns.get(f"{uid}-not_started")
    assert nb is not None and nb.not_before_ms == nb.spec.start_ms and nb.indexed
    # Budget exhaustion: servable stops with the commit that spends it.
    cid = f"{uid}-budget"
    ac.campaigns.create(cid, spec(uid, budget_micros=10_000, bid_cpm_micros=1_000_000))
    ac.budgets.reserve(cid, "a1", 9_500, 10)
    assert ac.budgets.commit(cid, "a1", 9_001).exhausted == "lifetime_budget"  # 999 left < 1000
    c = ac.campaigns.get(cid)
    assert c is not None and not c.servable and c.reason == "lifetime_budget" and not c.indexed
    w = ac.campaigns.patch(cid, budget_micros=20_000)  # more budget: servable again
    assert w.servable
    c = ac.campaigns.get(cid)
    assert c is not None and c.servable and c.spent_micros == 9_001


def test_pause_resume_remove(acs: AdCache, uid: str) -> None:
    acs.campaigns.create(uid, spec(uid))
    assert acs.campaigns.pause(uid).reason == "paused"
    assert acs.campaigns.resume(uid).servable
    acs.budgets.reserve(uid, "a1", 1_000, 10)
    assert acs.campaigns.remove(uid) is True
    assert acs.campaigns.get(uid) is None
    assert all(acs.redis.exists(k) == 0 for k in all_keys(uid))
    assert acs.campaigns.remove(uid) is False


def test_keys_expire_after_the_end(ac: AdCache, uid: str) -> None:
    s = spec(uid)
    ac.campaigns.create(uid, s)
    ac.budgets.reserve(uid, "a1", 1_000, 10)
    retain = 30 * 86_400_000
    for k in all_keys(uid)[:4]:
        at = ac.redis.pexpiretime(k)
        assert at == s.end_ms + retain, k


def _raw(fn: str, ks: tuple[str, ...], *args: str | int) -> Call[object]:
    return Call(fn, ks, tuple(args), lambda r: r)


GOOD: dict[str, str] = {
    "advertiser": "adv",
    "status": "active",
    "bid": "1000",
    "budget": "5000",
    "start": "1",
    "end": "9999999999999",
    "shards": "interest.a geo.all device.all",
}


def _args(**over: str | None) -> list[str]:
    fields = {**GOOD, **over}
    out = ["-1"]
    for k, v in fields.items():
        if v is not None:
            out += [k, v]
    return out


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (_args(budget="-5"), BadArgumentError),
        (_args(budget="0"), BadArgumentError),
        (_args(bid="1.5"), BadArgumentError),
        (_args(start="100", end="100"), BadArgumentError),
        (_args(status="running"), BadArgumentError),
        (_args(advertiser="a{b}"), BadArgumentError),
        (_args(shards="interest.a geo.all"), BadArgumentError),  # no device
        (_args(shards="interest.a geo.all device.all color.red"), BadArgumentError),
        (_args(shards="interest.a{x} geo.all device.all"), BadArgumentError),
        (
            _args(shards=" ".join(f"interest.v{i}" for i in range(70)) + " geo.all device.all"),
            LimitExceededError,
        ),
        (_args(tz="100000"), BadArgumentError),
        (_args(pacing="even"), BadArgumentError),  # pacing needs a daily budget
        (_args(end=None), BadArgumentError),
        (_args(colour="red"), BadArgumentError),
        (["x", *_args()[1:]], BadArgumentError),
        (["-1", "bid"], ArityError),
        ([], ArityError),
    ],
)
def test_bad_set_input_is_typed_and_writes_nothing(
    acs: AdCache, uid: str, args: list[str], error: type[Exception]
) -> None:
    with pytest.raises(error):
        acs.run(_raw("ac_campaign_set", (keys.campaign(uid), keys.budget(uid)), *args))
    assert acs.campaigns.get(uid) is None
    assert acs.redis.exists(keys.campaign(uid)) == 0


def test_bad_patch_changes_nothing(acs: AdCache, uid: str) -> None:
    with pytest.raises(NotFoundError):
        acs.campaigns.patch(uid, bid_cpm_micros=1)
    acs.campaigns.create(uid, spec(uid))
    before = acs.redis.hgetall(keys.campaign(uid))
    for bad in ({"budget_micros": -1}, {"start_ms": now_ms() + 10_000_000}, {"pacing": "fast"}):
        with pytest.raises(BadArgumentError):
            acs.campaigns.patch(uid, **bad)
    with pytest.raises(TypeError):
        acs.campaigns.patch(uid, colour="red")
    assert acs.redis.hgetall(keys.campaign(uid)) == before


def test_keys_of_two_campaigns_are_refused(ac: AdCache, uid: str) -> None:
    # On a cluster the server refuses first; standalone, the function's own check does.
    with pytest.raises(CrossSlotError):
        ac.run(_raw("ac_campaign_get", (keys.campaign(uid), keys.budget(uid + "b"))))


def test_foreign_data_is_reported(ac: AdCache, uid: str) -> None:
    ac.redis.hset(keys.campaign(uid), "x", "y")
    with pytest.raises(CorruptStateError):
        ac.campaigns.get(uid)


async def test_async_twin(aacs: aio.AdCache, uid: str) -> None:
    s = spec(uid)
    w = await aacs.campaigns.create(uid, s)
    assert w.version == 1
    c = await aacs.campaigns.get(uid)
    assert c is not None and c.spec == s
    assert (await aacs.campaigns.pause(uid)).reason == "paused"
    assert (await aacs.campaigns.resume(uid)).servable
    assert [
        x.campaign_id if x else None for x in await aacs.campaigns.get_many([uid, "zz" + uid])
    ] == [
        uid,
        None,
    ]
    assert (await aacs.campaigns.reindex(uid)) is not None
    assert await aacs.campaigns.remove(uid) is True
