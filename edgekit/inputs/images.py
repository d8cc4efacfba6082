"""A folder of images turned into model input with a recipe (calibration/*.toml: size, mean, std, layout, colour)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_SIDE = 16384  # pixels a recipe may resize to, per side


@dataclass(frozen=True)
class Recipe:
    """How an image file becomes a model input: resize, scale to [0, 1], (x - mean) / std, layout."""

    size: tuple[int, int]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    colour: str = "rgb"
    scale: float = 255.0

    def __post_init__(self) -> None:
        size = self.size
        if not (isinstance(size, tuple) and len(size) == 2 and all(
                type(v) is int and 0 < v <= MAX_SIDE for v in size)):
            raise ConfigError(f"recipe size = {list(size) if isinstance(size, tuple) else size!r} is not [height, "
                              f"width] in pixels (two integers from 1 to {MAX_SIDE})", hint="e.g. size = [224, 224]")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if not isinstance(values, tuple) or not values or not all(
                    type(v) in (int, float) and math.isfinite(v) for v in values):
                raise ConfigError(f"recipe {key} = {values!r} is not a list of numbers", hint=f"e.g. {key} = [0.5]")
        if type(self.scale) not in (int, float) or not math.isfinite(self.scale) or self.scale <= 0:
            raise ConfigError(f"recipe scale = {self.scale!r} is not a positive number", hint="e.g. scale = 255.0")
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"recipe layout = {self.layout!r} is not NCHW or NHWC", hint="PyTorch models use NCHW")
        if self.colour not in ("rgb", "bgr", "grey"):
            raise ConfigError(f"recipe colour = {self.colour!r} is not rgb, bgr or grey", hint="use rgb or grey")
        channels = 1 if self.colour == "grey" else 3
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, channels):
                raise ConfigError(f"recipe {key} has {len(getattr(self, key))} values for {channels} channel(s)",
                                  hint=f"give 1 or {channels} values")
        if min(self.std) <= 0:
            raise ConfigError("recipe std values must be positive", hint="e.g. std = [0.229, 0.224, 0.225]")

    @classmethod
    def from_toml(cls, path: Path | str) -> Recipe:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
            raise ConfigError(f"cannot read recipe {path}: {exc}", hint="see calibration/*.toml") from exc
        known = {f.name for f in dataclasses.fields(cls)}
        if set(raw) - known:
            raise ConfigError(f"recipe {path}: unknown keys {', '.join(sorted(set(raw) - known))}",
                              hint=f"allowed keys: {', '.join(sorted(known))}")
        tuples = {k: tuple(v) for k, v in raw.items() if isinstance(v, list)}
        return cls(**{**raw, **tuples})


def load_image_folder(folder: Path, recipe: Path | str | Recipe | None
                      ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """All images under `folder`; images in class sub-folders get labels (sorted sub-folder names)."""
    if recipe is None:
        raise DataError(f"{folder} is a folder of images but no recipe was given",
                        hint="add --recipe calibration/NAME.toml (size, mean, std, layout, colour)")
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_toml(recipe)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder} holds no images", hint=f"put {', '.join(IMAGE_SUFFIXES)} files in it")
    classes = sorted({p.parent.name for p in files if p.parent != folder})
    labels = np.array([classes.index(p.parent.name) for p in files]) if classes and all(
        p.parent != folder for p in files) else None
    return {"x": np.stack([_load_image(p, recipe) for p in files])}, labels


def _load_image(path: Path, recipe: Recipe) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if recipe.colour == "grey" else "RGB")
            image = image.resize((recipe.size[1], recipe.size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} is refused: {exc}", hint="resize it below Pillow's limit of "
                        f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels, or remove it") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}", hint="remove or replace the broken file") from exc
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    pixels = pixels[:, :, ::-1] if recipe.colour == "bgr" else pixels
    pixels = (pixels / recipe.scale - np.asarray(recipe.mean, np.float32)) / np.asarray(recipe.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1) if recipe.layout == "NCHW" else pixels, dtype=np.float32)
