"""Builds the ARM64 emulator into a staging folder: QEMU, an arm64 Python sysroot and aarch64 wheels.

Nothing outside the staging folder is touched: apt runs with a private APT_CONFIG (its own lists, status and
cache under the staging folder), so no `dpkg --add-architecture`, no root and no package is installed on the
system. The layout the staging folder ends with is the one `edgekit.emulator.qemu` runs:

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
import tempfile
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
# Each is pinned to the sha256 of the one file pip picks for it with PIP_TARGET's tags (cp311, aarch64,
# manylinux_2_35, manylinux_2_27 or manylinux2014; the sysroot's glibc is 2.36), as PyPI publishes it; pip
# refuses any other file (--require-hashes),
# whichever index, mirror or --find-links folder serves it. A new version needs its new hash:
#   pip download --no-deps -d DIR --only-binary=:all: --platform manylinux_2_35_aarch64 --platform
#     manylinux_2_27_aarch64 --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp --abi cp311
#     numpy==X ...
# then `sha256sum DIR/*` (tests/emulator/test_setup_hashes.py checks the pins that way).
WHEEL_SHA256 = {
    # numpy-2.1.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
    "numpy==2.1.3": "762479be47a4863e261a840e8e01608d124ee1361e48b96916f38b119cfda04a",
    # ai_edge_litert-2.3.0-cp311-cp311-manylinux_2_27_aarch64.whl
    "ai-edge-litert==2.3.0": "853fc608f96da87bd5f3458465dfb9abbf18d5ae6b94eceacead407146f175ae",
    # onnxruntime-1.23.0-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl (the onnxruntime route;
    # imports with numpy alone, so --no-deps holds)
    "onnxruntime==1.23.0": "e8634c5f54774df1e4d1debfdf2ca8f3274fe4ffc816ff5f861c01c48468a2c4",
    # openvino-2026.4.1-22982-cp311-cp311-manylinux_2_35_aarch64.whl (the openvino route's ARM CPU plugin; imports
    # with numpy alone)
    "openvino==2026.4.1": "bea1eb3733c34ef331adc945da0ccda5937865031139073663be84c517ffda22",
}
WHEELS = tuple(WHEEL_SHA256)
# Only the index files that the downloads need: arm64 for the sysroot, amd64 backports for QEMU 10 (Debian
# 12's own QEMU 7.2 crashed on one machine).
# The .debs are verified by apt itself: every source is `signed-by` Debian's archive keyring, so `apt-get update`
# accepts only InRelease files signed by that keyring (and fails on any error: Error-Mode=any), and `apt-get
# download` checks each .deb against the sha256 in those signed Packages indexes and refuses a package it cannot
# authenticate. Nothing here turns that off (no --allow-unauthenticated, [trusted=yes] or
# Acquire::AllowInsecureRepositories), and APT_STRICT below overrides the host's /etc/apt/apt.conf.d, which
# apt reads after APT_CONFIG, in case it does.
SOURCES = (
    ("arm64", "http://deb.debian.org/debian", "bookworm"),
    ("arm64", "http://deb.debian.org/debian", "bookworm-updates"),
    ("arm64", "http://deb.debian.org/debian-security", "bookworm-security"),
    ("amd64", "http://deb.debian.org/debian", "bookworm-backports"),
)
# Command-line options win over every apt configuration file.
APT_STRICT = tuple(
    part
    for option in (
        "Acquire::AllowInsecureRepositories=false",
        "Acquire::AllowDowngradeToInsecureRepositories=false",
        "APT::Get::AllowUnauthenticated=false",
    )
    for part in ("-o", option)
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
        run_tool(
            ["apt-get", "update", "-q", "-o", "APT::Update::Error-Mode=any", *APT_STRICT], "apt-get update", config
        )
    with stage("debs download", progress, timings):
        debs_dir.mkdir()
        run_tool(
            ["apt-get", "download", "-q", *APT_STRICT, QEMU_PACKAGE, *SYSROOT_PACKAGES],
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


def run_tool(
    command: list[str], what: str, apt_config: Path | None = None, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a setup tool; on failure (unless not `check`) raise EmulatorError with the tail of what it said."""
    env = dict(os.environ, APT_CONFIG=str(apt_config)) if apt_config else None
    try:
        done = subprocess.run(
            command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmulatorError(f"{what} could not run: {exc}", hint=NETWORK_HINT) from exc
    if check and done.returncode != 0:
        said = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise EmulatorError(f"{what} failed (exit code {done.returncode}):\n{said}", hint=NETWORK_HINT)
    return done


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


# The guest's wheels: CPython 3.11, aarch64, binary only, tagged manylinux_2_27 (ai-edge-litert) or manylinux2014
# (numpy; pip 23 matches exactly these two platform tags, so numpy's file is the one tagged both
# manylinux_2_17_aarch64 and manylinux2014_aarch64).
PIP_TARGET = ("--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
              "--platform", "manylinux_2_35_aarch64", "--platform", "manylinux_2_27_aarch64",
              "--platform", "manylinux2014_aarch64",
              "--only-binary=:all:")  # fmt: skip
# pip's heading above the files whose sha256 differs from their pin, each then named on an indented line:
# "    numpy==2.1.3 from https://.../numpy-2.1.3-...whl (from -r requirements.txt (line 1)):".
HASH_MISMATCH = "DO NOT MATCH THE HASHES"


def pinned_requirements() -> str:
    """The requirements file pip installs from: one `name==version --hash=sha256:...` line per wheel."""
    return "".join(f"{requirement} --hash=sha256:{digest}\n" for requirement, digest in WHEEL_SHA256.items())


def install_wheels(site: Path) -> None:
    """pip-install the pinned aarch64 CPython 3.11 wheels into `site`, each checked against its sha256.

    --no-deps: LiteRT declares dependencies (protobuf, tqdm, flatbuffers, ...) that its interpreter does not
    import; leaving them out also means that every wheel installed is one of the hash-pinned WHEELS
    (--require-hashes would refuse an unpinned one anyway). pip checks every file before it installs any.
    """
    what = "pip install of the aarch64 wheels"
    with tempfile.TemporaryDirectory(prefix="edgekit-wheels-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(pinned_requirements())
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-deps",
                   "--require-hashes", "-r", str(requirements), "--target", str(site), *PIP_TARGET]  # fmt: skip
        done = run_tool(command, what, check=False)
    said = (done.stderr or done.stdout).strip().splitlines()
    report = next((said[i:] for i, line in enumerate(said) if HASH_MISMATCH in line), None)
    if done.returncode != 0 and report:
        names = " and ".join(mismatched_wheels(report)) or "one of " + ", ".join(WHEELS)
        raise EmulatorError(
            f"the downloaded wheel of {names} does not match its pinned sha256, so no wheel was installed:\n"
            + "\n".join(report[:12]),
            hint="pip was served another file than the one pinned: check the index, mirror or proxy pip uses "
            "(pip config list); if the pin in edgekit/emulator/setup.py is wrong, report it as a bug",
        )
    if done.returncode != 0:
        tail = "\n".join(said[-8:])
        raise EmulatorError(f"{what} failed (exit code {done.returncode}):\n{tail}", hint=NETWORK_HINT)
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with the host's shebang, never used


def mismatched_wheels(pip_said: list[str]) -> list[str]:
    """The pinned requirements that pip's hash-mismatch report names, in WHEELS order."""
    named = {line.split()[0].lower() for line in pip_said if line.startswith("    ") and line.strip()}
    return [requirement for requirement in WHEELS if requirement.lower() in named]
