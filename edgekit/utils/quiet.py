"""Runtime noise kept off the user's terminal: C++ log lines a runtime writes to file descriptor 2, which no Python
setting reaches. Only lines a caller names as noise are dropped; every other line is written back."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

_STDERR_LOCK = threading.RLock()


@contextmanager
def filtered_stderr(is_noise: Callable[[bytes], bool]) -> Iterator[None]:
    """fd 2 goes to a temporary file while the body runs; then every line that is not noise (errors, warnings,
    anything else written on stderr meanwhile) is written back to stderr, even on an error."""
    # One redirection at a time, or a thread could restore another one's temporary file as fd 2.
    with _STDERR_LOCK, tempfile.TemporaryFile() as captured:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep quiet
            yield
            return
        flush = getattr(sys.stderr, "flush", lambda: None)
        flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured if not is_noise(line.rstrip(b"\r\n")))
            while kept:
                kept = kept[os.write(2, kept) :]


@contextmanager
def quiet_loggers(names: Iterable[str], level: int = logging.ERROR) -> Iterator[None]:
    """Raise these loggers' level while the body runs (libraries that log what edgekit says once, or noise)."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, previous in zip(loggers, saved):
            logger.setLevel(previous)


# LiteRT's C++ logger prints the first line on stderr, once a process, when it first applies the default
# XNNPACK delegate (older TFLite builds print the second when the first interpreter is made). Its minimum
# severity cannot be set from Python: only C++ has tflite::LoggerOptions::SetMinimumLogSeverity, the logger does
# not read TF_CPP_MIN_LOG_LEVEL, and the wheel exports no logging symbol. So quiet_runtimes() filters stderr.
RUNTIME_NOISE = (
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    b"INFO: Initialized TensorFlow Lite runtime.",
)


def quiet_runtimes():
    """Drop the runtimes' known INFO lines (RUNTIME_NOISE) from stderr while a device model loads and runs."""
    return filtered_stderr(lambda line: line in RUNTIME_NOISE)
