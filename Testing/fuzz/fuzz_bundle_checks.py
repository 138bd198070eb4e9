"""Fuzzing of model bundles, part 1: running an example in a memory-capped child, and what a failure is.

Used by test_fuzz_bundles.py (the properties) and benchmarks/fuzz_bundles.py.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import select
import signal
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from hypothesis import HealthCheck, settings

from KidneyTumorSegLib.bundles.bundle import BundleError, load_bundle
from KidneyTumorSegLib.cli import main
from helpers_logs import RecordingHandler

try:
    import resource
except ImportError:  # Windows: no memory limit, no fork (the examples run in process)
    resource = None

HEADROOM = 512 << 20  # bytes of address space an example may add
CHILD_TIMEOUT_S = 120.0
MAX_MESSAGE = 400  # characters of a refusal besides the bundle's path
ALLOCATION = re.compile(r"alloc|MemoryError|out of memory|Cannot allocate", re.I)
WEIGHTS = ("roi_0.safetensors", "kidney_0.safetensors", "tumor_0.safetensors")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
BOUNDED = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def bounded(examples: int) -> settings:
    """The suite's settings: ``examples`` examples, the same every run, no deadline, nothing saved."""
    return settings(BOUNDED, max_examples=examples)


# ---- isolation: one forked child per example, under a memory limit ----------------------------------------------


def _address_space() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return None


def _child(fn: Callable[..., List[str]], args: tuple, w: int) -> None:
    """In the forked child: limit the address space, run ``fn``, send its problems as JSON, exit."""
    try:
        now = _address_space()
        if now is not None:
            resource.setrlimit(resource.RLIMIT_AS, (now + HEADROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))
        problems = run_in_process(fn, *args)
        payload = json.dumps(problems)
    except BaseException:  # noqa: B036 - anything at all becomes a reported problem
        payload = json.dumps([f"the child failed: {traceback.format_exc()[-2000:]}"])
    data = payload.encode()
    while data:
        data = data[os.write(w, data):]
    os._exit(0)


def run_in_process(fn: Callable[..., List[str]], *args) -> List[str]:
    """``fn(*args)``'s problems; an exception it lets out is one (with the end of its traceback)."""
    try:
        return list(fn(*args))
    except BaseException as exc:  # noqa: B036
        if isinstance(exc, KeyboardInterrupt):
            raise
        return [f"raised {type(exc).__name__}: {str(exc)[:300]}\n{traceback.format_exc()[-1500:]}"]


def _capped() -> bool:
    """True where examples can run in a forked child under a memory limit (Linux)."""
    return resource is not None and hasattr(os, "fork") and _address_space() is not None


def isolated(fn: Callable[..., List[str]], *args) -> List[str]:
    """``fn(*args)``'s problems, run in a forked child with at most :data:`HEADROOM` more address space."""
    if not _capped():
        return run_in_process(fn, *args)
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork of a process with threads
        pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(fn, args, w)
    os.close(w)
    chunks, deadline, done = [], time.monotonic() + CHILD_TIMEOUT_S, False
    try:
        while not done and time.monotonic() < deadline:
            if select.select([r], [], [], 1.0)[0]:
                chunk = os.read(r, 1 << 16)
                chunks.append(chunk)
                done = not chunk
        if not done:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(r)
        status = os.waitpid(pid, 0)[1]
    if not done:
        return [f"the example ran longer than {CHILD_TIMEOUT_S:g} s"]
    if not b"".join(chunks):
        return [f"the child died (wait status {status}): killed for memory or crashed"]
    return json.loads(b"".join(chunks).decode())


# ---- the properties -------------------------------------------------------------------------------------------


def message_problems(msg: str, folder: Path, what: str = "BundleError") -> List[str]:
    problems = []
    if len(msg.splitlines()) != 1:
        problems.append(f"{what} is not one line: {msg[:500]!r}")
    if len(msg.replace(str(folder), "")) > MAX_MESSAGE:
        problems.append(f"{what} is {len(msg)} characters long: {msg[:200]!r}...")
    if "Traceback" in msg or ALLOCATION.search(msg):
        problems.append(f"{what} reports a crash or a failed allocation: {msg[:500]!r}")
    return problems


def load_problems(folder: Path) -> List[str]:
    """``load_bundle`` returns a bundle or raises a one-line ``BundleError`` (anything else escapes: a problem)."""
    try:
        load_bundle(folder)
    except BundleError as exc:
        return message_problems(str(exc), folder)
    return []


def read_header(path: Path) -> Tuple[int, bytes, bytes]:
    """A safetensors file's (header length field, header bytes, data) as stored."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return n, data[8: 8 + n], data[8 + n:]


def weight_problems(folder: Path) -> List[str]:
    """Loading and building every stage's networks returns them or raises a one-line ``BundleError``; weights
    accepted are floating-point tensors."""
    try:
        bundle = load_bundle(folder)
        for role in bundle.stages:
            bundle.build_models(role)
    except BundleError as exc:
        return message_problems(str(exc), folder)
    problems = []
    for name in WEIGHTS:
        header = json.loads(read_header(folder / name)[1])
        dtypes = {v.get("dtype") for k, v in header.items() if k != "__metadata__"}
        if not dtypes <= set(FLOAT_DTYPES):
            problems.append(f"{name}: weights of dtype {sorted(map(str, dtypes))} were loaded as network weights")
    return problems


@contextlib.contextmanager
def captured():
    """stdout, stderr and the ``kidneytumorseg`` log records of the code run inside."""
    out, err, handler = io.StringIO(), io.StringIO(), RecordingHandler()
    logger = logging.getLogger("kidneytumorseg")
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err, handler.records
    finally:
        logger.removeHandler(handler)


def cli_problems(rc: Any, codes: Tuple[int, ...], out: str, err: str, records, folder: Path) -> List[str]:
    problems = [] if rc in codes else [f"exit status {rc!r}, not one of {codes}"]
    if "Traceback" in out or "Traceback" in err:
        problems.append(f"a traceback was printed: {(err or out)[-1500:]}")
    for r in records:
        if r.levelno >= logging.ERROR:
            problems += message_problems(r.getMessage(), folder, "the logged error")
    return problems


def info_problems(folder: Path) -> List[str]:
    """``info`` exits 0 (the model card printed) or 2 (``model_error``, one line), never with a traceback."""
    with captured() as (out, err, records):
        rc = main(["info", "--model", str(folder)])
    problems = cli_problems(rc, (0, 2), out.getvalue(), err.getvalue(), records, folder)
    try:
        info = json.loads(out.getvalue())
    except ValueError:
        return problems + [f"info printed no JSON: {out.getvalue()[:300]!r}"]
    if ("model" in info) == ("model_error" in info):
        problems.append(f"info has {'both' if 'model' in info else 'neither'} a model and a model_error")
    if "model_error" in info:
        problems += message_problems(info["model_error"], folder, "model_error")
    return problems


def output_problems(out: Path, rc: int) -> List[str]:
    """``out`` is absent or holds complete case folders only (each file its report lists; nothing else)."""
    if not out.exists():
        return ["exit status 0 but nothing was written"] if rc == 0 else []
    problems = [f"left behind: {p}" for p in out.rglob(".tmp-*")]
    cases = [p for p in out.iterdir() if not p.name.startswith(".tmp-")]
    if rc != 0 and cases:
        problems.append(f"exit status {rc} but case folders were written: {[p.name for p in cases]}")
    for case in cases:
        report = case / f"{case.name}.report.json"
        if not report.is_file():
            problems.append(f"{case}: no report")
            continue
        listed = set(json.loads(report.read_text(encoding="utf-8"))["outputs"].values())
        present = {p.name for p in case.iterdir()}
        if listed != present:
            problems.append(f"{case}: report lists {sorted(listed)}, folder holds {sorted(present)}")
    return problems


def segment_problems(folder: Path, ct: Path, out: Path) -> List[str]:
    """``segment`` exits 0, 1 or 2 without a traceback; ``out`` is absent or holds complete case folders."""
    with captured() as (stdout, err, records):
        rc = main(["segment", str(ct), "-o", str(out), "--model", str(folder), "--device", "cpu", "--no-preview",
                   "--no-progress"])
    return cli_problems(rc, (0, 1, 2), stdout.getvalue(), err.getvalue(), records, folder) + output_problems(out, rc)


