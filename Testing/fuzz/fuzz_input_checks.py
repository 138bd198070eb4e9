"""Fuzzing of image inputs, part 2: what must hold for each example (the reader and the command).
Used by test_fuzz_inputs.py and benchmarks/fuzz_inputs.py.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from KidneyTumorSegLib.geometry.volume import InputError
from KidneyTumorSegLib.io.volume_io import read_volume, validate_ct
from fuzz_input_specs import (BUILDERS, CLI_PEAK_LIMIT, FAST, LIMIT_S, PEAK_LIMIT, nifti_specs,  # noqa: F401 (FAST:
                              text_specs, written_specs)  # benchmarks/fuzz_inputs.py reads it here)
from helpers_logs import RecordingHandler

Spec = Dict[str, Any]
# --------------------------------------------------------------------------
# The properties
# --------------------------------------------------------------------------
def _mem() -> Tuple[int, int]:
    """(resident, peak resident) bytes of this process, or zeros where /proc is absent."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0, 0
    vals = dict(re.findall(r"(VmRSS|VmHWM):\s+(\d+) kB", status))
    return int(vals.get("VmRSS", 0)) << 10, int(vals.get("VmHWM", 0)) << 10


def _reset_peak() -> None:
    try:  # Linux: "5" resets the peak resident size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def check_message(exc: BaseException, path: Path) -> None:
    """An ``InputError`` fit for the user: one line naming the file, no ITK internals."""
    msg = str(exc)
    assert isinstance(exc, InputError), f"{type(exc).__name__}: {msg}"
    assert "\n" not in msg and "\r" not in msg, msg
    assert str(path) in msg, msg
    quoted = path.read_bytes()[:1 << 16].decode("latin-1").lower()  # a message may quote the header
    assert "no such file" not in msg.lower() or "no such file" in quoted, msg  # MetaImage blamed a stale errno
    assert not re.search(r"\(0x[0-9a-f]+\)|itk::|ITK ERROR|\.[ch]xx|\.cpp", msg), msg
    assert len(msg) <= 500 + len(str(path)), msg


def check_read(spec: Spec) -> Tuple[str, str]:
    """Build ``spec``'s file, read it and validate it; returns ('read' | 'invalid' | 'refused', message)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, expected, bound = BUILDERS[spec["kind"]](spec, Path(tmp))
        rss, _ = _mem()
        _reset_peak()
        t0 = time.monotonic()
        message = ""
        try:
            vol = read_volume(path, validate=False)
        except InputError as exc:
            check_message(exc, path)
            assert not re.search("allocate|bad_alloc", str(exc)), f"a huge allocation was tried: {exc}"
            outcome, message = "refused", str(exc).replace(str(path), "<file>")
        else:
            if expected is not None:
                assert vol.array.dtype == expected.dtype and vol.shape == expected.shape
                np.testing.assert_array_equal(vol.array, expected)
            if bound is not None:  # no voxels the file does not hold (zero-filled or read from the header)
                have, per_voxel = bound
                assert vol.array.size * (per_voxel or vol.array.itemsize) <= have, (vol.shape, vol.array.dtype, have)
            try:
                validate_ct(vol)
                outcome = "read"
                # what validate_ct lets through, the pipeline must be able to place in the world
                assert np.isfinite(vol.origin).all() and np.isfinite(vol.direction).all(), (vol.origin, vol.direction)
            except InputError as exc:
                check_message(exc, path)
                outcome, message = "invalid", str(exc).replace(str(path), "<file>")
        elapsed = time.monotonic() - t0
        _, peak = _mem()
    assert elapsed < LIMIT_S, f"reading took {elapsed:.1f} s"
    assert peak - rss < PEAK_LIMIT, f"reading took {(peak - rss) >> 20} MiB"
    return outcome, message


def check_output(out: Path) -> None:
    """``out`` is absent or holds complete case folders only: each report lists files that all exist."""
    if not out.exists():
        return
    for case in out.iterdir():
        assert not case.name.startswith("."), f"hidden entry left in the output: {case.name}"
        assert case.is_dir(), case
        report = case / f"{case.name}.report.json"
        assert report.is_file(), f"case folder without a report: {sorted(p.name for p in case.iterdir())}"
        listed = set(json.loads(report.read_text())["outputs"].values())
        assert listed == {p.name for p in case.iterdir()}, (listed, sorted(p.name for p in case.iterdir()))


def check_cli(spec: Spec, bundle: Path) -> int:
    """``kidneytumorseg segment`` on ``spec``'s file: exit status 0, 1 or 2, no traceback, no partial output.

    A file the reader refuses fails with the reader's message; on a file it
    accepts, the only failure this bundle (no kidney anywhere) may give is
    "no kidney found".
    """
    from KidneyTumorSegLib.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        path, _, _ = BUILDERS[spec["kind"]](spec, Path(tmp))
        out = Path(tmp) / "out"
        rss, _ = _mem()
        _reset_peak()
        try:
            read_volume(path)
            refusal = None
        except InputError as exc:
            refusal = str(exc)
        handler, root, err = RecordingHandler(), logging.getLogger(), io.StringIO()
        root.addHandler(handler)
        t0 = time.monotonic()
        try:
            with contextlib.redirect_stderr(err):
                rc = main(["segment", str(path), "-o", str(out), "--model", str(bundle), "--device", "cpu",
                           "--no-preview", "--no-progress"])
        finally:
            root.removeHandler(handler)
        elapsed, (_, peak) = time.monotonic() - t0, _mem()
        check_output(out)
    assert elapsed < 4 * LIMIT_S, f"segment took {elapsed:.1f} s"
    assert peak - rss < CLI_PEAK_LIMIT, f"segment took {(peak - rss) >> 20} MiB"
    assert rc in (0, 1, 2), rc
    assert "Traceback" not in err.getvalue(), err.getvalue()
    for r in handler.records:
        assert r.exc_info is None and "Traceback" not in r.getMessage(), r.getMessage()
    errors = [r.getMessage() for r in handler.records if r.levelno >= logging.ERROR]
    assert all("\n" not in e for e in errors), errors
    if refusal is not None:
        assert rc == 1 and any(refusal in e for e in errors), (refusal, errors)
    else:
        assert rc == 0 or (errors and all("no kidney found" in e for e in errors)), errors
    return rc


SPECS = {"written": written_specs(), "nifti": nifti_specs(), "nrrd": text_specs("nrrd"), "mha": text_specs("mha")}


