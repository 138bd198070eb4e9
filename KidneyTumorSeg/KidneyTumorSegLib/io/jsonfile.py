"""JSON in one place: values made JSON-able, JSON files written atomically and read with a clear message.

Reports, manifests, caches and phantom descriptions carry numpy scalars and
arrays, tuples, sets and paths; :func:`jsonable` turns them into plain JSON
values. Strict JSON has no NaN, so a NaN or infinity ("not measured")
becomes ``null``. :func:`write_json` writes through :mod:`atomic`: the file
appears whole or not at all, and an existing one is replaced only with
``overwrite=True``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Union

import numpy as np

from .atomic import atomic_write_text

PathLike = Union[str, Path]


def jsonable(x: Any) -> Any:
    """``x`` as plain JSON values: dict keys as strings, sequences and sets as lists (sets sorted),
    numpy values as Python ones, NaN/inf as None, paths as strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in (sorted(x) if isinstance(x, (set, frozenset)) else x)]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def read_json(path: PathLike, what: str = "file") -> Any:
    """The JSON document in ``path``; ``FileNotFoundError("<what> not found: <path>")`` when it is missing,
    ``ValueError("<path>: not valid JSON: <why>")`` when it does not parse."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None


def json_text(obj: Any, indent: int = 2, sort_keys: bool = False) -> str:
    """``obj`` (through :func:`jsonable`) as indented UTF-8 JSON text with a final newline."""
    return json.dumps(jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False, sort_keys=sort_keys) + "\n"


def write_json(obj: Any, path: PathLike, overwrite: bool = False, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (see :func:`json_text`) atomically; refuses an existing file unless ``overwrite``."""
    return atomic_write_text(path, json_text(obj, indent, sort_keys), overwrite=overwrite)
