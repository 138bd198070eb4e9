"""The web front-end in a real browser: Debian's chromium, headless, driven by Playwright.

One server (``kidneytumorseg web`` on a free localhost port, a fresh data folder holding the demo
phantom), one page, the annotator's path through it: open the phantom, segment (progress shown),
reject the kept tumor, paint a correction with the segment editor, download, start a second run and
cancel it; the downloaded files' voxels are checked against the expected edits. Also: a DICOM series with
a bundle from the models folder gives a DICOM SEG; a path outside the data folder and a file that is not
a CT are refused with the core's messages, the scene unchanged.

Runs in the web environment (``.venv-web``, made by ``bash .ci/run``: trame-slicer pins its own
slicer-core); elsewhere it skips with the reason. ``KTS_WEB_SCREENSHOTS=docs/web`` keeps the screenshots.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MAX_UPLOAD_MB = 2
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def _why_not() -> str:
    try:
        import playwright  # noqa: F401
        import trame_slicer  # noqa: F401
    except ImportError:
        return "needs the web environment (.venv-web: pip install -e '.[web]' playwright; bash .ci/run makes it)"
    if not Path(CHROMIUM).is_file():
        return "needs Debian's chromium (apt-get install chromium; bash .ci/run installs it)"
    return ""


pytestmark = pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "runs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from KidneyTumorSegLib.cli import main

    from helpers_bundle import make_tiny_bundle

    data = tmp_path_factory.mktemp("web") / "data"
    assert main(["phantom", str(data / "demo"), "--seed", "7"]) == 0
    # a small phantom as a DICOM series, and a bundle in the models folder the app lists (tiny, all foreground)
    assert main(["phantom", str(data / "dcm"), "--seed", "3", "--tumors", "1", "--dicom", "--shape", "24", "64", "64",
                 "--spacing", "4", "4", "6"]) == 0
    make_tiny_bundle(data / "models" / "tiny", fg_bias=8.0)
    port = _free_port()
    log = open(data.parent / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "KidneyTumorSegWeb.server", "--data", str(data), "--port",
                             str(port), "--max-upload-mb", str(MAX_UPLOAD_MB)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (data.parent / "server.log").read_text()
            time.sleep(0.5)
    yield {"url": url, "data": data}
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 950}, accept_downloads=True)
        page.set_default_timeout(30000)
        page.goto(server["url"])
        page.wait_for_selector("#kts-panel")
        yield page
        browser.close()


def _shot(page, name: str) -> None:
    folder = os.environ.get("KTS_WEB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def _download(page, kind: str, folder: Path) -> Path:
    with page.expect_download() as info:
        page.click(f"#kts-download-{kind.replace('.', '-')}")
    target = folder / info.value.suggested_filename
    info.value.save_as(str(target))
    return target


def _seg_map(path: Path):
    import slicerio

    seg = slicerio.read_segmentation(str(path))
    return np.asarray(seg["voxels"]), seg


def _error_text(page) -> str:
    page.wait_for_selector("#kts-error")
    return page.inner_text("#kts-error")


def _close_error(page) -> None:
    page.evaluate("trame.state.set('kts_error', '')")
    page.wait_for_selector("#kts-error", state="detached")


def _choose(page, select: str, item: str) -> None:
    """Pick ``item`` in the Vuetify select ``select`` (its menu opens from the field around the input)."""
    page.locator(select).locator("xpath=ancestor::div[contains(@class,'v-field')][1]").click()
    page.locator(".v-overlay .v-list-item", has_text=item).first.click()


def _open_case(page, name: str) -> None:
    _choose(page, "#kts-case", name)
    page.click("#kts-open")
    page.wait_for_function(f"trame.state.get('kts_case_name') === '{Path(name).name}' && !trame.state.get('kts_error')")


def test_refusals_leave_the_app_as_it_was(page, server, tmp_path):
    """A path outside the data folder, a file that is not a CT, uploads over the limit (refused in the browser,
    and by the server when a client skips that check): the core's message, nothing opened or kept."""
    page.evaluate("trame.trigger('kts_open', ['../../etc/passwd'])")
    assert "outside the data folder" in _error_text(page)
    _close_error(page)
    not_ct = tmp_path / "notes.nii.gz"
    not_ct.write_bytes(b"this is not an image")
    page.set_input_files("#kts-upload", str(not_ct))
    assert "notes" in _error_text(page)
    _close_error(page)
    big = tmp_path / "big.nii.gz"
    big.write_bytes(b"x" * 3_000_000)
    page.set_input_files("#kts-upload", str(big))
    assert _error_text(page) == f"The upload is 3.0 MB; this server accepts at most {MAX_UPLOAD_MB} MB."
    _close_error(page)
    page.evaluate("trame.trigger('kts_upload', [[{name: 'big.nii.gz', size: 3000000, content: new Uint8Array(3000000)}]])")
    assert _error_text(page).startswith(f"The upload is 3.0 MB; this server accepts at most {MAX_UPLOAD_MB} MB")
    _close_error(page)
    assert page.locator("#kts-case-name").count() == 0  # no CT was opened
    assert list((server["data"] / "uploads").iterdir()) == []  # nothing kept on disk


def test_an_uploaded_ct_is_kept_in_uploads_and_opened(page, server):
    source = server["data"] / "dcm" / "case_00000" / "imaging.nii.gz"
    page.set_input_files("#kts-upload", str(source))
    page.wait_for_function("trame.state.get('kts_case_name').endsWith('-imaging') && !trame.state.get('kts_uploading')")
    (kept,) = (server["data"] / "uploads").iterdir()
    assert kept.name.endswith("-imaging.nii.gz") and kept.read_bytes() == source.read_bytes()
    assert f"uploads/{kept.name}" in page.evaluate("trame.state.get('kts_cases')")


def test_segment_reject_paint_download(page, server, tmp_path):
    _shot(page, "1-start")
    _open_case(page, "demo/case_00000")
    _shot(page, "2-ct-open")
    page.click("#kts-segment")
    page.wait_for_selector("#kts-progress")
    page.wait_for_function("trame.state.get('kts_fraction') > 0.1")  # per-stage progress reaches the browser
    _shot(page, "3-progress")
    page.wait_for_selector("#kts-findings", timeout=180000)
    page.wait_for_timeout(1500)  # the views' next frame
    _shot(page, "4-result")
    before, seg = _seg_map(_download(page, "seg.nrrd", tmp_path / "a"))
    assert (before == 3).sum() > 1000 and {1, 2} <= set(np.unique(before))

    page.click("#kts-reject-1")
    page.wait_for_selector("#kts-accept-1")
    _shot(page, "5-candidate-rejected")
    rejected, _ = _seg_map(_download(page, "seg.nrrd", tmp_path / "b"))
    tumor = before == 3
    assert not (rejected == 3).any()  # the only kept tumor is gone
    np.testing.assert_array_equal(rejected[~tumor], before[~tumor])  # nothing else changed
    assert set(np.unique(rejected[tumor])) <= {0, 1, 2}  # its voxels went to a kidney or background

    _paint(page)
    _shot(page, "6-painted")
    painted, painted_seg = _seg_map(_download(page, "seg.nrrd", tmp_path / "c"))
    changed = painted != rejected
    assert changed.sum() >= 20, "the paint stroke changed no voxels"
    assert set(np.unique(painted[changed])) == {3}  # painted as Kidney tumor, nothing else touched
    # trame-slicer's brush is a sphere by default: the stroke's spheres are centred on the slice the axial view
    # shows (the middle one), so the painted slices are too
    k = np.nonzero(changed)[2]  # voxels are (i, j, k)
    assert abs(float(np.mean(k)) - (painted.shape[2] - 1) / 2) <= 2 and k.max() - k.min() >= 2
    np.testing.assert_allclose(painted_seg["ijkToLPS"], seg["ijkToLPS"])
    _check_nifti(_download(page, "nifti", tmp_path / "d"), painted)

    page.click("#kts-segment")  # a second run, cancelled: the edited result stays as it was
    page.wait_for_selector("#kts-progress")
    page.click("#kts-cancel")
    page.wait_for_selector("#kts-messages:has-text('Cancelled; the scene was not changed.')")
    _shot(page, "7-cancelled")
    after_cancel, _ = _seg_map(_download(page, "seg.nrrd", tmp_path / "e"))
    np.testing.assert_array_equal(after_cancel, painted)


def test_dicom_series_with_a_model_from_the_models_folder_gives_a_dicom_seg(page, server, tmp_path):
    """A DICOM series from the data folder, the bundle in models/ chosen from the list: the DICOM SEG download
    holds the same voxels as the .seg.nrrd one, frame by frame on the source slices."""
    from helpers_dicom import seg_voxels

    page.click("#kts-tool-panel")
    _open_case(page, "dcm/case_00000/dicom")
    _choose(page, "#kts-model", "tiny (models/)")
    page.click("#kts-segment")
    page.wait_for_function("trame.state.get('kts_has_result') && !trame.state.get('kts_running')", timeout=120000)
    nrrd, _ = _seg_map(_download(page, "seg.nrrd", tmp_path / "a"))
    nrrd = nrrd.transpose(2, 1, 0)  # -> [k, j, i]
    files = sorted((server["data"] / "dcm" / "case_00000" / "dicom").glob("*.dcm"))
    seg, ds = seg_voxels(_download(page, "dicom-seg", tmp_path / "b"), files, nrrd.shape)
    assert nrrd.any() and np.array_equal(seg, nrrd)
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"  # reviewed in the app


def _paint(page) -> None:
    """The segment editor's Paint on the Kidney tumor segment: one short stroke in the axial view."""
    page.click("#kts-tool-editor")
    page.locator(".v-list-item").filter(has=page.locator("input")).nth(2).click()  # Kidney tumor
    page.locator("button:has(.mdi-brush)").last.click()  # the toolbar's Paint (the panel's comes first)
    page.wait_for_function("trame.state.get('SegmentEditorState__active_effect_name').endsWith('Paint')")
    view = page.locator("img.image-display-area").first.bounding_box()  # the axial view (layout's first)
    x, y = view["x"] + view["width"] * 0.5, view["y"] + view["height"] * 0.45
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + 3 * step, y, steps=2)
    page.mouse.up()
    page.wait_for_function("trame.state.get('SegmentEditorState__can_undo')")  # the stroke is on the stack
    page.wait_for_timeout(1000)  # the views' next frame, for the screenshot
    page.click("#kts-tool-panel")


def _check_nifti(path: Path, seg_map: np.ndarray) -> None:
    """The NIfTI download is the same segmentation as KiTS labels (1 kidney, 2 tumor)."""
    import SimpleITK as sitk

    kits = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)  # [k,j,i] -> i, j, k
    expected = np.where(seg_map == 3, 2, np.where(seg_map > 0, 1, 0))
    np.testing.assert_array_equal(kits, expected)
