"""The five reports' systems as training recipes (``training/recipes/``): every recipe loads in each of its sizes,
builds its networks, trains for a few iterations on tiny phantoms and its exported bundle segments a phantom
through the command line."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from KidneyTumorSegLib.bundles.bundle import load_bundle
from KidneyTumorSegLib.cli import main as segment_main
from KidneyTumorSegLib.engine.networks import build_network, count_parameters, required_divisor
from ktstrain.recipe import RECIPES, deep_merge, find_recipe, list_recipes, load_recipe, recipe_configs, train_recipe

NAMES = ["000-cascade", "001-enet", "002-resunet-vnet25d", "003-fusion", "004-plain", "004-preact", "004-residual"]


def test_every_reported_system_has_a_recipe_with_a_readme_paragraph():
    assert sorted(r.name for r in list_recipes()) == NAMES
    readme = (RECIPES / "README.md").read_text()
    for r in list_recipes():
        assert r.path.parent.name == r.report
        assert f"`{r.name}`" in readme, f"training/recipes/README.md has no paragraph on {r.name}"


_BUILT: set = set()  # network configurations already built and run (sizes and recipes share many)


@pytest.mark.parametrize("size", [None, "cpu", "tiny"])
@pytest.mark.parametrize("name", NAMES)
def test_every_size_builds_networks_that_give_full_size_logits(name, size):
    torch.manual_seed(0)
    for role, cfgs in recipe_configs(find_recipe(name), size).items():
        for cfg in cfgs:
            st = cfg.stage
            div = required_divisor(st.network)
            assert all(p % d == 0 for p, d in zip(st.patch_size[-len(div):], div)), (st.name, st.patch_size, div)
            key = json.dumps(dataclasses.asdict(st.network), sort_keys=True)
            if key in _BUILT:
                continue
            _BUILT.add(key)
            net = build_network(st.network).eval()
            spatial = tuple(2 * d for d in div)  # a small input whose deepest level is more than one voxel
            x = torch.randn((1, st.network.in_channels) + spatial)
            with torch.no_grad():
                assert net(x).shape == (1, st.network.out_channels) + spatial, st.name
            assert count_parameters(net) > 0


def test_report_001_stage_networks_are_enets_of_the_published_size():
    cfgs = recipe_configs(find_recipe("001-enet"))
    nets = [build_network(c.stage.network) for cs in cfgs.values() for c in cs]
    # ENet's 0.37M parameters (report 001 Fig. 3); the three-class head of stage 2 adds a few
    assert [count_parameters(n) for n in nets] == [369_505, 369_570]
    assert {c.stage.input_mode for cs in cfgs.values() for c in cs} == {"2d"}


def test_a_recipe_names_its_mistakes(tmp_path):
    good = json.loads((RECIPES / "001" / "enet.recipe.json").read_text())
    cases = {
        "unknown recipe key(s): stage": dict(good, stage={}),
        "unknown stage role 'liver'": dict(good, stages=dict(good["stages"], liver=["stage1.json"])),
        "stage configuration 'nope.json' not found": dict(good, stages={"kidney": ["nope.json"]}),
        "derived stage 'tumor' must not be trained itself": deep_merge(good, {"derive": {"tumor": {"from": "roi2"}}}),
        "a recipe needs a kidney stage": dict(good, stages={"roi": ["stage1.json"]}),
    }
    for message, data in cases.items():
        p = RECIPES / "001" / "bad.recipe.json"
        path = tmp_path / "bad.recipe.json"
        path.write_text(json.dumps(data))
        for name in ("stage1.json", "stage2.json"):
            (tmp_path / name).write_text((p.parent / name).read_text())
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_recipe(path)
    with pytest.raises(ValueError, match="no size 'huge'"):
        recipe_configs(find_recipe("001-enet"), "huge")
    with pytest.raises(ValueError, match="no recipe 'nnunet'"):
        find_recipe("nnunet")


@pytest.fixture(scope="module")
def recipe_phantoms(tmp_path_factory):
    from KidneyTumorSegLib.phantom import write_phantom_cases
    from ktstrain.data import discover_cases

    root = tmp_path_factory.mktemp("recipes") / "phantoms"
    write_phantom_cases(root, 4, seed0=300, shape=(32, 96, 96), spacing=(3.5, 3.5, 5.0), n_tumors=1)
    return discover_cases(root)


def _check_bundle(name: str, bundle) -> None:
    """What each report's system puts into its bundle."""
    st = bundle.stages
    if name == "000-cascade":
        assert [n.architecture for n in st["kidney"].member_networks] == ["resunet", "unet"]  # two encoders
        assert st["roi"].network.architecture == "vnet" and st["tumor"].tta == 12
        assert st["tumor"].mask_outside and bundle.postprocess.candidate_threshold == 0.8
    elif name == "001-enet":
        assert {s.network.architecture for s in st.values()} == {"enet"}
        assert st["tumor"].weights and st["tumor"].foreground_channel == 2 and not st["tumor"].foreground_channels
        assert [bundle.sha256_of(w) for w in st["tumor"].weights] == [bundle.sha256_of(w) for w in st["kidney"].weights]
    elif name == "002-resunet-vnet25d":
        assert "roi" not in st and st["tumor"].network.architecture == "vnet25d"
        assert st["tumor"].input_mode == "2.5d" and st["tumor"].network.in_channels == 5
        assert bundle.postprocess.max_tumors_per_kidney == 1
    elif name == "003-fusion":
        assert st["roi"].network.heads == {"landmarks": 5} and st["kidney"].network.heads == {"boundary": 1}
        assert st["roi"].box_rule == "mixed_landmarks"
        assert [n.architecture for n in st["tumor"].member_networks] == ["resunet", "unet", "triplanar"]
        assert {s.window for s in st.values()} == {(-200.0, 300.0)} and st["kidney"].normalization == "minmax"
        assert bundle.postprocess.min_slice_component_mm2 == 39.0 and bundle.postprocess.fusion == "label_assignment"
        assert [n.architecture for n in st["kidney_alone"].member_networks] == ["resunet", "unet"]  # the two K
    else:
        assert "roi" not in st and len(st["kidney"].weights) == 2  # the folds trained (2 here, 5 in the recipe)
        assert st["kidney"].network.out_channels == 3 and st["tumor"].foreground_channel == 2


@pytest.mark.parametrize("name", NAMES)
def test_recipe_trains_on_phantoms_and_its_bundle_segments_one(name, recipe_phantoms, tmp_path):
    torch.set_num_threads(1)
    recipe = find_recipe(name)
    res = train_recipe(recipe, recipe_phantoms, tmp_path / "runs", tmp_path / "bundle", size="tiny",
                       folds=["0", "1"] if len(recipe.folds) > 1 else None)
    assert sorted(res.runs) == sorted(recipe.stages)
    assert all((run / "checkpoint_final.pt").is_file() for runs in res.runs.values() for run in runs)
    bundle = load_bundle(res.bundle)
    _check_bundle(name, bundle)
    assert res.parameters > 0 and res.train_seconds > 0
    case = Path(recipe_phantoms[0].image_path)
    assert segment_main(["segment", str(case), "-o", str(tmp_path / "out"), "--model", str(res.bundle)]) == 0
    label = next((tmp_path / "out").rglob("*.label.nii.gz"))
    values = np.unique(np.asarray(nib.load(str(label)).dataobj))
    assert set(values.tolist()) <= {0, 1, 2} and 1 in values, values  # kidneys found by a few iterations' model


def test_recipe_command_trains_within_its_time_budget_and_writes_the_bundle(recipe_phantoms, tmp_path, caplog):
    from ktstrain.cli import main as train_main

    data = str(Path(recipe_phantoms[0].image_path).parent.parent)
    argv = ["recipe", "001-enet", "--data", data, "--out", str(tmp_path / "runs"), "-o", str(tmp_path / "b"),
            "--size", "tiny", "--device", "cpu", "--time-budget", "60"]
    assert train_main(argv) == 0
    b = load_bundle(tmp_path / "b")
    assert b.name == "001-enet" and "report 001" in b.description
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == ["cache", "enet_stage1_foldall",
                                                                                    "enet_stage2_foldall"]
    assert train_main(argv) == 1  # the bundle exists: never silently overwritten
    assert f"output exists: {tmp_path / 'b'} (use --overwrite" in caplog.text
    assert train_main(argv[:1] + ["no-such-recipe"] + argv[2:]) == 1
    assert "no recipe 'no-such-recipe' (recipes: 000-cascade, 001-enet" in caplog.text
