"""Facades written once for the sync and the asyncio client.

A domain facade is one class, `Caps(Facade[M])`. Each method describes its work without doing
I/O: `@call` methods return the one `Call` they make, `@plan` methods are generators that yield
each step (a `Call`, or `Many(calls)` for one pipelined round) and receive its result. Read from a
facade of the sync client (`Caps[Sync]`) a method runs its steps and returns the value; from one
of the asyncio client (`Caps[Async]`) it returns an awaitable of the value. mypy sees both
signatures through the overloads of `__get__`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from adcache._core import Call

P = ParamSpec("P")
T = TypeVar("T")


class Sync:
    """Marks a facade of the synchronous client."""


class Async:
    """Marks a facade of the asyncio client."""


M = TypeVar("M", Sync, Async)


class Facade(Generic[M]):
    """Base of the domain facades: `self._c` is the client that runs the calls."""

    def __init__(self, cache: Any) -> None:
        self._c = cache


@dataclass(frozen=True, slots=True)
class Many:
    """A plan step: several calls in one pipelined round per node (`run_many`)."""

    calls: Sequence[Call[Any]]
    raise_on_error: bool = True


Plan = Generator["Call[Any] | Many", Any, T]


class call(Generic[P, T]):
    """A facade method that makes one call: it returns the `Call`."""

    def __init__(self, fn: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: Any = None) -> call[P, T]: ...
    @overload
    def __get__(self, obj: Facade[Sync], objtype: Any = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: Facade[Async], objtype: Any = None) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        fn, run = self.fn, obj._c.run

        @functools.wraps(fn)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return run(fn(obj, *args, **kwargs))  # the asyncio client's run is a coroutine

        obj.__dict__[self.name] = bound  # later lookups find it first: no descriptor call
        return bound


class plan(Generic[P, T]):
    """A facade method of several steps: a generator yielding each `Call` or `Many`."""

    def __init__(self, fn: Callable[Concatenate[Any, P], Plan[T]]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: Any = None) -> plan[P, T]: ...
    @overload
    def __get__(self, obj: Facade[Sync], objtype: Any = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: Facade[Async], objtype: Any = None) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        fn, c = self.fn, obj._c
        drive = _drive_async if getattr(c, "is_async", False) else _drive_sync

        @functools.wraps(fn)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return drive(c, fn(obj, *args, **kwargs))

        obj.__dict__[self.name] = bound
        return bound


def _drive_sync(c: Any, gen: Plan[T]) -> T:
    try:
        step = next(gen)
        while True:
            try:
                if isinstance(step, Many):
                    got = c.run_many(step.calls, raise_on_error=step.raise_on_error)
                else:
                    got = c.run(step)
            except Exception as e:
                step = gen.throw(e)  # the plan may handle it
            else:
                step = gen.send(got)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _drive_async(c: Any, gen: Plan[T]) -> T:
    try:
        step = next(gen)
        while True:
            try:
                if isinstance(step, Many):
                    got = await c.run_many(step.calls, raise_on_error=step.raise_on_error)
                else:
                    got = await c.run(step)
            except Exception as e:
                step = gen.throw(e)
            else:
                step = gen.send(got)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def one(c: Call[T]) -> Generator[Call[Any] | Many, Any, T]:
    """A plan step of one call: `x = yield from one(call)` gives its parsed result, typed."""
    return (yield c)  # type: ignore[no-any-return]


def many(calls: Sequence[Call[T]]) -> Generator[Call[Any] | Many, Any, list[T]]:
    """A plan step of many calls in one pipelined round: their results in order, typed."""
    return (yield Many(calls))  # type: ignore[no-any-return]
