"""One long-lived onnx2tf worker for many conversions: TensorFlow starts once instead of once per case.

`WarmWorker` is the `run_worker` hook of `edgekit.routes.litert.onnx2tf.convert`: convert() still writes the spec,
checks the files and turns a failed run into edgekit's errors; only the process is reused. Each job runs the very
`main()` of edgekit's own worker script in the job's folder, its output redirected into the job's log.

Run as a script, this file is the server: one JSON line {"workdir", "log"} in, one line "done <code>" out.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

TIMEOUT_CODE = 124


class WarmWorker:
    """Callable (workdir, log, timeout_s) -> exit code; restarts its server after a crash or a timeout."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def __call__(self, workdir: Path, log: Path, timeout_s: float) -> int:
        process = self._server()
        process.stdin.write(json.dumps({"workdir": str(workdir), "log": str(log)}) + "\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
        line = process.stdout.readline() if ready else ""
        if line.startswith("done "):
            return int(line.split()[1])
        code = process.wait(timeout=5) if ready else TIMEOUT_CODE  # EOF: the server died (a crash: code < 0)
        self.close()
        with open(log, "a") as handle:
            handle.write(f"\nerror: warm onnx2tf worker {'timed out' if not ready else f'died ({code})'}\n")
        return code

    def _server(self) -> subprocess.Popen:
        from edgekit.routes.litert.onnx2tf import WORKER_SCRIPT, worker_env

        if self.process is None or self.process.poll() is not None:
            command = [sys.executable, "-P", __file__, str(WORKER_SCRIPT)]
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, env=worker_env(), text=True)
        return self.process

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def _serve(worker_script: str) -> None:
    import importlib.util
    import traceback

    spec = importlib.util.spec_from_file_location("_onnx2tf_worker", worker_script)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    import onnx2tf  # noqa: F401  (TensorFlow starts here, once)

    reply = os.fdopen(os.dup(1), "w")
    saved = os.dup(1), os.dup(2)
    for line in sys.stdin:
        job = json.loads(line)
        code = 1
        with open(job["log"], "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                os.chdir(job["workdir"])
                code = worker.main("spec.json")
            except BaseException:  # the job failed; its log says why, the server goes on
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        _clear_tensorflow()
        reply.write(f"done {code}\n")
        reply.flush()


def _clear_tensorflow() -> None:
    """Drop the Keras graph of the last conversion so memory does not grow over many cases."""
    try:
        import tf_keras

        tf_keras.backend.clear_session()
    except ImportError:
        import tensorflow as tf

        tf.keras.backend.clear_session()


if __name__ == "__main__":
    _serve(sys.argv[1])
