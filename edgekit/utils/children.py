"""Child processes that never outlive the build: own process group, killed with it, dead with their parent.

A converter or emulator child runs in a process group of its own, so a build that stops (an error, SIGINT, SIGTERM)
kills the whole group, grandchildren too. PR_SET_PDEATHSIG (through setpriv) makes the kernel kill the child when its
parent dies, also under SIGKILL of the parent, where no cleanup code of the parent runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from typing import Any


def with_death_signal(command: list[str]) -> list[str]:
    """The command started through util-linux's setpriv, which sets PR_SET_PDEATHSIG and execs it: the kernel then
    kills the child when its parent dies. (A preexec_fn would do the same but forks in Python, which is unsafe in
    a process with threads: JAX warns of a deadlock.) Without setpriv the child still dies with the build on any
    error or signal the build sees; only a SIGKILL of the build would leave it to finish its work alone."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    if setpriv is None or shutil.which(command[0]) is None:  # a missing program fails in Popen, as without setpriv
        return command
    return [setpriv, "--pdeathsig", "KILL", "--", *command]


def run_child(command: list[str], timeout: float | None = None, **popen: Any) -> subprocess.CompletedProcess:
    """subprocess.run, except that the child's whole process group is killed on time-out or any exception
    (including KeyboardInterrupt and edgekit's SIGTERM), and the child dies with its parent."""
    with subprocess.Popen(with_death_signal(command), start_new_session=True, **popen) as process:
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
