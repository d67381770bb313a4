"""Reply records read by one table: a budget, campaign or auction reply is a flat field/value
array named after the record's fields (less their unit suffix), or a row of them in order."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from adcache._core import pairs, text

T = TypeVar("T")


def _flag(v: Any) -> bool:
    return text(v) == "1"


def _count(v: Any) -> int | None:
    n = int(v)
    return None if n < 0 else n  # a negative count on the wire means "none"


def _words(v: Any) -> tuple[str, ...]:
    return tuple(text(v).split())


def _optional(v: Any) -> str | None:
    return text(v) or None


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "str": text,
    "int": int,
    "bool": _flag,
    "int | None": _count,
    "str | None": _optional,
    "tuple[str, ...]": _words,
}


class Fields(Generic[T]):
    """How to read a record dataclass from a reply's fields: each field of a type below comes
    from the reply field of its name less a `_micros` or `_ms` suffix (unless `wire` names
    another): `str`, `int`, `bool` ("1"), `int | None` (negative: None), `str | None` (empty:
    None), `tuple[str, ...]` (space-separated). Fields of other types are given to `read`."""

    def __init__(self, cls: type[T], **wire: str) -> None:
        self.cls = cls
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        self.wires = [wire.get(f.name, _unsuffixed(f.name)) for f in fields]
        self.readers = [
            (f.name, w, _CONVERT[str(f.type)])
            for f, w in zip(fields, self.wires, strict=True)
            if str(f.type) in _CONVERT
        ]

    def read(self, reply: Mapping[str, Any], **given: Any) -> T:
        """The record: the `given` fields as they are, the others read from `reply`."""
        for name, wire, convert in self.readers:
            if name not in given:
                given[name] = convert(reply[wire])
        return self.cls(**given)

    def row(self, values: Iterable[Any], **given: Any) -> T:
        """The record from a reply row holding its fields in order (see `read`); the row may
        end before the last fields, when they are given."""
        return self.read(dict(zip(self.wires, values, strict=False)), **given)

    def parser(self, **given: Any) -> Callable[[Any], T]:
        """A `Call`'s parse: the record from a flat field/value array (see `read`)."""
        return lambda reply: self.read(pairs(reply), **given)


def _unsuffixed(name: str) -> str:
    return name.removesuffix("_micros").removesuffix("_ms")
