"""Whether a device choice would use a GPU that is missing or has too little memory."""
from __future__ import annotations

import logging

from slicer.i18n import tr as _

MIN_GPU_MEMORY_GIB = 4.0  # the cascade's GPU target is 3 GB, plus the CUDA context


def gpuMemoryWarning(device: str, minGib: float = MIN_GPU_MEMORY_GIB) -> str:
    """A warning for ``device`` ("auto" or "cuda"; CUDA device 0) or empty; needs torch installed.

    Uncached: it queries the driver, so callers keep the answer per device.
    """
    try:
        import torch

        if not torch.cuda.is_available():
            if device == "cuda":
                return _("No CUDA GPU is available to PyTorch: choose Auto or CPU.")
            return ""
        props = torch.cuda.get_device_properties(0)
    except Exception as exc:  # a broken driver must not break the panel
        logging.warning("KidneyTumorSeg: GPU query failed: %s", exc)
        return ""
    gib = props.total_memory / 2**30
    if gib < minGib:
        return _("The GPU ({name}) has {gib:.1f} GiB of memory; at least {need:.0f} GiB are needed. "
                 "Choose CPU (slower) to avoid running out of memory.").format(
                     name=props.name, gib=gib, need=minGib)
    return ""
