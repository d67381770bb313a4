"""OpenRTB 2.5 / 2.6 adapter: an auction from a bid request, bids from a bid response.

JSON text is parsed with `parse_float=Decimal`, so a price such as 1.028428 reaches
`adcache.money.to_micros` exactly as written (dicts holding floats go through their shortest repr).
What is read:
* request: `id`, `at` (1 or 2; default 2), `tmax` (ms), `wseat`, `bseat`, `cur`; per imp `id`,
  `bidfloor`, `bidfloorcur` (must be the auction currency), `exp` (s; the largest one becomes the
  billing window), `pmp.private_auction`, `pmp.deals[].id / bidfloor / bidfloorcur / wseat`
  (`wseats`, as some exchanges spell it, too) / `at` (the deal's own auction type: 1 first, 2
  second, 3 fixed price at the deal floor).
* response: `id`, `cur` (must be the auction currency), every `seatbid[].bid[]`: `id`, `impid`,
  `price`, `dealid`, `cid`, `crid`, `adomain`, `nurl`, `lurl`, `burl`; a seatbid without `seat`
  gets `default_seat`.
Malformed documents raise `OpenRTBError` (a ValueError) before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, overload

from adcache._core import Call
from adcache._facade import Async, Facade, M, Plan, Sync, one, plan
from adcache._generated import BadArgumentError
from adcache.auctions import (
    DEFAULT_EXP_S,
    DEFAULT_INCREMENT,
    DEFAULT_TMAX_MS,
    SECOND_PRICE,
    Bid,
    BidReply,
    Created,
    Deal,
    Imp,
    bid_many_call,
    create_call,
)
from adcache.money import to_decimal

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache

Document = str | bytes | Mapping[str, Any]


class OpenRTBError(ValueError):
    """The document is not a usable OpenRTB bid request or response."""


@dataclass(frozen=True, slots=True)
class AuctionSpec:
    """What `Auctions.create` needs, read from a bid request."""

    auction_id: str
    imps: tuple[Imp, ...]
    at: int
    tmax_ms: int
    exp_s: float
    wseat: tuple[str, ...]
    bseat: tuple[str, ...]

    def create_call(self, *, increment: Decimal | None = None) -> Call[Created]:
        return create_call(
            self.auction_id,
            self.imps,
            at=self.at,
            tmax_ms=self.tmax_ms,
            exp=self.exp_s,
            increment=DEFAULT_INCREMENT if increment is None else increment,
            wseat=self.wseat,
            bseat=self.bseat,
        )


def load(doc: Document) -> dict[str, Any]:
    """A JSON document (text or bytes, floats as Decimal) or a mapping, as a dict."""
    if isinstance(doc, str | bytes):
        try:
            obj = json.loads(doc, parse_float=Decimal)
        except ValueError as e:
            raise OpenRTBError(f"not JSON: {e}") from e
    else:
        obj = doc
    if not isinstance(obj, Mapping):
        raise OpenRTBError("an OpenRTB document is a JSON object")
    return dict(obj)


def _str(v: Any, what: str) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise OpenRTBError(f"{what} must be a string, got {v!r}")
    s = str(v)
    if not s:
        raise OpenRTBError(f"{what} must not be empty")
    return s


def _opt_str(v: Any, what: str) -> str | None:
    return None if v is None or v == "" else _str(v, what)


def _price(v: Any, what: str) -> Decimal:
    """A CPM price as an exact Decimal (the sign is the server's to check)."""
    if isinstance(v, bool) or not isinstance(v, Decimal | int | float | str):
        raise OpenRTBError(f"{what} must be a number, got {v!r}")
    try:
        return to_decimal(v)
    except BadArgumentError as e:
        raise OpenRTBError(f"{what} must be a number, got {v!r}") from e


def _seats(v: Any, what: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, Sequence) or isinstance(v, str):
        raise OpenRTBError(f"{what} must be a list of seat ids")
    return tuple(_str(s, what) for s in v)


def _currency(v: Any, currency: str, what: str) -> None:
    if v is not None and v != "" and str(v).upper() != currency.upper():
        raise OpenRTBError(f"{what} is {v!r}, the auction runs in {currency}")


def auction_from_request(
    request: Document,
    *,
    currency: str = "USD",
    default_tmax_ms: int = DEFAULT_TMAX_MS,
    default_exp_s: float = DEFAULT_EXP_S,
) -> AuctionSpec:
    """Read a bid request into an auction spec (floors stay CPM; converted when sent)."""
    req = load(request)
    auction_id = _str(req.get("id"), "request id")
    at = req.get("at", SECOND_PRICE)
    if at not in (1, 2):
        raise OpenRTBError(f"auction type at={at!r} is not supported (1 first, 2 second price)")
    tmax = req.get("tmax") or default_tmax_ms
    if isinstance(tmax, bool) or not isinstance(tmax, int) or tmax <= 0:
        raise OpenRTBError(f"tmax must be a positive integer (ms), got {tmax!r}")
    cur = req.get("cur")
    if isinstance(cur, list) and cur and currency.upper() not in (str(c).upper() for c in cur):
        raise OpenRTBError(f"the request allows currencies {cur}, the auction runs in {currency}")
    raw_imps = req.get("imp")
    if not isinstance(raw_imps, list) or not raw_imps:
        raise OpenRTBError("a bid request needs at least one imp")
    imps: list[Imp] = []
    exps: list[float] = []
    for n, imp in enumerate(raw_imps):
        if not isinstance(imp, Mapping):
            raise OpenRTBError(f"imp[{n}] is not an object")
        imp_id = _str(imp.get("id"), f"imp[{n}].id")
        _currency(imp.get("bidfloorcur"), currency, f"imp {imp_id} bidfloorcur")
        floor = _price(imp.get("bidfloor", 0), f"imp {imp_id} bidfloor")
        if imp.get("exp") is not None:
            exps.append(float(imp["exp"]))
        pmp = imp.get("pmp") or {}
        deals: list[Deal] = []
        for k, d in enumerate(pmp.get("deals") or []):
            deal_id = _str(d.get("id"), f"imp {imp_id} deal[{k}].id")
            _currency(d.get("bidfloorcur"), currency, f"deal {deal_id} bidfloorcur")
            seats = _seats(d.get("wseat", d.get("wseats")), f"deal {deal_id} wseat")
            deal_at = d.get("at")
            if deal_at is not None and deal_at not in (1, 2, 3):
                raise OpenRTBError(f"deal {deal_id} at={deal_at!r} is not supported (1, 2 or 3)")
            floor_d = _price(d.get("bidfloor", 0), f"deal {deal_id} bidfloor")
            deals.append(Deal(deal_id, floor_d, seats, deal_at))
        private = bool(pmp.get("private_auction", 0))
        if private and not deals:
            # Only deal bids could win, and there is no deal: refuse rather than open it up.
            raise OpenRTBError(f"imp {imp_id} is a private auction without deals")
        imps.append(Imp(imp_id, floor, private, tuple(deals)))
    return AuctionSpec(
        auction_id=auction_id,
        imps=tuple(imps),
        at=at,
        tmax_ms=tmax,
        exp_s=max(exps) if exps else default_exp_s,
        wseat=_seats(req.get("wseat"), "wseat"),
        bseat=_seats(req.get("bseat"), "bseat"),
    )


def bids_from_response(
    response: Document, *, currency: str = "USD", default_seat: str = "default"
) -> list[Bid]:
    """Every bid of every seatbid of a bid response, in document order."""
    res = load(response)
    _currency(res.get("cur"), currency, "response cur")
    out: list[Bid] = []
    for n, sb in enumerate(res.get("seatbid") or []):
        if not isinstance(sb, Mapping):
            raise OpenRTBError(f"seatbid[{n}] is not an object")
        seat = _opt_str(sb.get("seat"), f"seatbid[{n}].seat") or default_seat
        for k, b in enumerate(sb.get("bid") or []):
            where = f"seatbid[{n}].bid[{k}]"
            if not isinstance(b, Mapping):
                raise OpenRTBError(f"{where} is not an object")
            if "price" not in b:
                raise OpenRTBError(f"{where} has no price")
            adomain = b.get("adomain") or []
            out.append(
                Bid(
                    bid_id=_str(b.get("id"), f"{where}.id"),
                    imp_id=_str(b.get("impid"), f"{where}.impid"),
                    seat=seat,
                    price=_price(b["price"], f"{where}.price"),
                    deal_id=_opt_str(b.get("dealid"), f"{where}.dealid"),
                    cid=_opt_str(b.get("cid"), f"{where}.cid"),
                    crid=_opt_str(b.get("crid"), f"{where}.crid"),
                    adomain=_seats(adomain, f"{where}.adomain"),
                    nurl=_opt_str(b.get("nurl"), f"{where}.nurl"),
                    lurl=_opt_str(b.get("lurl"), f"{where}.lurl"),
                    burl=_opt_str(b.get("burl"), f"{where}.burl"),
                )
            )
    return out


def response_id(response: Document) -> str:
    """The request id a bid response answers (its `id`)."""
    return _str(load(response).get("id"), "response id")


class OpenRTB(Facade[M]):
    """OpenRTB on the sync or asyncio `AdCache`: `OpenRTB(cache).create(request)`, `.submit(response)`."""

    @overload
    def __init__(self: OpenRTB[Sync], cache: AdCache, *, currency: str = "USD") -> None: ...
    @overload
    def __init__(self: OpenRTB[Async], cache: aio.AdCache, *, currency: str = "USD") -> None: ...
    def __init__(self, cache: Any, *, currency: str = "USD") -> None:
        super().__init__(cache)
        self.currency = currency

    @plan
    def create(self, request: Document, *, increment: Decimal | None = None) -> Plan[Created]:
        """Create the auction a bid request describes, in one FCALL (OpenRTBError when the
        request is malformed, AlreadyExistsError when its id is taken)."""
        spec = auction_from_request(request, currency=self.currency)
        return (yield from one(spec.create_call(increment=increment)))

    @plan
    def submit(
        self, response: Document, *, auction_id: str | None = None, default_seat: str = "default"
    ) -> Plan[list[BidReply]]:
        """Every bid of the response in one FCALL; the auction is the response id unless given."""
        doc = load(response)
        aid = auction_id or response_id(doc)
        bids = bids_from_response(doc, currency=self.currency, default_seat=default_seat)
        if not bids:
            return []
        return (yield from one(bid_many_call(aid, bids)))


AsyncOpenRTB = OpenRTB  # the same class: on an asyncio client its methods return awaitables
