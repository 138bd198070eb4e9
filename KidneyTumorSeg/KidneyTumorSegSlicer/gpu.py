"""Whether a device choice would use a GPU that is missing or has too little memory.

The driver is asked through ``nvidia-smi`` in a short child process, never
through torch: importing torch and initialising CUDA inside Slicer would slow
the panel down and keep a CUDA context (hundreds of MB of GPU memory) that the
segmentation process then lacks.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

from slicer.i18n import tr as _

MIN_GPU_MEMORY_GIB = 4.0  # the cascade's GPU target is 3 GB, plus the CUDA context


def parseNvidiaSmi(text: str) -> List[Tuple[str, float]]:
    """``(name, GiB)`` per GPU from ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        name, sep, mib = line.rpartition(",")
        if not sep:
            continue
        try:
            gpus.append((name.strip(), float(mib) / 1024.0))
        except ValueError:
            continue
    return gpus


def _queryGpus() -> Optional[List[Tuple[str, float]]]:
    """The GPUs the NVIDIA driver reports, or None when there is no driver (no nvidia-smi)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:  # a broken driver must not break the panel
        logging.warning("KidneyTumorSeg: GPU query failed: %s", exc)
        return []
    return parseNvidiaSmi(out.stdout) if out.returncode == 0 else []


def gpuMemoryWarning(device: str, minGib: float = MIN_GPU_MEMORY_GIB, gpus=None) -> str:
    """A warning for ``device`` ("auto", "cpu", "cuda" or "cuda:N", read by the core's ``device.parse_device``;
    "auto" uses the first GPU) or empty.

    ``gpus`` is the driver's list (default: asked now, except for the CPU); uncached, see
    :func:`cachedGpuMemoryWarning`.
    """
    from KidneyTumorSegLib.engine.device import parse_device
    from KidneyTumorSegLib.geometry.volume import InputError

    try:
        kind, index = parse_device(device)
    except InputError as exc:
        return str(exc)
    if kind == "cpu":
        return ""
    gpus = _queryGpus() if gpus is None else gpus
    if not gpus:
        if kind == "cuda":
            return _("No NVIDIA GPU was found: choose Auto or CPU.")
        return ""
    if (index or 0) >= len(gpus):
        return _("There is no GPU {device}: the NVIDIA driver lists {n}.").format(device=device, n=len(gpus))
    name, gib = gpus[index or 0]
    if gib < minGib:
        return _("The GPU ({name}) has {gib:.1f} GiB of memory; at least {need:.0f} GiB are needed. "
                 "Choose CPU (slower) to avoid running out of memory.").format(name=name, gib=gib, need=minGib)
    return ""


_warnings: Dict[str, str] = {}


def cachedGpuMemoryWarning(device: str) -> str:
    """:func:`gpuMemoryWarning`, asking the driver once per device choice while Slicer runs."""
    if device not in _warnings:
        _warnings[device] = gpuMemoryWarning(device)
    return _warnings[device]
