"""`.pt2` archives are data: loaded only through torch's archive format with every unpickling weights-only.

torch.export.load falls back to a full unpickle in several places: an old-format archive (torch < 2.7), a weight
or constant saved with `use_pickle`, custom and opaque objects, and sample inputs that fail the weights-only load.
Each of these can run code from the file. edgekit refuses them before torch reads the file (exit 2, saying why), and
loads the rest with TORCH_FORCE_WEIGHTS_ONLY_LOAD set, so any unpickling that remains is weights-only.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit.errors import ModelError, first_line
from edgekit.utils.quiet import quiet_loggers

SAVE_HINT = "save it with torch.export.save(torch.export.export(model, example), path) (torch >= 2.7)"
UNSAFE_HINT = ("edgekit never unpickles a .pt2 (it could run code); re-save it with torch.export.save from plain "
               "tensors, or pass the model as TorchScript (.pt) or module:factory if you trust it (docs/security.md)")
CONFIG_SUFFIXES = ("_weights_config.json", "_constants_config.json")
SAFE_PAYLOADS = ("weight_", "tensor_")  # raw tensor bytes; custom_obj_* / opaque_obj_* are pickles


def load_exported_program(path: Path) -> Any:
    """The ExportedProgram in `path`, or ModelError (exit 2) naming what makes the file unsafe or unreadable."""
    import torch

    check_archive(path)
    try:
        with _weights_only(), quiet_loggers(["torch.export"], logging.CRITICAL):  # torch logs a traceback first
            return torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a damaged archive
        raise ModelError(f"{path} is not a readable ExportedProgram: {first_line(exc)}", hint=SAVE_HINT) from None


METADATA_FILES = ("metadata.json", "config.txt")  # extra files holding a JSON object (Ultralytics: config.txt)


def metadata_from_files(files: dict) -> dict[str, str] | None:
    """The first extra file that holds a JSON object, its values as text; read as data, never executed."""
    for name in METADATA_FILES:
        raw = files.get(name)
        if not raw or len(raw) > 1 << 20:
            continue
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(value, dict):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    return None


def archive_metadata(path: Path) -> dict[str, str] | None:
    """The metadata an exporter stored with torch.export.save(..., extra_files=...) (metadata.json or
    Ultralytics' config.txt), read as JSON text."""
    with zipfile.ZipFile(path) as archive:
        found = {PurePosixPath(n).name: archive.read(n) for n in archive.namelist()
                 if PurePosixPath(n).name in METADATA_FILES and "extra" in PurePosixPath(n).parts
                 and archive.getinfo(n).file_size <= 1 << 20}
    return metadata_from_files(found)


def check_archive(path: Path) -> None:
    """Refuse, before torch opens it, anything that is not a current-format archive of plain tensors."""
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a .pt2 archive (not a zip file)", hint=SAVE_HINT)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            _refuse_foreign(path, names)
            for name in names:
                if name.endswith(CONFIG_SUFFIXES):
                    _check_payloads(path, name, json.loads(archive.read(name)))
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as exc:
        raise ModelError(f"{path} is a damaged .pt2 archive: {first_line(exc)}", hint=SAVE_HINT) from None


def _refuse_foreign(path: Path, names: list[str]) -> None:
    leaves = {PurePosixPath(n).name for n in names}
    folders = {part for n in names for part in PurePosixPath(n).parts[:-1]}
    if "code" in folders and ("data.pkl" in leaves or "constants.pkl" in leaves):
        raise ModelError(f"{path} is a TorchScript file, not a torch.export .pt2 archive",
                         hint="name it .pt (TorchScript is code that edgekit runs as trusted; see docs/security.md)")
    if "archive_version" not in leaves:
        old = "serialized_exported_program.json" in leaves
        raise ModelError(f"{path} is {'an old-format (torch < 2.7)' if old else 'not a'} torch.export archive"
                         + (": its weights would be unpickled" if old else ""), hint=UNSAFE_HINT if old else SAVE_HINT)
    if "aotinductor" in folders or any(n.endswith((".so", ".dll", ".dylib")) for n in leaves):
        raise ModelError(f"{path} holds compiled code (AOTInductor)", hint=UNSAFE_HINT)


def _check_payloads(path: Path, config_name: str, config: object) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelError(f"{path}: {config_name} is not a payload config", hint=SAVE_HINT)
    for fqn, meta in entries.items():
        pickled = not isinstance(meta, dict) or meta.get("use_pickle") is not False \
            or not str(meta.get("path_name", "")).startswith(SAFE_PAYLOADS)
        if pickled:
            raise ModelError(f"{path}: {fqn} is stored as a pickle ({config_name})", hint=UNSAFE_HINT)


def _weights_only():
    """Every torch.load inside is weights-only, even where torch asks for weights_only=False."""
    from edgekit.utils.environ import temporary_environ

    return temporary_environ({"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": None})


