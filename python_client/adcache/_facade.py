"""Facades written once for the sync and the asyncio client.

A domain facade is one class, `Caps(Facade[M])`. Each method describes its work without doing
I/O: `@call` methods return the one `Call` they make, `@plan` methods are generators that yield
each step (a `Call`, or `Many(calls)` for one pipelined round) and receive its result. Read from a
facade of the sync client (`Caps[Sync]`) a method runs its steps and returns the value; from one
of the asyncio client (`Caps[Async]`) it returns an awaitable of the value. mypy sees both
signatures through the overloads of `__get__`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

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


@dataclass(frozen=True, slots=True)
class Do:
    """A plan step of other I/O: `fn(*args)`. On the asyncio client an awaitable result is
    awaited, and a `blocking` function runs in a thread."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    blocking: bool = False


@dataclass(frozen=True, slots=True)
class Sleep:
    """A plan step: pause (the sync client waits on `stop`, a `threading.Event`, when given)."""

    seconds: float
    stop: Any = None


@dataclass(frozen=True, slots=True)
class Each:
    """A plan step: run several plans (one after the other; concurrently on asyncio)."""

    plans: Sequence[Plan[Any]]


Step = Call[Any] | Many | Do | Sleep | Each
Plan = Generator[Step, Any, T]


class _Method(Generic[P, T]):
    """A facade method: read from a facade of the sync client it runs and returns the value,
    from one of the asyncio client it returns an awaitable of the value."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: Any = None) -> Self: ...
    @overload
    def __get__(self, obj: Facade[Sync], objtype: Any = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: Facade[Async], objtype: Any = None) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        bound = self._bind(obj, obj._c)
        functools.update_wrapper(bound, self.fn)  # type: ignore[attr-defined]
        obj.__dict__[self.name] = bound  # later lookups find it first: no descriptor call
        return bound

    def _bind(self, obj: Any, c: Any) -> Callable[..., Any]:
        raise NotImplementedError


class call(_Method[P, T]):
    """A facade method that makes one call: it returns the `Call`."""

    def __init__(self, fn: Callable[Concatenate[Any, P], Call[T]]) -> None:
        super().__init__(fn)
        self.fn = fn
        self.build: Callable[P, Call[T]] | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.fn.__name__ = name

    def _bind(self, obj: Any, c: Any) -> Callable[..., Any]:
        fn, build, run = self.fn, self.build, c.run  # the asyncio client's run is a coroutine
        if build is not None:
            return lambda *args, **kwargs: run(build(*args, **kwargs))
        return lambda *args, **kwargs: run(fn(obj, *args, **kwargs))


def forward(build: Callable[P, Call[T]]) -> call[P, T]:
    """A facade method that makes the one call `build` builds, with its signature and docstring:
    `get = forward(get_call)` in a facade class."""

    def method(_self: Any, /, *args: P.args, **kwargs: P.kwargs) -> Call[T]:
        return build(*args, **kwargs)

    method.__doc__ = build.__doc__
    method.__wrapped__ = build  # type: ignore[attr-defined]
    m = call(method)
    m.build = build
    return m


class plan(_Method[P, T]):
    """A facade method of several steps: a generator yielding each step (`Call`, `Many`, ...)
    and receiving its result."""

    def __init__(self, fn: Callable[Concatenate[Any, P], Plan[T]]) -> None:
        super().__init__(fn)
        self.fn = fn

    def _bind(self, obj: Any, c: Any) -> Callable[..., Any]:
        fn = self.fn
        drive = _drive_async if getattr(c, "is_async", False) else _drive_sync
        return lambda *args, **kwargs: drive(c, fn(obj, *args, **kwargs))


def _drive_sync(c: Any, gen: Plan[T]) -> T:
    try:
        step = next(gen)
        while True:
            try:
                got = _step_sync(c, step)
            except Exception as e:
                step = gen.throw(e)  # the plan may handle it
            else:
                step = gen.send(got)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _step_sync(c: Any, step: Step) -> Any:
    if isinstance(step, Call):
        return c.run(step)
    if isinstance(step, Many):
        return c.run_many(step.calls, raise_on_error=step.raise_on_error)
    if isinstance(step, Do):
        return step.fn(*step.args)
    if isinstance(step, Sleep):
        return step.stop.wait(step.seconds) if step.stop else time.sleep(step.seconds)
    return [_drive_sync(c, p) for p in step.plans]


async def _drive_async(c: Any, gen: Plan[T]) -> T:
    try:
        step = next(gen)
        while True:
            try:
                got = await _step_async(c, step)
            except Exception as e:
                step = gen.throw(e)
            else:
                step = gen.send(got)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _step_async(c: Any, step: Step) -> Any:
    if isinstance(step, Call):
        return await c.run(step)
    if isinstance(step, Many):
        return await c.run_many(step.calls, raise_on_error=step.raise_on_error)
    if isinstance(step, Do):
        if step.blocking:
            return await asyncio.to_thread(step.fn, *step.args)
        got = step.fn(*step.args)
        return await got if inspect.isawaitable(got) else got
    if isinstance(step, Sleep):
        return await asyncio.sleep(step.seconds)
    return await asyncio.gather(*(_drive_async(c, p) for p in step.plans))


def one(c: Call[T]) -> Generator[Step, Any, T]:
    """A plan step of one call: `x = yield from one(call)` gives its parsed result, typed."""
    return (yield c)  # type: ignore[no-any-return]


def many(calls: Sequence[Call[T]]) -> Generator[Step, Any, list[T]]:
    """A plan step of many calls in one pipelined round: their results in order, typed."""
    return (yield Many(calls))  # type: ignore[no-any-return]


def do(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Generator[Step, Any, Any]:
    """A plan step of other I/O (a client or redis-py method, a user's loader): its result."""
    return (yield Do(functools.partial(fn, **kwargs) if kwargs else fn, args))


def blocking(fn: Callable[..., Any], *args: Any) -> Generator[Step, Any, Any]:
    """A plan step calling a blocking function (in a thread on the asyncio client)."""
    return (yield Do(fn, args, blocking=True))


def sleep(seconds: float, stop: Any = None) -> Generator[Step, Any, None]:
    yield Sleep(seconds, stop)


def each(plans: Sequence[Plan[T]]) -> Generator[Step, Any, list[T]]:
    """Several plans as one step: their results in order."""
    return (yield Each(plans))  # type: ignore[no-any-return]
