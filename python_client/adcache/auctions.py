"""Real-time-bidding auctions (Lua domain `auction`): create, bid, close, result, bill, notices.

Prices at this edge are CPM amounts (Decimal, int, str or float; converted exactly with
`adcache.money.to_micros`); on the server and in every record they are integer micros of CPM
(`*_micros` fields). One auction per OpenRTB request id; every key lives under its hash tag.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from typing import Any

from adcache import _generated as keys
from adcache._core import Call, pairs, text
from adcache._facade import Facade, M, Plan, call, forward, one, plan
from adcache._records import Fields
from adcache.money import Amount, from_micros, to_micros

FIRST_PRICE = 1
SECOND_PRICE = 2
DEFAULT_INCREMENT = Decimal("0.01")  # CPM added to the second price
DEFAULT_TMAX_MS = 1000
DEFAULT_EXP_S = 300.0  # billing window after the auction ends
TTL_MARGIN_S = 60.0  # the record outlives the billing window by this much


class LossReason(IntEnum):
    """OpenRTB loss reason codes the auction gives (0: no loss)."""

    WON = 0
    EXPIRED = 2
    INVALID_DEAL = 4
    BELOW_FLOOR = 100
    BELOW_DEAL_FLOOR = 101
    LOST_TO_HIGHER_BID = 102
    SEAT_BLOCKED = 104


# ---- what goes in ----


FIXED_PRICE = 3  # a deal's `at`: the deal floor is the price


@dataclass(frozen=True, slots=True)
class Deal:
    """A PMP deal of an imp: its floor (CPM), the seats allowed to bid on it (empty: any), and
    optionally its own auction type `at` (1 first, 2 second, 3 fixed price at the floor; None:
    the auction's), used when a bid of this deal wins."""

    deal_id: str
    floor: Amount = 0
    wseat: tuple[str, ...] = ()
    at: int | None = None


@dataclass(frozen=True, slots=True)
class Imp:
    """An impression: floor (CPM), deals, and `private` (only deal bids may win)."""

    imp_id: str
    floor: Amount = 0
    private: bool = False
    deals: tuple[Deal, ...] = ()


@dataclass(frozen=True, slots=True)
class Bid:
    """One bid of a seat on an imp, price in CPM. URLs may hold OpenRTB `${AUCTION_*}` macros."""

    bid_id: str
    imp_id: str
    seat: str
    price: Amount
    deal_id: str | None = None
    cid: str | None = None
    crid: str | None = None
    adomain: tuple[str, ...] = ()
    nurl: str | None = None
    lurl: str | None = None
    burl: str | None = None


# ---- what comes back ----


@dataclass(frozen=True, slots=True)
class Created:
    auction_id: str
    created_ms: int
    deadline_ms: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class BidReply:
    """The reply to one bid. A repeated bid (same seat and bid id) gets the first reply back,
    with duplicate=True."""

    bid_id: str
    accepted: bool
    reason: int
    seq: int
    duplicate: bool

    @property
    def loss_reason(self) -> LossReason | None:
        return None if self.accepted else LossReason(self.reason)


@dataclass(frozen=True, slots=True)
class BidResult:
    """A bid as the auction saw it. status: won | lost | rejected | pending (auction open).

    reason: 0 for won and pending, 102 for lost, the refusal reason for rejected.
    floor_micros: the floor the bid was held to (its deal's floor for a deal bid).
    min_to_win_micros: for the winner its clearing price; for others on an imp with a winner the
    winning price (a tie goes to the earlier bid, so it had to be beaten); else the floor.
    """

    bid_id: str
    imp_id: str
    seat: str
    price_micros: int
    deal_id: str | None
    cid: str | None
    crid: str | None
    adomain: tuple[str, ...]
    nurl: str | None
    lurl: str | None
    burl: str | None
    seq: int
    status: str
    reason: int
    floor_micros: int
    min_to_win_micros: int

    @property
    def won(self) -> bool:
        return self.status == "won"


@dataclass(frozen=True, slots=True)
class ImpResult:
    """One imp: its floor and, once the outcome is fixed, the winning bid and clearing price."""

    imp_id: str
    floor_micros: int
    private: bool
    winner: BidResult | None
    clearing_micros: int
    billed: bool


@dataclass(frozen=True, slots=True)
class ImpWin:
    """One imp of a closed auction as `bid_close` replies: the winning bid's campaign id, price
    and creative id (cid None: no bid won, or the winner named no campaign) and the clearing
    price."""

    imp_id: str
    cid: str | None
    price_micros: int
    crid: str | None
    clearing_micros: int


@dataclass(frozen=True, slots=True)
class AuctionResult:
    """state: open (bids accepted), due (deadline passed, outcome fixed but not yet recorded),
    closed (recorded). Times are epoch ms of the server clock; `ended_ms` is when bidding stopped
    (the close or the deadline, whichever came first) and starts the billing window `exp_ms`."""

    auction_id: str
    state: str
    at: int
    increment_micros: int
    created_ms: int
    deadline_ms: int
    closed_ms: int
    ended_ms: int
    exp_ms: int
    expires_ms: int
    imps: tuple[ImpResult, ...]
    bids: tuple[BidResult, ...]

    def imp(self, imp_id: str) -> ImpResult:
        for i in self.imps:
            if i.imp_id == imp_id:
                return i
        raise KeyError(imp_id)

    def bid(self, bid_id: str, seat: str | None = None) -> BidResult:
        """A bid by id (and seat: bid ids are only unique per seat); the first match without."""
        for b in self.bids:
            if b.bid_id == bid_id and (seat is None or b.seat == seat):
                return b
        raise KeyError(bid_id)

    def winner(self, imp_id: str) -> BidResult | None:
        return self.imp(imp_id).winner


@dataclass(frozen=True, slots=True)
class BillReply:
    """status: billed (charge `price_micros`, CPM micros), already_billed, expired (outside the
    billing window), not_won, unknown_bid, open (the auction is still taking bids)."""

    status: str
    price_micros: int
    imp_id: str | None

    @property
    def charge(self) -> bool:
        return self.status == "billed"


@dataclass(frozen=True, slots=True)
class Notice:
    """A notice URL with its macros expanded. kind: win (nurl), loss (lurl), billing (burl)."""

    kind: str
    bid_id: str
    url: str


# ---- call builders and parsers ----


def _opt(v: str | None) -> str:
    return "" if v is None else v


def _none(v: Any) -> str | None:
    s = text(v)
    return s or None


def create_call(
    auction_id: str,
    imps: Sequence[Imp],
    *,
    at: int = SECOND_PRICE,
    tmax_ms: int = DEFAULT_TMAX_MS,
    exp: float = DEFAULT_EXP_S,
    ttl: float | None = None,
    increment: Amount = DEFAULT_INCREMENT,
    wseat: Iterable[str] = (),
    bseat: Iterable[str] = (),
) -> Call[Created]:
    """Create the auction; AlreadyExistsError when the request id is taken.
    exp (billing window) and ttl in seconds; ttl defaults to tmax + exp + 60 s."""
    exp_ms = round(exp * 1000)
    ttl_ms = round(ttl * 1000) if ttl is not None else tmax_ms + exp_ms + round(TTL_MARGIN_S * 1000)
    ws, bs = list(wseat), list(bseat)
    args: list[str | int] = [at, tmax_ms, exp_ms, ttl_ms, to_micros(increment)]
    args += [len(ws), *ws, len(bs), *bs, len(imps)]
    for imp in imps:
        args += [imp.imp_id, to_micros(imp.floor), int(imp.private), len(imp.deals)]
        for d in imp.deals:
            args += [d.deal_id, to_micros(d.floor), d.at or 0, len(d.wseat), *d.wseat]
    parse = _CREATED.parser(auction_id=auction_id)
    return Call("ac_auction_create", (keys.auction(auction_id),), tuple(args), parse)


def open_call(
    auction_id: str,
    imps: Sequence[Imp],
    *,
    at: int = SECOND_PRICE,
    tmax_ms: int = DEFAULT_TMAX_MS,
    exp: float = DEFAULT_EXP_S,
    ttl: float | None = None,
    increment: Amount = DEFAULT_INCREMENT,
    wseat: Iterable[str] = (),
    bseat: Iterable[str] = (),
) -> Call[AuctionResult | None]:
    """Create the auction (None: this call created it), or read the one already there (its
    result, as `result_call` gives): create and result in one FCALL; the arguments are
    `create_call`'s."""
    create = create_call(
        auction_id,
        imps,
        at=at,
        tmax_ms=tmax_ms,
        exp=exp,
        ttl=ttl,
        increment=increment,
        wseat=wseat,
        bseat=bseat,
    )
    return Call("ac_auction_open", _keys(auction_id), create.args, _maybe_result(auction_id))


def _keys(auction_id: str) -> tuple[str, str]:
    return keys.auction(auction_id), keys.auction_bids(auction_id)


def _maybe_result(auction_id: str) -> Callable[[Any], AuctionResult | None]:
    def parse(reply: Any) -> AuctionResult | None:
        return None if not reply else _parse_result(auction_id, reply)

    return parse


def bid_args(bid: Bid) -> list[str | int]:
    return [
        bid.seat,
        bid.bid_id,
        bid.imp_id,
        to_micros(bid.price),
        _opt(bid.deal_id),
        _opt(bid.cid),
        _opt(bid.crid),
        ",".join(bid.adomain),
        _opt(bid.nurl),
        _opt(bid.lurl),
        _opt(bid.burl),
    ]


def _bids_args(bids: Sequence[Bid]) -> tuple[str | int, ...]:
    return tuple(a for b in bids for a in bid_args(b))


def _bid_reply(r: Sequence[Any]) -> BidReply:
    return BidReply(text(r[0]), text(r[1]) == "accepted", int(r[2]), int(r[3]), int(r[4]) == 1)


def bid_many_call(auction_id: str, bids: Sequence[Bid]) -> Call[list[BidReply]]:
    """Many bids in one FCALL (one round trip), decided in the given order; replies in the
    same order."""
    args = _bids_args(bids)
    return Call("ac_auction_bid", _keys(auction_id), args, lambda r: [_bid_reply(x) for x in r])


def bid_call(auction_id: str, bid: Bid) -> Call[BidReply]:
    return Call(
        "ac_auction_bid", _keys(auction_id), tuple(bid_args(bid)), lambda r: _bid_reply(r[0])
    )


def bid_close_call(auction_id: str, bids: Sequence[Bid]) -> Call[list[ImpWin]]:
    """The bids (as `bid_many_call`; none: just the close), then the close, in one FCALL;
    the reply is each imp's winner only (`ImpWin`, in create order)."""

    def parse(r: Sequence[Any]) -> list[ImpWin]:
        return [
            ImpWin(text(r[i]), _none(r[i + 1]), int(r[i + 2]), _none(r[i + 3]), int(r[i + 4]))
            for i in range(0, len(r), 5)
        ]

    return Call("ac_auction_bid_close", _keys(auction_id), _bids_args(bids), parse)


_CREATED = Fields(Created)
_RESULT = Fields(AuctionResult)
_BILL = Fields(BillReply)
_BID = Fields(BidResult)  # a bid's row: its fields in order, min_to_win_micros not among them


def _parse_result(auction_id: str, reply: Any) -> AuctionResult:
    f = pairs(reply)
    raw_imps = [list(x) for x in f["imps"]]
    # imp -> (seat, bid id) of its winner: bid ids are only unique per seat
    winners = {text(i[0]): (text(i[3]), text(i[4])) for i in raw_imps if text(i[4])}
    clearing = {text(i[0]): int(i[5]) for i in raw_imps}
    prices = {(text(b[2]), text(b[0])): int(b[3]) for b in f["bids"]}
    win_price = {imp_id: prices[w] for imp_id, w in winners.items() if w in prices}
    bids: list[BidResult] = []
    for b in f["bids"]:
        bid_id, imp_id, floor = text(b[0]), text(b[1]), int(b[14])
        won = winners.get(imp_id) == (text(b[2]), bid_id)
        mtw = clearing[imp_id] if won else win_price.get(imp_id, floor)
        adomain = tuple(text(b[7]).split(",")) if text(b[7]) else ()
        bids.append(_BID.row(b, adomain=adomain, min_to_win_micros=mtw))
    by_key = {(b.seat, b.bid_id): b for b in bids}
    imps = tuple(
        ImpResult(
            imp_id=text(i[0]),
            floor_micros=int(i[1]),
            private=int(i[2]) == 1,
            winner=by_key.get((text(i[3]), text(i[4]))),
            clearing_micros=int(i[5]),
            billed=int(i[6]) == 1,
        )
        for i in raw_imps
    )
    return _RESULT.read(f, auction_id=auction_id, imps=imps, bids=tuple(bids))


def close_call(auction_id: str) -> Call[AuctionResult]:
    """Close (idempotent) and return the recorded result."""
    return Call("ac_auction_close", _keys(auction_id), (), lambda r: _parse_result(auction_id, r))


def result_call(auction_id: str) -> Call[AuctionResult | None]:
    """Read-only (FCALL_RO); a 'due' auction is reported with its outcome, not recorded."""
    return Call("ac_auction_result", _keys(auction_id), (), _maybe_result(auction_id))


def bill_call(auction_id: str, bid_id: str, seat: str) -> Call[BillReply]:
    return Call("ac_auction_bill", _keys(auction_id), (seat, bid_id), _BILL.row)


# ---- notices ----

_MACRO = re.compile(r"\$\{(AUCTION_[A-Z_]+)\}", re.IGNORECASE)


def cpm(micros: int) -> str:
    """CPM micros as a plain decimal string: 1500000 -> '1.5', 2000000 -> '2'."""
    return format(from_micros(micros).normalize(), "f")


def expand(url: str, values: Mapping[str, str]) -> str:
    """Replace `${AUCTION_*}` macros (any case, as bidders send both); unknown ones stay."""

    def sub(m: re.Match[str]) -> str:
        return values.get(m.group(1).upper(), m.group(0))

    return _MACRO.sub(sub, url)


def macro_values(result: AuctionResult, bid: BidResult, currency: str = "USD") -> dict[str, str]:
    imp = result.imp(bid.imp_id)
    v = {
        "AUCTION_ID": result.auction_id,
        "AUCTION_BID_ID": bid.bid_id,
        "AUCTION_IMP_ID": bid.imp_id,
        "AUCTION_SEAT_ID": bid.seat,
        "AUCTION_CURRENCY": currency,
        "AUCTION_LOSS": str(bid.reason),
        "AUCTION_MIN_TO_WIN": cpm(bid.min_to_win_micros),
    }
    if imp.winner is not None:
        v["AUCTION_PRICE"] = cpm(imp.clearing_micros)
    return v


def notices(result: AuctionResult, currency: str = "USD") -> list[Notice]:
    """The notices due once the outcome is fixed: nurl and burl of winners, lurl of the others."""
    out: list[Notice] = []
    if result.state == "open":
        return out
    for b in result.bids:
        v = macro_values(result, b, currency)
        for kind, url in (("win", b.nurl), ("billing", b.burl)) if b.won else (("loss", b.lurl),):
            if url:
                out.append(Notice(kind, b.bid_id, expand(url, v)))
    return out


# ---- facades ----


class Auctions(Facade[M]):
    """Auction calls on the sync or asyncio `AdCache` (`cache.auctions`)."""

    create = forward(create_call)
    bid = forward(bid_call)
    bid_many = forward(bid_many_call)
    open = forward(open_call)
    bid_close = forward(bid_close_call)
    close = forward(close_call)

    @plan
    def result(self, auction_id: str, *, settle: bool = True) -> Plan[AuctionResult | None]:
        """Read the result (FCALL_RO). With settle, a 'due' auction is closed (one more call)."""
        r = yield from one(result_call(auction_id))
        if settle and r is not None and r.state == "due":
            return (yield from one(close_call(auction_id)))
        return r

    @call
    def bill(self, auction_id: str, bid_id: str, *, seat: str) -> Call[BillReply]:
        """Billing notice of a bid: 'billed' once with the price to charge, then 'already_billed'."""
        return bill_call(auction_id, bid_id, seat)


AsyncAuctions = Auctions  # the same class: on an asyncio client its methods return awaitables


__all__ = [
    "FIRST_PRICE",
    "FIXED_PRICE",
    "SECOND_PRICE",
    "AsyncAuctions",
    "AuctionResult",
    "Auctions",
    "Bid",
    "BidReply",
    "BidResult",
    "BillReply",
    "Created",
    "Deal",
    "Imp",
    "ImpResult",
    "ImpWin",
    "LossReason",
    "Notice",
    "cpm",
    "expand",
    "notices",
]
