#!/usr/bin/env python3
"""Input-data drift monitor of an edgekit bundle: numpy only, nothing else.

Copied into every bundle as monitor.py (edgekit imports the same file). The build stores summary statistics of the
calibration data in data_stats.json: per input and per channel (axis 1 of image-like inputs, NCHW) the mean, std and
101 quantiles, with decile bins and the share of calibration values in each. `score` compares live inputs with
them by the population stability index (PSI) per channel; a channel with PSI above 0.2 (the usual rule of thumb) is
drift, and the overall score is the worst channel's PSI.

    python monitor.py live_inputs.npz [--stats data_stats.json] [--threshold 0.2] [--json]

live_inputs.npz holds one array per model input name (or `x` for a single input), in the model's own layout
(NCHW for images) and normalisation, as the calibration data was. Exit codes: 0 no drift, 3 drift, 2 error.
Run as a script, it takes its own folder (the bundle, data) off the import path before its first import, as check.py
does. Python 3.10+.
"""

import sys  # built in: nothing in the bundle's folder can stand in for it

if __name__ == "__main__":  # the bundle's folder is data: drop it from the import path before any other import
    import os  # frozen, imported at start-up: never read from a folder

    _HERE = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import argparse
import json
from pathlib import Path

import numpy as np

STATS_SCHEMA = "edgekit.data_stats/1"
PSI_THRESHOLD = 0.2
QUANTILES = 101
PSI_BINS = 10  # deciles, as usual for PSI: finer bins make the index noisy on a few hundred live samples
MAX_CHANNELS = 256  # more "channels" than this on axis 1 is not an image or a feature vector: pooled instead
PSI_FLOOR = 1e-4  # share given to an empty bin, so a value never seen in calibration costs a finite PSI


class MonitorError(Exception):
    """A problem that stops scoring before any comparison (exit code 2)."""


def _channels(array: np.ndarray) -> "list[np.ndarray]":
    """Per-channel value sets: axis 1 for (N, C, ...) and (N, features) inputs, everything pooled otherwise."""
    if array.ndim >= 2 and array.shape[1] <= MAX_CHANNELS:
        return [np.moveaxis(array, 1, 0)[c].ravel() for c in range(array.shape[1])]
    return [array.ravel()]


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values in each bin (-inf, e0], (e0, e1], ..., (e_last, inf): right-closed, so point masses (all
    the zero pixels of an image) fall into one bin whole."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def channel_stats(values: np.ndarray) -> dict:
    """Mean, std, range and 101 quantiles of one channel, with the PSI bins (deciles) and their shares."""
    values = values[np.isfinite(values)].astype(np.float64)
    if values.size == 0:
        raise MonitorError("a channel has no finite values: cannot describe its distribution")
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, QUANTILES))
    step = (QUANTILES - 1) // PSI_BINS
    edges = np.unique(quantiles[step:-1:step])  # interior deciles; tied ones (point masses) merge into one bin
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "quantiles": quantiles.tolist(), "edges": edges.tolist(),
            "expected": _bin_shares(values, edges).tolist()}


def data_stats(inputs: "dict[str, np.ndarray] | np.ndarray", source: str = "calibration") -> dict:
    """The data_stats.json dict for a set of samples (one array per model input, batch first)."""
    inputs = {"x": inputs} if isinstance(inputs, np.ndarray) else inputs
    described = {}
    for name, array in inputs.items():
        array = np.asarray(array)
        pooled = not (array.ndim >= 2 and array.shape[1] <= MAX_CHANNELS)
        described[name] = {"shape": list(array.shape[1:]), "channel_axis": None if pooled else 1,
                           "channels": [channel_stats(c) for c in _channels(array)]}
    return {"schema": STATS_SCHEMA, "source": source, "samples": len(next(iter(inputs.values()))),
            "quantiles": QUANTILES, "psi_threshold": PSI_THRESHOLD, "inputs": described}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index: sum over bins of (actual - expected) * ln(actual / expected)."""
    expected, actual = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _named(inputs: "dict[str, np.ndarray] | np.ndarray", stats: dict) -> "dict[str, np.ndarray]":
    """Key live arrays by the stored input names; a lone array or a lone `x` stands for a single input."""
    names = list(stats["inputs"])
    if isinstance(inputs, np.ndarray) or (list(inputs) == ["x"] and len(names) == 1):
        array = inputs if isinstance(inputs, np.ndarray) else inputs["x"]
        inputs = {names[0]: array}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise MonitorError(f"no live array for input(s) {', '.join(missing)}; give one key per input name "
                           f"({', '.join(names)}), or `x` for a single input")
    return {n: np.asarray(inputs[n]) for n in names}


def _score_input(name: str, array: np.ndarray, described: dict, threshold: float) -> dict:
    if list(array.shape[1:]) != described["shape"]:
        raise MonitorError(f"input {name}: live samples have shape {list(array.shape[1:])}, the calibration data "
                           f"had {described['shape']} (give the model's own layout, batch first)")
    rows = []
    for index, (values, ref) in enumerate(zip(_channels(array), described["channels"])):
        finite = values[np.isfinite(values)]
        value = psi(np.asarray(ref["expected"]), _bin_shares(finite, np.asarray(ref["edges"])))
        rows.append({"channel": index, "psi": round(value, 6), "drift": value > threshold,
                     "mean": float(finite.mean()) if finite.size else None, "reference_mean": ref["mean"],
                     "std": float(finite.std()) if finite.size else None, "reference_std": ref["std"],
                     "non_finite": int(values.size - finite.size)})
    return {"psi": max(r["psi"] for r in rows), "channels": rows}


def score(inputs: "dict[str, np.ndarray] | np.ndarray", stats: dict, threshold: "float | None" = None) -> dict:
    """PSI per input channel of live inputs against the stored bins; drift when the worst channel's PSI > threshold."""
    if stats.get("schema") != STATS_SCHEMA:
        raise MonitorError(f"not an edgekit data_stats file (schema {stats.get('schema')!r}, expected {STATS_SCHEMA})")
    threshold = float(stats.get("psi_threshold", PSI_THRESHOLD) if threshold is None else threshold)
    named = _named(inputs, stats)
    samples = {len(a) for a in named.values()}
    if samples == {0} or len(samples) != 1:
        raise MonitorError(f"live inputs need the same, non-zero number of samples per input (got {sorted(samples)})")
    scored = {n: _score_input(n, a, stats["inputs"][n], threshold) for n, a in named.items()}
    overall = max(s["psi"] for s in scored.values())
    return {"samples": samples.pop(), "score": overall, "threshold": threshold, "drift": overall > threshold,
            "inputs": scored}


def load_stats(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise MonitorError(f"cannot read {path}: {exc}") from exc


def load_inputs(path: Path) -> "dict[str, np.ndarray]":
    try:
        if str(path).endswith(".npy"):
            return {"x": np.load(path)}
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files if k != "y"}
    except (OSError, ValueError) as exc:
        raise MonitorError(f"cannot read {path}: {exc} (give an .npz with one key per input, or `x`)") from exc


def result_lines(result: dict) -> "list[str]":
    lines = [f"input drift: PSI {result['score']:.4f} over {result['samples']} samples "
             f"(threshold {result['threshold']})"]
    for name, scored in result["inputs"].items():
        for row in scored["channels"]:
            mean = "n/a" if row["mean"] is None else f"{row['mean']:.4g}"
            lines.append(f"  {name}[{row['channel']}]: PSI {row['psi']:.4f}  mean {mean} (calibration "
                         f"{row['reference_mean']:.4g})  {'DRIFT' if row['drift'] else 'ok'}"
                         + (f"  {row['non_finite']} NaN/inf values" if row["non_finite"] else ""))
    lines.append("DRIFT: live inputs differ from the calibration data" if result["drift"] else "no drift")
    return lines


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description="Score live inputs against an edgekit bundle's calibration data.")
    parser.add_argument("inputs", type=Path, help=".npz with one array per input name (or x), or .npy")
    parser.add_argument("--stats", type=Path, default=Path(__file__).resolve().parent / "data_stats.json")
    parser.add_argument("--threshold", type=float, default=None, help=f"PSI threshold [{PSI_THRESHOLD}]")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = score(load_inputs(args.inputs), load_stats(args.stats), args.threshold)
    except (MonitorError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2)) if args.json else print("\n".join(result_lines(result)))
    return 3 if result["drift"] else 0


if __name__ == "__main__":
    sys.exit(main())
