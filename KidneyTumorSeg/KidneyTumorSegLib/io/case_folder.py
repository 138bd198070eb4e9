"""A case's output folder written as a whole: complete, or not there at all.

The files of a case (label map, segmentation, report, preview, candidates) are written into a hidden
staging folder beside the target, ``.tmp-case-<pid>-<random>-<case>``; only when every one of them is
written is the staging folder renamed onto the case folder (one step when the case folder is new;
file by file, each an atomic rename, into an existing one). A failure (a full disk, a crash in a
writer, Ctrl-C) removes the staging folder, so no report ever lists a file that is missing. A run
killed outright (``kill -9``) leaves its staging folder behind: the next run in the same output
folder removes staging folders whose process is gone, and ``.tmp-*`` files left in a case folder
it writes.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .atomic import _fsync_dir, exists_message

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".tmp-case-"


class OutputError(OSError):
    """An output could not be written; the message names the file and the reason."""


def check_output_folder(outdir: os.PathLike) -> Path:
    """Make sure a new file can be written in ``outdir``, or in the folder it would be made in; raises
    ``OutputError`` if not. Nothing is left behind (a missing ``outdir`` is not created yet).

    Run before any inference, so an unwritable or full output location is found in a second, not
    after the whole computation.
    """
    folder = Path(outdir)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "output folder" if existing == folder else "folder"
        raise OutputError(f"{where} {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=str(existing))
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in the output folder {folder}: {_reason(exc)}") from None
    return folder


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def write_file(final: Path, staged: Path, writer: Callable[[Path], object]) -> None:
    """Run ``writer(staged)``; an error becomes an ``OutputError`` naming ``final`` (the file's real name)."""
    try:
        writer(staged)
    except OutputError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        # SimpleITK reports a full disk as a RuntimeError with ITK's text: say it plainly when it is that
        full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in str(exc)
        reason = "no space left on the device" if full else _reason(exc)
        raise OutputError(f"could not write {final}: {reason}") from exc


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its folder alone
    return True


def remove_stale_staging(outdir: Path) -> int:
    """Remove staging folders in ``outdir`` left by runs that were killed; returns how many."""
    removed = 0
    try:
        entries = list(outdir.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(STAGING_PREFIX) and entry.is_dir()):
            continue
        pid = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
            logger.info("removed %s, left by an interrupted run", entry)
            removed += 1
    return removed


def _remove_stale_temp_files(folder: Path) -> None:
    """``.tmp-*`` files in a case folder this run writes: left by a killed atomic write."""
    for entry in folder.glob(".tmp-*"):
        if entry.is_file():
            try:
                entry.unlink()
                logger.info("removed %s, left by an interrupted write", entry)
            except OSError:
                pass


@contextmanager
def staged_case_folder(target: os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit its files become ``target``'s, all together.

    Without ``overwrite`` an existing file of the same name in ``target`` is never replaced
    (``FileExistsError``, raised before anything moves). The staging folder is removed on any error.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    staging = parent / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{target.name}"
    staging.mkdir()
    try:
        yield staging
        _publish(staging, target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, target: Path, overwrite: bool) -> None:
    if not target.exists():
        try:
            os.rename(staging, target)  # the case folder appears complete, in one step
            _fsync_dir(target.parent)
            return
        except OSError:
            if not target.is_dir():
                raise
    files = sorted(p for p in staging.iterdir())
    if not overwrite:
        for staged in files:
            if (target / staged.name).exists():
                raise FileExistsError(exists_message(target / staged.name))
    _remove_stale_temp_files(target)
    for staged in files:
        os.replace(staged, target / staged.name)
    _fsync_dir(target)
