"""Sessions: a sliding idle TTL inside an absolute lifetime (Lua domain `session`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adcache import _generated as keys
from adcache._core import Call, ints, pairs, text

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache


@dataclass(frozen=True, slots=True)
class Session:
    """A session record. Times are epoch milliseconds of the server clock."""

    session_id: str
    user_id: str
    created_ms: int
    touched_ms: int
    idle_ttl_ms: int
    deadline_ms: int
    ttl_ms: int
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def expires_at_ms(self) -> int:
        return min(self.touched_ms + self.idle_ttl_ms, self.deadline_ms)


@dataclass(frozen=True, slots=True)
class Touch:
    expires_at_ms: int
    deadline_ms: int


def _ms(seconds_or_ms: float, name: str) -> int:
    ms = round(seconds_or_ms * 1000)
    if ms <= 0:
        raise ValueError(f"{name} must be positive")
    return ms


def _record(session_id: str) -> Callable[[Any], Session | None]:
    def parse(reply: Any) -> Session | None:
        if not reply:
            return None
        f = pairs(reply)
        return Session(
            session_id=session_id,
            user_id=text(f["user"]),
            created_ms=int(f["created"]),
            touched_ms=int(f["touched"]),
            idle_ttl_ms=int(f["idle"]),
            deadline_ms=int(f["deadline"]),
            ttl_ms=int(f["pttl"]),
            attributes={k[2:]: text(v) for k, v in f.items() if k.startswith("a.")},
        )

    return parse


def _created(session_id: str) -> Callable[[Any], Session]:
    parse = _record(session_id)

    def created(reply: Any) -> Session:
        s = parse(reply)
        assert s is not None  # create replies with the record it wrote
        return s

    return created


def create_call(
    session_id: str,
    user_id: str,
    *,
    idle_ttl: float,
    max_lifetime: float,
    attributes: Mapping[str, str] | None = None,
) -> Call[Session]:
    """idle_ttl and max_lifetime in seconds (fractions allowed, stored as ms)."""
    args: list[str | int] = [user_id, _ms(idle_ttl, "idle_ttl"), _ms(max_lifetime, "max_lifetime")]
    for k, v in (attributes or {}).items():
        args += [k, v]
    return Call("ac_session_create", (keys.session(session_id),), tuple(args), _created(session_id))


def get_call(session_id: str) -> Call[Session | None]:
    return Call("ac_session_get", (keys.session(session_id),), (), _record(session_id))


def touch_call(session_id: str) -> Call[Touch]:
    return Call("ac_session_touch", (keys.session(session_id),), (), lambda r: Touch(*ints(r)))


def delete_call(session_id: str) -> Call[bool]:
    return Call("ac_session_delete", (keys.session(session_id),), (), lambda r: int(r) == 1)


class Sessions:
    """Session calls on a synchronous `AdCache` (`cache.sessions`)."""

    def __init__(self, cache: AdCache) -> None:
        self._c = cache

    def create(
        self,
        session_id: str,
        user_id: str,
        *,
        idle_ttl: float,
        max_lifetime: float,
        attributes: Mapping[str, str] | None = None,
    ) -> Session:
        """Create a session; AlreadyExistsError when the id is taken."""
        return self._c.run(
            create_call(
                session_id,
                user_id,
                idle_ttl=idle_ttl,
                max_lifetime=max_lifetime,
                attributes=attributes,
            )
        )

    def get(self, session_id: str) -> Session | None:
        """The session, or None when unknown or expired (FCALL_RO)."""
        return self._c.run(get_call(session_id))

    def get_many(self, session_ids: list[str]) -> list[Session | None]:
        """Many sessions, one pipelined round per node."""
        return self._c.run_many([get_call(s) for s in session_ids])

    def touch(self, session_id: str) -> Touch:
        """Slide the idle TTL from now, never past the lifetime; NotFoundError if expired."""
        return self._c.run(touch_call(session_id))

    def delete(self, session_id: str) -> bool:
        return self._c.run(delete_call(session_id))


class AsyncSessions:
    """Session calls on an asyncio `AdCache` (`cache.sessions`)."""

    def __init__(self, cache: aio.AdCache) -> None:
        self._c = cache

    async def create(
        self,
        session_id: str,
        user_id: str,
        *,
        idle_ttl: float,
        max_lifetime: float,
        attributes: Mapping[str, str] | None = None,
    ) -> Session:
        return await self._c.run(
            create_call(
                session_id,
                user_id,
                idle_ttl=idle_ttl,
                max_lifetime=max_lifetime,
                attributes=attributes,
            )
        )

    async def get(self, session_id: str) -> Session | None:
        return await self._c.run(get_call(session_id))

    async def get_many(self, session_ids: list[str]) -> list[Session | None]:
        return await self._c.run_many([get_call(s) for s in session_ids])

    async def touch(self, session_id: str) -> Touch:
        return await self._c.run(touch_call(session_id))

    async def delete(self, session_id: str) -> bool:
        return await self._c.run(delete_call(session_id))
