"""Where the library's files are: in a source checkout, or bundled inside an installed wheel."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ProjectPaths:
    root: Path | None  # the source checkout, when there is one
    lua: Path
    library: Path
    generated_python: Path
    docs: Path


@cache
def project_paths() -> ProjectPaths:
    root = _HERE.parent.parent
    if (root / "lua" / "keyspace.yaml").exists() and (root / "python_client").is_dir():
        return ProjectPaths(
            root=root,
            lua=root / "lua",
            library=root / "functions" / "adcache.lua",
            generated_python=root / "python_client" / "adcache" / "_generated.py",
            docs=root / "docs" / "FUNCTIONS.md",
        )
    # Installed from a wheel: lua/ and functions/ are bundled beside this module.
    return ProjectPaths(
        root=None,
        lua=_HERE / "lua",
        library=_HERE / "functions" / "adcache.lua",
        generated_python=_HERE / "_generated_unused.py",
        docs=_HERE / "FUNCTIONS.md",
    )


def library_source() -> str:
    """The rendered library as committed (what `adcache deploy` loads)."""
    return project_paths().library.read_text()
