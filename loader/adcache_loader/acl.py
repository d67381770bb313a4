"""ACL users for adcache, derived from the rendered library: roles that hold least privilege.

Redis checks the commands a function runs inside itself against the *calling* user's ACL too. So a
user that may call a function must also hold every command that function runs, on the keys it runs
them on; and holding them, it may also send them directly, outside any function. A role cannot
stop that; what it can do is shrink it to the commands and keys one job needs. So each role here is
built from the library itself:

* which commands each function runs is read from the rendered source: every
  `redis.call('X', ...)` of the function and of every helper it reaches (a small call graph over
  the top-level definitions of `functions/adcache.lua`, per domain section), never typed by hand;
* which keys a domain touches comes from `lua/keyspace.yaml` (one pattern per key suffix, such as
  `ad:{c:*}:st:h:*`) and from each function's contract (`@keys`).

Roles: `reader` (`FCALL_RO` and the read commands of the read-only functions, read-only on `ad:*`),
writer roles per domain (the commands of that domain's functions on that domain's keys only), the
all-domains `app` user, and the `deploy` user (load and inspect functions; nothing on data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml
from redis.exceptions import ResponseError

from adcache import _generated
from adcache_loader.paths import library_source, project_paths

_CALL = re.compile(r"(?:redis\.p?call|K\.read)\(\s*'([A-Za-z]+)'")
_ANY_CALL = re.compile(r"(?:redis\.p?call|K\.read)\(")
# K.read(cmd, key, ...) is the library's one command wrapper (a first read through redis.pcall
# that maps WRONGTYPE): its call sites must name the command literally, like redis.call's.
_WRAPPER = "K.read"
_SECTION = re.compile(r"^-- ==== (helper|domain): (\w+)")
_DEF = re.compile(
    r"^(?:local\s+function\s+([A-Za-z_]\w*)"
    r"|function\s+([A-Za-z_]\w*(?:[.:][A-Za-z_]\w*)?)"
    r"|local\s+([A-Za-z_]\w*)"
    r"|([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)\s*[,=\[])"
)
_NAME = re.compile(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?")
_REGISTER = re.compile(
    r"redis\.register_function\{function_name='(\w+)',\s*callback=([A-Za-z_]\w*),"
    r"\s*flags=\{([^}]*)\}"
)

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


class LibraryParseError(RuntimeError):
    """The rendered library has a shape the command analysis cannot follow (so no role is built
    from a guess)."""


@dataclass(frozen=True)
class FunctionAccess:
    name: str
    domain: str
    readonly: bool
    commands: frozenset[str]  # lower-case
    keys: tuple[str, ...]  # keyspace names from the contract's @keys


@dataclass(frozen=True)
class _Unit:
    name: str
    body: str


def _sections(source: str) -> list[tuple[str, str, list[str]]]:
    """(kind, name, lines) of each `-- ==== helper|domain: name` section, in order."""
    out: list[tuple[str, str, list[str]]] = [("helper", "_head", [])]
    for line in source.splitlines():
        m = _SECTION.match(line)
        if m:
            out.append((m.group(1), m.group(2), []))
        else:
            out[-1][2].append(line)
    return out


def _units(lines: list[str]) -> list[_Unit]:
    """Top-level statements of a section: each starts at a column-0 line and runs to the next."""
    units: list[_Unit] = []
    name, body = "", list[str]()
    for line in lines:
        starts = bool(line) and not line[0].isspace() and not line.startswith(("end", "}", ")"))
        if starts and not line.startswith(("do", "--", "redis.register_function")):
            if body:
                units.append(_Unit(name, "\n".join(body)))
            m = _DEF.match(line)
            name = next((g for g in m.groups() if g), "") if m else ""
            body = [line]
        elif starts:
            if body:
                units.append(_Unit(name, "\n".join(body)))
            name, body = "", [line]
        else:
            body.append(line)
    if body:
        units.append(_Unit(name, "\n".join(body)))
    return units


def _commands_of(unit: _Unit) -> set[str]:
    if unit.name == _WRAPPER:
        return set()  # its commands are counted at its call sites
    found = {c.lower() for c in _CALL.findall(unit.body)}
    if len(_ANY_CALL.findall(unit.body)) != len(_CALL.findall(unit.body)):
        raise LibraryParseError(
            f"{unit.name or 'a statement'} runs a command whose name is not a literal"
        )
    return found


@cache
def _analyse(source: str) -> dict[str, tuple[str, bool, frozenset[str]]]:
    """function name -> (domain, readonly, commands it can run, helpers included)."""
    # Every command must be spelled `redis.call('X'` (or pcall): an alias (`local call =
    # redis.call`) or a computed name would hide commands from the roles.
    wrapper = re.search(r"^function K\.read\(.*?^end$", source, re.MULTILINE | re.DOTALL)
    rest = source.replace(wrapper.group(0), "") if wrapper else source
    if len(re.findall(r"redis\.p?call\b|K\.read\b", rest)) != len(_CALL.findall(rest)):
        raise LibraryParseError("a command is run other than as redis.call('NAME', ...)")
    helpers: dict[str, list[_Unit]] = {}
    domains: list[tuple[str, list[_Unit], str]] = []
    for kind, name, lines in _sections(source):
        units = _units(lines)
        if kind == "helper":
            for u in units:
                helpers.setdefault(u.name, []).append(u)
        else:
            domains.append((name, units, "\n".join(lines)))

    out: dict[str, tuple[str, bool, frozenset[str]]] = {}
    for domain, units, text in domains:
        local: dict[str, list[_Unit]] = {}
        for u in units:
            local.setdefault(u.name, []).append(u)
        # Statements with no name (a bare loop, say) run at load time; a command there would be
        # a load-time command, which the library never does: refuse rather than guess.
        for u in units:
            if not u.name and _commands_of(u):
                raise LibraryParseError(f"{domain}: a command outside any definition")

        def closure(start: str, local: dict[str, list[_Unit]] = local) -> frozenset[str]:
            seen: set[tuple[str, str]] = set()
            todo = [("local", start)]
            cmds: set[str] = set()
            while todo:
                scope, name = todo.pop()
                if (scope, name) in seen:
                    continue
                seen.add((scope, name))
                table = local if scope == "local" and name in local else helpers
                for u in table.get(name, []):
                    cmds |= _commands_of(u)
                    inner = "local" if table is local else "helper"
                    for ref in set(_NAME.findall(u.body)):
                        for cand in (ref, ref.split(".")[0]):
                            if cand in local and inner == "local":
                                todo.append(("local", cand))
                            elif cand in helpers:
                                todo.append(("helper", cand))
            return frozenset(cmds)

        for m in _REGISTER.finditer(text):
            fname, callback, flags = m.groups()
            if callback not in local:
                raise LibraryParseError(f"{fname}: callback {callback} not found in {domain}")
            out[fname] = (domain, "no-writes" in flags, closure(callback))
    if not out:
        raise LibraryParseError("no registered function found")
    return out


def function_access(source: str | None = None) -> dict[str, FunctionAccess]:
    """What each function of the library runs, and on which keys (by keyspace name)."""
    out = {}
    for name, (domain, readonly, commands) in _analyse(source or library_source()).items():
        spec = _generated.FUNCTIONS.get(name)
        keys = tuple(k.removesuffix("...") for k in (spec.keys if spec is not None else ()))
        out[name] = FunctionAccess(name, domain, readonly, commands, keys)
    return out


def library_commands(source: str | None = None) -> list[str]:
    """The commands the library runs inside its functions, lower-case, sorted."""
    return sorted({c for f in function_access(source).values() for c in f.commands})


@cache
def _keyspace() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((project_paths().lua / "keyspace.yaml").read_text())
    return loaded


def key_pattern(key_name: str) -> str:
    """The ACL glob of one keyspace entry: `ad:{c:*}:st:h:*` for stats_hour."""
    ks = _keyspace()
    entry = ks["keys"][key_name]
    tag = ks["entities"][entry["entity"]]["tag"]
    suffix = re.sub(r"<[^>]+>", "*", str(entry["suffix"]))
    return f"{ks['prefix']}:{{{tag}:*}}:{suffix}"


def domain_keys(domains: Iterable[str]) -> list[str]:
    """Keyspace names owned by these domains (keyspace.yaml's `domain` field)."""
    wanted = set(domains)
    return [name for name, e in _keyspace()["keys"].items() if e.get("domain") in wanted]


DOMAINS = tuple(sorted({e["domain"] for e in _keyspace()["keys"].values()}))

# Writer roles: a name and the domains whose functions it may run (reads of those domains included).
# `read` adds the read-only role on top (every no-writes function, read-only on every key).
ROLES: dict[str, tuple[str, ...]] = {
    "reader": ("read",),
    "tracker": ("freqcap", "stats"),  # impression and event trackers: count caps, record stats
    "bidder": ("auction", "budget", "read"),  # run auctions, reserve and charge budgets; read all
    "campaigns": ("campaign", "budget", "targeting"),  # campaign management and the index
    "users": ("profile", "segment", "session"),  # the user-data pipeline
    "cache": ("cache",),  # the caching strategies
    "app": (*DOMAINS, "read"),  # everything a single application user needs (the widest)
}


def parse_role(spec: str) -> tuple[str, tuple[str, ...]]:
    """`tracker` (a preset) or `name=domain,domain[,read]` -> (role name, domains)."""
    if "=" not in spec:
        if spec not in ROLES:
            raise ValueError(f"unknown role {spec!r}; presets: {', '.join(ROLES)}")
        return spec, ROLES[spec]
    name, _, parts = spec.partition("=")
    domains = tuple(p.strip() for p in parts.split(",") if p.strip())
    bad = [p for p in domains if p != "read" and p not in DOMAINS]
    if not name or not domains or bad:
        raise ValueError(f"bad role {spec!r}: domains are {', '.join(DOMAINS)} and read")
    return name, domains


@dataclass(frozen=True)
class AclUser:
    name: str
    rules: tuple[str, ...]

    def setuser_args(self, password: str) -> list[str]:
        return [self.name, "reset", "on", f">{password}", *self.rules]

    def command_text(self, password: str = "<password>") -> str:
        return "ACL SETUSER " + " ".join(self.setuser_args(password))


def role_user(
    name: str, domains: Iterable[str], prefix: str = "ad", source: str | None = None
) -> AclUser:
    """A user that may run the functions of `domains` (writes and reads) on their keys only; with
    `read` among them, also every read-only function, read-only on every `<prefix>:*` key."""
    wanted = set(domains)
    read_all = "read" in wanted
    access = function_access(source)
    keyless = {"monitor", "version"}  # their functions take no key: anyone may call them
    mine = [f for f in access.values() if f.domain in wanted or f.domain in keyless]
    if read_all:
        mine += [f for f in access.values() if f.readonly and f not in mine]
    commands = sorted({c for f in mine for c in f.commands})
    writes = any(not f.readonly for f in mine)
    if prefix != _keyspace()["prefix"]:
        raise ValueError(f"the library's key prefix is {_keyspace()['prefix']!r}, not {prefix!r}")
    # Keys of the role's domains, and keys of another domain that its functions take (the
    # campaign record, for the budget functions). Read and write both: FCALL declares every key
    # it is given as read-write, so a read-only pattern would refuse the call itself.
    key_names = domain_keys(wanted)
    for k in (k for f in mine if f.domain in wanted for k in f.keys):
        if k not in key_names:
            key_names.append(k)
    patterns = [f"~{key_pattern(k)}" for k in key_names]
    if read_all:
        patterns.append(f"%R~{prefix}:*")
    calls = ["+fcall", "+fcall_ro", "+wait"] if writes else ["+fcall_ro"]
    return AclUser(
        name,
        (
            *patterns,
            "resetchannels",
            "-@all",
            *calls,
            *(f"+{c}" for c in CONNECT),
            *(f"+{c}" for c in commands),
        ),
    )


def app_user(name: str = "adcache-app", prefix: str = "ad", source: str | None = None) -> AclUser:
    """The `app` role: every function, on the library's key patterns only (the widest role)."""
    return role_user(name, ROLES["app"], prefix, source)


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
            "+role",
            "+bgsave",  # `adcache deploy --save`
            *connect,
        ),
    )


def _words(value: Any) -> set[str]:
    """ACL GETUSER fields come as a string or a list (redis-py parses some), bytes or str."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list | tuple | set):
        return {w for v in value for w in _words(v)}
    return set()


def default_user_open(client: Any) -> bool:
    """True when the `default` user is on, needs no password and may run every command: anyone
    who reaches the port gets everything, whatever the other users say."""
    info: Mapping[Any, Any] | None = client.acl_getuser("default")
    if not info:
        return False
    flags = _words(info.get("flags"))
    granted = _words(info.get("commands")) | _words(info.get("categories"))
    return {"on", "nopass"} <= flags and ("allcommands" in flags or "+@all" in granted)


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
