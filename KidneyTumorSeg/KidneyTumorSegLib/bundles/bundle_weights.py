"""A model bundle's weight files, judged from their safetensors header alone (no tensor is loaded).

A safetensors file is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`` and the
tensors' bytes. :func:`safetensors_problem` says why a file is not one (a
pickle, a ``torch.save`` zip, a header length that does not fit the file, a
header that is not a JSON object), so such a file is named and never loaded.
:func:`tensors_problem` compares a header with the tensors of the network a
stage describes, built on PyTorch's ``meta`` device (shapes only, no memory,
:func:`network_tensors`): a manifest whose network does not match its weights
(1024 channels for a 4-channel model) is refused before the network is
allocated, and a weight file of integers or booleans is not copied into a
network as if it were weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .bundle_checks import show

SAFETENSORS_MAX_HEADER = 100_000_000  # safetensors' own limit
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
INT_DTYPES = ("I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64")
# a network's tensors by name: (shape, floating point)
Tensors = Dict[str, Tuple[Tuple[int, ...], bool]]


def read_header(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The safetensors header of the file at ``path`` and None, or None and why the file is not safetensors.

    A safetensors file starts with its header's length (8 bytes, little-endian) and the header, a JSON
    object. That is tried first: a length whose low byte is 0x80 makes the file start like a pickle.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            raw = f.read(n) if 2 <= n <= min(size - 8, SAFETENSORS_MAX_HEADER) else b""
    except OSError as exc:
        return None, f"it cannot be read: {exc.strerror or exc}"
    header = None
    if raw[:1] == b"{":
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            header = None
    if isinstance(header, dict):
        return header, None
    if head[:1] == b"\x80":
        return None, "a Python pickle, which is never loaded"
    if head[:4] == b"PK\x03\x04":
        return None, "a zip archive such as a torch.save checkpoint, which is never loaded"
    if len(head) < 8:
        return None, "shorter than a safetensors header"
    if not raw:
        return None, f"its header length {n} does not fit the file's {size} bytes"
    return None, "its header is not a JSON object"


def safetensors_problem(path: Path) -> Optional[str]:
    """Why the file at ``path`` is not a safetensors file, from its header alone (nothing is loaded), or None."""
    return read_header(path)[1]


def _no_init_mode():
    """A torch function mode that skips the in-place random initialisation of weights: on the meta device it
    does nothing but costs (its first use imports torch's compiler, seconds)."""
    import torch
    from torch.overrides import TorchFunctionMode

    skipped = {getattr(torch.Tensor, n) for n in ("normal_", "uniform_", "zero_", "fill_", "trunc_normal_")
               if hasattr(torch.Tensor, n)}

    class NoInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in skipped:
                return args[0]
            return func(*args, **(kwargs or {}))

    return NoInit()


def network_tensors(cfg: Any) -> Tuple[Optional[Tensors], Optional[str]]:
    """The tensors (parameters and buffers) of the network ``cfg`` describes, built on the ``meta`` device
    (nothing allocated), and None; or None and why the network cannot be built."""
    import torch

    from ..engine.networks import build_network

    try:
        with torch.device("meta"), _no_init_mode():
            net = build_network(cfg)
    except (ValueError, TypeError, KeyError, IndexError, AssertionError, RuntimeError) as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        return None, lines[0][:200]
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in net.state_dict().items()}, None


def _entry_problem(name: str, entry: Any, shape: Tuple[int, ...], floating: bool) -> Optional[str]:
    where = f"tensor {show(name, 50)}"
    if not isinstance(entry, dict):
        return f"{where}: its header entry is {show(entry)}, not an object"
    if entry.get("shape") != list(shape):
        return f"{where} has shape {show(entry.get('shape'))}, the network's is {list(shape)}"
    kinds = FLOAT_DTYPES if floating else INT_DTYPES
    if entry.get("dtype") not in kinds:
        return f"{where} is of dtype {show(entry.get('dtype'))}, not {'floating point' if floating else 'integer'}"
    return None


def tensors_problem(path: Path, expected: Tensors) -> Optional[str]:
    """What in the header of weight file ``path`` does not match a network of tensors ``expected``
    (names, shapes, floating point or not), or None."""
    header, problem = read_header(path)
    if header is None:
        return problem
    names = set(header) - {"__metadata__"}
    for which, extra in (("the network has no", sorted(names - set(expected))),
                         ("the file has no", sorted(set(expected) - names))):
        if extra:
            more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
            return f"{which} tensor {show(extra[0], 50)}{more}"
    for name in sorted(expected):
        problem = _entry_problem(name, header[name], *expected[name])
        if problem:
            return problem
    return None
