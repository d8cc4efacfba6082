"""Frozen configuration validated at the door: targets (target.py, one TOML file each), the options of a build in
groups (options.py), and the checks both use (checks.py)."""
