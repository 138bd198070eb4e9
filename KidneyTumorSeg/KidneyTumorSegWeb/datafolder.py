"""The one folder the web app reads and writes: CTs on the server, uploads, run folders, models.

Nothing outside it is reachable through the app: a path from the browser is taken relative to it and
refused when it resolves (links followed) outside; uploads are size-limited, get names the server
makes, and are written into a staging folder that is renamed into ``uploads/`` only once complete;
models are chosen from a list the server makes (the shipped model, ``models/`` here, and any the
administrator named on the command line), never from a path the browser sends.

Layout: ``<root>/`` CTs (files, DICOM series folders, KiTS case folders, at any depth up to
:data:`MAX_DEPTH`); ``<root>/uploads/`` uploaded CTs; ``<root>/models/`` model bundles and nnU-Net
model folders; ``<root>/.kidneytumorseg/`` the server's own files (runs, temporary files).
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

from KidneyTumorSegLib.geometry.volume import InputError

MAX_DEPTH = 4  # how many folder levels the CT list looks through, the data folder first
MAX_LISTED = 500
SERVER_FOLDER = ".kidneytumorseg"
UPLOADS = "uploads"
MODELS = "models"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class DataFolder:
    """``root`` (created if missing) and the upload limit in bytes."""

    def __init__(self, root, max_upload_bytes: int):
        self.root = Path(root).expanduser().resolve()
        self.max_upload_bytes = int(max_upload_bytes)
        for sub in (UPLOADS, MODELS, SERVER_FOLDER):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def home(self) -> Path:
        """The server's own folder (run folders, temporary files)."""
        return self.root / SERVER_FOLDER

    def resolve(self, relative: str) -> Path:
        """``relative`` (as the browser sends it) inside the data folder; ``InputError`` otherwise."""
        text = str(relative or "").strip()
        if not text:
            raise InputError("No path given.")
        if "\x00" in text or Path(text).is_absolute():
            raise InputError(f"'{text}' is not a path inside the data folder.")
        path = (self.root / text).resolve()
        if path != self.root and self.root not in path.parents:
            raise InputError(f"'{text}' is outside the data folder.")
        if SERVER_FOLDER in path.relative_to(self.root).parts:
            raise InputError(f"'{text}' is the server's own folder.")
        if not path.exists():
            raise InputError(f"'{text}' does not exist in the data folder.")
        return path

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def cases(self) -> List[str]:
        """The CTs that can be opened, as paths relative to the data folder (sorted; at most :data:`MAX_LISTED`)."""
        from KidneyTumorSegLib.io.cases import find_cases

        found: List[str] = []
        folders = [self.root]
        for _depth in range(MAX_DEPTH):
            below = []
            for folder in folders:
                try:
                    cases = find_cases(folder)
                except (InputError, OSError):
                    cases = []
                found.extend(self.relative(p) for _id, p in cases if self._listable(p))
                below.extend(p for p in sorted(folder.iterdir()) if p.is_dir() and self._listable(p))
            folders = below
        return sorted(set(found))[:MAX_LISTED]

    def _listable(self, path: Path) -> bool:
        """Inside the data folder (links followed), not hidden, not a model."""
        resolved = Path(path).resolve()
        if self.root not in resolved.parents:
            return False
        parts = resolved.relative_to(self.root).parts
        return not any(p.startswith(".") for p in parts) and parts[0] != MODELS

    def store_upload(self, files: Sequence[Tuple[str, bytes]], check: Callable[[Path], object]) -> Path:
        """Write uploaded ``(name, content)`` files into ``uploads/``: one file as itself, several (a DICOM
        series) as one folder; returns its path. ``check(staged path)`` raises for content that is not
        usable (the core's ``read_volume``); then, as over the size limit or when empty, nothing is kept."""
        total = sum(len(content) for _name, content in files)
        if not files or total == 0:
            raise InputError("The upload is empty.")
        if total > self.max_upload_bytes:
            raise InputError(f"The upload is {total / 1e6:.1f} MB; this server accepts at most "
                             f"{self.max_upload_bytes / 1e6:.0f} MB (kidneytumorseg web --max-upload-mb).")
        names = [_safe_name(name) for name, _content in files]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        staging = self.home / f"upload-{stamp}-{time.monotonic_ns()}"
        staging.mkdir(parents=True)
        try:
            for i, ((_name, content), name) in enumerate(zip(files, names)):
                (staging / (name if len(files) == 1 else f"{i:05d}-{name}")).write_bytes(content)
            check(staging / names[0] if len(files) == 1 else staging)
            target = self._upload_target(stamp, names[0] if len(files) == 1 else "series")
            shutil.move(str(staging / names[0]) if len(files) == 1 else str(staging), str(target))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _upload_target(self, stamp: str, name: str) -> Path:
        for n in range(1, 1000):
            target = self.root / UPLOADS / (f"{stamp}-{name}" if n == 1 else f"{stamp}-{n}-{name}")
            if not target.exists():
                return target
        raise InputError("Too many uploads in one second.")

    def _model_entries(self, extra: Sequence[str]) -> List[Tuple[str, Path]]:
        from KidneyTumorSegLib.bundles.bundle import default_bundle_path
        from KidneyTumorSegLib.bundles.nnunet_folder import looks_like_nnunet

        found = [("Shipped demonstration model (synthetic phantoms only)", Path(default_bundle_path()))]
        for sub in sorted((self.root / MODELS).iterdir()):
            if (sub / "manifest.json").is_file() or looks_like_nnunet(str(sub)):
                found.append((f"{sub.name} (models/)", sub))
        found.extend((f"{Path(p).name} (server)", Path(p)) for p in extra)
        return found

    def models(self, extra: Sequence[str] = ()) -> List[Dict[str, str]]:
        """``[{"title", "value"}]``: the shipped model, each bundle or nnU-Net model folder in ``models/``,
        and the administrator's ``extra`` folders; ``value`` is the key :meth:`model_path` takes."""
        return [{"title": title, "value": str(i)} for i, (title, _path) in enumerate(self._model_entries(extra))]

    def model_path(self, key: str, extra: Sequence[str] = ()) -> str:
        """The folder of the model listed under ``key`` by :meth:`models`; ``InputError`` for another key."""
        entries = self._model_entries(extra)
        if not str(key).isdigit() or int(key) >= len(entries):
            raise InputError("Choose a model from the list.")
        return str(entries[int(key)][1])


def _safe_name(name: str) -> str:
    """A file name the server makes from the browser's: its last component, odd characters replaced."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    cleaned = _SAFE.sub("_", base).lstrip(".") or "upload"
    return cleaned[-120:]
