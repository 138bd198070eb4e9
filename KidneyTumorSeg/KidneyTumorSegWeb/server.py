"""``kidneytumorseg web``: start the browser front-end (``pip install 'kidneytumorseg[web]'``).

Binds to 127.0.0.1 unless ``--host`` says otherwise (then anyone who reaches the port can read and
write the data folder through the app: put it behind a reverse proxy with authentication).
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

DEFAULT_PORT = 8080
DEFAULT_MAX_UPLOAD_MB = 1024
QUIET_LOGGERS = ("trame", "trame_client", "trame_server", "trame_slicer", "wslink", "aiohttp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="kidneytumorseg-data",
                   help="the data folder: CTs to open, uploads/, models/ (created if missing; nothing outside it "
                        "is read or written through the app; default: ./kidneytumorseg-data)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload accepted, in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    p.add_argument("--model", action="append", default=[], metavar="FOLDER",
                   help="a model bundle or nnU-Net model folder to offer besides those in <data>/models/ "
                        "(repeatable)")
    p.add_argument("--open-browser", action="store_true", help="open the system browser on the app")


def run(args: argparse.Namespace) -> int:
    """Start the server (blocks until it is stopped); 2 for unusable arguments."""
    from KidneyTumorSegLib.bundles.nnunet_folder import looks_like_nnunet

    from .datafolder import DataFolder

    log = logging.getLogger("kidneytumorseg.web")
    for name in QUIET_LOGGERS:  # their INFO lines are every widget's template, one per line
        logging.getLogger(name).setLevel(logging.WARNING)
    for model in args.model:
        from pathlib import Path

        if not ((Path(model) / "manifest.json").is_file() or looks_like_nnunet(model)):
            log.error("--model %s: not a model bundle (manifest.json) or an nnU-Net model folder", model)
            return 2
    if args.max_upload_mb <= 0:
        log.error("--max-upload-mb must be positive")
        return 2
    folder = DataFolder(args.data, int(args.max_upload_mb * 1e6))
    from .app import WebApp

    app = WebApp(folder, args.model)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who reaches this port can read and write %s through the app",
                    args.host, folder.root)
    log.info("data folder: %s", folder.root)
    app.server.start(host=args.host, port=args.port, open_browser=args.open_browser, exec_mode="main")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="kidneytumorseg web", description=__doc__.splitlines()[0])
    add_arguments(p)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
