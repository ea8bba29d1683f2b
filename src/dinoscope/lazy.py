"""Lazy package exports: names resolved from their modules on first use, so importing a package stays
cheap (no torch for `dinoscope --help` or a cached rerun) while editors see the names in `__all__` and
the `TYPE_CHECKING` imports beside it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def exports(package: str, table: Mapping[str, str], names: list[str]) -> tuple[Callable, Callable]:
    """`__getattr__` and `__dir__` for `package`, where `table` maps each exported name to its submodule."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__():
        return names

    return __getattr__, __dir__
