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
        after = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + ("\n" + after if after else "")  # a blank line keeps the next paragraph out of a table
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + block
    path.write_text(new)


def cached_build(cell: Path, arguments: list[str], timeout_s: int = 7200) -> dict:
    """`edgekit build ARGUMENTS --out CELL/bundle --force --json` in its own process, its result cached in
    CELL/result.json ({"exit", "report", "stderr", "seconds"}) so a stopped benchmark resumes where it was."""
    import json
    import os
    import subprocess
    import sys
    import time

    result_file = cell / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "edgekit.cli", "build", *arguments, "--out", str(cell / "bundle"), "--force",
               "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=timeout_s)
    result = {"exit": done.returncode, "report": json.loads(done.stdout) if done.returncode in (0, 3) else None,
              "stderr": done.stderr[-3000:], "seconds": round(time.perf_counter() - start, 1)}
    cell.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    return result


def markdown_table(header: list[str], rows: list[str]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows])
