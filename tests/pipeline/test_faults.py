"""Untrusted files, faults and concurrent builds, each run for real: exit code, one-line message, no traceback, and
what is left on disk. Bundle cases copy the shared INT8 bundle; build cases use the shipped digits .pt2."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.errors import ConfigError
from edgekit.utils import outdir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "01_android_int8"
MODEL, CALIB, EVAL = EXAMPLE / "digits_cnn.pt2", EXAMPLE / "calibration.npz", EXAMPLE / "eval.npz"
BUILD = ["--target", "android-arm64-int8", "--calibration", str(CALIB), "--eval", str(EVAL), "--emulator", "host"]


def cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_message(result, code: int, text: str) -> None:
    """Exit `code`, edgekit's own error line containing `text`, a hint, and no traceback."""
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    exit_code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert exit_code == code, output
    assert "Traceback" not in output and "unexpected error" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], output


# --- untrusted model files -------------------------------------------------------------------------------------------


class Marker:
    """A pickle that creates a file when unpickled: proof that code from the model file ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def legacy_pt2(path: Path, evil: bytes) -> Path:
    """A torch < 2.7 archive whose state dict is `evil`: torch retries it with a full unpickle."""
    import torch
    from torch._export.serde.schema import SCHEMA_VERSION
    from torch._export.serde.serialize import serialize

    artifact = serialize(torch.export.load(MODEL))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        archive.writestr("serialized_exported_program.json", artifact.exported_program)
        archive.writestr("serialized_state_dict.pt", evil)
        archive.writestr("serialized_constants.pt", artifact.constants)
        archive.writestr("serialized_example_inputs.pt", artifact.example_inputs)
    return path


def rewritten_pt2(path: Path, evil: bytes, member: str) -> Path:
    """The shipped .pt2 with one member replaced by `evil`: a weight flagged use_pickle, or the sample inputs."""
    with zipfile.ZipFile(MODEL) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        config_name = next(n for n in source.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(source.read(config_name))
        first = next(iter(config["config"].values()))
        target = {"weight": config_name.rsplit("/", 1)[0] + "/" + first["path_name"],
                  "sample_inputs": next(n for n in source.namelist() if "sample_inputs" in n)}[member]
        if member == "weight":
            first["use_pickle"] = True
        for info in source.infolist():
            data = json.dumps(config).encode() if info.filename == config_name else source.read(info.filename)
            archive.writestr(info.filename, evil if info.filename == target else data)
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("legacy", "is an old-format (torch < 2.7) torch.export archive: its weights would be unpickled"),
    ("weight", "features.0.weight is stored as a pickle"),
    ("sample_inputs", "is not a readable ExportedProgram: Weights only load failed"),
])
def test_a_pickle_in_a_pt2_never_runs(kind: str, message: str, tmp_path: Path):
    marker = tmp_path / "PWNED"
    evil = pickle.dumps(Marker(marker), protocol=2)
    path = legacy_pt2(tmp_path / "evil.pt2", evil) if kind == "legacy" else \
        rewritten_pt2(tmp_path / "evil.pt2", evil, kind)
    for args in (["build", path, *BUILD, "--out", tmp_path / "out"], ["inspect", path]):
        assert_one_message(cli(*args), 2, message)
        assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt2"]


def test_foreign_files_given_as_a_model_end_in_one_message(tmp_path: Path):
    import torch

    from tests.helpers import shipped_digits_cnn

    (tmp_path / "random.pt2").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.jit.save(torch.jit.trace(shipped_digits_cnn(), torch.zeros(1, 1, 8, 8)), tmp_path / "script.pt2")
    (tmp_path / "folder.pt2").mkdir()
    cases = {"random.pt2": "is not a .pt2 archive (not a zip file)",
             "script.pt2": "is a TorchScript file, not a torch.export .pt2 archive",
             "folder.pt2": "is a folder, not a model file"}
    for name, message in cases.items():
        assert_one_message(cli("build", tmp_path / name, *BUILD, "--out", tmp_path / "out"), 2, message)
    assert not (tmp_path / "out").exists()


# --- bundles as data -------------------------------------------------------------------------------------------------


@pytest.fixture()
def bundle(int8_bundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(int8_bundle.out, tmp_path / "bundle"))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def rehash(bundle: Path, name: str) -> None:
    """Forge the manifest to vouch for a changed file, so the structural check (not the hash) is what refuses."""
    edit_json(bundle / "manifest.json",
              lambda m: m["files"].__setitem__(name, hashlib.sha256((bundle / name).read_bytes()).hexdigest()))


def set_model(path: str):
    return lambda m: m["device"].__setitem__("model", path)


@pytest.mark.parametrize(("path", "message"), [
    ("../outside.tflite", "is not a plain path inside the bundle"),
    ("/tmp/outside.tflite", "is not a plain path inside the bundle"),
    ("golden", "files has no sha256 for golden"),
    ("link.tflite", "resolves outside the bundle"),
])
@pytest.mark.slow
def test_manifest_paths_never_leave_the_bundle(bundle: Path, path: str, message: str, int8_bundle):
    shutil.copyfile(bundle / "model.tflite", bundle.parent / "outside.tflite")
    (bundle / "link.tflite").symlink_to(bundle.parent / "outside.tflite")
    edit_json(bundle / "manifest.json", set_model(path))
    if path == "link.tflite":  # a manifest that even hashes the outside file is refused for where it points
        edit_json(bundle / "manifest.json", lambda m: m["files"].__setitem__(
            "link.tflite", hashlib.sha256((bundle / "model.tflite").read_bytes()).hexdigest()))
    for args in (["check", bundle], ["inspect", bundle], ["diff", int8_bundle.out, bundle]):
        assert_one_message(cli(*args), 2, message)


def test_a_modified_model_is_exit_3_before_it_runs(bundle: Path):
    data = bytearray((bundle / "model.tflite").read_bytes())
    data[len(data) // 2:] = b"\xff" * (len(data) - len(data) // 2)  # would crash or drift if it ran
    (bundle / "model.tflite").write_bytes(bytes(data))
    for args in (["check", bundle], ["check", bundle, "--json"], ["inspect", bundle]):
        assert_one_message(cli(*args), 3, "model.tflite differs from the sha256 in manifest.json")
    done = subprocess.run([sys.executable, "check.py"], cwd=bundle, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "model.tflite differs from the sha256" in done.stderr and done.stdout == ""


def test_the_manifest_digest_pins_a_bundle(bundle: Path, int8_bundle):
    digest = int8_bundle.manifest_sha256
    assert digest == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert (bundle / "manifest.sha256").read_text() == f"{digest}  manifest.json\n"
    assert cli("check", bundle, "--expect-digest", digest).exit_code == 0
    edit_json(bundle / "manifest.json", lambda m: m["device"]["tolerances"]["atol"].update(output=1e9))
    assert_one_message(cli("check", bundle, "--expect-digest", digest), 3, f"not the expected {digest}")
    assert cli("check", bundle).exit_code == 0  # unpinned, the loosened tolerance is taken at its word


def _corrupt_header(b: Path) -> None:
    data = (b / "model.tflite").read_bytes()
    (b / "model.tflite").write_bytes(b"\0" * 8 + data[8:])
    rehash(b, "model.tflite")


def _object_array(b: Path) -> None:
    np.savez(b / "golden" / "inputs.npz", x=np.array([{"a": 1}] * 16, dtype=object))
    rehash(b, "golden/inputs.npz")


def _report(change):
    def apply(b: Path) -> None:
        edit_json(b / "report.json", change)
        rehash(b, "report.json")
    return apply


MALFORMED = {
    "corrupt model header": (_corrupt_header, "not a TFLite model (bad header"),
    "missing golden file": (lambda b: (b / "golden" / "outputs.npz").unlink(), "golden/outputs.npz"),
    "missing manifest key": (lambda b: edit_json(b / "manifest.json", lambda m: m["device"].pop("tolerances")),
                             "missing key device.tolerances.atol"),
    "report without drift": (_report(lambda r: r.pop("drift")), "report.json: key (top level): 'drift' is a "
                                                                "required property"),
    "string for a number": (_report(lambda r: r["drift"].__setitem__("accuracy_drop", "abc")),
                            "report.json: key drift.accuracy_drop: 'abc' is not of type"),
    "object array in npz": (_object_array, "golden/inputs.npz: key 'x': Object arrays cannot be loaded"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_bundle_is_exit_2_naming_file_and_key(case: str, bundle: Path, int8_bundle):
    damage, message = MALFORMED[case]
    damage(bundle)
    for args in (["check", bundle], ["inspect", bundle], ["diff", int8_bundle.out, bundle]):
        assert_one_message(cli(*args), 2, message)


# --- bad data and output places --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_labels(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("labels")
    with np.load(EVAL) as data:
        x, y = data["x"], data["y"].copy()
    found = {}
    for label in (12, -100):
        y[:3] = label
        np.savez(folder / f"eval{label}.npz", x=x, y=y)
        found[label] = folder / f"eval{label}.npz"
    with np.load(CALIB) as data:
        np.savez(folder / "calib5.npz", x=data["x"][:5], y=data["y"][:5])
    found["calib5"] = folder / "calib5.npz"
    return found


@pytest.mark.parametrize("label", [12, -100])
def test_labels_outside_the_classes_are_refused_at_the_plan_step(label: int, bad_labels, tmp_path: Path):
    args = ["build", MODEL, *BUILD[:4], "--eval", bad_labels[label], "--emulator", "host", "--out", tmp_path / "o"]
    start = time.perf_counter()
    result = cli(*args)
    assert time.perf_counter() - start < 30  # the plan step, not a build
    assert_one_message(result, 2, f"eval data: labels outside the model's 10 classes (0..9): {label} (3 samples)")
    assert f"--ignore-index {label}" in result.output and not (tmp_path / "o").exists()


def test_the_ignore_label_is_left_out_of_accuracy_only():
    from edgekit.config.options import Gate
    from edgekit.inputs.data import Dataset
    from edgekit.inputs.datachecks import check_labels
    from edgekit.measure.drift import drift_block

    labels = np.array([0, 1, -100, 1])
    reference = {"logits": np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]}
    device = {"logits": np.eye(2, dtype=np.float32)[[0, 1, 1, 0]]}
    block = drift_block(reference, device, labels, "logits", Gate(1.0, 0.5, 20.0), ignore_index=-100)
    assert block["reference_accuracy"] == 1.0 and block["device_accuracy"] == pytest.approx(2 / 3)
    assert block["top1_agreement"] == 0.5  # agreement still counts every sample
    check_labels(Dataset({"x": np.zeros((4, 1))}, labels, "t"), 2, -100, "eval data")


def test_too_few_calibration_samples_are_refused(bad_labels, tmp_path: Path):
    result = cli("build", MODEL, "--target", "android-arm64-int8", "--calibration", bad_labels["calib5"], "--eval",
                 EVAL, "--out", tmp_path / "o", "--emulator", "host")
    assert_one_message(result, 2, "only 5 calibration samples (after holding out eval samples)")
    assert "--allow-small-calibration" in result.output and not (tmp_path / "o").exists()


def test_out_under_a_regular_file_is_refused_at_the_plan_step(tmp_path: Path):
    (tmp_path / "afile").write_text("")
    assert_one_message(cli("build", MODEL, *BUILD, "--out", tmp_path / "afile" / "out"), 2,
                       f"is under {tmp_path / 'afile'}, which is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def unprivileged(command: list[str]) -> list[str]:
    """Run as a user that file permissions apply to: root ignores them, so drop to nobody with setpriv."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): permission denials cannot be produced")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]


@pytest.fixture()
def shared_dir():
    """A folder that the unprivileged user can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="edgekit-faults-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("case", ["unreadable model", "read-only out parent"])
def test_permissions_are_exit_2_with_the_real_cause(case: str, shared_dir: Path):
    model, readonly, writable = shared_dir / "model.pt2", shared_dir / "ro", shared_dir / "rw"
    shutil.copyfile(MODEL, model)
    readonly.mkdir()
    readonly.chmod(0o555)
    writable.mkdir()
    writable.chmod(0o777)
    model.chmod(0o000 if case == "unreadable model" else 0o644)
    out = readonly / "out" if case == "read-only out parent" else writable / "out"
    env = dict(os.environ, HOME=str(writable), EDGEKIT_CACHE=str(writable / "cache"))
    command = unprivileged([sys.executable, "-m", "edgekit.cli", "build", str(model), *BUILD, "--out", str(out)])
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=writable)
    message = f"cannot read model file {model}: Permission denied" if case == "unreadable model" else \
        f"cannot write in {readonly}: permission denied"
    assert_one_message(done, 2, message)
    assert not any(readonly.iterdir()) and not (writable / "out").exists()


@pytest.mark.slow
def test_a_full_disk_is_exit_2_and_leaves_nothing(tmp_path: Path):
    """The bundle's file system has 120 kB: the build runs, then writing the bundle fails (ENOSPC)."""
    space = tmp_path / "small"
    space.mkdir()
    script = (f'mount -t tmpfs -o size=120k tmpfs "{space}" && "{sys.executable}" -m edgekit.cli build "{MODEL}" '
              + " ".join(f'"{a}"' for a in BUILD) + f' --out "{space}/out"; code=$?; echo "left:$(ls -A "{space}")"; '
              "exit $code")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("no user+mount namespaces here (unshare): a small file system cannot be mounted without root")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert_one_message(done, 2, "cannot write the bundle for")
    assert "No space left on device" in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "left:"  # no staging folder, no lock, no OUT


# --- killed builds and concurrent builds -----------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def start_build(out: Path, tmpdir: Path, *extra: str, hold: Path | None = None) -> subprocess.Popen:
    """`edgekit build` in a child process; with `hold`, it waits at the publish step until `hold` exists (writing
    `hold`.ready when it gets there), so a second build really overlaps with it."""
    code = "from edgekit.cli import main; main()"
    if hold is not None:
        code = ("import time; from pathlib import Path; import edgekit.utils.outdir as o; publish = o.publish\n"
                "def held(*a, **k):\n"
                f"    Path({str(hold)!r} + '.ready').touch()\n"
                f"    while not Path({str(hold)!r}).exists(): time.sleep(0.05)\n"
                "    return publish(*a, **k)\n"
                "o.publish = held\n" + code)
    command = [sys.executable, "-c", code, "build", str(MODEL), *BUILD, "--out", str(out), *extra]
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmpdir)))


def wait_for_line(process: subprocess.Popen, text: str) -> str:
    seen = ""
    while text not in seen:
        line = process.stderr.readline()
        assert line, seen
        seen += line
    return seen


def wait_gone(pids: list[int], seconds: float = 15) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    return [p for p in pids if Path(f"/proc/{p}").exists()]


@pytest.mark.slow
def test_sigterm_during_conversion_exits_143_and_cleans_up(tmp_path: Path):
    (tmp_path / "tmp").mkdir()
    build = start_build(tmp_path / "new" / "out", tmp_path / "tmp")  # "new" is made by the build, then removed
    wait_for_line(build, "converting")
    time.sleep(1.0)
    workers = children(build.pid)
    assert workers  # the onnx2tf worker runs
    build.send_signal(signal.SIGTERM)
    _, stderr = build.communicate(timeout=60)
    assert build.returncode == 143 and "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert wait_gone(workers) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("edgekit-work-")] == []


@pytest.mark.slow
def test_sigkill_then_concurrent_force_builds_leave_one_complete_bundle(int8_bundle, tmp_path: Path):
    """A previous bundle at OUT; a build to it killed with SIGKILL mid-conversion (its worker must die with it);
    then two --force builds at once: the second fails at once naming the first, the first replaces OUT whole and
    clears what the killed build left. OUT is never missing and no `.OUT.old-*` is stranded."""
    tmp, out, hold = tmp_path / "tmp", tmp_path / "out", tmp_path / "go"
    tmp.mkdir()
    shutil.copytree(int8_bundle.out, out)
    killed = start_build(out, tmp, "--force")
    wait_for_line(killed, "converting")
    time.sleep(1.0)
    workers = children(killed.pid)
    killed.kill()
    killed.wait()
    assert workers and wait_gone(workers) == []
    stale = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-"))
    assert len(stale) == 1 and any(p.name.startswith("edgekit-work-") for p in tmp.iterdir())
    assert (out / "manifest.json").is_file()  # the previous bundle is untouched

    first = start_build(out, tmp, "--force", hold=hold)
    while not Path(f"{hold}.ready").exists():
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.1)
    second = subprocess.run([sys.executable, "-m", "edgekit.cli", "build", str(MODEL), *BUILD, "--out", str(out),
                             "--force"], capture_output=True, text=True, timeout=120)
    assert_one_message(second, 2, f"another edgekit build (process {first.pid}) is writing {out}")
    assert json.loads((out / "manifest.json").read_text())["created"] == int8_bundle.manifest["created"]
    hold.touch()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert cli("check", out).exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["model"]["source"] == str(MODEL)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["go", "go.ready", "out", "tmp"], left  # no .out.tmp-*, .out.old-*, .out.lock
    assert [p.name for p in tmp.iterdir() if p.name.startswith("edgekit-work-")] == []


def test_publish_is_atomic_and_rechecks_force(tmp_path: Path):
    out = tmp_path / "out"
    for content in ("first", "second"):
        staging = outdir.make_staging(out)
        (staging / "f").write_text(content)
        outdir.publish(staging, out, replace=True)
        assert (out / "f").read_text() == content
    appeared = outdir.make_staging(out)
    with pytest.raises(ConfigError, match="appeared while the build ran; not replaced"):
        outdir.publish(appeared, out, replace=False)
    assert (out / "f").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [appeared.name, "out"]  # api.build removes staging


def test_a_stale_lock_is_cleared_and_a_live_one_named(tmp_path: Path):
    out = tmp_path / "out"
    (tmp_path / ".out.lock").write_text("999999\n")  # a holder that died: its flock went with it
    with outdir.out_lock(out):
        assert (tmp_path / ".out.lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / ".out.lock").exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "x'; rm -rf ~; '", "Android-INT8", "a--b"])
def test_a_target_name_is_validated_wherever_it_comes_from(name: str, tmp_path: Path):
    from edgekit.config.target import Target, load_target

    assert_one_message(cli("build", MODEL, "--target", name, "--calibration", CALIB), 2, "is not valid")
    raw = {"name": name, "description": "d", "platform": "jetson", "arch": "arm64", "format": "onnx",
           "route": "tensorrt", "precision": "int8", "runtime": "tensorrt"}
    with pytest.raises(ConfigError, match="is not valid"):
        Target.from_dict(raw)
    (tmp_path / "t.toml").write_text(f"name = {json.dumps(name)}\n" + "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in raw.items() if key != "name"))
    with pytest.raises(ConfigError, match="is not valid"):
        load_target(tmp_path / "t.toml")
