"""`edgekit diff`: what changed between two bundles (lineage, config, drift, size, latency), and a release gate on it.

NEW regresses when its accuracy drop grew, its top-1 agreement (or a detector's recall or precision against its float
model) fell or its device model grew beyond the thresholds, or when it fails its own drift thresholds while OLD passed
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.bundle.report import passed
from edgekit.errors import ConfigError

SIZE_KEYS = ("device_bytes", "device_gzip_bytes", "float_device_bytes")
DRIFT_KEYS = ("samples", "reference_accuracy", "device_accuracy", "accuracy_drop", "top1_agreement")


@dataclass(frozen=True)
class DiffThresholds:
    """How much worse NEW may be: drop in percentage points, agreement and size as fractions (None: not gated)."""

    max_drop_increase: float = 0.5
    max_agreement_decrease: float | None = 0.01
    max_size_increase: float | None = None

    def __post_init__(self) -> None:
        for name, value in self.to_dict().items():
            if value is not None and value < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be zero or more, got {value}",
                                  hint="give how much worse NEW may be, e.g. --max-drop-increase 0.5")

    def to_dict(self) -> dict:
        return {"max_drop_increase": self.max_drop_increase, "max_agreement_decrease": self.max_agreement_decrease,
                "max_size_increase": self.max_size_increase}


def read_bundle(folder: Path) -> tuple[dict, dict]:
    """(report, manifest) of a verified bundle: exit 2 for anything that is not a well-formed edgekit bundle, exit 3
    for one whose files differ from its manifest (a diff of edited numbers would be a lie)."""
    from edgekit.bundle.check import open_bundle

    opened = open_bundle(folder)
    return opened.report, opened.manifest


def _get(data: object, *keys: str) -> object:
    """data[k1][k2]...; None where a level is missing or not an object (manifests are someone else's data)."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def change(old: object, new: object) -> dict:
    """Old and new value; for numbers also the difference new - old."""
    row = {"old": old, "new": new, "changed": old != new}
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        row["delta"] = new - old
    return row


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, object] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _config_changes(old: dict | None, new: dict | None) -> list[dict]:
    old_flat, new_flat = flatten(old or {}), flatten(new or {})
    return [{"key": key, "old": old_flat.get(key), "new": new_flat.get(key)}
            for key in sorted(set(old_flat) | set(new_flat)) if old_flat.get(key) != new_flat.get(key)]


def _lineage(old: dict, new: dict) -> dict:
    versions_old, versions_new = _get(old, "versions"), _get(new, "versions")
    versions_old = versions_old if isinstance(versions_old, dict) else {}
    versions_new = versions_new if isinstance(versions_new, dict) else {}
    return {"model_sha256": change(_get(old, "model", "sha256"), _get(new, "model", "sha256")),
            "calibration_sha256": change(_get(old, "data", "calibration", "sha256"),
                                         _get(new, "data", "calibration", "sha256")),
            "eval_sha256": change(_get(old, "data", "eval", "sha256"), _get(new, "data", "eval", "sha256")),
            "git_sha": change(old.get("git_sha"), new.get("git_sha")),
            "versions": {k: change(versions_old.get(k), versions_new.get(k))
                         for k in sorted(set(versions_old) | set(versions_new))
                         if versions_old.get(k) != versions_new.get(k)}}


def _drift(old: dict, new: dict) -> dict:
    block = {key: change(old.get(key), new.get(key)) for key in DRIFT_KEYS}
    new_outputs = {row["name"]: row for row in new.get("outputs") or []}
    block["outputs"] = [_output_change(row, new_outputs[row["name"]])
                        for row in old.get("outputs") or [] if row["name"] in new_outputs]
    return block


def _output_change(old: dict, new: dict) -> dict:
    """SQNR of the output (and of its worst part), and a detector's recall, precision and mAP, old -> new."""
    row = {"name": old["name"], "sqnr_db": change(old["sqnr_db"], new["sqnr_db"]),
           "worst_part_sqnr_db": change(_worst_part(old), _worst_part(new))}
    old_found, new_found = old.get("detection") or {}, new.get("detection") or {}
    for key, count in (("recall", "float_detections"), ("precision", "device_detections")):
        row[key] = change(_rate(old_found, key, count), _rate(new_found, key, count))
    for key in ("map50", "map50_95"):
        row[key] = change(_get(old_found, key, "device"), _get(new_found, key, "device"))
    return row


def _rate(found: dict, key: str, count: str) -> float | None:
    """Recall or precision, None when it had nothing to count (no detections: vacuously 1.0 in the report)."""
    value = found.get(key)
    return value if isinstance(value, (int, float)) and found.get(count) else None


def _worst_part(row: dict) -> float | None:
    parts = row.get("parts") if isinstance(row.get("parts"), list) else None
    values = [p.get("sqnr_db") for p in parts or [] if isinstance(p, dict)]
    values = [v for v in values if isinstance(v, (int, float))]
    return min(values) if values else None


def diff_bundles(old: Path, new: Path, thresholds: DiffThresholds | None = None) -> dict:
    """Compare bundle NEW with bundle OLD; `passed` is False when NEW regresses beyond `thresholds`."""
    thresholds = thresholds or DiffThresholds()
    (old_report, old_manifest), (new_report, new_manifest) = read_bundle(old), read_bundle(new)
    result = {
        "old": str(old), "new": str(new), "target": change(old_report["target"], new_report["target"]),
        "lineage": _lineage(old_manifest, new_manifest),
        "config": _config_changes(_get(old_manifest, "config"), _get(new_manifest, "config")),
        "drift": _drift(old_report["drift"], new_report["drift"]),
        "size": {k: change(old_report["size"].get(k), new_report["size"].get(k)) for k in SIZE_KEYS},
        "latency_ms": {k: change(old_report["latency_ms"].get(k), new_report["latency_ms"].get(k))
                       for k in sorted(set(old_report["latency_ms"]) | set(new_report["latency_ms"]))},
        "verdict": change(passed(old_report), passed(new_report)),
        "thresholds": thresholds.to_dict(),
    }
    result["regressions"] = regressions(result, thresholds)
    result["notes"] = _notes(result)
    result["passed"] = not result["regressions"]
    return result


def regressions(result: dict, thresholds: DiffThresholds) -> list[str]:
    """Plain sentences, one per threshold NEW breaks."""
    drift, found = result["drift"], []
    drop, agreement, size = drift["accuracy_drop"], drift["top1_agreement"], result["size"]["device_bytes"]
    if drop.get("delta") is not None and drop["delta"] > thresholds.max_drop_increase:
        found.append(f"accuracy drop grew by {drop['delta']:.2f} points ({drop['old']:.2f} -> {drop['new']:.2f}) "
                     f"> max increase {thresholds.max_drop_increase} points")
    limit = thresholds.max_agreement_decrease
    if limit is not None and agreement.get("delta") is not None and -agreement["delta"] > limit:
        found.append(f"top-1 agreement fell by {-agreement['delta']:.4f} ({agreement['old']:.4f} -> "
                     f"{agreement['new']:.4f}) > max decrease {limit}")
    limit = thresholds.max_size_increase
    if limit is not None and size.get("delta") is not None and size["old"] and size["delta"] / size["old"] > limit:
        found.append(f"device model grew by {size['delta'] / size['old']:.1%} ({size['old']:,} -> {size['new']:,} "
                     f"bytes) > max increase {limit:.1%}")
    limit = thresholds.max_agreement_decrease
    for row in drift["outputs"]:
        for key in ("recall", "precision"):
            delta = row[key].get("delta")
            if limit is not None and delta is not None and -delta > limit:
                found.append(f"detection {key} vs float of {row['name']} fell by {-delta:.4f} ({row[key]['old']:.4f} "
                             f"-> {row[key]['new']:.4f}) > max decrease {limit}")
    if result["verdict"]["old"] and not result["verdict"]["new"]:
        found.append("NEW fails its own drift thresholds (report.json drift.passed false) while OLD passed")
    return found


def _notes(result: dict) -> list[str]:
    notes, lineage = [], result["lineage"]
    if result["target"]["changed"]:
        notes.append(f"the bundles are for different targets ({result['target']['old']} vs {result['target']['new']})")
    if lineage["eval_sha256"]["changed"]:
        notes.append("drift was measured on different eval data: the numbers are not directly comparable")
    if result["drift"]["accuracy_drop"]["old"] is not None and result["drift"]["accuracy_drop"]["new"] is None:
        notes.append("NEW has no accuracy drop (no labels in its eval data): the drop is not compared")
    if not lineage["model_sha256"]["changed"] and not lineage["calibration_sha256"]["changed"] and \
            not result["config"]:
        notes.append("same model, calibration data and config")
    return notes


def _pair(row: dict, spec: str, unit: str = "") -> str:
    def show(value: object) -> str:
        return "n/a" if value is None else format(value, spec)

    delta = "" if row.get("delta") is None else format(row["delta"], "+" + spec)
    delta = f" ({delta})" if delta.strip("+-0.,") else ""  # no "(+0.000)" for a change that rounds to nothing
    return f"{show(row['old'])} -> {show(row['new'])}{unit}{delta}"


def diff_lines(result: dict) -> list[str]:
    """The comparison as plain console lines, verdict last."""
    lineage, drift, t = result["lineage"], result["drift"], result["thresholds"]
    lines = [f"{'old':<14}{result['old']}", f"{'new':<14}{result['new']}"]
    for key, label in (("model_sha256", "model"), ("calibration_sha256", "calibration"), ("eval_sha256", "eval data")):
        row = lineage[key]
        lines.append(f"{label:<14}" + (f"changed {str(row['old'])[:12]} -> {str(row['new'])[:12]}"
                                        if row["changed"] else "unchanged"))
    lines.append(f"{'config':<14}" + ("; ".join(f"{c['key']} {c['old']} -> {c['new']}" for c in result["config"])
                                       or "unchanged"))
    lines.append(f"{'accuracy drop':<14}{_pair(drift['accuracy_drop'], '.2f', ' points')} "
                 f"(max increase {t['max_drop_increase']})")
    lines.append(f"{'agreement':<14}{_pair(drift['top1_agreement'], '.4f')} "
                 f"(max decrease {t['max_agreement_decrease']})")
    lines += [f"{'SQNR ' + row['name']:<14}{_pair(row['sqnr_db'], '.1f', ' dB')}" for row in drift["outputs"]]
    lines += [f"{'worst part':<14}{_pair(row['worst_part_sqnr_db'], '.1f', ' dB')} ({row['name']})"
              for row in drift["outputs"] if row["worst_part_sqnr_db"]["new"] is not None]
    for row in drift["outputs"]:
        for key, label, spec in (("recall", "recall", ".3f"), ("precision", "precision", ".3f"),
                                 ("map50", "mAP@0.5", ".2f"), ("map50_95", "mAP@.5:.95", ".2f")):
            if row[key]["new"] is not None or row[key]["old"] is not None:
                lines.append(f"{label:<14}{_pair(row[key], spec)} ({row['name']})")
    lines.append(f"{'size':<14}{_pair(result['size']['device_bytes'], ',', ' B')}")
    lines += [f"{'latency ' + k:<14}{_pair(row, '.3f', ' ms')}" for k, row in result["latency_ms"].items()]
    lines += [f"note          {n}" for n in result["notes"]]
    lines += [f"regression    {r}" for r in result["regressions"]]
    lines.append("PASSED: no regression" if result["passed"] else "FAILED: NEW regresses beyond the thresholds")
    return lines
