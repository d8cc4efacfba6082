"""Where a build writes: a lock per OUT, a staging folder beside it, a work folder, and the publish at the end.

Every folder a build makes carries its process id (`.NAME.tmp-PID-*`, `.NAME.old-PID-*`, `edgekit-work-PID-*`),
so the next build that uses the same place removes the ones whose process is gone (a build killed with SIGKILL
cannot clean up after itself). OUT is published with one atomic rename (Linux renameat2): a new OUT appears whole,
an existing one is swapped with the new one in a single step, so OUT is never missing and never half written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from edgekit.errors import ConfigError

RENAME_NOREPLACE, RENAME_EXCHANGE, AT_FDCWD = 1, 2, -100
# errno values that are the user's environment, not an edgekit bug: exit 2 with the system's own words
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
               errno.ENAMETOOLONG, errno.EMFILE, errno.EFBIG}


def user_os_error(exc: OSError, doing: str) -> ConfigError:
    """An OSError caused by the machine (full disk, permissions, read-only) as one exit-2 message."""
    where = f" ({exc.filename})" if exc.filename else ""
    return ConfigError(f"{doing}: {exc.strerror or exc}{where}",
                       hint="free some space or fix the permissions, or choose another --out")


def check_writable(out: Path) -> None:
    """Before any work: OUT's nearest existing ancestor must be a folder this process can write in."""
    ancestor = Path(os.path.abspath(out)).parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--out {out} is under {ancestor}, which is a file, not a folder",
                          hint="choose an --out whose parent is a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in {ancestor}: permission denied (or a read-only file system)",
                          hint="choose another --out, or fix the folder's permissions")


def make_parents(out: Path) -> list[Path]:
    """Create OUT's missing parent folders; the list (innermost first) lets a failed build remove them again."""
    missing, folder = [], out.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: Path, pattern: str) -> list[Path]:
    """Remove the folders in `folder` whose names match `pattern` (group `pid`) and whose process is gone."""
    removed = []
    regex = re.compile(pattern)
    for path in folder.iterdir() if folder.is_dir() else ():
        match = regex.fullmatch(path.name)
        if match and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def sweep_for(out: Path) -> list[Path]:
    """Stale staging and aside folders of OUT, and stale work folders in the temp dir."""
    name = re.escape(out.name)
    found = sweep_stale(out.parent, rf"\.{name}\.(tmp|old)-(?P<pid>\d+)-\w+")
    return found + sweep_stale(Path(tempfile.gettempdir()), r"edgekit-work-(?P<pid>\d+)-\w+")


@contextlib.contextmanager
def out_lock(out: Path, what: str = "build") -> Iterator[Path]:
    """Hold `.NAME.lock` beside OUT (flock: released by the kernel when the holder dies, so a stale one is free);
    a second build (or matrix, `what`) to the same OUT fails at once naming the holder's process id."""
    lock = out.with_name(f".{out.name}.lock")
    fd = _acquire(lock, out, what)
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _acquire(lock: Path, out: Path, what: str) -> int:
    for _ in range(5):  # the file may be unlinked by its last holder between our open and flock: retry
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"another edgekit {what} (process {holder}) is writing {out}",
                              hint=f"wait for it to finish, or choose another --out (lock: {lock})") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
        os.close(fd)
    raise ConfigError(f"could not lock {lock}", hint="another build keeps replacing it; try again")


def make_staging(out: Path) -> Path:
    """`.NAME.tmp-PID-*` beside OUT, created with the process umask (never changed)."""
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    return staging


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"edgekit-work-{os.getpid()}-"))


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk, the folder itself last."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        _fsync(path)
    _fsync(folder)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@cache
def _renameat2():
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def rename(source: Path, dest: Path, flags: int) -> bool:
    """renameat2(source, dest, flags); False where the system or file system does not offer it."""
    function = _renameat2()
    if function is None:
        return False
    if function(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(dest), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(dest))


def publish(staging: Path, out: Path, replace: bool) -> None:
    """Make the finished staging folder OUT: flushed first, then one atomic rename (or swap, with `replace`).
    Without `replace`, an OUT that appeared during the build is left alone (exit 2)."""
    fsync_tree(staging)
    if out.exists() or out.is_symlink():
        if not replace:
            raise ConfigError(f"output {out} appeared while the build ran; not replaced",
                              hint="pass --force to replace it, or choose another --out")
        if not out.is_dir() or out.is_symlink():
            raise ConfigError(f"output {out} is not a folder; not replaced", hint="choose another --out")
        _swap(staging, out)
    else:
        try:
            moved = rename(staging, out, RENAME_NOREPLACE)
        except FileExistsError:
            raise ConfigError(f"output {out} appeared while the build ran; not replaced",
                              hint="pass --force to replace it, or choose another --out") from None
        if not moved:
            staging.rename(out)
    _fsync(out.parent)


def _swap(staging: Path, out: Path) -> None:
    """Exchange OUT and staging in one step, then remove the old bundle (now at the staging path)."""
    if rename(staging, out, RENAME_EXCHANGE):
        _fsync(out.parent)
        shutil.rmtree(staging, ignore_errors=True)
        return
    aside = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # no renameat2: two steps
    out.rename(aside)
    staging.rename(out)
    shutil.rmtree(aside, ignore_errors=True)


def write_files(texts: dict[Path, str]) -> None:
    """Each text into a temporary file beside its path, then every one renamed over its path: on any failure (a
    full disk) nothing is replaced and no temporary is left, so each file is its old self or complete."""
    written: list[Path] = []
    try:
        for path, text in texts.items():
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            written.append(temporary)
            with open(temporary, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        for temporary, path in zip(written, texts):
            temporary.replace(path)
    except OSError as exc:
        for temporary in written:
            with contextlib.suppress(OSError):
                temporary.unlink()
        raise user_os_error(exc, f"writing {', '.join(p.name for p in texts)}") from None


def private_problem(folder: Path) -> str | None:
    """Why `folder` (made 0700 when missing) cannot hold files this user must trust: a link or not a folder,
    another user's, or writable by group or others; None when it is this user's own."""
    import stat

    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
    found = os.lstat(folder)
    if not stat.S_ISDIR(found.st_mode):
        return f"{folder} is not a folder (a link or a file)"
    if found.st_uid != os.getuid():
        return f"{folder} belongs to user {found.st_uid}, not to this one ({os.getuid()})"
    if found.st_mode & 0o022:
        return f"{folder} is writable by others (mode {stat.S_IMODE(found.st_mode):o})"
    return None
