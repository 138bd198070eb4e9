"""Command-line options for real models: nnU-Net v2 folders as ``--model``, and ``kidneytumorseg import-model``."""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Dict

log = logging.getLogger("kidneytumorseg")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options that apply when ``--model`` (or an import source) is an nnU-Net model."""
    g = p.add_argument_group("nnU-Net models")
    g.add_argument("--folds", nargs="+", metavar="F", help="folds to use, e.g. 0 2 or all (default: every fold present)")
    g.add_argument("--configuration", help="2d, 3d_lowres, 3d_fullres or 3d_cascade_fullres when a dataset folder "
                                           "holds several (default: the first of 3d_fullres, 3d_cascade_fullres, "
                                           "3d_lowres, 2d present)")
    g.add_argument("--checkpoint", choices=["checkpoint_final.pth", "checkpoint_best.pth"],
                   help="default: checkpoint_final.pth, else checkpoint_best.pth")
    g.add_argument("--orientation", help="SimpleITK orientation code of the arrays the model was trained on "
                                         "(default: RAS for TotalSegmentator-style labels, IPL (KiTS files) otherwise)")
    g.add_argument("--labels", nargs="+", metavar="ROLE=NAME[+NAME]",
                   help="which labels are kidney / tumor / cyst, replacing the built-in name table, "
                        "e.g. kidney=kidney_left+kidney_right tumor=")


def model_options(args) -> Dict[str, Any]:
    """The nnU-Net options given (None where not), as :func:`nnunet_bundle.bundle_from_nnunet` takes them."""
    from .bundles.nnunet_labels import parse_overrides

    labels = getattr(args, "labels", None)
    return {"configuration": getattr(args, "configuration", None), "folds": getattr(args, "folds", None),
            "checkpoint": getattr(args, "checkpoint", None), "orientation": getattr(args, "orientation", None),
            "labels": parse_overrides(labels) if labels else None}


def add_import_parser(sub) -> None:
    im = sub.add_parser("import-model", help="write a bundle whose stages come from nnU-Net models or other bundles",
                        description="Write a small bundle (manifest.json) that takes each cascade stage from a "
                                    "source: an nnU-Net v2 model (trained-model folder, dataset folder or zip; "
                                    "referenced, every file it reads recorded by SHA-256 and checked at load) or a "
                                    "KidneyTumorSeg bundle folder (that stage's weights copied).")
    im.add_argument("-o", "--output", required=True, help="bundle folder to write")
    im.add_argument("--roi", help="stage 1 (region of interest) source; default: none (the whole scan)")
    im.add_argument("--kidney", required=True, help="stage 2 (kidneys) source")
    im.add_argument("--tumor", help="stage 3 (tumors) source; default: none (kidneys only)")
    im.add_argument("--name", default="", help="bundle name (default: the folder's name)")
    im.add_argument("--overwrite", action="store_true")
    add_model_options(im)


def cmd_import_model(args) -> int:
    from .bundles.bundle import BundleError
    from .bundles.nnunet_bundle import import_model

    sources = {r: getattr(args, r) for r in ("roi", "kidney", "tumor") if getattr(args, r)}
    opts = model_options(args)
    try:
        bundle = import_model(args.output, sources, name=args.name, overwrite=args.overwrite, **opts)
    except (BundleError, FileExistsError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    log.info("wrote %s", bundle.path)
    print(json.dumps(bundle.card(), indent=2))
    return 0
