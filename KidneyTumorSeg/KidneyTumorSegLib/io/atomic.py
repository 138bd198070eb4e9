"""Atomic, non-overwriting file and folder output.

A reader (Slicer, a batch script, another process) must never see a half
written result, and a rerun must never silently replace an earlier result or,
worse, an input. So every output is written to a temporary file in the target
folder, flushed to disk and then moved into place in one step; a folder
(a model bundle, an unpacked model) is built in a temporary sibling and
moved into place whole (:func:`staged_folder`).
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Suffixes made of several parts; SimpleITK and pynrrd choose the format (and
# the compression) from the file name, so the temporary file must keep them.
_COMPOUND_SUFFIXES = (".seg.nrrd", ".nii.gz", ".tar.gz", ".json.gz", ".csv.gz")


def full_suffix(path: PathLike) -> str:
    """The suffix that decides the file format: ``.nii.gz`` for ``a.b.nii.gz``."""
    name = Path(path).name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return Path(path).name[-len(suffix):]
    return Path(path).suffix


def _fsync_file(path: Path) -> None:
    # Opened for appending because Windows refuses to flush a read-only handle.
    with open(path, "ab") as f:
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; folders cannot be opened on Windows.
    if os.name != "posix":
        return
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def exists_message(path: PathLike) -> str:
    return f"output exists: {path} (use --overwrite to replace it)"


def atomic_write(path: PathLike, writer_fn: Callable[[str], object], overwrite: bool = False) -> Path:
    """Write ``path`` through ``writer_fn(temp_path)`` and move it into place atomically.

    ``writer_fn`` receives the path of a not yet existing temporary file in the
    target folder, named ``.tmp-XXXXXXXX<suffix>`` with the target's suffix
    (``.nii.gz``, ``.seg.nrrd``...), and must create it. The file is fsynced
    and renamed onto ``path``; on any failure (including KeyboardInterrupt) the
    temporary file is removed and the error propagates. Missing parent folders
    are created.

    Raises ``FileExistsError("output exists: <path> (use --overwrite to replace
    it)")`` when ``path`` exists and ``overwrite`` is False; that check is done
    again at the final step, so a file appearing meanwhile is not clobbered.
    Returns ``path`` as a ``Path``.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"output is a folder, not a file: {target}")
    if target.exists() and not overwrite:
        raise FileExistsError(exists_message(target))
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{secrets.token_hex(4)}{full_suffix(target)}"
    try:
        writer_fn(str(tmp))
        if not tmp.is_file():
            raise OSError(f"writing {target} produced no file")
        _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, target)
        else:
            _move_no_clobber(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # the original error matters more than this one
            logger.warning("could not remove temporary file %s: %s", tmp, exc)
        raise
    _fsync_dir(folder)
    return target


def _move_no_clobber(tmp: Path, target: Path) -> None:
    # A hard link fails if the target appeared since the first check, which
    # os.replace would silently overwrite; fall back where links are unsupported.
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise FileExistsError(exists_message(target)) from None
    except (OSError, NotImplementedError):
        if target.exists():
            raise FileExistsError(exists_message(target)) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def atomic_write_text(path: PathLike, text: str, overwrite: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_write``)."""

    def _write(tmp: str) -> None:
        with open(tmp, "x", encoding=encoding, newline="") as f:
            f.write(text)

    return atomic_write(path, _write, overwrite=overwrite)


def check_not_input(out_path: PathLike, input_paths: Iterable[PathLike]) -> None:
    """Raise ``ValueError`` if writing ``out_path`` would replace an input.

    An input is a file (the output may not be the same file, through any
    spelling, symlink or hard link) or a folder (a DICOM series or KiTS case:
    the output may not be the folder, nor an existing file inside it, such as
    a KiTS ``segmentation.nii.gz``).
    """
    out = Path(out_path)
    out_resolved = out.resolve()
    for inp in input_paths:
        inp_path = Path(inp)
        inp_resolved = inp_path.resolve()
        same = out_resolved == inp_resolved
        if not same and out.exists() and inp_path.exists():
            try:
                same = os.path.samefile(out, inp_path)
            except OSError:
                same = False
        inside = inp_path.is_dir() and out.exists() and inp_resolved in out_resolved.parents
        if same or inside:
            raise ValueError(f"output '{out}' would overwrite the input '{inp}'; choose another output path")


@contextmanager
def staged_folder(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build the folder ``path`` in a temporary sibling (yielded) and move it into place whole.

    When the block raises, the sibling is removed and ``path`` is untouched. An existing ``path``
    is refused (``FileExistsError``) unless ``overwrite``, and then replaced in two renames.
    The folder and its files get the permissions a plain mkdir / open would give (``tempfile``
    makes them private), so a shared model folder stays readable.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(exists_message(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _plain_permissions(tmp)
        if path.exists():
            if not overwrite:  # it appeared while the folder was built
                raise FileExistsError(exists_message(path))
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def _plain_permissions(folder: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for f in folder.rglob("*"):
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
