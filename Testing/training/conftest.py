"""Fixtures the ktstrain test files share, built once a session: small KiTS-like cases and their stage caches,
phantoms and tiny training runs of every stage (these files were one module; the fixtures are built once as then)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers_train import OPTS, make_case, stages, tiny_config, write_case
from ktstrain.data import discover_cases
from ktstrain.preprocess import preprocess_stage
from ktstrain.train import train_stage


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kits")
    write_case(root / "case_00000", *make_case(0, cyst=False), kits19_axes=True)
    write_case(root / "case_00001", *make_case(1, cyst=True))
    write_case(root / "case_00002", *make_case(2, cyst=True))
    return root


@pytest.fixture(scope="session")
def caches(data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    cases = discover_cases(data_root)
    return root, {role: preprocess_stage(cases, st, root, OPTS) for role, st in stages().items()}


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "phantoms"
    from KidneyTumorSegLib.phantom import write_phantom_cases

    write_phantom_cases(root, 4, seed0=300, shape=(32, 96, 96), spacing=(3.5, 3.5, 5.0), n_tumors=1)
    return discover_cases(root)


@pytest.fixture(scope="session")
def runs(phantoms, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for role in ("roi", "kidney", "tumor"):
        cfg = tiny_config(role)
        done[role] = train_stage(cfg, phantoms, out / role, out / "cache", fold=0, device="cpu", show_progress=False)
    return out, done
