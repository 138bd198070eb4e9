"""Cross-validation splits: made once, written to JSON, honoured ever after.

File format (``splits.json``)::

    {"version": 1, "n_folds": 5, "seed": 0, "stratified_by": "tumor_volume" | null,
     "folds": [{"train": ["case_00001", ...], "val": ["case_00000", ...]}, ...]}

nnU-Net's ``splits_final.json`` (a bare list of ``{"train", "val"}``) is read
too. Folds are assigned from ``random.Random(seed).random()`` keys, whose
sequence Python guarantees across versions, so the same seed and case list
give the same folds everywhere.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from KidneyTumorSegLib.io.jsonfile import read_json, write_json

logger = logging.getLogger(__name__)

SPLITS_VERSION = 1
Fold = Dict[str, List[str]]

# Report 000's hold-out validation cases (about 5 % of KiTS19's 210), stratified by tumor size by hand.
REPORT000_VALIDATION = [
    "case_00085", "case_00121", "case_00138", "case_00189", "case_00195", "case_00069",
    "case_00109", "case_00171", "case_00158", "case_00077", "case_00128",
]
NAMED_SPLITS: Dict[str, List[str]] = {"report000": REPORT000_VALIDATION}


def _keys(ids: Sequence[str], rng: random.Random) -> Dict[str, float]:
    return {cid: rng.random() for cid in ids}


def make_folds(case_ids: Sequence[str], n_folds: int = 5, seed: int = 0,
               tumor_volumes: Optional[Mapping[str, float]] = None) -> List[Fold]:
    """``n_folds`` folds ``{"train": [...], "val": [...]}`` (sorted ids); every case is validated exactly once.

    Without ``tumor_volumes``: a seeded random partition into folds whose sizes
    differ by at most one. With ``tumor_volumes`` (case id -> tumor volume,
    any unit; every case needed): cases are sorted by volume, cut into
    consecutive blocks of ``n_folds`` and each block is dealt over the folds in
    seeded random order, so every fold gets a like share of small, medium and
    large tumors (report 000 stratified its split by tumor size).
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("case_ids contains duplicates")
    if n_folds < 2 or n_folds > len(ids):
        raise ValueError(f"n_folds must be in [2, {len(ids)}] for {len(ids)} cases, got {n_folds}")
    rng = random.Random(int(seed))
    if tumor_volumes is None:
        keys = _keys(ids, rng)
        order = sorted(ids, key=lambda c: keys[c])
        assignment = {cid: i % n_folds for i, cid in enumerate(order)}
    else:
        missing = [c for c in ids if c not in tumor_volumes]
        if missing:
            raise ValueError(f"tumor_volumes lacks {len(missing)} case(s): {', '.join(missing[:10])}")
        tie = _keys(ids, rng)
        order = sorted(ids, key=lambda c: (float(tumor_volumes[c]), tie[c]))
        assignment = {}
        for start in range(0, len(order), n_folds):
            block = order[start:start + n_folds]
            slots = sorted(range(n_folds), key=lambda _: rng.random())
            # Only the last block can be short; it takes distinct folds, so sizes differ by at most one.
            assignment.update(zip(block, slots))
    folds = []
    for f in range(n_folds):
        val = [c for c in ids if assignment[c] == f]
        folds.append({"train": [c for c in ids if assignment[c] != f], "val": val})
    return folds


def named_split(name: str, case_ids: Sequence[str], allow_missing: bool = False) -> Fold:
    """A published hold-out split: ``{"train": all other cases, "val": the named cases}``.

    ``name``: a key of :data:`NAMED_SPLITS` (``report000``). Named cases not in
    ``case_ids`` raise ``ValueError``, or are dropped with a warning when
    ``allow_missing`` (e.g. a data set holding only part of KiTS19).
    """
    if name not in NAMED_SPLITS:
        raise ValueError(f"unknown named split {name!r} (expected one of {', '.join(NAMED_SPLITS)})")
    have = set(case_ids)
    missing = [c for c in NAMED_SPLITS[name] if c not in have]
    if missing and not allow_missing:
        raise ValueError(f"split {name!r} validates on cases missing from the data: {', '.join(missing)}")
    if missing:
        logger.warning("split %r: %d validation case(s) not in the data, dropped: %s",
                       name, len(missing), ", ".join(missing))
    val = sorted(c for c in NAMED_SPLITS[name] if c in have)
    return {"train": sorted(have - set(val)), "val": val}


def validate_folds(folds: Sequence[Mapping[str, Sequence[str]]], case_ids: Optional[Sequence[str]] = None,
                   source: str = "split") -> List[Fold]:
    """Check and normalise folds: lists of strings, no case both trained and validated in a fold, no
    duplicates, and (when ``case_ids`` is given) no unknown case id. Raises ``ValueError`` naming ``source``."""
    if not isinstance(folds, (list, tuple)) or not folds:
        raise ValueError(f"{source}: expected a non-empty list of folds")
    known = None if case_ids is None else set(case_ids)
    out: List[Fold] = []
    for i, fold in enumerate(folds):
        if not isinstance(fold, Mapping) or not {"train", "val"} <= set(fold):
            raise ValueError(f"{source}: fold {i} must have 'train' and 'val' lists")
        parts = {}
        for part in ("train", "val"):
            ids = fold[part]
            if not isinstance(ids, (list, tuple)) or not all(isinstance(c, str) for c in ids):
                raise ValueError(f"{source}: fold {i} '{part}' must be a list of case ids")
            if len(set(ids)) != len(ids):
                raise ValueError(f"{source}: fold {i} '{part}' lists a case twice")
            parts[part] = list(ids)
        both = sorted(set(parts["train"]) & set(parts["val"]))
        if both:
            raise ValueError(f"{source}: fold {i} both trains and validates on {', '.join(both[:10])}")
        if not parts["val"]:
            raise ValueError(f"{source}: fold {i} has no validation cases")
        if known is not None:
            unknown = sorted((set(parts["train"]) | set(parts["val"])) - known)
            if unknown:
                more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
                raise ValueError(f"{source}: fold {i} names case ids not in the data: "
                                 f"{', '.join(unknown[:10])}{more}")
        out.append(parts)
    return out


def write_splits(path: Union[str, os.PathLike], folds: Sequence[Fold], seed: Optional[int] = None,
                 stratified_by: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write ``folds`` to ``path`` as JSON, atomically (``FileExistsError`` if it exists and not ``overwrite``)."""
    folds = validate_folds(folds, source=str(path))
    doc = {"version": SPLITS_VERSION, "n_folds": len(folds), "seed": seed, "stratified_by": stratified_by,
           "folds": folds}
    return write_json(doc, path, overwrite=overwrite, indent=1)


def load_splits(path: Union[str, os.PathLike], case_ids: Optional[Sequence[str]] = None) -> List[Fold]:
    """Read and validate a split file (this format or nnU-Net's list); see :func:`validate_folds`."""
    path = Path(path)
    doc = read_json(path, "split file")
    if isinstance(doc, dict):
        if int(doc.get("version", SPLITS_VERSION)) > SPLITS_VERSION:
            raise ValueError(f"{path}: split file version {doc['version']} is newer than supported "
                             f"({SPLITS_VERSION})")
        doc = doc.get("folds")
    return validate_folds(doc, case_ids, source=str(path))


def unused_cases(folds: Sequence[Fold], case_ids: Sequence[str]) -> List[str]:
    """The ``case_ids`` that no fold trains or validates on (sorted)."""
    named = {c for f in folds for part in ("train", "val") for c in f[part]}
    return sorted(set(case_ids) - named)


def fitted_folds(n_cases: int, n_folds: int) -> int:
    """The folds of a split of ``n_cases`` cases when ``n_folds`` are configured: ``min(n_folds, n_cases)``,
    logged when fewer; ``ValueError`` under 2 cases (each fold validates on at least one case)."""
    if n_cases < 2:
        raise ValueError(f"only {n_cases} case{'' if n_cases == 1 else 's'} found: a split needs at least 2 cases")
    if n_cases < n_folds:
        logger.warning("only %d cases: making a %d-fold split instead of the %d folds configured",
                       n_cases, n_cases, n_folds)
    return min(int(n_folds), int(n_cases))


def get_or_create_splits(path: Union[str, os.PathLike], case_ids: Sequence[str], n_folds: int = 5, seed: int = 0,
                         tumor_volumes: Optional[Mapping[str, float]] = None, fit: bool = False) -> List[Fold]:
    """Honour the split file at ``path`` if it exists (validated against ``case_ids``); else make and write one.

    ``fit``: a new split of fewer cases than ``n_folds`` gets one fold a case (:func:`fitted_folds`) instead of
    failing; for a run on every case (``--fold all``), which needs the split only for the runs of single folds.
    """
    path = Path(path)
    if not path.exists():
        if fit:
            n_folds = fitted_folds(len(set(case_ids)), n_folds)
        folds = make_folds(case_ids, n_folds, seed, tumor_volumes)
        try:
            write_splits(path, folds, seed=seed, stratified_by="tumor_volume" if tumor_volumes is not None else None)
        except FileExistsError:
            # two runs started at once into the same --out (e.g. two stages in parallel): the one that lost
            # the race honours the file the other wrote rather than failing
            logger.info("%s was written by another run meanwhile", path)
        else:
            logger.info("wrote %d-fold split of %d cases to %s", n_folds, len(set(case_ids)), path)
            return folds
    folds = load_splits(path, case_ids)
    logger.info("using the existing split file %s (%d folds)", path, len(folds))
    unused = unused_cases(folds, case_ids)
    if unused:
        more = f" and {len(unused) - 10} more" if len(unused) > 10 else ""
        logger.warning("%d of the %d cases found are in no fold of %s and will not be used: %s%s (pass a new "
                       "--splits file to split them all)", len(unused), len(set(case_ids)), path,
                       ", ".join(unused[:10]), more)
    return folds


def fold_cases(folds: Sequence[Fold], fold: Union[int, str]) -> Fold:
    """Train / validation case ids of ``fold`` (0-based), or ``"all"``: train on every case, validate on none."""
    if fold == "all":
        every = sorted({c for f in folds for part in ("train", "val") for c in f[part]})
        return {"train": every, "val": []}
    i = int(fold)
    if not 0 <= i < len(folds):
        raise ValueError(f"fold {fold} does not exist (the split has folds 0..{len(folds) - 1})")
    return {"train": list(folds[i]["train"]), "val": list(folds[i]["val"])}
