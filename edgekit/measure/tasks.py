"""What each model output is, so that its drift is measured the way that output is used.

- `classify`: class scores along axis 1 (`(N, C)`, or `(N, C, H, W)` per pixel). Gated by top-1 agreement and,
  with labels, accuracy drop.
- `regress`: values that matter as values (boxes, landmarks, heatmaps, probabilities over bins). Gated by SQNR
  (`--min-sqnr`, default the target's).
- `embed`: vectors compared by direction (embeddings, features). Gated by SQNR too; per-sample cosine (min, mean)
  is reported beside it.

How edgekit decides, for an output the user did not name (`--outputs FILE.toml`) and without `--task`:
1. its name, when the model gives names (dict keys, namedtuple fields): `box`, `bbox`, `landmark`, `reg`,
   `offset`, `coord`, `heatmap`, `depth`, `mask` -> regress; `emb`, `feat` -> embed; `logit`, `score`, `prob`,
   `cls`, `class` -> classify when it has the shape of class scores;
2. its shape: `(1, C)` with C >= 2 is class scores when it is the only such output (or, with labels, the only one
   whose C covers every label); with several candidates and nothing to tell them apart, none is taken for class
   scores and a warning asks the user to say which (top-1 agreement on box regression fails good models);
3. everything else: regress.
"""

from __future__ import annotations

import re

import numpy as np

from edgekit.errors import ConfigError
from edgekit.measure.drift import is_scores

HINTS = (  # first match wins, on the lowercased output name split at non-letters
    ("regress", re.compile(r"box|bbox|landmark|reg|offset|coord|heatmap|depth|mask|delta|keypoint")),
    ("embed", re.compile(r"emb|feat|vector|hidden")),
    ("classify", re.compile(r"logit|score|prob|cls|class|pred")),
)


def output_tasks(shapes: dict[str, tuple], labels: np.ndarray | None, task: str | None = None,
                 per_output: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """{output name: task} for every output, and the warnings to show (an ambiguous choice, unknown names)."""
    per_output = dict(per_output or {})
    unknown = sorted(set(per_output) - set(shapes))
    if unknown:
        raise ConfigError(f"--outputs names {', '.join(unknown)}, which the model does not have",
                          hint=f"the model's outputs: {', '.join(shapes)}")
    tasks: dict[str, str] = {}
    for name in shapes:
        if name in per_output:
            tasks[name] = per_output[name]
        elif task is not None:
            tasks[name] = task
    bad = [n for n, t in tasks.items() if t == "classify" and len(shapes[n]) < 2]
    if bad:
        raise ConfigError(f"output {bad[0]} has shape {tuple(shapes[bad[0]])}: class scores need an axis 1",
                          hint="say regress or embed for it")
    warnings: list[str] = []
    rest = [n for n in shapes if n not in tasks]
    for name in rest:
        hinted = _hinted(name)
        if hinted is not None and (hinted != "classify" or _scores_shape(shapes[name], labels)):
            tasks[name] = hinted
    candidates = [n for n in rest if n not in tasks and _scores_shape(shapes[n], labels)]
    if labels is not None and len(candidates) > 1:
        covering = [n for n in candidates if shapes[n][1] > int(np.max(labels))]
        candidates = covering if len(covering) == 1 else candidates
    if len(candidates) == 1 and not any(t == "classify" for t in tasks.values()):
        tasks[candidates[0]] = "classify"
    elif len(candidates) > 1:
        warnings.append(f"outputs {', '.join(candidates)} could each be class scores: none is gated by top-1 "
                        "agreement, all by SQNR; say which with --outputs FILE.toml (name = \"classify\")")
    for name in shapes:
        tasks.setdefault(name, "regress")
    return {name: tasks[name] for name in shapes}, warnings


def _scores_shape(shape: tuple, labels: np.ndarray | None = None) -> bool:
    return is_scores(shape, () if labels is None else tuple(np.shape(labels)[1:]))


def _hinted(name: str) -> str | None:
    lowered = name.lower()
    if re.fullmatch(r"output(_\d+)?", lowered):
        return None
    for task, pattern in HINTS:
        if pattern.search(lowered):
            return task
    return None


def scores_output(tasks: dict[str, str]) -> str | None:
    """The first classify output: accuracy against labels is taken on it."""
    return next((name for name, task in tasks.items() if task == "classify"), None)
