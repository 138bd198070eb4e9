"""Compute device and numeric precision of a run.

A device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) is read in one place, :func:`parse_device`,
which needs no torch: the Slicer panel checks a choice with it without loading torch (and a CUDA
context) into Slicer. :func:`resolve_device` adds what only torch knows: which GPUs there are.
torch is imported where it is used, for the same reason.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Optional, Tuple

from ..geometry.volume import InputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def parse_device(name: Optional[str]) -> Tuple[str, Optional[int]]:
    """``(kind, index)`` of a device name: ``("auto", None)``, ``("cpu", None)`` or ``("cuda", N)``.

    Empty means ``auto``; ``cuda`` is ``cuda:0``. Raises :class:`InputError` for any other name.
    Nothing is asked of the hardware (see :func:`resolve_device`).
    """
    text = (name or "auto").strip().lower()
    if text in ("auto", "cpu"):
        return text, None
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not m:
        raise InputError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    return "cuda", int(m.group(1) or 0)


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` to a usable :class:`torch.device`.

    ``auto`` is the first CUDA GPU when there is one, else the CPU. Asking for
    a GPU that is not there raises :class:`InputError` saying why.
    """
    import torch

    kind, index = parse_device(name)
    if kind == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = ("this PyTorch was built without CUDA" if torch.version.cuda is None
               else "no CUDA GPU is visible (driver missing, or CUDA_VISIBLE_DEVICES hides it)")
        raise InputError(f"device {name!r} was requested but {why}; use device 'cpu' or 'auto'")
    count = torch.cuda.device_count()
    if index >= count:
        raise InputError(f"device {name!r} was requested but only {count} CUDA GPU(s) exist (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def autocast_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device``, or ``None`` for plain float32.

    ``auto``: bfloat16 on GPUs that support it (no overflow risk, unlike
    float16), else float16 on GPU, float32 on CPU (CPU autocast is rarely
    faster for 3D convolutions and loses accuracy). ``fp16`` on CPU falls back
    to float32 with a warning.
    """
    import torch

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        logger.warning("fp16 is not supported for CPU inference; running in float32")
    return None


def gpu_memory(device: torch.device) -> Optional[Tuple[int, int]]:
    """``(free, total)`` bytes of ``device``'s GPU, or ``None`` for a CPU (or when unknown)."""
    import torch

    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError:  # e.g. a device in a bad state; the caller only wants a hint
        return None
    return int(free), int(total)


def warn_if_low_memory(device: torch.device, needed_bytes: int, what: str = "inference") -> bool:
    """Log a warning when ``device``'s free GPU memory is below ``needed_bytes``; True if it warned."""
    info = gpu_memory(device)
    if info is None or info[0] >= needed_bytes:
        return False
    free, total = info
    logger.warning("%s may need ~%.1f GiB on %s but only %.1f of %.1f GiB are free",
                   what, needed_bytes / 2**30, device, free / 2**30, total / 2**30)
    return True
