"""Registers every transfer method: imports each method package's `params` module, which registers its entries.

The `clsuite.registry` entry point (pyproject.toml) names this module, so the platform finds the methods without
naming them, and a new method is a new folder `transfer/<method>/` with a `params.py`; nothing else changes.
The text datasets the methods read register here too, for ``clsuite data list``: the shared ones
(`transfer.common.datasets`) and each method's own (a package's optional ``datasets.py``).
Only light modules are imported here (pydantic only), so validating a grid imports no torch.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import transfer

SHARED = {"common"}         # packages of helpers several methods use, not methods

importlib.import_module(f"{transfer.__name__}.common.datasets")
for _package in pkgutil.iter_modules(transfer.__path__):
    if _package.ispkg and _package.name not in SHARED:
        importlib.import_module(f"{transfer.__name__}.{_package.name}.params")
        if importlib.util.find_spec(f"{transfer.__name__}.{_package.name}.datasets") is not None:
            importlib.import_module(f"{transfer.__name__}.{_package.name}.datasets")
