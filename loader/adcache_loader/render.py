"""Render the Lua templates of `lua/` into the one Functions library and its generated companions.

Inputs: `lua/keyspace.yaml` (every key pattern), `lua/errors.yaml` (every error code), `lua/VERSION`,
helper templates `lua/_<name>.lua.j2` (include-only) and domain templates `lua/<domain>.lua.j2`.
Outputs: `functions/adcache.lua` (what Redis runs), `python_client/adcache/_generated.py` (key
builders, function table and exception classes for the client), `docs/FUNCTIONS.md` (the
reference, built from the contract headers) and `functions/adcache.contracts.json` (the typed
contracts as data, for clients in any language and the conformance runners). All are committed; a
test checks they are fresh. The typed header syntax (@arg, @field) is described above ARG_TYPES.

Templates declare their includes on a line `--@include a b c`. Includes resolve at render time, each
helper is emitted once, before everything that includes it; a cycle or a missing helper fails.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from adcache_loader.paths import project_paths
from adcache_loader.zones import expand, read_table

SHA_PLACEHOLDER = "0" * 64
FUNCTION_NAME = re.compile(r"^ac_[a-z]+(_[a-z0-9]+)*$")
_INCLUDE = re.compile(r"^--@include\s+(.*)$", re.MULTILINE)
_HEADER = re.compile(r"^--- @(\w+)\s*(.*)$")
_CALLBACK = re.compile(r"^local function (\w+)\(keys, args\)")
_PLACEHOLDER = re.compile(r"<(\w+)>")
_CONFLICT = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.MULTILINE)
_KNOWN_TAGS = {"function", "flags", "summary", "keys", "argv", "reply", "errors", "idempotent"}
_LIST_TAGS = {"arg", "field"}  # typed lines, one per argument / reply field (see below)
# `--- @idempotent always` or `--- @idempotent with <argument>`: safe to send again (the client
# retries it through a failover); `with`: only when that optional argument is given.
_IDEMPOTENT = re.compile(r"^(?:always\b.*|with (\w+)\b.*)$")
_KNOWN_FLAGS = {"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"}


class RenderError(Exception):
    """The templates or specs are inconsistent; the message says where."""


@dataclass(frozen=True)
class FunctionContract:
    """One entry point, as declared by its contract header."""

    name: str
    domain: str
    callback: str
    flags: tuple[str, ...]
    summary: str
    keys: tuple[str, ...]
    argv: str
    reply: str
    errors: tuple[str, ...]
    arg_tree: list[dict[str, Any]] = field(default_factory=list, compare=False)
    reply_spec: dict[str, Any] = field(default_factory=dict, compare=False)
    idempotent: str = ""  # "always", the argument it depends on, or "" (not safe to repeat)

    @property
    def readonly(self) -> bool:
        return "no-writes" in self.flags


@dataclass
class Rendered:
    version: str
    source: str
    sha256: str
    functions: list[FunctionContract]
    python: str
    docs: str
    contracts: str
    keyspace: dict[str, Any] = field(repr=False)


def _lua_escape_pattern(text: str) -> str:
    return re.sub(r"([%\-\.\+\*\?\[\]\^\$\(\)])", r"%\1", text)


def load_keyspace(lua_dir: Path) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((lua_dir / "keyspace.yaml").read_text())
    entities = spec["entities"]
    letters = [e["tag"] for e in entities.values()]
    if len(set(letters)) != len(letters):
        raise RenderError("keyspace: two entities share a tag letter")
    spec["prefix_pattern"] = _lua_escape_pattern(spec["prefix"])
    for name, key in spec["keys"].items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise RenderError(f"keyspace: key name {name!r} must be a lower_case identifier")
        if key["entity"] not in entities:
            raise RenderError(f"keyspace: key {name} names unknown entity {key['entity']!r}")
        for required in ("suffix", "type", "domain", "ttl"):
            if required not in key:
                raise RenderError(f"keyspace: key {name} has no {required!r}")
        suffix: str = key["suffix"]
        key["letter"] = entities[key["entity"]]["tag"]
        key["params"] = _PLACEHOLDER.findall(suffix)
        parts = _PLACEHOLDER.split(suffix)  # literal, param, literal, param, ...
        pattern, concat, fstring = "", [], ""
        for i, part in enumerate(parts):
            if i % 2 == 0:
                pattern += _lua_escape_pattern(part)
                concat.append(part)
                fstring += part.replace("{", "{{").replace("}", "}}")
            else:
                pattern += "[^{}]+"
                concat.append(f"' .. {part} .. '")
                fstring += "{" + part + "}"
        key["lua_pattern"] = "^" + pattern + "$"
        key["lua_concat"] = ("".join(concat) + "'").replace(" .. ''", "")
        key["py_suffix"] = fstring
    return spec


def load_errors(lua_dir: Path) -> dict[str, dict[str, str]]:
    errors: dict[str, dict[str, str]] = yaml.safe_load((lua_dir / "errors.yaml").read_text())
    for code, spec in errors.items():
        if not re.fullmatch(r"ADCACHE_[A-Z]+", code):
            raise RenderError(f"errors: code {code!r} must be ADCACHE_<WORD>")
        if not re.fullmatch(r"[A-Z]\w+Error", spec.get("exception", "")):
            raise RenderError(f"errors: {code} needs an exception class name ending in Error")
    return errors


@dataclass
class _Template:
    name: str  # helper name or domain name
    path: Path
    helper: bool
    includes: list[str]


def _scan(lua_dir: Path) -> tuple[dict[str, _Template], list[_Template]]:
    helpers: dict[str, _Template] = {}
    domains: list[_Template] = []
    for path in sorted(lua_dir.glob("*.lua.j2")):
        text = path.read_text()
        includes: list[str] = []
        for m in _INCLUDE.finditer(text):
            includes.extend(m.group(1).split())
        stem = path.name[: -len(".lua.j2")]
        if stem.startswith("_"):
            helpers[stem[1:]] = _Template(stem[1:], path, True, includes)
        else:
            domains.append(_Template(stem, path, False, includes))
    return helpers, domains


def _helper_order(helpers: dict[str, _Template], domains: list[_Template]) -> list[_Template]:
    """Depth-first order of every helper reachable from the domains; refuses cycles and gaps."""
    order: list[_Template] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if name not in helpers:
            raise RenderError(
                f"include {name!r} (from {' -> '.join(chain)}) has no lua/_{name}.lua.j2"
            )
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise RenderError(f"include cycle: {' -> '.join([*chain, name])}")
        state[name] = "active"
        for dep in helpers[name].includes:
            visit(dep, [*chain, name])
        state[name] = "done"
        order.append(helpers[name])

    for domain in domains:
        for inc in domain.includes:
            visit(inc, [domain.name])
    return order


def _parse_contracts(
    domain: str, text: str, errors: dict[str, Any], keyspace: dict[str, Any]
) -> list[FunctionContract]:
    contracts: list[FunctionContract] = []
    lines = text.splitlines()
    lists: dict[str, list[str]]
    i = 0
    while i < len(lines):
        m = _HEADER.match(lines[i])
        if not m or m.group(1) != "function":
            i += 1
            continue
        fields: dict[str, str] = {}
        lists = {tag: [] for tag in _LIST_TAGS}
        last = ""
        while i < len(lines) and lines[i].startswith("---"):
            hm = _HEADER.match(lines[i])
            if hm:
                last = hm.group(1)
                if last in _LIST_TAGS:
                    lists[last].append(hm.group(2).strip())
                elif last not in _KNOWN_TAGS:
                    raise RenderError(f"{domain}: unknown header tag @{last}")
                else:
                    fields[last] = hm.group(2).strip()
            elif last in _LIST_TAGS:
                lists[last][-1] += " " + lines[i].lstrip("-").strip()
            elif last:
                fields[last] += " " + lines[i].lstrip("-").strip()
            i += 1
        cm = _CALLBACK.match(lines[i]) if i < len(lines) else None
        name = fields["function"]
        if not cm:
            raise RenderError(
                f"{name}: the header must be followed by 'local function <name>(keys, args)'"
            )
        if name != "ac_version" and not name.startswith(f"ac_{domain}_"):
            raise RenderError(
                f"{name}: functions of lua/{domain}.lua.j2 are named ac_{domain}_<verb>"
            )
        if not FUNCTION_NAME.match(name):
            raise RenderError(f"{name}: not a valid function name")
        for tag in ("summary", "keys", "argv", "reply"):
            if not fields.get(tag):
                raise RenderError(f"{name}: contract header lacks @{tag}")
        flags = tuple(fields.get("flags", "").split())
        for flag in flags:
            if flag not in _KNOWN_FLAGS:
                raise RenderError(f"{name}: unknown flag {flag}")
        keys = tuple(k for k in fields["keys"].split() if k != "none")
        for k in keys:
            if k.rstrip(".") not in keyspace["keys"]:
                raise RenderError(
                    f"{name}: @keys names {k!r}, which lua/keyspace.yaml does not define"
                )
        codes = tuple(fields.get("errors", "").split())
        for code in codes:
            if code not in errors:
                raise RenderError(
                    f"{name}: @errors names {code}, which lua/errors.yaml does not define"
                )
        arg_tree, _ = typed_arguments(name, fields["argv"], lists["arg"])
        reply_spec = typed_reply(name, fields["reply"], lists["field"])
        idempotent = ""
        if "idempotent" in fields:
            im = _IDEMPOTENT.match(fields["idempotent"])
            if not im:
                raise RenderError(f"{name}: @idempotent takes 'always' or 'with <argument>'")
            idempotent = im.group(1) or "always"
        contracts.append(
            FunctionContract(
                name=name,
                domain=domain,
                callback=cm.group(1),
                flags=flags,
                summary=fields["summary"],
                keys=keys,
                argv=fields["argv"],
                reply=fields["reply"],
                errors=codes,
                arg_tree=arg_tree,
                reply_spec=reply_spec,
                idempotent=idempotent,
            )
        )
    return contracts


# ---- typed contracts: @arg and @field lines ----
#
#   --- @argv a b [c d]... [e]        the order of ARGV: names; [..] optional, [..]... or name...
#                                     repeated (a count argument with of=<first name> fixes how often)
#   --- @arg name:type[unit] attr=value flag -- what it means (continued on `---` lines)
#   --- @reply shape[|nil] [attrs] -- what it means     shape: int str array map rows nil
#   --- @field name:type[unit] attr=value -- what it means   (one per reply entry, in order;
#                                     `parent.name` describes an entry of a rows/array field)
#
# attrs: range=lo..hi (integers, either end may be open), max=<bytes> (strings), values=a|b|''
# (enums, '' for the empty string), of=<name> (counts), empty (an id that may be ''); flags: optional.

ARG_TYPES = {
    "int": "integer: as an argument a decimal string, in a reply a RESP integer",
    "uint": "integer >= 0 (as int)",
    "id": "1 to 128 bytes, no { or }",
    "str": "byte string",
    "enum": "one of a fixed set of words",
    "bool": "0 or 1",
    "count": "integer >= 0: how many of a repeated item follow",
    "json": "JSON text (stored verbatim)",
    "decimal": "decimal integer sent as a bulk string (exact beyond 2^53)",
    "list": "a separated list of tokens (format in the description)",
    "map": "field/value pairs",
    "array": "array",
    "rows": "flat array of fixed-width rows",
    "nil": "nil (RESP2 null bulk)",
}
UNITS = {"ms", "epoch_ms", "s", "micros", "thousandths", "bp", "bytes", "ppm", "label", "stream_id"}
REPLY_SHAPES = {"int", "str", "array", "map", "rows", "nil"}
_TYPED = re.compile(
    r"^(?P<name>[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)(?P<variadic>\.\.\.)?:(?P<type>\w+)(?:\[(?P<unit>\w+)\])?"
    r"(?P<attrs>(?:\s+[a-z_]+(?:=\S*)?)*)\s+--\s+(?P<doc>\S.*)$"
)
_RANGE = re.compile(r"^(-?\d+)?\.\.(-?\d+)?$")
_SYNOPSIS_TOKEN = re.compile(r"\[|\]\.\.\.|\]|[a-z_][a-z0-9_]*(?:\.\.\.)?")


@dataclass(frozen=True)
class TypedValue:
    """One argument or reply field: its wire format and the values the library accepts/sends."""

    name: str
    type: str
    doc: str
    unit: str | None = None
    min: int | None = None
    max: int | None = None
    max_bytes: int | None = None
    values: tuple[str, ...] = ()
    of: str | None = None
    empty: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        for k in ("unit", "min", "max", "max_bytes", "of"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.values:
            out["values"] = list(self.values)
        if self.empty:
            out["empty"] = True
        out["doc"] = self.doc
        return out

    def format(self) -> str:
        """A short human text of the format and range (for docs/FUNCTIONS.md)."""
        t = self.type + (f" ({self.unit})" if self.unit else "")
        if self.type == "enum":
            return t + ": " + " | ".join(f"`{v}`" if v else "`''`" for v in self.values)
        parts = [t]
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{self.min:,}".replace(",", "_")
            hi = "" if self.max is None else f"{self.max:,}".replace(",", "_")
            parts.append(f"{lo}..{hi}")
        if self.max_bytes is not None:
            parts.append(f"<= {self.max_bytes} bytes")
        if self.of:
            parts.append(f"count of `{self.of}`")
        if self.empty:
            parts.append("or ''")
        return ", ".join(parts)


def parse_typed(where: str, text: str) -> tuple[TypedValue, bool, bool]:
    """Parse one `name:type[unit] attrs -- doc` text; returns (value, optional, variadic)."""
    m = _TYPED.match(text.strip())
    if not m:
        raise RenderError(
            f"{where}: {text.strip()!r} is not `name:type[unit] attr=value ... -- description`"
        )
    name, typ, unit = m.group("name"), m.group("type"), m.group("unit")
    if typ not in ARG_TYPES:
        raise RenderError(f"{where}: {name} has unknown type {typ!r} (known: {sorted(ARG_TYPES)})")
    if unit is not None and unit not in UNITS:
        raise RenderError(f"{where}: {name} has unknown unit {unit!r} (known: {sorted(UNITS)})")
    kw: dict[str, Any] = {}
    optional = False
    for attr in m.group("attrs").split():
        key, _, value = attr.partition("=")
        if key == "optional" and not value:
            optional = True
        elif key == "empty" and not value:
            kw["empty"] = True
        elif key == "range":
            rm = _RANGE.match(value)
            if not rm:
                raise RenderError(f"{where}: {name}: range must be lo..hi, got {value!r}")
            kw["min"] = int(rm.group(1)) if rm.group(1) else None
            kw["max"] = int(rm.group(2)) if rm.group(2) else None
        elif key == "max" and value.isdigit():
            kw["max_bytes"] = int(value)
        elif key == "values" and value:
            kw["values"] = tuple("" if v == "''" else v for v in value.split("|"))
        elif key == "of" and value:
            kw["of"] = value
        else:
            raise RenderError(f"{where}: {name}: unknown attribute {attr!r}")
    if typ == "enum" and not kw.get("values"):
        raise RenderError(f"{where}: {name} is an enum without values=a|b|...")
    if typ != "enum" and kw.get("values"):
        raise RenderError(f"{where}: {name}: values= is only for enums")
    if typ == "count" and not kw.get("of"):
        raise RenderError(f"{where}: {name} is a count without of=<name>")
    if typ in ("int", "uint", "count") and "min" not in kw:
        kw["min"] = 0 if typ != "int" else None
    return (
        TypedValue(name=name, type=typ, doc=m.group("doc").strip(), unit=unit, **kw),
        optional,
        bool(m.group("variadic")),
    )


def parse_synopsis(where: str, text: str) -> list[dict[str, Any]]:
    """The @argv line as a tree: {"arg": name, "repeat": bool} or
    {"group": [...], "optional": bool, "repeat": bool}."""
    if text.strip() == "none":
        return []
    rest = text.strip()
    tokens = _SYNOPSIS_TOKEN.findall(rest)
    if "".join(tokens) != re.sub(r"\s+", "", rest):
        raise RenderError(f"{where}: @argv must list names, [ ], ... only, got {text!r}")
    stack: list[list[dict[str, Any]]] = [[]]
    for tok in tokens:
        if tok == "[":
            stack.append([])
        elif tok in ("]", "]..."):
            if len(stack) == 1:
                raise RenderError(f"{where}: unbalanced ] in @argv")
            inner = stack.pop()
            stack[-1].append({"group": inner, "optional": True, "repeat": tok == "]..."})
        else:
            stack[-1].append({"arg": tok.rstrip("."), "repeat": tok.endswith("...")})
    if len(stack) != 1:
        raise RenderError(f"{where}: unbalanced [ in @argv")
    return stack[0]


def synopsis_names(tree: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for item in tree:
        if "arg" in item:
            out.append(item["arg"])
        else:
            out.extend(synopsis_names(item["group"]))
    return out


def first_name(item: dict[str, Any]) -> str:
    return str(item["arg"]) if "arg" in item else first_name(item["group"][0])


def typed_arguments(
    name: str, synopsis: str, lines: list[str]
) -> tuple[list[dict[str, Any]], dict[str, TypedValue]]:
    """Check the @arg lines against the @argv synopsis; returns the synopsis tree with each
    argument's type attached, and the arguments by name."""
    tree = parse_synopsis(name, synopsis)
    args: dict[str, TypedValue] = {}
    for line in lines:
        value, optional, variadic = parse_typed(f"{name} @arg", line)
        if optional or variadic:
            raise RenderError(
                f"{name}: @arg {value.name}: say optional/repeated in @argv ([..], ...)"
            )
        if value.name in args:
            raise RenderError(f"{name}: @arg {value.name} is described twice")
        args[value.name] = value
    names = synopsis_names(tree)
    missing = [n for n in names if n not in args]
    if missing:
        raise RenderError(f"{name}: @argv names {missing} without an @arg line describing it")
    extra = [n for n in args if n not in names]
    if extra:
        raise RenderError(f"{name}: @arg {extra} not in @argv")

    def attach(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in items:
            if "arg" in item:
                out.append({**args[item["arg"]].to_json(), "repeat": item["repeat"]})
            else:
                out.append(
                    {
                        "group": attach(item["group"]),
                        "optional": item["optional"],
                        "repeat": item["repeat"],
                    }
                )
        return out

    firsts: set[str] = set()

    def collect(items: list[dict[str, Any]]) -> None:
        for item in items:
            if item.get("repeat"):
                firsts.add(first_name(item))
            if "group" in item:
                collect(item["group"])

    collect(tree)
    for a in args.values():
        if a.of and a.of not in firsts:
            raise RenderError(
                f"{name}: count {a.name} of={a.of}: no repeated item starts with {a.of}"
            )
    return attach(tree), args


def typed_reply(name: str, reply: str, lines: list[str]) -> dict[str, Any]:
    """The @reply line (shape and summary) with its @field lines."""
    m = re.match(
        r"^(?P<shape>[a-z]+(?:\|nil)?)(?:\[(?P<unit>\w+)\])?(?P<attrs>(?:\s+[a-z_]+=\S*)*)\s+--\s+(?P<doc>\S.*)$",
        reply,
    )
    if not m:
        raise RenderError(
            f"{name}: @reply must be `shape[|nil] [attrs] -- description`, got {reply!r}"
        )
    shape, _, nil = m.group("shape").partition("|")
    if shape not in REPLY_SHAPES:
        raise RenderError(f"{name}: @reply shape {shape!r} is not one of {sorted(REPLY_SHAPES)}")
    out: dict[str, Any] = {"shape": shape, "nullable": bool(nil), "doc": m.group("doc")}
    if m.group("unit"):
        if m.group("unit") not in UNITS:
            raise RenderError(f"{name}: @reply has unknown unit {m.group('unit')!r}")
        out["unit"] = m.group("unit")
    attrs = m.group("attrs").split()
    same = [a for a in attrs if a.startswith("as=")]
    if same:  # the fields of another function's reply (resolved once all are parsed)
        if lines:
            raise RenderError(f"{name}: a reply `as=` another function has no @field lines")
        out["as"] = same[0][3:]
        return {**out, "fields": []}
    if attrs:
        scalar = "str" if shape == "str" else "int"
        value, _, _ = parse_typed(f"{name} @reply", f"value:{scalar}{m.group('attrs')} -- x")
        out.update({k: v for k, v in value.to_json().items() if k not in ("name", "type", "doc")})
    fields: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in lines:
        value, optional, variadic = parse_typed(f"{name} @field", line)
        if value.name in seen:
            raise RenderError(f"{name}: @field {value.name} is described twice")
        parent = value.name.rpartition(".")[0]
        if parent and parent not in seen:
            raise RenderError(f"{name}: @field {value.name} comes before its parent {parent}")
        seen.add(value.name)
        fields.append(
            {
                **value.to_json(),
                **({"optional": True} if optional else {}),
                **({"repeat": True} if variadic else {}),
            }
        )
    if shape in ("map", "array", "rows") and not fields:
        raise RenderError(f"{name}: a {shape} reply needs @field lines")
    if shape not in ("map", "array", "rows") and fields:
        raise RenderError(f"{name}: a {shape} reply has no fields")
    out["fields"] = fields
    return out


# One argument to redis-cli (and to any exec) is at most 128 KiB on Linux: the rendered library
# must fit, so `redis-cli FUNCTION LOAD REPLACE "$(cat functions/adcache.lua)"` keeps working.
MAX_SOURCE_BYTES = 128 * 1024 - 1
_LONG_BRACKET = re.compile(r"\[=*\[")
_COMMENT_LINE = re.compile(r"^\s*--")


def _strip_comments(name: str, body: str) -> str:
    """Drop full-line comments and runs of blank lines: the commented source stays in lua/ and the
    contracts in docs/FUNCTIONS.md, and the rendered library must stay small (MAX_SOURCE_BYTES).
    Long brackets ([[...]]) are refused in templates, so no comment-looking line is ever data."""
    if _LONG_BRACKET.search(body):
        raise RenderError(f"{name}: long brackets ([[ ]]) are not allowed in templates")
    out: list[str] = []
    for line in body.splitlines():
        if _COMMENT_LINE.match(line):
            continue
        if not line.strip() and (not out or not out[-1].strip()):
            continue
        out.append(line.rstrip())
    return "\n".join(out).strip() + "\n"


def _lua_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _registration(c: FunctionContract) -> str:
    flags = ", ".join(_lua_str(f) for f in c.flags)
    return (
        f"redis.register_function{{function_name={_lua_str(c.name)}, callback={c.callback}, "
        f"flags={{{flags}}}, description={_lua_str(c.summary)}}}"
    )


def render(lua_dir: Path | None = None) -> Rendered:
    """Render everything in memory (nothing is written)."""
    lua_dir = lua_dir or project_paths().lua
    keyspace = load_keyspace(lua_dir)
    errors = load_errors(lua_dir)
    version = (lua_dir / "VERSION").read_text().strip()
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise RenderError(f"lua/VERSION must be MAJOR.MINOR.PATCH, got {version!r}")
    zones = read_table(lua_dir / "zones.txt") if (lua_dir / "zones.txt").exists() else []
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(lua_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    context = {
        "keyspace": keyspace,
        "errors": errors,
        "version": version,
        "sha_placeholder": SHA_PLACEHOLDER,
        "zones": zones,
    }
    helpers, domains = _scan(lua_dir)
    for t in (*helpers.values(), *domains):
        if _CONFLICT.search(t.path.read_text()):
            raise RenderError(f"{t.path.name}: holds a merge-conflict marker")
    # Every helper is checked, even one no domain includes yet.
    for name in helpers:
        _helper_order(helpers, [_Template("(all)", lua_dir, False, [name])])
    parts = [
        "#!lua name=adcache",
        f"-- adcache {version}: generated from lua/ by `adcache render`. Do not edit: edit lua/ and re-render.",
        "-- Comments are stripped here; the commented sources are lua/*.lua.j2, the contracts docs/FUNCTIONS.md.",
        "",
    ]
    for helper in _helper_order(helpers, domains):
        body = env.get_template(helper.path.name).render(context)
        parts.append(f"-- ==== helper: {helper.name} (lua/{helper.path.name}) ====")
        parts.append(_strip_comments(helper.path.name, body))
    contracts: list[FunctionContract] = []
    for domain in domains:
        body = env.get_template(domain.path.name).render(context)
        body = _INCLUDE.sub("", body).strip()
        if _LONG_BRACKET.search(body):
            raise RenderError(
                f"{domain.path.name}: long brackets ([[ ]]) are not allowed in templates"
            )
        found = _parse_contracts(domain.name, body, errors, keyspace)
        contracts.extend(found)
        if not found:
            continue  # a domain template not yet holding functions adds nothing
        parts.append(f"-- ==== domain: {domain.name} (lua/{domain.path.name}) ====")
        parts.append("do")
        parts.append(_strip_comments(domain.path.name, body))
        parts.append("")
        parts.extend(_registration(c) for c in found)
        parts.append("end\n")
    by_name = {c.name: c for c in contracts}
    for c in contracts:
        other = c.reply_spec.get("as")
        if other:
            if other not in by_name or by_name[other].reply_spec.get("as"):
                raise RenderError(
                    f"{c.name}: @reply as={other} names no function with @field lines"
                )
            c.reply_spec["fields"] = by_name[other].reply_spec["fields"]
    names = [c.name for c in contracts]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise RenderError(f"functions defined twice: {sorted(dupes)}")
    source = "\n".join(parts)
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise RenderError(
            f"the rendered library is {len(source.encode())} bytes, over {MAX_SOURCE_BYTES}: "
            "redis-cli could not take it as one argument"
        )
    if source.count(SHA_PLACEHOLDER) != 1:
        raise RenderError("the rendered source must hold the sha256 placeholder exactly once")
    sha = hashlib.sha256(source.encode()).hexdigest()
    source = source.replace(SHA_PLACEHOLDER, sha)
    contracts.sort(key=lambda c: c.name)
    return Rendered(
        version=version,
        source=source,
        sha256=sha,
        functions=contracts,
        python=_render_python(keyspace, errors, contracts, version, sha, zone_names(zones)),
        docs=_render_docs(keyspace, errors, contracts, version),
        contracts=contracts_json(version, contracts),
        keyspace=keyspace,
    )


def source_sha256(source: str) -> str:
    """The sha256 a rendered source declares for itself: its hash with that hash zeroed."""
    m = re.search(r"local LIBRARY_SHA256 = '([0-9a-f]{64})'", source)
    if not m:
        raise RenderError("not an adcache library source (no LIBRARY_SHA256)")
    return hashlib.sha256(source.replace(m.group(1), SHA_PLACEHOLDER, 1).encode()).hexdigest()


def zone_names(table: list[tuple[str, str]]) -> list[str]:
    return sorted(n for _, names in table for n in expand(names))


def _wrap_names(names: list[str]) -> list[str]:
    """A sorted name list as a Python string literal split over lines of at most ~95 columns."""
    lines, cur = [], ""
    for n in names:
        if len(cur) + len(n) > 88:
            lines.append(f'"{cur}"')
            cur = ""
        cur += n + " "
    lines.append(f'"{cur.strip()}"')
    return [*lines[:-1], lines[-1] + ".split()"]


def _render_python(
    keyspace: dict[str, Any],
    errors: dict[str, dict[str, str]],
    contracts: list[FunctionContract],
    version: str,
    sha: str,
    zones: list[str],
) -> str:
    out = [
        '"""Generated from lua/keyspace.yaml, lua/errors.yaml and the contract headers by `adcache render`.',
        "",
        "Do not edit: edit lua/ and re-render.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass",
        "",
        f"LIBRARY_NAME = {'adcache'!r}",
        f"LIBRARY_VERSION = {version!r}",
        f"LIBRARY_SHA256 = {sha!r}",
        "# The time zones the library knows by name (lua/zones.txt); adcache.zones sends others",
        "# as their POSIX TZ rule.",
        "LIBRARY_ZONES = frozenset(",
        *[f"    {line}" for line in _wrap_names(zones)],
        ")",
        f"KEY_PREFIX = {keyspace['prefix']!r}",
        f"MAX_ID_BYTES = {keyspace['max_id_bytes']}",
        "ENTITY_TAGS = {"
        + ", ".join(f"{n!r}: {e['tag']!r}" for n, e in keyspace["entities"].items())
        + "}",
        "",
        "",
        "# ---- key builders: one per key pattern of the keyspace ----",
        "",
        "",
        "def _id(value: str, name: str) -> str:",
        '    """An entity id as a key can hold it: non-empty, no braces (they would break the hash',
        '    tag), at most MAX_ID_BYTES. The library checks the same; failing here costs no call."""',
        '    if not value or "{" in value or "}" in value or len(value.encode()) > MAX_ID_BYTES:',
        "        raise BadArgumentError(",
        '            f"{name} must be 1 to {MAX_ID_BYTES} bytes without {{ or }}, got {value!r:.60}"',
        "        )",
        "    return value",
    ]
    for name, key in keyspace["keys"].items():
        entity = key["entity"]
        params = "".join(f", {p}: str | int" for p in key["params"])
        tag = keyspace["entities"][entity]["tag"]
        out += [
            "",
            "",
            f"def {name}({entity}_id: str{params}) -> str:",
            f'    """{key.get("doc", name)} ({key["type"]}; TTL: {key["ttl"]})."""',
            f'    return f"{keyspace["prefix"]}:{{{{{tag}:{{_id({entity}_id, {entity + "_id"!r})}}}}}}:{key["py_suffix"]}"',
        ]
    out += [
        "",
        "",
        "# name, tag letter, suffix (<param> placeholders), Redis type, TTL policy",
        "KEYSPACE: tuple[tuple[str, str, str, str, str], ...] = (",
        *[
            f"    ({n!r}, {k['letter']!r}, {k['suffix']!r}, {str(k['type'])!r}, {str(k['ttl'])!r}),"
            for n, k in keyspace["keys"].items()
        ],
        ")",
        "",
        "",
        "def tag_of(entity: str, entity_id: str) -> str:",
        '    """The hash tag (with braces) of an entity id: every key of that entity contains it."""',
        '    return "{" + ENTITY_TAGS[entity] + ":" + entity_id + "}"',
        "",
        "",
        "# ---- functions: name -> contract (readonly ones go through FCALL_RO) ----",
        "",
        "",
        "@dataclass(frozen=True)",
        "class FunctionSpec:",
        "    name: str",
        "    domain: str",
        "    readonly: bool",
        "    keys: tuple[str, ...]",
        "    argv: str",
        "    errors: tuple[str, ...]",
        '    idempotent: str = ""  # safe to repeat: "always", when this argument is given, or ""',
        "",
        "",
        "FUNCTIONS: dict[str, FunctionSpec] = {",
    ]
    for c in contracts:
        out.append(
            f"    {c.name!r}: FunctionSpec({c.name!r}, {c.domain!r}, {c.readonly!r}, "
            f"{c.keys!r}, {c.argv!r}, {c.errors!r}"
            + (f", {c.idempotent!r}" if c.idempotent else "")
            + "),"
        )
    out += [
        "}",
        "",
        "",
        "# ---- errors: one exception class per code of lua/errors.yaml ----",
        "",
        "",
        "class AdCacheError(Exception):",
        '    """Base of every error adcache raises. `code` is the stable first word of the reply."""',
        "",
        '    code = "ADCACHE_ERROR"',
        "",
        "    def __init__(self, message: str, *, node: str | None = None) -> None:",
        "        super().__init__(message)",
        "        self.message = message",
        "        self.node = node",
        "",
    ]
    for code, spec in errors.items():
        out += [
            "",
            f"class {spec['exception']}(AdCacheError):",
            f'    """{spec["doc"]}."""',
            "",
            f"    code = {code!r}",
            "",
        ]
    out += [
        "",
        "ERRORS: dict[str, type[AdCacheError]] = {",
        *[f"    {code!r}: {spec['exception']}," for code, spec in errors.items()],
        "}",
        "",
    ]
    return "\n".join(out)


def _numkeys(c: FunctionContract) -> str:
    """The numkeys argument: fixed, or "N" when the last key repeats (a variadic tail)."""
    return "N" if c.keys and c.keys[-1].endswith("...") else str(len(c.keys))


_TV_FIELDS = {"name", "type", "doc", "unit", "min", "max", "max_bytes", "values", "of", "empty"}


def _flat_args(tree: list[dict[str, Any]], where: str = "") -> list[tuple[dict[str, Any], str]]:
    """Each argument once, in ARGV order, with a note of the group it repeats or is optional in."""
    out: list[tuple[dict[str, Any], str]] = []
    seen: set[str] = set()

    def walk(items: list[dict[str, Any]], note: str) -> None:
        for item in items:
            if "group" in item:
                inner = "repeated" if item["repeat"] else "optional"
                walk(item["group"], note or f" ({inner})")
            elif item["name"] not in seen:
                seen.add(item["name"])
                out.append((item, " (repeated)" if item["repeat"] else note))

    walk(tree, where)
    return out


def contracts_json(version: str, contracts: list[FunctionContract]) -> str:
    """The machine-readable contracts (functions/adcache.contracts.json)."""
    import json

    doc = {
        "library": "adcache",
        "version": version,
        "generated": "by `adcache render` from the contract headers of lua/*.lua.j2; do not edit",
        "types": ARG_TYPES,
        "units": sorted(UNITS),
        "functions": {
            c.name: {
                "domain": c.domain,
                "summary": c.summary,
                "readonly": c.readonly,
                "command": "FCALL_RO" if c.readonly else "FCALL",
                "flags": list(c.flags),
                "keys": list(c.keys),
                "numkeys": _numkeys(c),
                "argv": c.argv,
                "args": c.arg_tree,
                "reply": c.reply_spec,
                "errors": list(c.errors),
                "idempotent": c.idempotent or None,
            }
            for c in contracts
        },
    }
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def _retry_doc(c: FunctionContract) -> str:
    """Whether the Python client re-sends the call after a lost reply (the `@idempotent` tag)."""
    if c.readonly:
        return "yes (a read)"
    if c.idempotent == "always":
        return "yes (the same under its ids)"
    if c.idempotent:
        return f"yes when `{c.idempotent}` is given"
    return "no (a lost reply is raised; docs/clients.md lists what a caller may still retry)"


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def _render_docs(
    keyspace: dict[str, Any],
    errors: dict[str, dict[str, str]],
    contracts: list[FunctionContract],
    version: str,
) -> str:
    out = [
        f"# adcache {version}: functions, keys and errors",
        "",
        "Generated by `adcache render` from the contract headers of `lua/*.lua.j2`, `lua/keyspace.yaml`",
        "and `lua/errors.yaml`. Do not edit. The same contracts, as data: `functions/adcache.contracts.json`;",
        "calling from any language: [clients.md](clients.md).",
        "",
        "Every argument is sent as a string. Formats of arguments and reply fields:",
        "",
        "| format | meaning |",
        "|---|---|",
        *[f"| {t} | {_md(d)} |" for t, d in ARG_TYPES.items()],
        "",
        "Units: `ms` milliseconds, `epoch_ms` epoch milliseconds of the server clock, `s` seconds,",
        "`micros` money in micro-units (1,000,000 = one currency unit; prices are CPM), `thousandths`",
        "a score in 1/1000, `label` a calendar bucket label (YYYYMMDDHH or YYYYMMDD), `stream_id` a",
        "Redis stream id. A range `lo..hi` is inclusive; an open end is unbounded. Reply shapes: `map` a",
        "flat field/value array, `array` positional values, `rows` a flat array of fixed-width rows,",
        "`int` an integer, `str` a bulk string; `or nil` when the reply may be nil.",
        "",
        "## Functions",
        "",
    ]
    for c in contracts:
        call = "FCALL_RO" if c.readonly else "FCALL"
        synopsis = c.argv if c.argv != "none" else ""
        out += [
            f"### `{c.name}`",
            "",
            c.summary,
            "",
            "- call: `"
            + " ".join(x for x in (call, c.name, _numkeys(c), *c.keys, synopsis) if x)
            + "`",
            f"- keys: {', '.join(f'`{k}`' for k in c.keys) or 'none'}",
            f"- errors: {', '.join(f'`{e}`' for e in c.errors) or 'none'}",
            f"- flags: {', '.join(c.flags) or 'none'}",
            f"- retried by the Python client through a failover: {_retry_doc(c)}",
            "",
        ]
        args = _flat_args(c.arg_tree)
        if args:
            out += ["| argument | format | meaning |", "|---|---|---|"]
            for a, where in args:
                value = TypedValue(**{k: v for k, v in a.items() if k in _TV_FIELDS})
                out.append(f"| `{a['name']}`{where} | {_md(value.format())} | {_md(a['doc'])} |")
            out.append("")
        r = c.reply_spec
        shape = r["shape"] + (" or nil" if r["nullable"] else "")
        head = f"Reply ({shape}"
        if r["shape"] in ("int", "str") and (set(r) - {"shape", "nullable", "doc", "fields"}):
            scalar = {k: v for k, v in r.items() if k in _TV_FIELDS and k not in ("name", "doc")}
            head += ", " + TypedValue(name="reply", type=r["shape"], doc="", **scalar).format()
        out += [f"{head}): {r['doc']}", ""]
        if r.get("as"):
            out += [f"Fields as for [`{r['as']}`](#{r['as']}).", ""]
        elif r["fields"]:
            out += ["| field | format | meaning |", "|---|---|---|"]
            for f in r["fields"]:
                value = TypedValue(**{k: v for k, v in f.items() if k in _TV_FIELDS})
                name = f["name"] + ("..." if f.get("repeat") else "")
                out.append(f"| `{name}` | {_md(value.format())} | {_md(f['doc'])} |")
            out.append("")
    out += [
        "## Keys",
        "",
        "| key | pattern | type | TTL policy | domain |",
        "|---|---|---|---|---|",
    ]
    for name, key in keyspace["keys"].items():
        tag = keyspace["entities"][key["entity"]]["tag"]
        pattern = f"{keyspace['prefix']}:{{{tag}:<{key['entity']}_id>}}:{key['suffix']}"
        out.append(
            f"| `{name}` | `{_md(pattern)}` | {key['type']} | {_md(key['ttl'])} | {key['domain']} |"
        )
    out += ["", "## Errors", "", "| code | exception | meaning |", "|---|---|---|"]
    for code, spec in errors.items():
        out.append(f"| `{code}` | `{spec['exception']}` | {_md(spec['doc'])} |")
    out.append("")
    return "\n".join(out)


def contracts_path() -> Path:
    """Where the machine-readable contracts live: beside the rendered library."""
    return project_paths().library.parent / "adcache.contracts.json"


def write(check: bool = False) -> list[Path]:
    """Write the rendered outputs; with `check`, write nothing and return the stale ones."""
    paths = project_paths()
    r = render(paths.lua)
    outputs = {
        paths.library: r.source,
        paths.generated_python: r.python,
        paths.docs: r.docs,
        contracts_path(): r.contracts,
    }
    stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
    if not check:
        for p in stale:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(outputs[p])
    if paths.root is not None and not _package_data_linked(paths.library, check):
        stale.append(package_library(paths.library))
    return stale


def package_library(library: Path) -> Path:
    """The client's package data (`adcache/_library/adcache.lua`, what auto_deploy loads: the
    client never imports the loader): a symlink to the rendered library, which a wheel build
    stores as a file."""
    return library.parent.parent / "python_client" / "adcache" / "_library" / "adcache.lua"


def _package_data_linked(library: Path, check: bool) -> bool:
    link = package_library(library)
    target = os.path.relpath(library, link.parent)
    if link.is_symlink() and os.readlink(link) == target:
        return True
    if not check:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return False
