"""Sessions: a sliding idle TTL inside an absolute lifetime, the context history that feeds
targeting, per-session impression caps, and a per-user index (Lua domain `session`).

The user index (`{u:<id>}`) and the session (`{s:<id>}`) are two single-tag calls composed here
(`create(...)`, indexed by default, and `delete(session_id, user_id)`):

* create: index entry first, then the session;
* delete: the session first, then the index entry.

So every live session is in its user's index. A crash between the two calls leaves at most an
index entry without a session: listing skips it, revocation deletes nothing for it, and it is
pruned when its bound (the session's latest possible end) passes. Both calls are idempotent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from adcache import _generated as keys
from adcache._core import Call, ints, pairs, positive_ms, text
from adcache._facade import Facade, M, Plan, forward, many, one, plan
from adcache.profiles import _split, _tokens

_SESSION_FIELDS = (
    "session_id",
    "user_id",
    "created_ms",
    "touched_ms",
    "idle_ttl_ms",
    "deadline_ms",
    "ttl_ms",
    "attributes",
    "impressions",
)


# The record's field names on the wire, in the reply's encoding (bytes, or str when decoded).
_WIRE_S = ("user", "created", "touched", "idle", "deadline", "pttl", "imps", "a.")
_WIRE_B = tuple(w.encode() for w in _WIRE_S)


def _field(i: int, conv: Callable[[Any], Any] = int) -> Any:
    """A `Session` property: the record's wire field `_n[i]`, converted when read."""
    return property(lambda s: conv(s._m()[s._n[i]]))


class Session:
    """A session record (read-only). Times are epoch milliseconds of the server clock.

    Read from the server, it keeps the reply's field/value pairs and converts a field when it is
    read: a caller that only asks whether the session exists, or reads one field, parses no more."""

    __slots__ = ("_f", "_n", "_r", "session_id")
    session_id: str
    _r: Any  # the reply, until a field is read
    _f: dict[Any, Any] | None  # wire field name -> value, as the reply gave them
    _n: tuple[Any, ...]  # the wire names in the reply's encoding (_WIRE_B or _WIRE_S)

    def __init__(
        self,
        session_id: str,
        user_id: str,
        created_ms: int,
        touched_ms: int,
        idle_ttl_ms: int,
        deadline_ms: int,
        ttl_ms: int,
        attributes: dict[str, str] | None = None,
        impressions: int = 0,
    ) -> None:
        values = (user_id, created_ms, touched_ms, idle_ttl_ms, deadline_ms, ttl_ms, impressions)
        f: dict[Any, Any] = dict(zip(_WIRE_S, values, strict=False))
        f.update({"a." + k: v for k, v in (attributes or {}).items()})
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "_r", None)
        object.__setattr__(self, "_f", f)
        object.__setattr__(self, "_n", _WIRE_S)

    @classmethod
    def from_reply(cls, session_id: str, reply: Any) -> Session:
        s = object.__new__(cls)
        object.__setattr__(s, "session_id", session_id)
        object.__setattr__(s, "_r", reply)
        object.__setattr__(s, "_f", None)
        return s

    def _m(self) -> dict[Any, Any]:
        f = self._f
        if f is None:
            r = self._r
            it = iter(r)
            f = dict(zip(it, it, strict=True))
            object.__setattr__(self, "_n", _WIRE_B if type(r[0]) is bytes else _WIRE_S)
            object.__setattr__(self, "_f", f)
        return f

    user_id: str = _field(0, text)
    created_ms: int = _field(1)
    touched_ms: int = _field(2)
    idle_ttl_ms: int = _field(3)
    deadline_ms: int = _field(4)
    ttl_ms: int = _field(5)

    @property
    def impressions(self) -> int:
        return int(self._m().get(self._n[6], 0))

    @property
    def attributes(self) -> dict[str, str]:
        f = self._m()
        prefix = self._n[7]
        return {text(k)[2:]: text(v) for k, v in f.items() if k[:2] == prefix}

    @property
    def expires_at_ms(self) -> int:
        return min(self.touched_ms + self.idle_ttl_ms, self.deadline_ms)

    def _astuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in _SESSION_FIELDS)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Session is read-only (cannot set {name})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash((self.session_id, self.user_id, self.created_ms, self.touched_ms))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in _SESSION_FIELDS)
        return f"Session({inner})"


@dataclass(frozen=True, slots=True)
class Touch:
    expires_at_ms: int
    deadline_ms: int


def _record(session_id: str) -> Callable[[Any], Session | None]:
    return lambda reply: Session.from_reply(session_id, reply) if reply else None


def create_call(
    session_id: str,
    user_id: str,
    *,
    idle_ttl: float,
    max_lifetime: float,
    attributes: Mapping[str, str] | None = None,
) -> Call[Session]:
    """idle_ttl and max_lifetime in seconds (fractions allowed, stored as ms)."""
    args: list[str | int] = [
        user_id,
        positive_ms(idle_ttl, "idle_ttl"),
        positive_ms(max_lifetime, "max_lifetime"),
    ]
    for k, v in (attributes or {}).items():
        args += [k, v]
    # create replies with the record it wrote
    created = functools.partial(Session.from_reply, session_id)
    return Call("ac_session_create", _both(session_id), tuple(args), created)


def get_call(session_id: str) -> Call[Session | None]:
    """The session, or None when unknown or expired (FCALL_RO)."""
    return Call("ac_session_get", (keys.session(session_id),), (), _record(session_id))


def touch_call(session_id: str) -> Call[Touch]:
    """Slide the idle TTL from now, never past the lifetime; NotFoundError if expired."""
    return Call("ac_session_touch", _both(session_id), (), lambda r: Touch(*ints(r)))


def delete_call(session_id: str, user_id: str | None = None) -> Call[bool]:
    """Delete the session and its history; with user_id, only a session of that user."""
    args: tuple[str, ...] = () if user_id is None else (user_id,)
    return Call("ac_session_delete", _both(session_id), args, lambda r: int(r) == 1)


def _both(session_id: str) -> tuple[str, str]:
    return keys.session(session_id), keys.session_history(session_id)


# ---- context for targeting ----


@dataclass(frozen=True, slots=True)
class Track:
    expires_at_ms: int
    deadline_ms: int
    history_length: int


@dataclass(frozen=True, slots=True)
class ContextEntry:
    at_ms: int
    kind: str  # 'view' or 'request'
    categories: tuple[str, ...]
    keywords: tuple[str, ...]
    referrer: str


@dataclass(frozen=True, slots=True)
class SessionContext:
    """Weighted interests of a session. Weights are integers in thousandths: an entry of age a
    weighs floor(1000 * 2^(-a / half_life)); a token sums the weights of the entries carrying it."""

    now_ms: int
    entries: int
    impressions: int
    categories: list[tuple[str, int]]
    keywords: list[tuple[str, int]]
    referrer: str


@dataclass(frozen=True, slots=True)
class Impression:
    allowed: bool
    reason: str  # ok, session_cap, campaign_cap, campaign_limit
    session_impressions: int
    campaign_impressions: int
    duplicate: bool = False  # the impression id was seen: the first call's reply, nothing counted


DEFAULT_MAX_HISTORY = 50
DEFAULT_HALF_LIFE_S = 600.0
DEFAULT_MAX_SESSIONS = 1000


def _weights(flat: Any) -> list[tuple[str, int]]:
    it = iter(flat or [])
    return [(text(n), int(w)) for n, w in zip(it, it, strict=True)]


def track_call(
    session_id: str,
    *,
    kind: Literal["view", "request"] = "view",
    categories: Iterable[str] = (),
    keywords: Iterable[str] = (),
    referrer: str = "",
    max_history: int = DEFAULT_MAX_HISTORY,
) -> Call[Track]:
    """A page view or ad request: append its context and slide the idle TTL (one call)."""
    cats = _tokens(categories, "category")
    kws = _tokens(keywords, "keyword")
    args = (kind, int(max_history), referrer, len(cats), *cats, *kws)
    return Call("ac_session_track", _both(session_id), args, lambda r: Track(*ints(r)))


def history_call(
    session_id: str, count: int = DEFAULT_MAX_HISTORY
) -> Call[list[ContextEntry] | None]:
    """The newest context entries, newest first; None when the session is gone."""

    def parse(reply: Any) -> list[ContextEntry] | None:
        if reply is None:
            return None
        return [
            ContextEntry(int(e[0]), text(e[1]), _split(e[2]), _split(e[3]), text(e[4]))
            for e in reply
        ]

    return Call("ac_session_history", _both(session_id), (int(count),), parse)


def context_call(
    session_id: str, *, half_life: float = DEFAULT_HALF_LIFE_S, top: int = 20
) -> Call[SessionContext | None]:
    """Weighted interests for targeting (FCALL_RO); None when the session is gone.
    half_life in seconds (stored as ms); top: how many categories and keywords to return."""

    def parse(reply: Any) -> SessionContext | None:
        if not reply:
            return None
        f = pairs(reply)
        return SessionContext(
            now_ms=int(f["now"]),
            entries=int(f["entries"]),
            impressions=int(f["impressions"]),
            categories=_weights(f["categories"]),
            keywords=_weights(f["keywords"]),
            referrer=text(f["referrer"]),
        )

    args = (positive_ms(half_life, "half_life"), int(top))
    return Call("ac_session_context", _both(session_id), args, parse)


def impression_call(
    session_id: str,
    *,
    cap: int = 0,
    campaign_id: str | None = None,
    campaign_cap: int = 0,
    impression_id: str | None = None,
) -> Call[Impression]:
    """Count an impression unless a cap is reached (a refusal is a reply, not an error); caps
    are counts (0: none). With impression_id, a retry returns the first reply and counts
    nothing."""

    def parse(reply: Any) -> Impression:
        return Impression(
            int(reply[0]) == 1, text(reply[1]), int(reply[2]), int(reply[3]), int(reply[4]) == 1
        )

    args: tuple[str | int, ...] = (int(cap), campaign_id or "", int(campaign_cap))
    if impression_id is not None:
        args += (impression_id,)
    # With the id a repeated call counts nothing: safe to send again through a failover.
    retry = impression_id is not None
    return Call("ac_session_impression", (keys.session(session_id),), args, parse, retry)


# ---- the user's index ({u:<id>}) ----


def index_add_call(
    user_id: str, session_id: str, *, max_lifetime: float, max_sessions: int = DEFAULT_MAX_SESSIONS
) -> Call[int]:
    """Reply: the entry's bound (ms)."""
    args = (session_id, positive_ms(max_lifetime, "max_lifetime"), int(max_sessions))
    return Call("ac_session_index_add", (keys.user_sessions(user_id),), args, lambda r: int(r[0]))


def index_remove_call(user_id: str, session_ids: list[str]) -> Call[int]:
    return Call("ac_session_index_remove", (keys.user_sessions(user_id),), tuple(session_ids), int)


def index_list_call(user_id: str) -> Call[list[str]]:
    """Ids in the index whose bound has not passed (some may have idled out)."""

    def parse(reply: Any) -> list[str]:
        return [text(x) for x in (reply or [])[::2]]

    return Call("ac_session_index_list", (keys.user_sessions(user_id),), (), parse)


class Sessions(Facade[M]):
    """Session calls on the sync or asyncio `AdCache` (`cache.sessions`)."""

    get = forward(get_call)
    touch = forward(touch_call)
    track = forward(track_call)
    history = forward(history_call)
    context = forward(context_call)
    record_impression = forward(impression_call)

    @plan
    def create(
        self,
        session_id: str,
        user_id: str,
        *,
        idle_ttl: float,
        max_lifetime: float,
        attributes: Mapping[str, str] | None = None,
        index: bool = True,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> Plan[Session]:
        """Create a session (one call); AlreadyExistsError when the id is taken.

        With index=True it is first added to its user's index (one more call, see the module
        doc), so `list` and `revoke_all` know it; LimitExceededError when the user has
        `max_sessions` live sessions."""
        if index:
            add = index_add_call(
                user_id, session_id, max_lifetime=max_lifetime, max_sessions=max_sessions
            )
            yield from one(add)
        create = create_call(
            session_id, user_id, idle_ttl=idle_ttl, max_lifetime=max_lifetime, attributes=attributes
        )
        return (yield from one(create))

    @plan
    def get_many(self, session_ids: list[str]) -> Plan[list[Session | None]]:
        """Many sessions, one pipelined round per node."""
        return (yield from many([get_call(s) for s in session_ids]))

    @plan
    def delete(self, session_id: str, user_id: str | None = None) -> Plan[bool]:
        """Delete the session and its history (one call). With user_id, only a session of that
        user, and then its entry in the user's index too (one more call). Without it the index
        entry, if any, is skipped by `list` and pruned when its bound passes."""
        deleted = yield from one(delete_call(session_id, user_id))
        if user_id is not None:
            yield from one(index_remove_call(user_id, [session_id]))
        return deleted

    @plan
    def list(self, user_id: str) -> Plan[list[Session]]:
        """The user's live sessions (two rounds: the index, then the sessions pipelined)."""
        ids = yield from one(index_list_call(user_id))
        got = (yield from many([get_call(s) for s in ids])) if ids else []
        return [s for s in got if s is not None and s.user_id == user_id]

    @plan
    def revoke_all(self, user_id: str) -> Plan[int]:
        """Delete every session of the user, then their index entries; returns how many
        sessions were deleted. Only the entries listed are removed, so a session created
        meanwhile stays indexed."""
        ids = yield from one(index_list_call(user_id))
        if not ids:
            return 0
        done = yield from many([delete_call(s, user_id) for s in ids])
        (yield from one(index_remove_call(user_id, ids)))
        return sum(1 for d in done if d)


AsyncSessions = Sessions  # the same class: on an asyncio client its methods return awaitables
