"""docs/architecture.md names the modules that exist, and every module of the package.

The module map is the table of "The packages": a row per package (its first cell `pkg/`,
`calltrackd/` for the modules around the packages); a bare `name.py` in a row is that
package's module, or a module of a subpackage `sub/` the same row names. Everywhere else
in the document a `path.py` or `path.md` in backquotes must exist from the repository
root or from `calltrackd/`, and a bare `name.py` somewhere in the package. `__init__.py`
and `__main__.py` are not asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "calltrackd"
DOC = ROOT / "docs" / "architecture.md"
_SPAN = re.compile(r"`([^`\n]+)`")
_FILE = re.compile(r"^[\w./-]+\.(?:py|md)$")
_DIR = re.compile(r"^\w+/$")
_UNASKED = {"__init__.py", "__main__.py"}


@dataclass
class Row:
    package: Path
    dirs: set[str] = field(default_factory=set)  # subpackages the row names, "sqlite/"
    names: list[str] = field(default_factory=list)  # bare module names, "plumbing.py"
    paths: list[str] = field(default_factory=list)  # names with a slash, "docs/media.md"


def parse(text: str) -> tuple[list[Row], list[str]]:
    """The map's rows, and the file names in backquotes outside it."""
    rows: list[Row] = []
    elsewhere: list[str] = []
    in_map = False
    for line in text.splitlines():
        if line.startswith("## "):
            in_map = line.strip() == "## The packages"
        cells = line.strip().strip("|").split("|") if line.startswith("| `") else []
        spans = [s for s in _SPAN.findall(line) if _FILE.match(s)]
        if not (in_map and cells):
            elsewhere.extend(spans)
            continue
        first = _SPAN.findall(cells[0])
        assert first and _DIR.match(first[0]), f"a map row without a package: {line[:60]}"
        package = PACKAGE if first[0] == "calltrackd/" else PACKAGE / first[0].rstrip("/")
        rest = "|".join(cells[1:])
        row = Row(package, {s for s in _SPAN.findall(rest) if _DIR.match(s)})
        for span in (s for s in _SPAN.findall(rest) if _FILE.match(s)):
            (row.paths if "/" in span else row.names).append(span)
        rows.append(row)
    return rows, elsewhere


def candidates(row: Row, name: str) -> list[Path]:
    return [row.package / name, *(row.package / d / name for d in sorted(row.dirs))]


def named_modules(rows: list[Row]) -> set[Path]:
    return {p for row in rows for name in row.names for p in candidates(row, name)}


def not_there(text: str) -> list[str]:
    """What the document names that does not exist."""
    rows, elsewhere = parse(text)
    missing = [str((row.package / d).relative_to(ROOT)) for row in rows
               for d in ("", *row.dirs) if not (row.package / d).is_dir()]
    missing += [f"{row.package.relative_to(ROOT)}: {name}" for row in rows
                for name in row.names if not any(p.is_file() for p in candidates(row, name))]
    missing += [path for path in (*(p for row in rows for p in row.paths), *elsewhere)
                if not ((ROOT / path).exists() or (PACKAGE / path).exists()
                        if "/" in path else any(PACKAGE.rglob(path)))]
    return sorted(set(missing))


def not_in_map(text: str) -> list[str]:
    """The package's modules the map leaves out."""
    named = named_modules(parse(text)[0])
    return sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")
                  if p.name not in _UNASKED and p not in named)


def test_the_map_parses_into_a_row_per_package() -> None:
    rows, _ = parse(DOC.read_text())
    packages = {row.package.relative_to(ROOT).as_posix() for row in rows}
    assert {"calltrackd", "calltrackd/sip", "calltrackd/b2bua", "calltrackd/store"} <= packages
    assert len(packages) == len(rows), "a package has two rows"


def test_every_module_the_doc_names_exists() -> None:
    assert not_there(DOC.read_text()) == [], "docs/architecture.md names what is not there"


def test_every_module_of_the_package_is_in_the_map() -> None:
    assert not_in_map(DOC.read_text()) == [], "modules missing from docs/architecture.md's map"


def test_a_made_up_module_and_a_left_out_one_are_found() -> None:
    lines = DOC.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("| `transport/` |"))
    lines[i] = lines[i].replace("`stack.py`", "`nosuch.py`")
    text = "\n".join(lines) + "\nSee `tracking/gone.py`.\n"
    assert not_there(text) == ["calltrackd/transport: nosuch.py", "tracking/gone.py"]
    assert not_in_map(text) == ["calltrackd/transport/stack.py"]
