"""The findings of a report as table rows (pure data).

The Slicer module fills its table node from :func:`findings_rows` and
:data:`TABLE_COLUMNS`; :func:`findings_markdown` gives the same table as text
(README, logs). ``report`` is the content of ``<case>.report.json`` (see
:meth:`findings.CascadeResult.report` and :mod:`outputs`).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Set, Tuple

# (column name, value type: "string", "int" or "float"); a row leaves out what does not apply (None)
TABLE_COLUMNS: List[Tuple[str, str]] = [
    ("Type", "string"),
    ("Id", "string"),
    ("Side", "string"),
    ("Volume (mL)", "float"),
    ("Axial diameter (mm)", "float"),
    ("3D diameter (mm)", "float"),
    ("Mean probability", "float"),
    ("Core HU", "float"),
    ("Kidney contact (%)", "float"),
    ("R.E.N.A.L.", "string"),
    ("Status", "string"),
    ("Reason", "string"),
]

KIDNEY = "Kidney"
TUMOR = "Tumor candidate"
WARNING = "Warning"
IMPLAUSIBLE = "implausible"
KEPT = "kept"
REJECTED = "rejected"


def _side(text: Any) -> str:
    return str(text or "").capitalize()


def _num(value: Any, digits: int):
    return None if value is None else round(float(value), digits)


def findings_rows(report: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """A row per plausibility warning, one per kidney, then one per tumor candidate (by id), keyed by the
    names in :data:`TABLE_COLUMNS`.

    A warning row (Type "Warning", Status "implausible") gives one of ``plausibility``'s reasons in
    "Reason"; the rest of it is empty.

    Volumes in mL (2 decimals), diameters in mm (1 decimal), mean probability
    0..1 (3 decimals), "Core HU" the median attenuation of the candidate's core
    (1 decimal; absent in reports written before it), "Kidney contact (%)" the share of its surface
    that borders the kidney (1 decimal; absent before it), "R.E.N.A.L." a kept tumor's nephrometry score
    (``nephrometry``: e.g. "8ph"; absent for rejected candidates and older reports); "Status" is "kept" or
    "rejected" and "Reason" why stage 4 rejected it. Each row also has
    ``candidate_id`` (int, None for kidneys) and ``kidney_index`` (int) for
    callers that act on a selected row. Rows stay in the same order when a
    candidate's status changes, so a selection survives an edit.
    """
    rows: List[Dict[str, Any]] = [_warning_row(reason) for reason in
                                  (report.get("plausibility") or {}).get("reasons", []) or []]
    for k in report.get("kidneys", []) or []:
        rows.append({
            "Type": KIDNEY, "Id": None, "Side": _side(k.get("side")), "Volume (mL)": _num(k.get("volume_ml"), 2),
            "Axial diameter (mm)": None, "3D diameter (mm)": None, "Mean probability": None, "Core HU": None,
            "Kidney contact (%)": None, "R.E.N.A.L.": None,
            "Status": None, "Reason": None,
            "candidate_id": None, "kidney_index": k.get("index"),
        })
    for c in sorted(report.get("tumor_candidates", []) or [], key=lambda c: int(c["id"])):
        rows.append({
            "Type": TUMOR, "Id": str(int(c["id"])), "Side": _side(c.get("side")),
            "Volume (mL)": _num(c.get("volume_ml"), 2),
            "Axial diameter (mm)": _num(c.get("axial_diameter_mm"), 1),
            "3D diameter (mm)": _num(c.get("diameter_3d_mm"), 1),
            "Mean probability": _num(c.get("mean_probability"), 3),
            "Core HU": _num(c.get("core_hu"), 1),
            "Kidney contact (%)": None if c.get("kidney_contact") is None else _num(100 * c["kidney_contact"], 1),
            "R.E.N.A.L.": (c.get("nephrometry") or {}).get("score") if c.get("kept") else None,
            "Status": KEPT if c.get("kept") else REJECTED,
            "Reason": c.get("rejected_because") or None,
            "candidate_id": int(c["id"]), "kidney_index": c.get("kidney_index"),
        })
    return rows


def _warning_row(reason: str) -> Dict[str, Any]:
    """A row that says why the result looks implausible (``plausibility``), first in the table."""
    row: Dict[str, Any] = {name: None for name, _ in TABLE_COLUMNS}
    row.update({"Type": WARNING, "Status": IMPLAUSIBLE, "Reason": str(reason), "candidate_id": None,
                "kidney_index": None})
    return row


def kept_ids_after(report: Mapping[str, Any], add: Iterable[int] = (), remove: Iterable[int] = ()) -> Set[int]:
    """Ids of the tumor candidates kept once ``add`` are kept too and ``remove`` are dropped.

    Raises ``ValueError`` for an id that is not a candidate of ``report`` or
    that is both added and removed.
    """
    known = {int(c["id"]) for c in report.get("tumor_candidates", []) or []}
    add_set = {int(i) for i in add}
    remove_set = {int(i) for i in remove}
    unknown = sorted((add_set | remove_set) - known)
    if unknown:
        raise ValueError(f"no tumor candidate with id {', '.join(map(str, unknown))} in this report "
                         f"(candidates: {', '.join(map(str, sorted(known))) or 'none'})")
    both = sorted(add_set & remove_set)
    if both:
        raise ValueError(f"tumor candidate {', '.join(map(str, both))} cannot be both added and removed")
    kept = {int(c["id"]) for c in report.get("tumor_candidates", []) or [] if c.get("kept")}
    return (kept | add_set) - remove_set


def findings_markdown(report: Mapping[str, Any]) -> str:
    """The rows of :func:`findings_rows` as a Markdown table (empty cells for what does not apply)."""
    names = [n for n, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    for row in findings_rows(report):
        lines.append("| " + " | ".join("" if row.get(n) is None else str(row[n]) for n in names) + " |")
    return "\n".join(lines)
