"""``kidneytumorseg web``: the browser front-end, in ``KidneyTumorSegWeb`` (extra ``[web]``, its own environment:
trame-slicer pins a slicer-core of its own)."""
from __future__ import annotations

import argparse
import logging

WEB_HELP = "start the browser front-end (pip install 'kidneytumorseg[web]')"


def add_web_parser(sub) -> None:
    try:
        from KidneyTumorSegWeb.server import add_arguments
    except ImportError:  # the package is not installed: the command says how to get it
        add_arguments = None
    w = sub.add_parser("web", help=WEB_HELP)
    if add_arguments is not None:
        add_arguments(w)


def cmd_web(args: argparse.Namespace) -> int:
    try:
        import trame_slicer  # noqa: F401
        from KidneyTumorSegWeb.server import run
    except ImportError as exc:
        logging.getLogger("kidneytumorseg").error(
            "the web front-end needs its extra: pip install 'kidneytumorseg[web]' (in an environment of its own: "
            "it brings slicer-core 5.11) (%s)", exc)
        return 2
    return run(args)
