"""Everything adcache needs from redis-py beyond its documented client API, in one place.

The clients route each call themselves (slot -> node, from public `get_node_from_key`), keep a few
connections per node checked out of redis-py's pools, and write pre-packed commands on them. What
that takes from redis-py is listed here and pinned by `tests/test_redispy_surface.py`, so a
redis-py release that moves one of them fails that test, not a production call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis
from redis._parsers.encoders import Encoder
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

_hiredis_pack: Callable[[tuple[Any, ...]], Any] | None
try:  # redis[hiredis]: one C call packs a whole command
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency, this is a fallback
    _hiredis_pack = None

__all__ = [
    "async_node_connection",
    "async_node_release",
    "async_pool_connection",
    "async_refresh",
    "node_address",
    "pack",
    "pool_connection",
    "reader",
    "refresh",
]

_fallback_packer = redis.connection.PythonRespSerializer(
    65536,
    Encoder("utf-8", "strict", False).encode,  # type: ignore[no-untyped-call]
)


def pack(cmd: tuple[Any, ...]) -> bytes:
    """One command in RESP (bytes ready for the socket)."""
    if _hiredis_pack is not None:
        return bytes(_hiredis_pack(cmd))
    return b"".join(_fallback_packer.pack(*cmd))


def standalone_name(pool: Any) -> str:
    """host:port (or the unix socket path) a standalone client's pool connects to."""
    kw = pool.connection_kwargs
    if "path" in kw:
        return str(kw["path"])
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"


def pool_connection(pool: redis.ConnectionPool) -> Any:
    """A connected connection checked out of a sync pool (the pool checks it is usable). The
    caller keeps it for many calls and gives it back with `pool.release`."""
    try:
        return pool.get_connection()
    except TypeError:  # redis-py < 5.3 requires a command name (5.3+ deprecates it)
        return pool.get_connection("FCALL")


async def async_pool_connection(pool: aredis.ConnectionPool) -> Any:
    try:
        return await pool.get_connection()
    except TypeError:
        return await pool.get_connection("FCALL")


async def async_node_connection(node: AsyncClusterNode) -> Any:
    """A connected connection of an asyncio cluster node (give it back with `node.release`)."""
    conn = node.acquire_connection()
    try:
        await conn.connect()
    except BaseException:
        async_node_release(node, conn)
        raise
    return conn


def reader(conn: Any) -> Any:
    """The callable that reads one reply off a connection, an error reply returned (not raised).

    It is the connection's protocol parser, below `Connection.read_response`: that wrapper
    formats a host string and raises each error reply, which costs more than the parsing. The
    caller handles socket errors (redis-py's ConnectionError/TimeoutError, or a bare OSError) by
    disconnecting the connection."""
    return conn._parser.read_response


def async_node_release(node: AsyncClusterNode, conn: Any) -> None:
    """Give a connection back to an asyncio cluster node (redis-py < 5.1 has no `release`)."""
    release = getattr(node, "release", None)
    if release is not None:
        release(conn)
    else:
        node._free.append(conn)


def node_address(error: Any) -> tuple[str, int]:
    """host, port of a MOVED/ASK redirect."""
    return str(error.host), int(error.port)


def refresh(rc: RedisCluster) -> None:
    """Reload the slot map from the cluster (CLUSTER SLOTS)."""
    rc.nodes_manager.initialize()


async def async_refresh(rc: AsyncRedisCluster) -> None:
    await rc.nodes_manager.initialize()


async def async_ensure_initialized(rc: AsyncRedisCluster) -> None:
    """An asyncio cluster client loads its slot map on first use; routing needs it now."""
    if not rc.get_nodes():
        await rc.initialize()


def adopt(conn: Any) -> tuple[Any, Any, Callable[[str], Exception], str | None, str, Any]:
    """Take over a connected asyncio connection's transport (TCP, TLS or unix socket: redis-py
    did the handshake, AUTH and SELECT). Returns the transport, the connection (keep it to
    release it later), how an error reply becomes redis-py's exception (MovedError, ...), and
    the encoding replies are decoded with (None: bytes) and its error handler, and the stream
    objects (keep them referenced: a collected StreamWriter closes its transport)."""
    streams = (conn._writer, conn._reader)
    transport = conn._writer.transport
    enc = conn.encoder
    parse_error = conn._parser.parse_error
    # redis-py now sees a disconnected connection: released to its pool, it reconnects on reuse
    # and never waits on the transport it no longer owns.
    conn._parser.on_disconnect()
    conn._writer = conn._reader = None
    return (
        transport,
        conn,
        parse_error,
        enc.encoding if enc.decode_responses else None,
        enc.encoding_errors,
        streams,
    )


def socket_timeout(conn: Any) -> float | None:
    t = conn.socket_timeout
    return None if t is None else float(t)
