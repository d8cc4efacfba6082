"""Validation helpers every config class uses: a choice among names, a fraction, scoping rules and patterns."""

from __future__ import annotations

import re

from edgekit.errors import ConfigError


def choice(field_name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{field_name} = {value!r} is not one of {', '.join(allowed)}",
                          hint=f"use one of: {', '.join(allowed)}")
    return value


def fraction(field_name: str, value: float, *, open_low: bool = False) -> float:
    value = float(value)
    if not (0.0 < value <= 1.0 if open_low else 0.0 <= value <= 1.0):
        raise ConfigError(f"{field_name} = {value} is outside [0, 1]",
                          hint="ratios are fractions: write 0.5 for 50 %")
    return value



def rules(field_name: str, raw, check) -> tuple[tuple[str, object], ...]:
    """Scoping rules {pattern: value} (or pairs) as sorted pairs; value None = leave those modules alone."""
    pairs = raw.items() if isinstance(raw, dict) else raw
    try:
        rules = tuple(sorted((str(key), None if value is None else check(value)) for key, value in pairs))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field_name} must map module types or names to values: {exc}",
                          hint=f"e.g. {field_name}={{'Linear': ...}}; None leaves the matched modules alone") from exc
    for name, _ in rules:
        pattern(field_name, name)
    return rules


def pattern(field_name: str, pattern: str) -> str:
    """Module name patterns are fnmatch globs ("features.*"), or regular expressions written "re:<regex>"."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ConfigError(f"{field_name}: {pattern!r} is not a valid regular expression: {exc}",
                              hint="write a glob like 'features.*' or a valid 're:<regex>'") from exc
    return pattern


def patterns(field_name: str, raw) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = (raw,)
    return tuple(pattern(field_name, str(p)) for p in raw)
