"""The sentences a segmentation's report, the command line and the Slicer status line show."""
from __future__ import annotations

from typing import List, Sequence

from ..config import PostprocessConfig
from ..findings.findings import Candidate, Kidney
from .candidates import OUTSIDE, SMALL


def describe(kidneys: Sequence[Kidney], cands: Sequence[Candidate], post: PostprocessConfig,
              specks: int = 0, side_notes: Sequence[str] = (), tumors: bool = True) -> List[str]:
    msgs = []
    sides = [k.side for k in kidneys]
    if sides == ["horseshoe"]:
        msgs.append("one horseshoe kidney found (crossing the midline); it is split at the midline into left and right segments")
    elif len(kidneys) == 1:
        msgs.append(f"one kidney found ({sides[0]}); no second kidney was detected")
    else:
        msgs.append(f"{len(kidneys)} kidneys found ({', '.join(sides)})")
    for k in kidneys:
        if k.touches_fov_edge:
            msgs.append(f"the {k.side} kidney reaches the edge of the scan: its volume may be underestimated")
    msgs.extend(side_notes)
    kept = [c for c in cands if c.kept]
    rejected = [c for c in cands if not c.kept]
    if kept:
        msgs.append(f"{len(kept)} tumor(s) kept (mean probability >= {post.candidate_threshold:g}): " +
                    ", ".join(f"{c.side} {c.diameter_3d_mm:.0f} mm{_renal(c)}" for c in kept))
    elif tumors:
        msgs.append("no tumor found")
    else:
        msgs.append("the model has no tumor stage: kidneys only, no tumor was looked for")
    cysts = [c for c in rejected if c.rejected_because.startswith("water attenuation")]
    outside = [c for c in rejected if c.rejected_because.startswith(OUTSIDE)]
    small = [c for c in rejected if c.rejected_because.startswith(SMALL)]
    if len(rejected) > len(cysts) + len(outside) + len(small):
        msgs.append(f"{len(rejected) - len(cysts) - len(outside) - len(small)} candidate(s) rejected below the threshold "
                    f"{post.candidate_threshold:g}")
    if outside:
        msgs.append(f"{len(outside)} candidate(s) bordering the kidney over less than {100 * post.min_kidney_contact:g} % "
                    "of their surface rejected as probably outside the kidney: " +
                    ", ".join(f"{c.side} {c.diameter_3d_mm:.0f} mm, {100 * c.kidney_contact:.0f} %" for c in outside))
    if cysts:
        msgs.append(f"{len(cysts)} candidate(s) of water attenuation (core <= {post.cyst_max_hu:g} HU) rejected as probable "
                    "simple cysts: " + ", ".join(f"{c.side} {c.diameter_3d_mm:.0f} mm, {c.core_hu:.0f} HU" for c in cysts))
    if small:
        msgs.append(f"{len(small)} candidate(s) under {post.min_candidate_ml:g} mL rejected as too small: " +
                    ", ".join(f"{c.side} {c.volume_ml:.2f} mL" for c in small))
    if specks:
        msgs.append(f"{specks} speck(s) of tumor probability under {post.min_listed_ml:g} mL not listed as candidates")
    return msgs


def _renal(c: Candidate) -> str:
    """A kept tumor's R.E.N.A.L. score for the messages (decision support), or nothing."""
    return f" (R.E.N.A.L. {c.nephrometry['score']})" if c.nephrometry else ""
