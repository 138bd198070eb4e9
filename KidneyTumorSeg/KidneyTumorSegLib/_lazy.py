"""Names a package hands out but loads only on first use, so importing the package stays cheap."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_names(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``package``: ``names`` maps each name to the submodule,
    relative to ``package``, that defines it. A name is imported when first asked for, then kept."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{names[name]}", package), name)
        setattr(sys.modules[package], name, value)  # looked up once
        return value

    return __getattr__
