"""Least-privilege ACL users for adcache, derived from the rendered library.

Redis checks a function's inner commands against the calling user's ACL too, so the application
user needs the data commands the library runs inside itself, on the library's key pattern only.
That list is read from the rendered source (every `redis.call('X', ...)`), never typed by hand.
What it does not get: FUNCTION (load, flush, delete), FLUSHALL/FLUSHDB, CONFIG, KEYS, SCAN, and any
key outside `<prefix>:*`. The deploy user may load and inspect functions and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from adcache_loader.paths import library_source

_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z]+)'")

# What a client needs to connect, authenticate and route (RedisCluster reads the slot map and the
# command table; READONLY lets FCALL_RO go to replicas).
CONNECT = (
    "auth",
    "hello",
    "ping",
    "select",
    "client|setname",
    "client|setinfo",
    "readonly",
    "cluster|slots",
    "cluster|shards",
    "cluster|nodes",
    "cluster|info",
    "command",
    "info",
)


def library_commands(source: str | None = None) -> list[str]:
    """The commands the library runs inside its functions, lower-case, sorted."""
    return sorted({m.lower() for m in _CALL.findall(source or library_source())})


@dataclass(frozen=True)
class AclUser:
    name: str
    rules: tuple[str, ...]

    def setuser_args(self, password: str) -> list[str]:
        return [self.name, "reset", "on", f">{password}", *self.rules]

    def command_text(self, password: str = "<password>") -> str:
        return "ACL SETUSER " + " ".join(self.setuser_args(password))


def app_user(name: str = "adcache-app", prefix: str = "ad", source: str | None = None) -> AclUser:
    inner = [f"+{c}" for c in library_commands(source)]
    connect = [f"+{c}" for c in CONNECT]
    return AclUser(
        name,
        (
            f"~{prefix}:*",
            "resetchannels",
            "-@all",
            "+fcall",
            "+fcall_ro",
            "+wait",
            *connect,
            *inner,
        ),
    )


def deploy_user(name: str = "adcache-deploy") -> AclUser:
    connect = [f"+{c}" for c in CONNECT]
    return AclUser(
        name,
        (
            "resetchannels",
            "-@all",
            "+function|load",
            "+function|list",
            "+function|dump",
            "+function|restore",
            "+function|stats",
            "+fcall_ro",
            *connect,
        ),
    )


_BAD_MODIFIER = re.compile(r"modifier '([^']+)': Unknown command")


def apply_user(client: Any, user: AclUser, password: str) -> list[str]:
    """ACL SETUSER on one node. Rules naming commands this server does not have (CLIENT SETINFO
    before 7.2, say) are dropped and reported, since a client cannot send them there either."""
    rules: list[str] = list(user.rules)
    dropped: list[str] = []
    while True:
        try:
            client.execute_command(
                "ACL", "SETUSER", *AclUser(user.name, tuple(rules)).setuser_args(password)
            )
            return dropped
        except ResponseError as e:
            m = _BAD_MODIFIER.search(str(e))
            if m is None or m.group(1) not in rules:
                raise
            rules.remove(m.group(1))
            dropped.append(m.group(1))
