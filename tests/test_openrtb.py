"""The OpenRTB adapter: adcache's own OpenRTB 2.6 samples (tests/data/openrtb) and small fixtures,
read, sent to a real Redis, and decided; plus the third-party samples of ../shared/data/openrtb
through the same parse and create checks, when that folder is present."""

from __future__ import annotations

import copy
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adcache import AdCache, BadArgumentError, aio
from adcache import _generated as keys
from adcache.auctions import notices
from adcache.money import to_micros
from adcache.openrtb import (
    AsyncOpenRTB,
    OpenRTB,
    OpenRTBError,
    auction_from_request,
    bids_from_response,
)

# Our own samples, in the repository (tests/data/openrtb/README.md): these tests never skip.
SAMPLES = Path(__file__).resolve().parent / "data" / "openrtb"
REQUESTS = ("breq.banner.json", "breq.exp.json", "breq.native.json", "breq.video.json")
RESPONSES = ("bres.multi.json", "bres.pmp.json", "bres.single.json", "bres.vast.json")
ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path | None:
    """Third-party samples, read in place and never copied into the project: `shared/data/openrtb`
    beside the repository root (`../shared/data/openrtb`) or beside one of its parents, or
    $ADCACHE_OPENRTB_SAMPLES."""
    env = os.environ.get("ADCACHE_OPENRTB_SAMPLES")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in ROOT.parents:
        d = parent / "shared" / "data" / "openrtb"
        if d.is_dir():
            return d
    return None


SHARED = _shared_dir()
NO_SHARED = (
    "no third-party OpenRTB samples folder (../shared/data/openrtb or $ADCACHE_OPENRTB_SAMPLES)"
)


def sample(name: str) -> dict[str, Any]:
    return read(SAMPLES / name)


def read(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(), parse_float=Decimal)
    return doc


def _cases(pattern: str, own: tuple[str, ...]) -> list[Any]:
    """Our samples (always), then every shared file matching the pattern (or one skipped case)."""
    cases = [pytest.param(SAMPLES / n, id=f"own-{n}") for n in own]
    if SHARED is None:
        skip = pytest.mark.skip(reason=NO_SHARED)
        return [*cases, pytest.param(None, id=f"shared-{pattern}", marks=skip)]
    found = sorted(SHARED.glob(pattern))
    if not found:
        skip = pytest.mark.skip(reason=f"{SHARED} holds no {pattern}")
        return [*cases, pytest.param(None, id=f"shared-{pattern}", marks=skip)]
    return [*cases, *(pytest.param(p, id=f"shared-{p.name}") for p in found)]


def _with_id(doc: dict[str, Any], aid: str) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    d["id"] = aid
    return d


# ---- our own fixtures ----

REQUEST = {
    "id": "req-1",
    "at": 2,
    "tmax": 60000,
    "cur": ["USD"],
    "bseat": ["blocked-seat"],
    "imp": [
        {"id": "banner", "bidfloor": 0.5, "bidfloorcur": "USD", "exp": 120},
        {
            "id": "video",
            "bidfloor": 2,
            "exp": 300,
            "pmp": {
                "private_auction": 1,
                "deals": [
                    {"id": "deal-a", "bidfloor": 3.25, "wseat": ["dsp-1"]},
                    {"id": "deal-b", "bidfloor": 1.5},
                ],
            },
        },
    ],
}

RESPONSE = {
    "id": "req-1",
    "cur": "USD",
    "seatbid": [
        {
            "seat": "dsp-1",
            "bid": [
                {
                    "id": "1a",
                    "impid": "banner",
                    "price": 1.1,
                    "cid": "camp-1",
                    "crid": "cr-1",
                    "adomain": ["one.example"],
                    "nurl": "https://dsp1.example/win?p=${AUCTION_PRICE}&imp=${AUCTION_IMP_ID}",
                    "burl": "https://dsp1.example/bill?p=${AUCTION_PRICE}",
                },
                {"id": "1v", "impid": "video", "price": 4.0, "dealid": "deal-a", "cid": "camp-1"},
            ],
        },
        {
            "seat": "dsp-2",
            "bid": [
                {
                    "id": "2a",
                    "impid": "banner",
                    "price": 0.9,
                    "lurl": "https://dsp2.example/loss?r=${AUCTION_LOSS}&min=${AUCTION_MIN_TO_WIN}",
                },
                {
                    "id": "2v",
                    "impid": "video",
                    "price": 9.0,
                    "dealid": "deal-a",
                },  # seat not allowed
                {"id": "2w", "impid": "video", "price": 3.5, "dealid": "deal-b"},
                {"id": "2x", "impid": "video", "price": 99},  # not a deal bid: private imp
            ],
        },
        {"seat": "blocked-seat", "bid": [{"id": "3a", "impid": "banner", "price": 50}]},
    ],
}


def test_request_is_read_exactly() -> None:
    spec = auction_from_request(json.dumps(REQUEST))
    assert (spec.auction_id, spec.at, spec.tmax_ms, spec.exp_s) == ("req-1", 2, 60000, 300.0)
    assert spec.bseat == ("blocked-seat",) and spec.wseat == ()
    banner, video = spec.imps
    assert to_micros(banner.floor) == 500_000 and not banner.private
    assert video.private and [d.deal_id for d in video.deals] == ["deal-a", "deal-b"]
    assert to_micros(video.deals[0].floor) == 3_250_000 and video.deals[0].wseat == ("dsp-1",)
    # "wseats", as some exchanges spell the deal's seat list, reads the same
    req = copy.deepcopy(REQUEST)
    req["imp"][1]["pmp"]["deals"][0]["wseats"] = req["imp"][1]["pmp"]["deals"][0].pop("wseat")
    assert auction_from_request(req).imps[1].deals[0].wseat == ("dsp-1",)


def test_response_bids_are_read_exactly() -> None:
    text = '{"id":"r","seatbid":[{"seat":"s","bid":[{"id":"b","impid":"1","price":1.028428}]}]}'
    (bid,) = bids_from_response(text)
    assert bid.price == Decimal("1.028428") and to_micros(bid.price) == 1_028_428
    bids = bids_from_response(RESPONSE)
    assert [(b.seat, b.bid_id) for b in bids] == [
        ("dsp-1", "1a"),
        ("dsp-1", "1v"),
        ("dsp-2", "2a"),
        ("dsp-2", "2v"),
        ("dsp-2", "2w"),
        ("dsp-2", "2x"),
        ("blocked-seat", "3a"),
    ]
    assert bids[0].adomain == ("one.example",) and bids[0].cid == "camp-1"


def test_request_and_response_end_to_end(acs: AdCache, uid: str) -> None:
    rtb = OpenRTB(acs)
    rtb.create(_with_id(REQUEST, uid))
    before = acs.redis.info("commandstats")
    replies = rtb.submit(_with_id(RESPONSE, uid))
    assert [(r.bid_id, r.accepted, r.reason) for r in replies] == [
        ("1a", True, 0),
        ("1v", True, 0),
        ("2a", True, 0),
        ("2v", False, 104),
        ("2w", True, 0),
        ("2x", False, 4),
        ("3a", False, 104),
    ]
    if not acs.is_cluster:
        after = acs.redis.info("commandstats")
        calls = after["cmdstat_fcall"]["calls"] - before["cmdstat_fcall"]["calls"]
        assert calls == 1, "the whole bid response is one FCALL"
    res = acs.auctions.close(uid)
    bw, vw = res.winner("banner"), res.winner("video")
    assert bw is not None and vw is not None
    assert (bw.bid_id, bw.cid, bw.crid, res.imp("banner").clearing_micros) == (
        "1a",
        "camp-1",
        "cr-1",
        to_micros("0.91"),
    )
    # deal-a floor 3.25 is the winner's floor; the runner-up 2w bid 3.50
    assert (vw.bid_id, vw.deal_id, res.imp("video").clearing_micros) == (
        "1v",
        "deal-a",
        to_micros("3.51"),
    )
    urls = {(n.kind, n.bid_id): n.url for n in notices(res)}
    assert urls[("win", "1a")] == "https://dsp1.example/win?p=0.91&imp=banner"
    assert urls[("billing", "1a")] == "https://dsp1.example/bill?p=0.91"
    assert urls[("loss", "2a")] == "https://dsp2.example/loss?r=102&min=1.1"
    assert acs.auctions.bill(uid, "1a", seat="dsp-1").price_micros == to_micros("0.91")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: r.pop("imp"), "imp"),
        (lambda r: r.update(at=3), "auction type"),
        (lambda r: r.update(tmax=-1), "tmax"),
        (lambda r: r.update(cur=["EUR"]), "currenc"),
        (lambda r: r["imp"][0].update(bidfloorcur="EUR"), "bidfloorcur"),
        (lambda r: r["imp"][0].update(id=None), "id"),
        (lambda r: r["imp"][0].update(bidfloor="x1"), "bidfloor|money|number"),
        (lambda r: r.update(id=""), "empty"),
        (lambda r: r["imp"][1]["pmp"].update(deals=[]), "private auction without deals"),
        (lambda r: r["imp"][1]["pmp"]["deals"][0].update(at=7), "at=7"),
    ],
)
def test_bad_requests_send_nothing(ac: AdCache, uid: str, mutate: Any, match: str) -> None:
    req = _with_id(REQUEST, uid)
    mutate(req)
    with pytest.raises((OpenRTBError, ValueError), match=match):
        OpenRTB(ac).create(req)
    assert ac.redis.exists(keys.auction(uid)) == 0


def test_bad_documents() -> None:
    with pytest.raises(OpenRTBError, match="JSON"):
        auction_from_request("{not json")
    with pytest.raises(OpenRTBError, match="object"):
        auction_from_request("[1, 2]")
    with pytest.raises(OpenRTBError, match="cur"):
        bids_from_response({"id": "r", "cur": "EUR", "seatbid": []})
    with pytest.raises(OpenRTBError, match="price"):
        bids_from_response({"id": "r", "seatbid": [{"bid": [{"id": "b", "impid": "1"}]}]})
    with pytest.raises(OpenRTBError, match="number"):
        bids_from_response(
            {"id": "r", "seatbid": [{"bid": [{"id": "b", "impid": "1", "price": True}]}]}
        )


def test_bad_bid_in_a_response_refuses_the_whole_response(ac: AdCache, uid: str) -> None:
    rtb = OpenRTB(ac)
    rtb.create(_with_id(REQUEST, uid))
    resp = _with_id(RESPONSE, uid)
    resp["seatbid"][1]["bid"][0]["impid"] = "no-such-imp"
    with pytest.raises(BadArgumentError):
        rtb.submit(resp)
    assert ac.redis.exists(keys.auction_bids(uid)) == 0
    neg = _with_id(RESPONSE, uid)
    neg["seatbid"][0]["bid"][0]["price"] = -1
    with pytest.raises(BadArgumentError):
        rtb.submit(neg)
    assert ac.redis.exists(keys.auction_bids(uid)) == 0
    assert rtb.submit({"id": uid, "seatbid": []}) == []


# ---- the samples: ours (tests/data/openrtb), and the shared third-party ones when present ----


@pytest.mark.parametrize("path", _cases("breq.*.json", REQUESTS))
def test_every_sample_request_creates_an_auction(ac: AdCache, uid: str, path: Path) -> None:
    req = read(path)
    spec = auction_from_request(req)
    # the same spec from the JSON text, its bytes and the parsed document
    text = path.read_text()
    assert auction_from_request(text) == spec == auction_from_request(text.encode())
    assert spec.auction_id == req["id"]
    assert [i.imp_id for i in spec.imps] == [i["id"] for i in req["imp"]]
    assert spec.at == req.get("at", 2)
    created = OpenRTB(ac).create(_with_id(req, uid))
    assert created.deadline_ms - created.created_ms == req.get("tmax", 1000)
    res = ac.auctions.result(uid)
    assert res is not None and [i.imp_id for i in res.imps] == [i["id"] for i in req["imp"]]


@pytest.mark.parametrize("path", _cases("bres.*.json", RESPONSES))
def test_every_sample_response_is_read(path: Path) -> None:
    doc = read(path)
    bids = bids_from_response(doc)
    text = path.read_text()
    assert bids_from_response(text) == bids == bids_from_response(text.encode())
    raws = [(sb.get("seat"), b) for sb in doc["seatbid"] for b in sb["bid"]]
    assert len(bids) == len(raws) == sum(len(sb["bid"]) for sb in doc["seatbid"])
    for b, (seat, raw) in zip(bids, raws, strict=True):
        assert to_micros(b.price) == to_micros(raw["price"])
        assert b.bid_id == raw["id"] and b.imp_id == raw["impid"]
        assert b.seat == (seat or "default") and b.deal_id == raw.get("dealid")


def test_video_sample_deals_and_private_auctions(ac: AdCache, uid: str) -> None:
    req = sample("breq.video.json")
    spec = auction_from_request(req)
    one, two, three = spec.imps
    assert one.private and two.private and not three.private
    assert [(d.deal_id, to_micros(d.floor), d.at) for d in one.deals] == [
        ("adc-pg-0101", 7_500_000, 1)
    ]
    assert [(d.deal_id, to_micros(d.floor), d.wseat, d.at) for d in two.deals] == [
        ("adc-pmp-0201", 4_250_000, (), 1),
        ("adc-pmp-0202", 2_750_000, ("dsp-alpha", "dsp-beta", "dsp-gamma"), 1),
    ]
    assert to_micros(three.floor) == 2_000_000
    rtb = OpenRTB(ac)
    rtb.create(_with_id(req, uid))
    # bres.vast bids on imp "2" without a deal (and without a seat): a private auction refuses it
    (vast,) = rtb.submit(sample("bres.vast.json"), auction_id=uid, default_seat="dsp-video")
    assert (vast.bid_id, vast.accepted, vast.reason) == ("vast-7", False, 4)
    # bres.pmp's bid (seat dsp-delta) on the seat-restricted deal: seat blocked; as sent, on the
    # open deal: won
    pmp = sample("bres.pmp.json")
    blocked_doc = copy.deepcopy(pmp)
    blocked_doc["seatbid"][0]["bid"][0].update(id="delta-0", dealid="adc-pmp-0202")
    (blocked,) = rtb.submit(blocked_doc, auction_id=uid)
    assert (blocked.bid_id, blocked.accepted, blocked.reason) == ("delta-0", False, 104)
    (ok,) = rtb.submit(pmp, auction_id=uid)
    assert (ok.bid_id, ok.accepted) == ("delta-1", True)
    res = ac.auctions.close(uid)
    w = res.winner("2")
    assert w is not None and (w.bid_id, w.seat, w.deal_id, w.cid, w.crid) == (
        "delta-1",
        "dsp-delta",
        "adc-pmp-0201",
        "delta-c-15",
        "delta-cr-15",
    )
    assert res.imp("2").clearing_micros == to_micros("6.10")  # the deal's at=1: first price
    assert res.bid("vast-7").status == "rejected"
    (win,) = notices(res)
    assert win.url == "https://win.dsp-delta.example/v?imp=2&cpm=6.1"


def test_native_sample_first_price_with_seat_lists(ac: AdCache, uid: str) -> None:
    req = sample("breq.native.json")
    spec = auction_from_request(req)
    assert spec.at == 1 and spec.wseat == ("dsp-east", "dsp-west") and spec.bseat == ()
    assert to_micros(spec.imps[0].floor) == 40_000
    rtb = OpenRTB(ac)
    rtb.create(_with_id(req, uid))
    # bres.multi: dsp-north (not in wseat, and its deal is unknown) at 0.09, dsp-east at 0.06375,
    # dsp-west at 0.045
    replies = rtb.submit(sample("bres.multi.json"), auction_id=uid)
    assert [(r.bid_id, r.accepted, r.reason) for r in replies] == [
        ("n-1", False, 104),
        ("e-1", True, 0),
        ("w-1", True, 0),
    ]
    res = ac.auctions.close(uid)
    w = res.winner("1")
    assert w is not None and (w.seat, w.bid_id) == ("dsp-east", "e-1")
    assert res.imp("1").clearing_micros == 63_750  # first price: the bid, to the micro
    (win,) = [n for n in notices(res) if n.kind == "win"]
    assert win.url == "https://win.dsp-east.example/n?imp=1&cpm=0.06375"
    (loss,) = [n for n in notices(res) if n.kind == "loss"]
    assert loss.url == "https://dsp-west.example/loss?reason=102&bid=w-1"


def test_exp_sample_billing_window_blocked_seat_and_default_type(ac: AdCache, uid: str) -> None:
    req = sample("breq.exp.json")
    spec = auction_from_request(req)
    assert "at" not in req and spec.at == 2 and spec.tmax_ms == 200
    assert spec.exp_s == 1800.0  # the largest imp exp
    assert spec.bseat == ("dsp-north",) and spec.wseat == ()
    assert [to_micros(i.floor) for i in spec.imps] == [100_000, 0]
    rtb = OpenRTB(ac)
    rtb.create(_with_id(req, uid))
    resp = {
        "id": uid,
        "cur": "USD",
        "seatbid": [
            {"seat": "dsp-north", "bid": [{"id": "x1", "impid": "1", "price": 2.5}]},
            {"seat": "dsp-east", "bid": [{"id": "x2", "impid": "1", "price": 0.35}]},
        ],
    }
    assert [(r.accepted, r.reason) for r in rtb.submit(resp)] == [(False, 104), (True, 0)]
    res = ac.auctions.close(uid)
    assert res.exp_ms == 1_800_000  # the billing window, from the largest imp exp
    assert res.imp("1").clearing_micros == 110_000  # second price, alone: the floor + increment


def test_banner_sample_second_price_and_lowercase_macro(ac: AdCache, uid: str) -> None:
    req = sample("breq.banner.json")
    spec = auction_from_request(req)
    assert [(i.imp_id, to_micros(i.floor)) for i in spec.imps] == [("1", 50_000), ("2", 0)]
    assert [f["w"] for f in req["imp"][0]["banner"]["format"]] == [300, 300]
    rtb = OpenRTB(ac)
    rtb.create(_with_id(req, uid))
    (r,) = rtb.submit(sample("bres.single.json"), auction_id=uid)
    assert r.accepted
    res = ac.auctions.close(uid)
    assert res.winner("1") is None
    w = res.winner("2")
    assert w is not None and w.price_micros == 72_315
    assert res.imp("2").clearing_micros == 10_000  # no floor, alone: the increment
    (win,) = notices(res)
    assert win.url == "https://win.dsp-south.example/notify?imp=2&cpm=0.01"


# ---- asyncio ----


async def test_async_adapter(aacs: aio.AdCache, uid: str) -> None:
    rtb = AsyncOpenRTB(aacs)
    created = await rtb.create(json.dumps(_with_id(REQUEST, uid)))
    assert created.deadline_ms - created.created_ms == 60000
    replies = await rtb.submit(json.dumps(_with_id(RESPONSE, uid)))
    assert len(replies) == 7 and sum(r.accepted for r in replies) == 4
    res = await aacs.auctions.close(uid)
    w = res.winner("banner")
    assert w is not None and w.bid_id == "1a"
