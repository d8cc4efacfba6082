"""Benchmarks: scripts that measure edgekit against the plain tools and write their tables into docs/."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, text: str) -> None:
    """Put `text` between the `name` markers of a markdown file (appended the first time), leaving the rest: several
    benchmarks share docs/benchmarks.md."""
    begin, end = f"<!-- {name}: generated, begin -->", f"<!-- {name}: generated, end -->"
    block = f"{begin}\n{text.strip()}\n{end}\n"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + block
    path.write_text(new)
