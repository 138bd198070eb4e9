"""A logging handler that keeps every record, for tests that check what a command logged."""
from __future__ import annotations

import logging
from typing import List


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
