"""A machine-readable progress stream: one JSON object per line.

The command line writes it (``--events FILE`` or ``--events -`` for
stderr); the Slicer module runs the command line in a separate process and
reads it with :func:`parse_event`. Every line starts with the marker
``KTS-EVENT `` so it can share a stream with ordinary log lines.

Events (``event`` field):

* ``start``: ``cases`` (number of cases), ``model``, ``device``
* ``progress``: ``case``, ``index`` (0-based case number), ``stage``,
  ``stage_fraction``, ``fraction`` (overall 0..1), ``message``
* ``case_done``: ``case``, ``status``, ``outputs`` (name -> path), ``messages``
* ``case_failed``: ``case``, ``error``
* ``done``: ``ok``, ``failed``
"""
from __future__ import annotations

import json
import threading
from typing import IO, Any, Dict, Optional

MARKER = "KTS-EVENT "
STAGE_ORDER = ("prepare", "roi", "kidney", "tumor", "candidates", "write")
STAGE_WEIGHTS = {"prepare": 0.05, "roi": 0.15, "kidney": 0.3, "tumor": 0.35, "candidates": 0.05, "write": 0.1}
STAGE_TITLES = {
    "prepare": "Preparing",
    "roi": "Locating kidneys",
    "kidney": "Segmenting kidneys",
    "tumor": "Segmenting tumors",
    "candidates": "Choosing tumor candidates",
    "write": "Writing results",
}


def overall_fraction(stage: str, stage_fraction: float) -> float:
    """Fraction of one case done when ``stage`` is ``stage_fraction`` done."""
    done = 0.0
    for s in STAGE_ORDER:
        if s == stage:
            return min(1.0, done + STAGE_WEIGHTS[s] * max(0.0, min(1.0, stage_fraction)))
        done += STAGE_WEIGHTS[s]
    return done


class EventWriter:
    """Writes events to a text stream, one flushed line each (thread-safe)."""

    def __init__(self, stream: Optional[IO[str]]) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        if self.stream is None:
            return
        line = MARKER + json.dumps(dict(event=event, **fields), separators=(",", ":"), default=str)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def parse_event(line: str) -> Optional[Dict[str, Any]]:
    """The event in ``line``, or ``None`` for a line that is not an event (log output)."""
    line = line.strip()
    if not line.startswith(MARKER):
        return None
    try:
        obj = json.loads(line[len(MARKER):])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "event" not in obj:
        return None
    return obj
