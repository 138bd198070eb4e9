"""The web app: trame-slicer's scene, views and segment editor, with the KidneyTumorSeg panel beside them.

``WebApp`` wires the browser's triggers to a :class:`session.WebSession` and polls a running segmentation
from trame's asyncio loop (the Slicer module polls the same background process from a Qt timer). Errors
reach the browser as the core's messages in the panel; the scene is unchanged by a failed step.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Dict, List, Sequence

from trame.app import TrameApp
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic.layout_button_logic import LayoutButtonLogic
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.app.ui import (ControlButton, LayoutButton, SegmentEditorToolbarUI, SegmentEditorUI,
                                 SegmentEditorUndoRedoUI, ViewerLayout)
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories

from .datafolder import DataFolder
from .panel import STATE_DEFAULTS, build_panel

log = logging.getLogger("kidneytumorseg.web")
POLL_SECONDS = 0.2
PANEL, EDITOR = "KidneyTumorSegPanel", SegmentEditorUI.__name__
DRAWER_WIDTH = 480


class WebApp(TrameApp):
    """One server: one scene (trame-slicer is single-user: every browser tab sees the same scene)."""

    def __init__(self, folder: DataFolder, extra_models: Sequence[str] = (), server=None):
        super().__init__(server)
        from KidneyTumorSegSlicer import headless

        from .session import WebSession

        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        logics = {"volumes": self.slicer_app.volumes_logic, "segmentations": self.slicer_app.segmentations_logic,
                  "subjecthierarchy": self.slicer_app.subject_hierarchy_logic}
        headless.install(self.slicer_app.scene, logics, self.slicer_app.app_logic, folder.home)
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.layout_logic = LayoutButtonLogic(self.server, self.slicer_app)
        self.folder = folder
        self.session = WebSession(folder, extra_models)
        self.state.update(STATE_DEFAULTS)
        self.state.update({"trame__title": "KidneyTumorSeg", "kts_max_upload": folder.max_upload_bytes,
                           "kts_models": folder.models(extra_models), "kts_cases": folder.cases()})
        self._upload_parts: List = []
        self._build_ui()
        for name, handler in (("kts_open", self.on_open), ("kts_upload", self.on_upload),
                              ("kts_segment", self.on_segment), ("kts_cancel", self.on_cancel),
                              ("kts_keep", self.on_keep), ("kts_download", self.on_download)):
            self.server.trigger(name)(handler)
        self.server.controller.on_server_ready.add(self._start_polling)

    def _build_ui(self) -> None:
        with ViewerLayout(self.server, title="KidneyTumorSeg", is_drawer_visible=True) as self.ui:
            self.ui.title.set_text("KidneyTumorSeg")
            self.ui.drawer.width = DRAWER_WIDTH  # the findings table's columns
            self.state["kts_tool"] = PANEL
            with self.ui.drawer:
                with v3.VSheet(v_if=f"kts_tool === '{PANEL}'"):
                    build_panel()
                self.editor_ui = SegmentEditorUI(v_if=(f"kts_tool === '{EDITOR}'",))
            with self.ui.toolbar:
                ControlButton(icon="mdi-hospital-box-outline", name="KidneyTumorSeg", click=f"kts_tool = '{PANEL}'",
                              active=(f"kts_tool === '{PANEL}'",), classes="mt-1", id="kts-tool-panel")
                LayoutButton(classes="mt-1")
                ControlButton(icon="mdi-pencil-box-multiple-outline", name="Segment editor",
                              click=f"kts_tool = '{EDITOR}'", active=(f"kts_tool === '{EDITOR}'",), classes="mt-1",
                              id="kts-tool-editor", disabled=("!kts_has_result",))
                with html.Div(v_if="kts_has_result"):  # the editor works on a result, not on a bare CT
                    SegmentEditorToolbarUI(editor_ui=self.editor_ui)
            with self.ui.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=self.editor_ui, v_if=(f"kts_tool === '{EDITOR}'",))
            with self.ui.content:
                self.layout_logic.layout_manager.initialize_layout_grid(self.ui)
        self.editor_logic.set_ui(self.editor_ui)

    # -- triggers from the browser ------------------------------------------------------------------

    def on_open(self, relative: str) -> None:
        with self._reporting():
            self._show_ct(self.folder.resolve(relative))

    def on_upload(self, files) -> None:
        """Files from the upload field (trame sends each as name/size/content): checked, stored, opened."""
        from KidneyTumorSegLib.io.volume_io import read_volume

        with self._reporting():
            try:
                parts = [(f.get("name", ""), _content(f)) for f in (files or [])]
                read = []  # the CT as the check read it, so that opening it does not read it again
                stored = self.folder.store_upload(parts, check=lambda staged: read.append(read_volume(staged)))
                self._show_ct(stored, read[0])
                self.state.kts_cases = self.folder.cases()
            finally:
                self.state.kts_uploading = False

    def on_segment(self, model_key: str, quality: str) -> None:
        with self._reporting():
            self.session.start(str(model_key), str(quality))
            self.state.update({"kts_running": True, "kts_fraction": 0.0, "kts_stage": "starting",
                               "kts_messages": []})

    def on_cancel(self) -> None:
        with self._reporting():
            self.session.cancel()
            self._show_status()

    def on_keep(self, candidate_id, keep) -> None:
        with self._reporting():
            self.session.set_kept(int(candidate_id), bool(keep))
            self._show_findings()

    def on_download(self, kind: str):
        """The segmentation as it is now, as an attachment the browser saves (``utils.download``)."""
        try:
            _name, data = self.session.download(str(kind))
        except Exception as exc:  # noqa: BLE001 - any failure is shown, the scene is unchanged
            self._error(exc)
            return None
        return self.server.protocol.addAttachment(data)

    # -- showing --------------------------------------------------------------------------------------

    def _show_ct(self, path, image=None) -> None:
        warnings = self.session.open_ct(path, image)
        self.editor_logic.segmentation_editor.deactivate_effect()  # its segmentation went with the last CT
        self._show_in_slice_views(self.session.volumeNode)
        self.state.update({"kts_has_ct": True, "kts_case_name": self.session.caseName, "kts_has_result": False,
                           "kts_rows": [], "kts_dicom": bool(self.session.dicomFiles), "kts_messages": warnings,
                           "kts_error": "", "kts_tool": PANEL})

    def _show_in_slice_views(self, node) -> None:
        """The CT in the slice views; the 3D view gets the segments' surfaces only (volume rendering, which
        trame-slicer's ``show_volume`` adds, re-renders on the CPU at every interaction of a GPU-less server)."""
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(node)
        display.show_volume_in_slice_foreground(None)
        display.reset_views()

    def _show_status(self) -> None:
        status = self.session.status()
        self.state.update({"kts_running": status["running"], "kts_fraction": status["fraction"],
                           "kts_stage": status["stage"], "kts_messages": status["messages"]})
        if status["status"] == "failed":
            self.state.kts_error = "; ".join(status["messages"]) or "The segmentation failed."

    def _show_result(self) -> None:
        """A finished run's segmentation in the views and the segment editor, its findings in the panel."""
        self.editor_logic.on_volume_changed(self.session.volumeNode)
        self.editor_logic.data.segment_display.show_3d = True  # the editor's own switch for the 3D surfaces
        self.editor_logic.segmentation_editor.set_surface_representation_enabled(True)
        self.slicer_app.display_manager.reset_views()
        self.state.kts_has_result = True
        self._show_findings()

    def _show_findings(self) -> None:
        self.state.kts_rows = rows_for_browser(self.session.findings())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if not self.session.running:
                continue
            with self.state, self._reporting():
                self.session.poll()
                self._show_status()
                if self.session.run.status == "done":
                    self._show_result()

    def _start_polling(self, **_kwargs) -> None:
        self._poller = asyncio.ensure_future(self._poll_forever())

    # -- errors -----------------------------------------------------------------------------------------

    def _reporting(self):
        return _Reporting(self)

    def _error(self, exc: BaseException) -> None:
        log.warning("KidneyTumorSeg web: %s", exc)
        self.state.kts_error = str(exc) or type(exc).__name__


class _Reporting:
    """A step whose failure is shown in the panel (the core's message), not raised into trame's loop."""

    def __init__(self, app: WebApp):
        self.app = app

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None and isinstance(exc, Exception):
            if not isinstance(exc, (ValueError, RuntimeError, OSError)):
                log.exception("KidneyTumorSeg web: unexpected error")
            self.app._error(exc)
            return True
        return False


def rows_for_browser(rows: List[Dict]) -> List[Dict]:
    """The findings rows (``findings_table.findings_rows``) with the fields the panel's table shows."""
    out = []
    for i, row in enumerate(rows):
        out.append({"key": i, "type": row.get("Type") or "", "id": row.get("Id") or "", "side": row.get("Side") or "",
                    "volume": _text(row.get("Volume (mL)")), "diameter": _text(row.get("Axial diameter (mm)")),
                    "renal": row.get("R.E.N.A.L.") or "", "status": row.get("Status") or "",
                    "candidate": row.get("candidate_id")})
    return out


def _text(value) -> str:
    return "" if value is None else str(value)


def _content(file: Dict) -> bytes:
    content = file.get("content") or b""
    return b"".join(content) if isinstance(content, list) else bytes(content)
