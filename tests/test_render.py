"""The rendered library and generated files are fresh, and the renderer refuses bad templates."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from adcache import _generated
from adcache_loader.paths import project_paths
from adcache_loader.render import RenderError, render, source_sha256, write


def test_committed_outputs_are_fresh() -> None:
    stale = write(check=True)
    assert stale == [], f"stale rendered files {stale}: run `make render` and commit"


def test_library_declares_its_own_sha() -> None:
    r = render()
    assert r.source.startswith("#!lua name=adcache\n")
    assert source_sha256(r.source) == r.sha256
    assert r.sha256 == _generated.LIBRARY_SHA256


def test_every_function_is_registered_once_with_its_flags() -> None:
    r = render()
    for c in r.functions:
        assert r.source.count(f"function_name='{c.name}'") == 1
        assert (c.name in _generated.FUNCTIONS) and _generated.FUNCTIONS[
            c.name
        ].readonly == c.readonly
    assert _generated.FUNCTIONS["ac_version"].readonly
    assert _generated.FUNCTIONS["ac_session_get"].readonly
    assert not _generated.FUNCTIONS["ac_session_create"].readonly


def test_key_builders_match_the_keyspace() -> None:
    assert _generated.session("abc") == "ad:{s:abc}:sess"
    assert _generated.tag_of("session", "abc") == "{s:abc}"


@pytest.fixture
def lua_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "lua"
    shutil.copytree(project_paths().lua, dst)
    return dst


def test_missing_include_fails(lua_copy: Path) -> None:
    (lua_copy / "zz.lua.j2").write_text("--@include nothere\n")
    with pytest.raises(RenderError, match="nothere"):
        render(lua_copy)


def test_include_cycle_fails(lua_copy: Path) -> None:
    (lua_copy / "_a.lua.j2").write_text("--@include b\n")
    (lua_copy / "_b.lua.j2").write_text("--@include a\n")
    with pytest.raises(RenderError, match="cycle"):
        render(lua_copy)


def test_undefined_template_variable_fails(lua_copy: Path) -> None:
    (lua_copy / "zz.lua.j2").write_text("local x = {{ no_such_thing }}\n")
    with pytest.raises(Exception, match="no_such_thing"):
        render(lua_copy)


def test_contract_header_must_name_known_keys_and_errors(lua_copy: Path) -> None:
    body = (
        "--- @function ac_zz_get\n--- @summary s\n--- @keys nosuchkey\n--- @argv none\n"
        "--- @reply nil -- nothing\nlocal function zz_get(keys, args)\nend\n"
    )
    (lua_copy / "zz.lua.j2").write_text(body)
    with pytest.raises(RenderError, match="nosuchkey"):
        render(lua_copy)
    (lua_copy / "zz.lua.j2").write_text(body.replace("nosuchkey", "session") + "")
    render(lua_copy)
    (lua_copy / "zz.lua.j2").write_text(
        body.replace("nosuchkey", "session").replace("ac_zz_get", "ac_other_get")
    )
    with pytest.raises(RenderError, match="ac_zz_"):
        render(lua_copy)


def test_sync_and_async_facades_have_the_same_names_and_methods() -> None:
    from adcache import facades

    assert facades.SYNC.keys() == facades.ASYNC.keys()
    assert set(facades.SyncFacades.__annotations__) == set(facades.SYNC)
    assert set(facades.AsyncFacades.__annotations__) == set(facades.ASYNC)
    for name, cls in facades.SYNC.items():
        public = {m for m in vars(cls) if not m.startswith("_")}
        apublic = {m for m in vars(facades.ASYNC[name]) if not m.startswith("_")}
        assert public == apublic, f"{name}: sync and async differ by {public ^ apublic}"


def test_rendered_library_fits_in_one_command_line_argument() -> None:
    from adcache_loader.render import MAX_SOURCE_BYTES

    size = len(render().source.encode())
    assert size <= MAX_SOURCE_BYTES, (
        f'{size} bytes: `redis-cli FUNCTION LOAD REPLACE "$(cat ...)"` would fail'
    )


def test_long_brackets_are_refused(lua_copy: Path) -> None:
    (lua_copy / "zz.lua.j2").write_text("local s = [[\n-- not a comment\n]]\n")
    with pytest.raises(RenderError, match="long brackets"):
        render(lua_copy)


def test_merge_conflict_markers_are_refused(lua_copy: Path) -> None:
    path = lua_copy / "session.lua.j2"
    text = path.read_text()
    path.write_text(text.replace("local SS = {}\n", "<<<<<<< HEAD\nlocal SS = {}\n=======\n", 1))
    with pytest.raises(RenderError, match="merge-conflict marker"):
        render(lua_copy)


_TYPED_BODY = (
    "--- @function ac_zz_put\n--- @summary s\n--- @keys session\n--- @argv a [b]...\n"
    "--- @arg a:int[ms] range=1..10 -- how long\n"
    "--- @arg b:enum values=x|y -- which\n"
    "--- @reply int range=0..1 -- 1 when done\n"
    "local function zz_put(keys, args)\nend\n"
)


def test_typed_contract_renders_into_json(lua_copy: Path) -> None:
    (lua_copy / "zz.lua.j2").write_text(_TYPED_BODY)
    r = render(lua_copy)
    c = next(c for c in r.functions if c.name == "ac_zz_put")
    assert c.arg_tree == [
        {"name": "a", "type": "int", "unit": "ms", "min": 1, "max": 10, "doc": "how long",
         "repeat": False},
        {"group": [{"name": "b", "type": "enum", "values": ["x", "y"], "doc": "which",
                    "repeat": False}], "optional": True, "repeat": True},
    ]  # fmt: skip
    assert c.reply_spec["shape"] == "int" and c.reply_spec["max"] == 1
    assert '"ac_zz_put"' in r.contracts


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("a:int[ms]", "a:integer[ms]"), "unknown type"),
        (("a:int[ms]", "a:int[fortnights]"), "unknown unit"),
        (("values=x|y ", ""), "enum without values"),
        ((" -- which", ""), "is not `name:type"),
        (("--- @arg b:enum values=x|y -- which\n", ""), "without an @arg line"),
        (("[b]...", "[b]... c"), "without an @arg line"),
        (("--- @reply int", "--- @reply map"), "needs @field lines"),
        (("range=1..10", "range=ten"), "range must be"),
        (("range=1..10", "frobs=2"), "unknown attribute"),
    ],
)
def test_typed_contract_errors_fail_the_render(
    lua_copy: Path, change: tuple[str, str], message: str
) -> None:
    (lua_copy / "zz.lua.j2").write_text(_TYPED_BODY.replace(*change))
    with pytest.raises(RenderError, match=message):
        render(lua_copy)


def test_every_argument_and_reply_field_is_typed_in_the_docs() -> None:
    r = render()
    for c in r.functions:
        assert f"### `{c.name}`" in r.docs
        for n in _names(c.arg_tree):
            assert f"| `{n}`" in r.docs, (c.name, n)
        assert c.reply_spec["shape"] in ("int", "str", "array", "map", "rows", "nil")


def _names(tree: list[dict[str, Any]]) -> list[str]:
    return [n for i in tree for n in (_names(i["group"]) if "group" in i else [i["name"]])]
