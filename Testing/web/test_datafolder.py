"""The web app's data folder: nothing outside it reachable, uploads size-limited, checked and atomic."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from KidneyTumorSegLib.geometry.volume import InputError

from KidneyTumorSegWeb.datafolder import DataFolder


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data" / "ct").mkdir(parents=True)
    (tmp_path / "data" / "ct" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("outside")
    return DataFolder(tmp_path / "data", max_upload_bytes=1000)


@pytest.mark.parametrize("path, message", [
    ("../secret.txt", "is outside the data folder"),
    ("ct/../../secret.txt", "is outside the data folder"),
    ("/etc/passwd", "is not a path inside the data folder"),
    ("", "No path given."),
    (".kidneytumorseg", "is the server's own folder"),
    ("ct/missing.nii.gz", "does not exist in the data folder"),
])
def test_paths_outside_or_missing_are_refused(folder, path, message):
    with pytest.raises(InputError, match=message):
        folder.resolve(path)


def test_a_link_out_of_the_data_folder_is_refused(folder, tmp_path):
    os.symlink(tmp_path / "secret.txt", folder.root / "ct" / "link.nii.gz")
    with pytest.raises(InputError, match="outside the data folder"):
        folder.resolve("ct/link.nii.gz")
    assert folder.resolve("ct/a.nii.gz") == folder.root / "ct" / "a.nii.gz"


def test_uploads_over_the_limit_or_refused_leave_nothing(folder):
    with pytest.raises(InputError, match="The upload is 0.0 MB; this server accepts at most 0 MB"):
        folder.store_upload([("big.nii.gz", b"x" * 1001)], check=lambda p: None)

    def refuse(path):
        assert path.is_file() and path.read_bytes() == b"abc"  # checked where it is staged
        raise InputError("not a CT")

    with pytest.raises(InputError, match="not a CT"):
        folder.store_upload([("../../evil.nii.gz", b"abc")], check=refuse)
    with pytest.raises(InputError, match="The upload is empty."):
        folder.store_upload([], check=lambda p: None)
    assert list((folder.root / "uploads").iterdir()) == []
    assert [p.name for p in folder.home.iterdir()] == []  # no staging folder left behind


def test_uploads_get_server_made_names_inside_uploads(folder):
    one = folder.store_upload([("../../evil name.nii.gz", b"abc")], check=lambda p: None)
    assert one.parent == folder.root / "uploads" and one.name.endswith("-evil_name.nii.gz")
    series = folder.store_upload([("1.dcm", b"a"), ("2.dcm", b"b")], check=lambda p: None)
    assert series.is_dir() and sorted(p.name for p in series.iterdir()) == ["00000-1.dcm", "00001-2.dcm"]


def test_models_are_chosen_from_the_list(folder):
    models = folder.models()
    assert models[0]["value"] == "0" and "Shipped" in models[0]["title"]
    assert folder.model_path("0").endswith("default")
    for key in ("1", "../x", "/tmp"):
        with pytest.raises(InputError, match="Choose a model from the list."):
            folder.model_path(key)


def test_web_command_without_its_extra_says_how_to_install(tmp_path):
    try:
        import trame_slicer  # noqa: F401
        pytest.skip("the [web] extra is installed here: the browser test covers the command")
    except ImportError:
        pass
    out = subprocess.run([sys.executable, "-m", "KidneyTumorSegLib.cli", "web", "--data", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "pip install 'kidneytumorseg[web]'" in out.stderr
