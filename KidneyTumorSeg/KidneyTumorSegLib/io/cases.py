"""Finding the cases a user names: files, DICOM series, KiTS case folders, folders of them, globs.

Nothing is read here beyond DICOM headers; ``volume_io.read_volume`` reads
any path ``find_cases`` returns.
"""
from __future__ import annotations

import glob
import logging
import re
from pathlib import Path
from typing import List, Tuple

from .formats import KITS_IMAGE, SUPPORTED, PathLike, dicom_series, image_suffix
from ..geometry.volume import InputError

logger = logging.getLogger(__name__)

# Our own .seg.nrrd outputs may sit beside the inputs; they are never cases.
_NOT_CASES = (".seg.nrrd",)


def _is_image_file(p: Path) -> bool:
    name = p.name.lower()
    return (
        p.is_file()
        and not name.startswith(".")
        and bool(image_suffix(p))
        and not name.endswith(_NOT_CASES)
    )


def is_kits_case(folder: PathLike) -> bool:
    """True when ``folder`` is a KiTS case folder (it holds ``imaging.nii.gz``)."""
    return (Path(folder) / KITS_IMAGE).is_file()


def case_id_for(path: PathLike) -> str:
    """Case id from a name: ``case_00001.nii.gz`` -> ``case_00001``; folders keep their name."""
    p = Path(path)
    if p.is_dir():
        return p.name or p.resolve().name
    if p.name.lower() == KITS_IMAGE and is_kits_case(p.parent):
        return p.parent.resolve().name
    suffix = image_suffix(p)
    return p.name[: -len(suffix)] if suffix else p.stem


def _case_from_dir(p: Path) -> bool:
    return is_kits_case(p) or bool(dicom_series(p))


def find_cases(spec: PathLike) -> List[Tuple[str, Path]]:
    """Cases named by ``spec``, as ``[(case_id, path), ...]`` sorted by case id.

    ``spec`` is an image file, a DICOM file or series folder, a KiTS case
    folder, a folder of cases (image files, KiTS case folders and DICOM
    series subfolders; hidden files and ``.seg.nrrd`` outputs are skipped) or
    a glob pattern, or a ``.csv`` list of cases (:func:`cases_from_csv`). Case ids come from the names (``.nii.gz`` etc. removed);
    clashing ids get ``_2``, ``_3``... in path order. Raises ``InputError``
    naming ``spec`` when nothing is found.
    """
    text = str(spec)
    p = Path(text)
    found: List[Path] = []
    if p.is_file() and p.suffix.lower() == ".csv":
        return cases_from_csv(p)
    if p.is_file():
        found = [p]
    elif p.is_dir():
        if is_kits_case(p):
            found = [p]
        else:
            for child in sorted(p.iterdir()):
                if child.name.startswith("."):
                    continue
                if _is_image_file(child) or (child.is_dir() and _case_from_dir(child)):
                    found.append(child)
            if not found and dicom_series(p):
                found = [p]
    elif any(c in text for c in "*?["):
        for match in sorted(glob.glob(text, recursive=True)):
            m = Path(match)
            if _is_image_file(m) or (m.is_dir() and _case_from_dir(m)):
                found.append(m)
    else:
        raise InputError(f"no such file or folder: '{text}'")
    if not found:
        raise InputError(f"no CT images found in '{text}' (looked for {SUPPORTED})")
    return _unique_ids(found)


_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def cases_from_csv(path: Path) -> List[Tuple[str, Path]]:
    """The cases of a CSV list: column ``path`` (a file or folder as on the command line; relative to the
    CSV's folder) and optional ``case_id`` (letters, digits, ``._-``; default: from the name). A path that
    does not exist is not refused here: its case fails alone when it is read, and the run goes on."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the case list '{path}': {exc}") from None
    if not rows or "path" not in rows[0]:
        raise InputError(f"the case list '{path}' needs a header with a 'path' column (and optionally 'case_id')")
    out = []
    for line, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise InputError(f"'{path}', line {line}: the path is empty")
        q = Path(raw) if Path(raw).is_absolute() else path.parent / raw
        cid = (row.get("case_id") or "").strip() or case_id_for(q)
        if not _CASE_ID.match(cid):
            raise InputError(f"'{path}', line {line}: case id '{cid}' must be letters, digits, '.', '_' or '-' "
                             "(it names the case's output folder)")
        out.append((cid, q))
    seen: set = set()
    for cid, _ in out:
        if cid in seen:
            raise InputError(f"the case list '{path}' names case '{cid}' twice")
        seen.add(cid)
    return sorted(out, key=lambda t: t[0])


def _unique_ids(paths: List[Path]) -> List[Tuple[str, Path]]:
    pairs = sorted(((case_id_for(q), q) for q in paths), key=lambda t: (t[0], str(t[1])))
    used = {cid for cid, _ in pairs}
    taken: set = set()
    out = []
    for cid, q in pairs:
        if cid in taken:
            n = 2
            while f"{cid}_{n}" in used or f"{cid}_{n}" in taken:
                n += 1
            logger.warning("case id '%s' is used by several inputs; '%s' becomes '%s_%d'", cid, q, cid, n)
            cid = f"{cid}_{n}"
        taken.add(cid)
        out.append((cid, q))
    return out
