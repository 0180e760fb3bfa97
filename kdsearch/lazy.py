"""Lazy package attributes: a package names what it offers without importing torch for it.

``import kdsearch.cli`` must stay fast (``--help``, shell completion), so packages whose
modules need torch, onnxruntime or Optuna resolve those names on first use.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<where[name]>`` when ``name`` is first read.

    Example (in a package's ``__init__.py``)::

        __getattr__ = lazy_attributes(__name__, {"export_model": "stage"})
    """

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
