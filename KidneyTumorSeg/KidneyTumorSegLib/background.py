"""Run ``kidneytumorseg segment`` in a separate process, read its progress, cancel it.

The Slicer module uses this so the application stays responsive: the child
(``PythonSlicer -m KidneyTumorSegLib segment ... --events -``) writes
progress events (:mod:`events`) to stderr; a reader thread parses them into
a queue that the module drains from a timer with :meth:`SegmentationProcess.poll`.

Callers pass a fresh, not yet existing ``output_dir`` (e.g. inside a new
temporary folder) and load the results from there once the run is done; a
cancelled run removes that folder again, so cancelling changes nothing.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

from .events import parse_event
from .run_settings import RunSettings

log = logging.getLogger(__name__)

LOG_LINES = 50  # non-event output lines kept for error messages
CANCEL_GRACE_S = 3.0  # time between the polite stop and the kill
_WINDOWS = sys.platform.startswith("win")


class SegmentationProcess:
    """One ``segment`` run of one input in a child process.

    ``input_path``: CT file or folder the command line accepts; ``output_dir``:
    where it writes ``<case>/<case>.*`` (see :mod:`outputs`); ``model``: bundle
    folder (None: the shipped model); ``settings``: the run's
    :class:`run_settings.RunSettings` (device, TTA, ROI, model values to replace,
    optional outputs), passed on as command-line options; ``python``:
    interpreter to run (default this one; Slicer passes PythonSlicer); ``env``:
    the child's environment (default this process's).
    """

    def __init__(self, input_path, output_dir, model=None, settings: Optional[RunSettings] = None,
                 python: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> None:
        self.input_path = Path(input_path).absolute()
        self.output_dir = Path(output_dir).absolute()  # the child's cwd may differ; event paths stay absolute
        self.model = None if model is None else str(Path(model).absolute())
        self.settings = RunSettings() if settings is None else settings
        self.python = python or sys.executable
        self.env = env
        self._proc: Optional[subprocess.Popen] = None
        self._readers: List[threading.Thread] = []
        self._events: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self._lock = threading.Lock()
        self._log: Deque[str] = collections.deque(maxlen=LOG_LINES)
        self._errors: List[str] = []
        self._outputs: Dict[str, Dict[str, str]] = {}
        self._created_output = False
        self.cancelled = False

    # -- the command ----------------------------------------------------------
    @property
    def command(self) -> List[str]:
        """The child's argument list."""
        cmd = [self.python, "-m", "KidneyTumorSegLib", "segment", str(self.input_path), "-o", str(self.output_dir),
               "--events", "-", "--no-progress"]
        if self.model:
            cmd += ["--model", self.model]
        return cmd + self.settings.to_argv()

    # -- running ----------------------------------------------------------------
    def start(self) -> "SegmentationProcess":
        """Start the child in its own process group (session on POSIX) and the reader threads."""
        if self._proc is not None:
            raise RuntimeError("this segmentation process was already started")
        # made here rather than by the child, so that cancel knows it may remove it at any point of the run
        self._created_output = not self.output_dir.exists()
        if self._created_output:
            self.output_dir.mkdir(parents=True)
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"  # the reader decodes UTF-8 whatever the platform's locale
        kwargs: Dict[str, Any] = {}
        if _WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # its own process group: cancel reaches every descendant
        log.info("starting: %s", subprocess.list2cmdline(self.command) if _WINDOWS else " ".join(self.command))
        try:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=env, encoding="utf-8", errors="replace",
                                          bufsize=1, **kwargs)
        except OSError:
            if self._created_output:
                shutil.rmtree(self.output_dir, ignore_errors=True)
            raise
        self._readers = [threading.Thread(target=self._read, args=(self._proc.stderr, True), daemon=True,
                                          name="KidneyTumorSeg-stderr"),
                         threading.Thread(target=self._read, args=(self._proc.stdout, False), daemon=True,
                                          name="KidneyTumorSeg-stdout")]
        for t in self._readers:
            t.start()
        return self

    def _read(self, stream, events: bool) -> None:
        try:
            for line in stream:
                self._consume(line, events)
        except (OSError, ValueError):  # the pipe closed under us (cancel)
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def _consume(self, line: str, events: bool = True) -> None:
        """Route one output line: an event to the queue and state, anything else to the log tail."""
        event = parse_event(line) if events else None
        if event is None:
            text = line.rstrip("\r\n")
            if text.strip():
                with self._lock:
                    self._log.append(text)
            return
        with self._lock:
            kind = event.get("event")
            if kind == "case_done":
                self._outputs[str(event.get("case"))] = {str(k): str(v) for k, v in (event.get("outputs") or {}).items()}
            elif kind == "case_failed":
                self._errors.append(str(event.get("error", "")))
        self._events.put(event)

    def poll(self) -> List[Dict[str, Any]]:
        """Events that arrived since the last call, oldest first (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the child has exited and all its output is read."""
        if self._proc is None:
            return False
        return self._proc.poll() is None or any(t.is_alive() for t in self._readers)

    @property
    def returncode(self) -> Optional[int]:
        """The child's exit status once it is no longer :attr:`running`, else None."""
        if self._proc is None or self.running:
            return None
        return self._proc.returncode

    @property
    def outputs(self) -> Dict[str, str]:
        """Files of the (last) finished case: kind (``label``, ``segmentation``, ``report``...) -> absolute path."""
        with self._lock:
            return dict(list(self._outputs.values())[-1]) if self._outputs else {}

    def log_tail(self) -> List[str]:
        """The last non-event output lines (log messages, tracebacks)."""
        with self._lock:
            return list(self._log)

    def error_message(self) -> str:
        """Why the run failed: the core's message(s) from ``case_failed``, else the output's tail; "" if none."""
        with self._lock:
            errors = list(self._errors)
        if errors:
            return "\n".join(e for e in errors if e)
        lines = self.log_tail()
        if self.cancelled:
            return "cancelled"
        if self.returncode == 0:
            return ""
        errors = [ln for ln in lines if ln.startswith(("ERROR", "CRITICAL"))]
        if errors:
            return "\n".join(errors[-5:])
        return "\n".join(lines[-10:])

    # -- cancelling ---------------------------------------------------------------
    def cancel(self, grace: float = CANCEL_GRACE_S) -> None:
        """Stop the child and all its descendants, then remove ``output_dir`` if this run created it.

        Sends SIGTERM to the process group (CTRL_BREAK on Windows), waits up to
        ``grace`` seconds, then kills the group (``taskkill /T /F`` on Windows).
        Safe to call more than once or after the run has finished.
        """
        proc = self._proc
        if proc is None:
            return
        self.cancelled = True
        if proc.poll() is None:
            if _WINDOWS:
                _stop_windows_tree(proc, grace)
            else:
                _stop_posix_group(proc, grace)
        for t in self._readers:
            t.join(5.0)
        if self._created_output and self.output_dir.exists():
            shutil.rmtree(self.output_dir, ignore_errors=True)


def _stop_posix_group(proc: subprocess.Popen, grace: float) -> None:
    pgid = proc.pid  # start_new_session made the child its group's leader
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    # Wait without reaping, so the leader's pid (= the group id) cannot be reused before the final kill.
    while time.monotonic() < deadline and not _exited_unreaped(proc):
        time.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)  # descendants that ignored SIGTERM, and the leader if still alive
    proc.wait()


def _exited_unreaped(proc: subprocess.Popen) -> bool:
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # pragma: no cover - POSIX without waitid: reaping is the only way to ask
        return proc.poll() is not None
    try:
        return waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_windows_tree(proc: subprocess.Popen, grace: float) -> None:  # pragma: no cover - Windows only
    try:
        proc.send_signal(signal.CTRL_BREAK_EVENT)
        proc.wait(grace)
        return
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    try:
        proc.wait(10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_segmentation(input_path, output_dir, model=None, settings: Optional[RunSettings] = None,
                     python: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                     progress: Optional[Callable[[Dict[str, Any]], None]] = None,
                     timeout: Optional[float] = None, poll_interval: float = 0.1) -> Dict[str, str]:
    """Run one segmentation to the end; returns its output files (kind -> path).

    Arguments as :class:`SegmentationProcess`; ``progress(event)`` is called
    with every event (a dict, see :mod:`events`). Raises ``RuntimeError`` with
    the core's message when the run fails, and ``TimeoutError`` (after
    cancelling) when it takes longer than ``timeout`` seconds.
    """
    proc = SegmentationProcess(input_path, output_dir, model=model, settings=settings, python=python, env=env)
    t0 = time.monotonic()
    proc.start()
    try:
        while True:
            running = proc.running  # read before draining, so no event of a finished run is left behind
            for event in proc.poll():
                if progress is not None:
                    progress(event)
            if not running:
                break
            if timeout is not None and time.monotonic() - t0 > timeout:
                proc.cancel()
                raise TimeoutError(f"the segmentation did not finish within {timeout:g} s and was cancelled")
            time.sleep(poll_interval)
    except BaseException:
        proc.cancel()
        raise
    if proc.returncode != 0 or not proc.outputs:
        raise RuntimeError(proc.error_message() or f"the segmentation process stopped with exit status {proc.returncode}")
    return proc.outputs
