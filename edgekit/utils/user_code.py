"""The user's own code named on the command line (`module:factory`, `module:callable`): the one thing edgekit
imports on purpose. Looked up on the import path as it is, then in the working directory after everything
installed, so a file there (a `click.py`) never stands in for an installed module."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any


def call_user(module_name: str, attr: str, call: Callable[[Any], Any]) -> Any:
    """`call(getattr(module, attr))` with the working directory last on the import path while the user's module
    is imported and called (its own imports may come later); ImportError/AttributeError as Python raises them."""
    here = os.getcwd()
    added = os.path.realpath(here) not in {os.path.realpath(p or os.curdir) for p in sys.path}
    if added:
        sys.path.append(here)
    try:
        return call(getattr(importlib.import_module(module_name), attr))
    finally:
        if added and here in sys.path:
            sys.path.remove(here)
