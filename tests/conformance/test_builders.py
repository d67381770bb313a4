"""The Python client's call builders send what the typed contracts say: every FCALL the demo makes
(all domains, through the facades) is checked against functions/adcache.contracts.json, for the
number and names of its keys and the order, count and format of its arguments."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from pyrunner import check_args, contracts
from rich.console import Console

from adcache import _core, _generated
from adcache_loader.demo import run_demo


def _key_errors(function: str, keys: tuple[str, ...]) -> list[str]:
    spec = contracts()["functions"][function]
    names: list[str] = spec["keys"]
    tail = names[-1].rstrip(".") if names and names[-1].endswith("...") else None
    fixed = [n.rstrip(".") for n in names if not n.endswith("...")]
    errors = []
    if len(keys) < len(fixed) or (tail is None and len(keys) != len(fixed)):
        errors.append(f"{len(keys)} keys for {names}")
    for i, key in enumerate(keys):
        name = fixed[i] if i < len(fixed) else tail
        if name is None:
            break
        entity = next(
            e for e, ks in _ENTITY_OF.items() if name in ks
        )  # the key's entity letter must match the pattern's
        if not re.match(rf"^{_generated.KEY_PREFIX}:\{{{entity}:[^{{}}]+\}}:", key):
            errors.append(f"KEYS[{i + 1}] {key!r} is not a {name} key")
    return errors


_ENTITY_OF: dict[str, set[str]] = {}


def test_every_call_the_client_sends_fits_its_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from adcache_loader.paths import project_paths

    keyspace: dict[str, Any] = yaml.safe_load((project_paths().lua / "keyspace.yaml").read_text())
    for name, key in keyspace["keys"].items():
        letter = keyspace["entities"][key["entity"]]["tag"]
        _ENTITY_OF.setdefault(letter, set()).add(name)

    seen: list[tuple[str, tuple[str, ...], tuple[Any, ...]]] = []
    original = _core.Call.packed

    # Every call goes on the wire through packed() (single calls and run_many batches alike).
    def recording(self: _core.Call[Any]) -> bytes:
        seen.append((self.function, self.keys, self.args))
        return original(self)

    monkeypatch.setattr(_core.Call, "packed", recording)
    assert run_demo(None, Console(file=io.StringIO())) == 0
    functions = {f for f, _, _ in seen}
    assert len(functions) >= 25, sorted(functions)  # the demo goes through every domain
    print(
        f"{len(seen)} calls of {len(functions)} functions checked; not sent by the demo:",
        sorted(set(contracts()["functions"]) - functions),
    )
    problems = []
    for function, keys, args in seen:
        errs = _key_errors(function, keys) + check_args(function, [str(a) for a in args])
        if errs:
            problems.append(f"{function} {args!r:.120}: {errs}")
    assert not problems, "\n".join(problems[:30])
