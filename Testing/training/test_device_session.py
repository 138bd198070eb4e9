"""The one-command GPU session (training/device_session.py), run for real on a CPU with small sizes.

A lent GPU machine gives a task 15 minutes in all and at most 10 minutes a
command, and only 8 files come back: the session must keep its time budget,
end with a bundle the core loads, and leave no more than that in OUT.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from KidneyTumorSegLib.bundles.bundle import load_bundle
from KidneyTumorSegLib.engine.networks import build_network
from ktstrain.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEVICE_CONFIGS = ROOT / "training" / "configs" / "device"
TINY_NET = {"channels": [4, 8, 16], "strides": [1, 2, 2], "deep_supervision_levels": 1}


def _tiny_configs(folder: Path) -> Path:
    """The device configurations with a tiny network, patch and epoch, everything else as shipped."""
    folder.mkdir()
    for stem in ("coarse", "kidney", "tumor"):
        cfg = json.loads((DEVICE_CONFIGS / f"{stem}.json").read_text())
        cfg["stage"] = {"network": TINY_NET, "patch_size": [16, 32, 32]}
        cfg["train"].update(iterations_per_epoch=2, batch_size=2, num_workers=0, checkpoint_every=2)
        (folder / f"{stem}.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device")
    cfgs = _tiny_configs(tmp / "configs")
    out, work = tmp / "OUT", tmp / "work"
    budget = 80.0
    cmd = [sys.executable, str(ROOT / "training" / "device_session.py"), "--out", str(out), "--work", str(work),
           "--budget", str(budget), "--device", "cpu", "--workers", "2", "--configs", str(cfgs),
           "--bench-config", str(cfgs / "kidney.json"), "--bench-patch", "16", "32", "32",
           "--bench-phantom-shape", "32", "96", "96", "--bench-cases", "2", "--bench-workers", "0", "--bench-iters", "1",
           "--phantom-shape", "32", "96", "96", "--phantom-seconds", "8", "--eval", "1", "--eval-shape", "32", "96", "96",
           "--export-reserve", "35"]
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return {"proc": proc, "wall": time.monotonic() - t, "budget": budget, "out": out, "work": work, "configs": cfgs}


def test_session_keeps_its_budget_and_every_phase_succeeds(session):
    proc = session["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((session["out"] / "session.json").read_text())
    assert [p for p, v in summary["phases"].items() if v["ok"]] == ["bench", "phantoms", "train", "export", "eval"]
    # the budget holds (plus interpreter start-up and the phases' one-epoch overshoot)
    assert summary["seconds"] <= session["budget"] + 5, summary["seconds"]
    assert session["wall"] <= session["budget"] + 20, session["wall"]
    train = summary["phases"]["train"]
    for role in ("roi", "kidney", "tumor"):
        assert train[role]["epochs"] >= 2 and train[role]["rc"] == 0, train[role]
    assert summary["phases"]["phantoms"]["train"] >= 5 and summary["phases"]["phantoms"]["eval"] == 1
    ev = summary["phases"]["eval"]
    assert [r["case_id"] for r in ev["rows"]] == ["case_00000"] and 0.0 <= ev["rows"][0]["kidney_dice"] <= 1.0
    bench = json.loads((session["out"] / "bench.json").read_text())
    assert bench["device_type"] == "cpu" and bench["precision"] == "fp32"


def test_what_comes_back_fits_a_lent_machines_limits(session):
    out = session["out"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.relative_to(out).as_posix() for p in files) == [
        "bench.json", "bundle/kidney_0.safetensors", "bundle/manifest.json", "bundle/roi_0.safetensors",
        "bundle/tumor_0.safetensors", "session.json", "session.log"]  # at most 8 files, 2 folders down
    assert all(p.stat().st_size < 16 * 2**20 for p in files)


def test_the_sessions_bundle_loads_with_the_shipped_stage4_settings(session):
    b = load_bundle(session["out"] / "bundle")
    assert b.version == "0.6.0-device" and "synthetic phantoms only" in b.description
    assert b.postprocess.tumor_growth_passes == 1 and b.postprocess.tumor_growth_mm == 13.0
    assert b.postprocess.min_candidate_ml == 0.1 and b.postprocess.min_listed_ml == 0.05
    for role in ("roi", "kidney", "tumor"):
        assert list(b.stage(role).network.channels) == TINY_NET["channels"]
        assert b.stage(role).norm_std > 10  # z-score statistics of the session's phantoms
    # training phantoms use seeds never used before; the evaluation phantom is held-out seed 0
    infos = [json.loads(p.read_text()) for p in (session["work"] / "phantoms" / "train").glob("case_*/phantom_info.json")]
    assert infos and min(i["seed"] for i in infos) >= 50000
    assert json.loads((session["work"] / "phantoms" / "eval" / "case_00000" / "phantom_info.json").read_text())["seed"] == 0


def test_device_configurations_fit_the_bundle_and_transfer_limits():
    total = 0
    for stem in ("coarse", "kidney", "tumor"):
        cfg = load_config(DEVICE_CONFIGS / f"{stem}.json")
        net = build_network(cfg.stage.network)
        size = 4 * sum(p.numel() for p in net.parameters())
        assert size < 16 * 2**20  # one file back from the lent machine
        total += size
        stride = 1
        for s in cfg.stage.network.strides:
            stride *= s
        assert all(n % stride == 0 for n in cfg.stage.patch_size), (stem, cfg.stage.patch_size)
    assert total <= 20e6  # the cap on a model shipped in the repository


def test_device_scripts_parse():
    for script in ("device_session.sh", "device_prepare.sh"):
        r = subprocess.run(["bash", "-n", str(ROOT / "training" / script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert "/.devkit/" in (ROOT / ".gitignore").read_text().splitlines()
