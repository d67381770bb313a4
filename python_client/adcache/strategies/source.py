"""The source of truth behind a cache: the interface, and the embedded SQLite default.

Values are JSON-serializable Python objects; `None` means "no such key" and cannot be stored.
Any database plugs in by implementing `SourceOfTruth` (reads and writes) and, for write-back,
`ChangeSink` (apply a batch of changes in one transaction, idempotently).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_CHUNK = 500  # SQLite's default limit of bound parameters is far above this


@runtime_checkable
class SourceOfTruth(Protocol):
    """Where the data lives. Every method may block; the asyncio side runs them in threads."""

    def load(self, key: str) -> Any | None:
        """The value of `key`, or None when there is none."""
        ...

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The values of the keys that exist (absent keys are left out)."""
        ...

    def save(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


class AsyncSourceOfTruth(Protocol):
    async def load(self, key: str) -> Any | None: ...

    async def load_many(self, keys: Sequence[str]) -> dict[str, Any]: ...

    async def save(self, key: str, value: Any) -> None: ...

    async def delete(self, key: str) -> None: ...


def stream_order(entry_id: str) -> tuple[int, int]:
    """A stream id '<ms>-<seq>' as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


@dataclass(frozen=True, slots=True)
class Change:
    """One write-back change record: set `key` to `value`, or delete it (`op` "del").

    `stream` and `entry_id` name the record; a key always lives in one shard, so the ids of its
    changes are ordered and the sink can skip any change older than the last one it applied."""

    key: str
    op: Literal["set", "del"]
    value: Any
    stream: str
    entry_id: str

    @property
    def order(self) -> tuple[int, int]:
        return stream_order(self.entry_id)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    skipped: int  # already applied (a redelivery after a crash) or older than the applied one


class ChangeSink(Protocol):
    def apply_changes(self, changes: Sequence[Change]) -> ApplyResult:
        """Apply the changes in one transaction, in order per key, skipping every change whose id
        is not newer than the last applied one of its key. All or nothing."""
        ...


def encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def decode(text: str) -> Any:
    return json.loads(text)


class SQLiteSource:
    """A key/value table in an embedded SQLite database (standard library `sqlite3`).

    WAL mode with `synchronous=FULL` by default: readers never block the writer, and a commit the
    flusher acknowledges is on disk. Safe across threads (one connection per thread) and processes
    (SQLite's file locks; writers take the lock up front with BEGIN IMMEDIATE and wait up to
    `timeout` seconds for it).

    Tables: `<table>` (key, value JSON, updated_ms); `<table>_wb_applied` (key, ms, seq: the last
    write-back change applied per key, kept for deleted keys too); with `audit=True`,
    `<table>_wb_audit` logs every applied change (key, entry_id, op, applied_ms).
    """

    def __init__(
        self,
        path: str | Path,
        table: str = "kv",
        *,
        audit: bool = False,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        timeout: float = 30.0,
    ) -> None:
        if not _TABLE.fullmatch(table):
            raise ValueError(f"table must be an SQL identifier, got {table!r}")
        self.path = str(path)
        self.table = table
        self.audit = audit
        self.synchronous = synchronous
        self.timeout = timeout
        self._local = threading.local()
        with self._tx() as db:
            db.execute(
                f'CREATE TABLE IF NOT EXISTS "{table}" (key TEXT PRIMARY KEY, value TEXT NOT NULL,'
                " updated_ms INTEGER NOT NULL)"
            )
            db.execute(
                f'CREATE TABLE IF NOT EXISTS "{table}_wb_applied" (key TEXT PRIMARY KEY,'
                " ms INTEGER NOT NULL, seq INTEGER NOT NULL)"
            )
            if audit:
                db.execute(
                    f'CREATE TABLE IF NOT EXISTS "{table}_wb_audit" (key TEXT NOT NULL,'
                    " entry_id TEXT NOT NULL, op TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
                )

    # ---- connections ----

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread, and a fresh one after a fork (connections must not cross it).
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ---- SourceOfTruth ----

    def load(self, key: str) -> Any | None:
        sql = f'SELECT value FROM "{self.table}" WHERE key = ?'
        row = self._conn().execute(sql, (key,)).fetchone()
        return None if row is None else decode(row[0])

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        db = self._conn()
        for i in range(0, len(keys), _CHUNK):
            chunk = list(keys[i : i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            sql = f'SELECT key, value FROM "{self.table}" WHERE key IN ({marks})'
            for k, v in db.execute(sql, chunk):
                out[k] = decode(v)
        return out

    def save(self, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("None means 'no such key' and cannot be stored; use delete()")
        with self._tx() as db:
            self._upsert(db, key, value)

    def delete(self, key: str) -> None:
        with self._tx() as db:
            db.execute(f'DELETE FROM "{self.table}" WHERE key = ?', (key,))

    def _upsert(self, db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute(
            f'INSERT INTO "{self.table}" (key, value, updated_ms) VALUES (?, ?, ?)'
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
            " updated_ms = excluded.updated_ms",
            (key, encode(value), int(time.time() * 1000)),
        )

    # ---- ChangeSink ----

    def apply_changes(self, changes: Sequence[Change]) -> ApplyResult:
        applied = skipped = 0
        # Stream order is per-key order (a key never changes shard).
        ordered = sorted(changes, key=lambda c: (c.stream, c.order))
        with self._tx() as db:
            for ch in ordered:
                ms, seq = ch.order
                row = db.execute(
                    f'SELECT ms, seq FROM "{self.table}_wb_applied" WHERE key = ?', (ch.key,)
                ).fetchone()
                if row is not None and (row[0], row[1]) >= (ms, seq):
                    skipped += 1
                    continue
                if ch.op == "set":
                    self._upsert(db, ch.key, ch.value)
                else:
                    db.execute(f'DELETE FROM "{self.table}" WHERE key = ?', (ch.key,))
                db.execute(
                    f'INSERT INTO "{self.table}_wb_applied" (key, ms, seq) VALUES (?, ?, ?)'
                    " ON CONFLICT(key) DO UPDATE SET ms = excluded.ms, seq = excluded.seq",
                    (ch.key, ms, seq),
                )
                if self.audit:
                    db.execute(
                        f'INSERT INTO "{self.table}_wb_audit" VALUES (?, ?, ?, ?)',
                        (ch.key, ch.entry_id, ch.op, int(time.time() * 1000)),
                    )
                applied += 1
                self.after_apply(ch)
        return ApplyResult(applied, skipped)

    def after_apply(self, change: Change) -> None:
        """Called inside the transaction after each applied change (a hook for subclasses)."""

    # ---- inspection ----

    def items(self) -> dict[str, Any]:
        rows = self._conn().execute(f'SELECT key, value FROM "{self.table}"')
        return {k: decode(v) for k, v in rows}

    def audit_log(self) -> list[tuple[str, str, str]]:
        """(key, entry_id, op) of every applied write-back change, in commit order."""
        rows = self._conn().execute(
            f'SELECT key, entry_id, op FROM "{self.table}_wb_audit" ORDER BY rowid'
        )
        return [(k, e, o) for k, e, o in rows]


class ThreadedSource:
    """An `AsyncSourceOfTruth` over a blocking `SourceOfTruth`: each call runs in a thread."""

    def __init__(self, source: SourceOfTruth) -> None:
        self.source = source

    async def load(self, key: str) -> Any | None:
        return await asyncio.to_thread(self.source.load, key)

    async def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        return await asyncio.to_thread(self.source.load_many, keys)

    async def save(self, key: str, value: Any) -> None:
        await asyncio.to_thread(self.source.save, key, value)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.source.delete, key)
