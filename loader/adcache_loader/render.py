"""Render the Lua templates of `lua/` into the one Functions library and its generated companions.

Inputs: `lua/keyspace.yaml` (every key pattern), `lua/errors.yaml` (every error code), `lua/VERSION`,
helper templates `lua/_<name>.lua.j2` (include-only) and domain templates `lua/<domain>.lua.j2`.
Outputs: `functions/adcache.lua` (what Redis runs), `python_client/adcache/_generated.py` (key
builders, function table and exception classes for the client) and `docs/FUNCTIONS.md` (the
reference, built from the contract headers). All three are committed; a test checks they are fresh.

Templates declare their includes on a line `--@include a b c`. Includes resolve at render time, each
helper is emitted once, before everything that includes it; a cycle or a missing helper fails.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from adcache_loader.paths import project_paths

SHA_PLACEHOLDER = "0" * 64
FUNCTION_NAME = re.compile(r"^ac_[a-z]+(_[a-z0-9]+)*$")
_INCLUDE = re.compile(r"^--@include\s+(.*)$", re.MULTILINE)
_HEADER = re.compile(r"^--- @(\w+)\s*(.*)$")
_CALLBACK = re.compile(r"^local function (\w+)\(keys, args\)")
_PLACEHOLDER = re.compile(r"<(\w+)>")
_KNOWN_TAGS = {"function", "flags", "summary", "keys", "argv", "reply", "errors", "idempotent"}
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
    i = 0
    while i < len(lines):
        m = _HEADER.match(lines[i])
        if not m or m.group(1) != "function":
            i += 1
            continue
        fields: dict[str, str] = {}
        last = ""
        while i < len(lines) and lines[i].startswith("---"):
            hm = _HEADER.match(lines[i])
            if hm:
                last = hm.group(1)
                if last not in _KNOWN_TAGS:
                    raise RenderError(f"{domain}: unknown header tag @{last}")
                fields[last] = hm.group(2).strip()
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
                idempotent=idempotent,
            )
        )
    return contracts


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
    }
    helpers, domains = _scan(lua_dir)
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
        python=_render_python(keyspace, errors, contracts, version, sha),
        docs=_render_docs(keyspace, errors, contracts, version),
        keyspace=keyspace,
    )


def source_sha256(source: str) -> str:
    """The sha256 a rendered source declares for itself: its hash with that hash zeroed."""
    m = re.search(r"local LIBRARY_SHA256 = '([0-9a-f]{64})'", source)
    if not m:
        raise RenderError("not an adcache library source (no LIBRARY_SHA256)")
    return hashlib.sha256(source.replace(m.group(1), SHA_PLACEHOLDER, 1).encode()).hexdigest()


def _render_python(
    keyspace: dict[str, Any],
    errors: dict[str, dict[str, str]],
    contracts: list[FunctionContract],
    version: str,
    sha: str,
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
        "and `lua/errors.yaml`. Do not edit.",
        "",
        "## Functions",
        "",
    ]
    for c in contracts:
        call = "FCALL_RO" if c.readonly else "FCALL"
        out += [
            f"### `{c.name}`",
            "",
            c.summary,
            "",
            f"- call: `{call} {c.name} {_numkeys(c)} {' '.join(c.keys)} {c.argv if c.argv != 'none' else ''}`".rstrip()
            + "",
            f"- keys: {', '.join(f'`{k}`' for k in c.keys) or 'none'}",
            f"- argv: `{c.argv}`",
            f"- reply: {c.reply}",
            f"- errors: {', '.join(f'`{e}`' for e in c.errors) or 'none'}",
            f"- flags: {', '.join(c.flags) or 'none'}",
            "",
        ]
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


def write(check: bool = False) -> list[Path]:
    """Write the rendered outputs; with `check`, write nothing and return the stale ones."""
    paths = project_paths()
    r = render(paths.lua)
    outputs = {
        paths.library: r.source,
        paths.generated_python: r.python,
        paths.docs: r.docs,
        # The client ships the library as package data (auto_deploy): it never imports the loader.
        paths.generated_python.parent / "_library" / "adcache.lua": r.source,
    }
    stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
    if not check:
        for p in stale:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(outputs[p])
    return stale
