"""How busy a GPU is during ``bench_training.py``'s timed windows: NVML's utilisation, sampled in a thread."""
from __future__ import annotations

import threading
import time
from typing import List, Optional

import torch


class UtilSampler:
    """Samples ``torch.cuda.utilization`` (NVML, percent) every ``period`` s while ``active`` is set."""

    def __init__(self, dev: torch.device, period: float = 0.05):
        self.dev, self.period = dev, period
        self.values: List[float] = []
        self.active = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def available(dev: torch.device) -> Optional[str]:
        """None when NVML answers, else why not."""
        if dev.type != "cuda":
            return "not a CUDA device"
        try:
            torch.cuda.utilization(dev)
            return None
        except Exception as exc:  # ModuleNotFoundError (no pynvml), NVML errors in containers, ...
            return f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.active.is_set():
                try:
                    self.values.append(float(torch.cuda.utilization(self.dev)))
                except Exception:  # a failed read loses one sample, not the benchmark
                    pass
            time.sleep(self.period)

    def __enter__(self) -> "UtilSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def take(self) -> Optional[float]:
        v, self.values = self.values, []
        return sum(v) / len(v) / 100.0 if v else None
