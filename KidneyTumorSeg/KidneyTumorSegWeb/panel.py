"""The KidneyTumorSeg panel in the browser: CT, model, Segment / Cancel with progress, findings, downloads.

Widgets only: each control sets a state variable or calls a trigger that ``app.WebApp`` answers. The
element ids (``kts-...``) are what the browser test clicks.
"""
from __future__ import annotations

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from .session import DOWNLOADS, QUALITIES

# state variables the panel reads and writes (set by app.WebApp)
STATE_DEFAULTS = {
    "kts_cases": [], "kts_case": None, "kts_models": [], "kts_model": "0", "kts_quality": "fast",
    "kts_case_name": "", "kts_has_ct": False, "kts_running": False, "kts_fraction": 0.0, "kts_stage": "",
    "kts_messages": [], "kts_error": "", "kts_rows": [], "kts_has_result": False, "kts_dicom": False,
    "kts_uploading": False, "kts_max_upload": 0,
}

# client side: refuse an upload over the server's limit before sending it (the server checks again)
_UPLOAD_JS = (
    "const files = Array.from($event.target.files || []);"
    "const total = files.reduce((s, f) => s + f.size, 0);"
    "if (!files.length) { return; }"
    "if (total > kts_max_upload) { kts_error = 'The upload is ' + (total / 1e6).toFixed(1) + "
    "' MB; this server accepts at most ' + (kts_max_upload / 1e6).toFixed(0) + ' MB.'; return; }"
    "kts_uploading = true; trigger('kts_upload', [$event.target.files]);"
)


def build_panel() -> None:
    """The panel's widgets, in the current layout context (the app's drawer)."""
    with v3.VContainer(classes="pa-2", id="kts-panel"):
        html.Div("KidneyTumorSeg", classes="text-h6 mb-2")
        v3.VAlert(v_if="kts_error", text=("kts_error",), type="error", density="compact", closable=True,
                  id="kts-error", classes="mb-2", click_close="kts_error = ''")
        _ct_section()
        _run_section()
        _findings_section()
        _download_section()


def _ct_section() -> None:
    html.Div("CT", classes="text-subtitle-2")
    v3.VFileInput(label="Upload a CT (file, or a DICOM series' files)", multiple=True, density="compact",
                  id="kts-upload", disabled=("kts_running || kts_uploading",), change=_UPLOAD_JS,
                  hide_details=True, prepend_icon="mdi-upload")
    v3.VProgressLinear(v_if="kts_uploading", indeterminate=True, classes="my-1")
    with html.Div(classes="d-flex align-center mt-2"):
        v3.VSelect(label="or a CT in the data folder", items=("kts_cases",), v_model=("kts_case",),
                   density="compact", hide_details=True, id="kts-case")
        v3.VBtn("Open", click="trigger('kts_open', [kts_case])", disabled=("!kts_case || kts_running",),
                id="kts-open", classes="ml-2")
    html.Div("{{ kts_case_name }}", v_if="kts_has_ct", classes="text-caption mt-1", id="kts-case-name")


def _run_section() -> None:
    v3.VSelect(label="Model", items=("kts_models",), v_model=("kts_model",), density="compact",
               hide_details=True, classes="mt-3", id="kts-model", disabled=("kts_running",))
    v3.VSelect(label="Quality (test-time augmentation)", items=("kts_qualities", list(QUALITIES)),
               v_model=("kts_quality",), density="compact", hide_details=True, classes="mt-2",
               disabled=("kts_running",))
    with html.Div(classes="d-flex mt-2"):
        v3.VBtn("Segment", color="primary", click="trigger('kts_segment', [kts_model, kts_quality])",
                disabled=("!kts_has_ct || kts_running",), id="kts-segment")
        v3.VBtn("Cancel", click="trigger('kts_cancel')", disabled=("!kts_running",), id="kts-cancel", classes="ml-2")
    v3.VProgressLinear(model_value=("kts_fraction * 100",), height=8, classes="mt-2", id="kts-progress",
                       v_if="kts_running")
    html.Div("{{ kts_stage }}", v_if="kts_running", classes="text-caption", id="kts-stage")
    html.Div("{{ m }}", v_for="m in kts_messages", classes="text-caption mt-1", style="white-space: pre-line;",
             id="kts-messages")


def _findings_section() -> None:
    html.Div("Findings", v_if="kts_has_result", classes="text-subtitle-2 mt-3")
    with v3.VTable(v_if="kts_has_result", density="compact", id="kts-findings"):
        with html.Thead(), html.Tr():
            for title in ("Finding", "Id", "Side", "mL", "Axial mm", "R.E.N.A.L.", "Status", ""):
                html.Th(title)
        with html.Tbody(), html.Tr(v_for="row in kts_rows", key="row.key"):
            for key in ("type", "id", "side", "volume", "diameter", "renal", "status"):
                html.Td(f"{{{{ row.{key} }}}}")
            with html.Td():
                v3.VBtn("Reject", v_if="row.candidate !== null && row.status === 'kept'", size="x-small",
                        click="trigger('kts_keep', [row.candidate, false])", id=("`kts-reject-${row.candidate}`",),
                        disabled=("kts_running",))
                v3.VBtn("Accept", v_if="row.candidate !== null && row.status === 'rejected'", size="x-small",
                        click="trigger('kts_keep', [row.candidate, true])", id=("`kts-accept-${row.candidate}`",),
                        disabled=("kts_running",))


def _download_section() -> None:
    html.Div("Download the segmentation as it is now", v_if="kts_has_result", classes="text-subtitle-2 mt-3")
    with html.Div(v_if="kts_has_result", classes="d-flex flex-wrap"):
        for kind, (suffix, what) in DOWNLOADS.items():
            v3.VBtn(suffix, size="small", classes="mr-1 mb-1", id=f"kts-download-{kind.replace('.', '-')}",
                    title=what, disabled=("!kts_dicom",) if kind == "dicom-seg" else False,
                    click=(f"utils.download(kts_case_name + '{suffix}', trigger('kts_download', ['{kind}']), "
                           "'application/octet-stream')"))
