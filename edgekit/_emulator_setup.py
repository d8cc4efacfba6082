"""Builds the ARM64 emulator into a staging folder: QEMU, an arm64 Python sysroot and aarch64 wheels.

Nothing outside the staging folder is touched: apt runs with a private APT_CONFIG (its own lists, status and
cache under the staging folder), so no `dpkg --add-architecture`, no root and no package is installed on the
system. The layout the staging folder ends with is the one `edgekit.emulator` runs:

    qemu/qemu-aarch64   QEMU 10 user-mode, a static binary (Debian bookworm-backports)
    sysroot/            Debian bookworm arm64 libc, libstdc++ and python3.11
    site/               aarch64 wheels of numpy and ai-edge-litert (the guest's PYTHONPATH)
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from edgekit.errors import EmulatorError

QEMU_BINARY = Path("qemu/qemu-aarch64")
SYSROOT = Path("sysroot")
GUEST_PYTHON = SYSROOT / "usr/bin/python3.11"
SITE = Path("site")

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
QEMU_PACKAGE = "qemu-user/bookworm-backports"
SYSROOT_PACKAGES = (
    *(
        "libc6:arm64",
        "libgcc-s1:arm64",
        "libstdc++6:arm64",
        "zlib1g:arm64",
        "libexpat1:arm64",
        "libffi8:arm64",
    ),
    *("python3.11-minimal:arm64", "libpython3.11-minimal:arm64", "libpython3.11-stdlib:arm64"),
)
# The same versions as the host's lock (requirements.lock): INT8 is bit-exact only between equal LiteRT builds.
WHEELS = ("numpy==2.1.3", "ai-edge-litert==2.3.0")
# Only the index files that the downloads need: arm64 for the sysroot, amd64 backports for QEMU 10 (Debian
# 12's own QEMU 7.2 crashed on one machine).
SOURCES = (
    ("arm64", "http://deb.debian.org/debian", "bookworm"),
    ("arm64", "http://deb.debian.org/debian", "bookworm-updates"),
    ("arm64", "http://deb.debian.org/debian-security", "bookworm-security"),
    ("amd64", "http://deb.debian.org/debian", "bookworm-backports"),
)

# The verification model shipped as assets/tiny.tflite: y = relu(x @ TINY_WEIGHTS + TINY_BIAS), input "x"
# [1, 8], output "Identity" [1, 4]. Made once with tf.lite.TFLiteConverter.from_concrete_functions from these
# numbers; small integer weights and inputs make the float32 result exact on every CPU.
TINY_MODEL = Path(__file__).with_name("assets") / "tiny.tflite"
TINY_WEIGHTS = np.array([[(i - 2 * j) % 5 - 2 for j in range(4)] for i in range(8)], np.float32)
TINY_BIAS = np.array([0.5, -1.0, 1.5, 0.0], np.float32)

NETWORK_HINT = (
    "check that deb.debian.org and PyPI are reachable (apt and pip honour http_proxy/https_proxy), then run "
    "`edgekit emulator setup` again"
)


def tiny_expected(x: np.ndarray) -> np.ndarray:
    """What assets/tiny.tflite computes for samples x of shape [N, 8]."""
    return np.maximum(x @ TINY_WEIGHTS + TINY_BIAS, 0)


def check_host() -> None:
    """Fail early, with the fix, on a host that cannot build the emulator."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise EmulatorError(
            f"the ARM64 emulator needs an x86_64 Linux host, this is {sys.platform} {platform.machine()}",
            hint="run on x86_64 Linux, or measure on the host runtime (--emulator host)",
        )
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise EmulatorError(
                f"`{tool}` was not found", hint="the emulator setup needs a Debian or Ubuntu host"
            )
    if not KEYRING.is_file():
        raise EmulatorError(
            f"Debian's archive keyring {KEYRING} is missing", hint="install `debian-archive-keyring`"
        )


def build(staging: Path, progress: Callable[[str], None]) -> dict[str, float]:
    """Fill `staging` with qemu/, sysroot/ and site/; return the seconds each stage took."""
    timings: dict[str, float] = {}
    apt_dir, debs_dir = staging / "apt", staging / "debs"
    config = write_apt_config(apt_dir)
    with stage("apt lists", progress, timings):
        run_tool(["apt-get", "update", "-q", "-o", "APT::Update::Error-Mode=any"], "apt-get update", config)
    with stage("debs download", progress, timings):
        debs_dir.mkdir()
        run_tool(
            ["apt-get", "download", "-q", QEMU_PACKAGE, *SYSROOT_PACKAGES],
            "apt-get download",
            config,
            debs_dir,
        )
    with stage("extract", progress, timings):
        extract_qemu(next(debs_dir.glob("qemu-user_*_amd64.deb")), staging / QEMU_BINARY)
        extract_sysroot(sorted(debs_dir.glob("*_arm64.deb")), staging / SYSROOT)
        # The downloads (~70 MB) and lists (~20 MB) are not needed to run: keep the cache small.
        shutil.rmtree(apt_dir)
        shutil.rmtree(debs_dir)
    with stage("wheels", progress, timings):
        install_wheels(staging / SITE)
    return timings


@contextmanager
def stage(name: str, progress: Callable[[str], None], timings: dict[str, float]) -> Iterator[None]:
    """Time one setup stage and report it when it is done."""
    started = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - started, 2)
    progress(f"  {name}: {timings[name]:.1f} s")


def write_apt_config(apt_dir: Path) -> Path:
    """A private apt configuration whose lists, status and cache all live under `apt_dir`."""
    for sub in ("lists/partial", "archives/partial", "sources.list.d", "preferences.d"):
        (apt_dir / sub).mkdir(parents=True)
    (apt_dir / "status").touch()
    (apt_dir / "sources.list").write_text(
        "".join(f"deb [arch={arch} signed-by={KEYRING}] {url} {suite} main\n" for arch, url, suite in SOURCES)
    )
    settings = {
        "APT::Architecture": "amd64",
        "Dir::State": apt_dir,
        "Dir::State::lists": apt_dir / "lists",
        "Dir::State::status": apt_dir / "status",
        "Dir::Cache": apt_dir,
        "Dir::Cache::archives": apt_dir / "archives",
        "Dir::Etc::sourcelist": apt_dir / "sources.list",
        "Dir::Etc::sourceparts": apt_dir / "sources.list.d",
        "Dir::Etc::preferencesparts": apt_dir / "preferences.d",
        "Acquire::Languages": "none",
        # As root, apt would hand downloads to the `_apt` user, who cannot write into a user's cache folder.
        "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
    }
    lines = [f'{key} "{value}";' for key, value in settings.items() if value != ""]
    config = apt_dir / "apt.conf"
    config.write_text("\n".join([*lines, 'APT::Architectures { "amd64"; "arm64"; };', ""]))
    return config


def run_tool(command: list[str], what: str, apt_config: Path | None = None, cwd: Path | None = None) -> None:
    """Run a setup tool; on failure raise EmulatorError with the tail of what it said."""
    env = dict(os.environ, APT_CONFIG=str(apt_config)) if apt_config else None
    try:
        done = subprocess.run(
            command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmulatorError(f"{what} could not run: {exc}", hint=NETWORK_HINT) from exc
    if done.returncode != 0:
        said = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise EmulatorError(f"{what} failed (exit code {done.returncode}):\n{said}", hint=NETWORK_HINT)


def extract_qemu(deb: Path, target: Path) -> None:
    """Copy the static qemu-aarch64 out of the qemu-user package, leaving the other 60 MB of emulators."""
    target.parent.mkdir(parents=True)
    member_name = "./usr/bin/qemu-aarch64"
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as unpack:
        try:
            copy_tar_member(unpack.stdout, member_name, target)
        except tarfile.TarError as exc:
            raise EmulatorError(f"cannot read {deb.name}: {exc}", hint=NETWORK_HINT) from exc
        finally:
            unpack.kill()
    if not target.is_file():
        raise EmulatorError(
            f"{deb.name} has no {member_name}", hint="QEMU_PACKAGE no longer ships qemu-aarch64"
        )
    target.chmod(0o755)


def copy_tar_member(stream: IO[bytes], member_name: str, target: Path) -> None:
    """Copy one regular file out of a streamed tar archive, stopping as soon as it is found."""
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if member.name == member_name and member.isfile():
                with archive.extractfile(member) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                return


def extract_sysroot(debs: list[Path], sysroot: Path) -> None:
    """Unpack the arm64 packages into `sysroot` (no maintainer scripts: the files are all that is needed)."""
    sysroot.mkdir(parents=True)
    for deb in debs:
        run_tool(["dpkg-deb", "-x", str(deb), str(sysroot)], f"unpacking {deb.name}")
    relink_absolute_symlinks(sysroot)


def relink_absolute_symlinks(sysroot: Path) -> None:
    """Point absolute symlinks (sitecustomize.py -> /etc/python3.11/...) into the sysroot, not the host."""
    for link in sysroot.rglob("*"):
        if link.is_symlink() and os.readlink(link).startswith("/"):
            inside = sysroot / os.readlink(link).lstrip("/")
            link.unlink()
            link.symlink_to(os.path.relpath(inside, link.parent))


def install_wheels(site: Path) -> None:
    """pip-install the aarch64 CPython 3.11 wheels into `site`, without dependencies (LiteRT needs none)."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-deps",
               "--target", str(site), "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               # numpy's aarch64 wheel is tagged manylinux2014, ai-edge-litert's manylinux_2_27.
               "--platform", "manylinux_2_27_aarch64", "--platform", "manylinux2014_aarch64",
               "--only-binary=:all:", *WHEELS]  # fmt: skip
    run_tool(command, "pip install of the aarch64 wheels")
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with the host's shebang, never used
