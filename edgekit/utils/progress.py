"""Named, timed pipeline steps; what a step is doing and how long it took goes to a listener (the CLI's console)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str, str, float | None], None]  # (event "start"|"done"|"note", label, seconds)


class Steps:
    def __init__(self, listener: Listener | None = None) -> None:
        self.listener = listener or (lambda event, label, seconds: None)
        self.timings_s: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, label: str) -> Iterator[None]:
        self.listener("start", label, None)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings_s[name] = round(self.timings_s.get(name, 0.0) + seconds, 3)
        self.listener("done", label, seconds)

    def note(self, text: str) -> None:
        self.listener("note", text, None)
