"""Child processes that never outlive the build: own process group, killed with it, dead with their parent.

A converter or emulator child runs in a process group of its own, so a build that stops (an error, SIGINT, SIGTERM)
kills the whole group, grandchildren too. PR_SET_PDEATHSIG makes the kernel kill the child when its parent dies,
also under SIGKILL of the parent, where no cleanup code of the parent runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from functools import cache
from typing import Any

PR_SET_PDEATHSIG = 1


@cache
def _prctl() -> Any:
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


def _die_with_parent(parent: int, prctl: Any) -> None:
    """Runs in the child between fork and exec: kill me when the parent goes (or has gone already)."""
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def run_child(command: list[str], timeout: float | None = None, **popen: Any) -> subprocess.CompletedProcess:
    """subprocess.run, except that the child's whole process group is killed on time-out or any exception
    (including KeyboardInterrupt and edgekit's SIGTERM), and the child dies with its parent."""
    parent, prctl = os.getpid(), _prctl()
    with subprocess.Popen(command, start_new_session=True, preexec_fn=lambda: _die_with_parent(parent, prctl),
                          **popen) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            kill_group(process)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
