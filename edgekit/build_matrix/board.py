"""The progress of a build matrix as one table: every cell with its state (queued, building, passed, failed,
kept from --resume), elapsed time, accuracy drop and device size. On a terminal the CLI shows it live (rich); in a
log it prints one line per finished cell instead."""

from __future__ import annotations

import threading
import time
from typing import Any

STATES = {"queued": "queued", "running": "building", "submitted": "on Ray"}


class Board:
    """`watch(event, cell, row)` (from any thread; the matrix sends "queued" for every cell first, in its order)
    updates a cell, `table()` renders them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: list[Any] = []
        self._state: dict[str, str] = {}
        self._start: dict[str, float] = {}
        self._rows: dict[str, dict] = {}

    def watch(self, event: str, cell: Any, row: dict | None = None) -> None:
        with self._lock:
            if cell.bundle not in self._state:
                self._cells.append(cell)
            self._state[cell.bundle] = event
            if event == "running":
                self._start[cell.bundle] = time.monotonic()
            if row is not None:
                self._rows[cell.bundle] = row

    def table(self):
        from rich.table import Table

        table = Table(title="edgekit matrix", title_justify="left")
        for column, justify in (("cell", "left"), ("state", "left"), ("elapsed", "right"), ("drop", "right"),
                                ("size", "right")):
            table.add_column(column, justify=justify)
        with self._lock:
            for cell in self._cells:
                table.add_row(*self._columns(cell))
        return table

    def _columns(self, cell: Any) -> tuple[str, ...]:
        state, row = self._state[cell.bundle], self._rows.get(cell.bundle)
        if row is None:
            started = self._start.get(cell.bundle)
            elapsed = "" if started is None else f"{time.monotonic() - started:.0f} s"
            return f"{cell.model.name}/{cell.name}", STATES.get(state, state), elapsed, "", ""
        drop = (row["drift"] or {}).get("accuracy_drop")
        size = (row["size"] or {}).get("device_bytes")
        return (f"{cell.model.name}/{cell.name}", verdict(row), f"{row['seconds']:.0f} s",
                "n/a" if drop is None else f"{drop:.2f}", "" if size is None else f"{size:,} B")


def verdict(row: dict) -> str:
    if row.get("resumed"):
        return "kept (--resume)"
    if row["exit_code"] == 0:
        return "passed"
    if row["exit_code"] == 3:
        return "drift over threshold (exit 3)"
    return f"failed (exit {row['exit_code']})"
