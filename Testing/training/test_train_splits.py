"""ktstrain.splits: cross-validation folds, split files (written, honoured, validated) and named splits."""
from __future__ import annotations

import json
import logging

import pytest

from ktstrain.splits import (
    REPORT000_VALIDATION,
    fold_cases,
    get_or_create_splits,
    load_splits,
    make_folds,
    named_split,
    write_splits,
)

CASES = [f"case_{i:05d}" for i in range(23)]


def test_folds_are_deterministic_cover_every_case_once_and_do_not_overlap():
    folds = make_folds(CASES, 5, seed=3)
    assert folds == make_folds(list(reversed(CASES)), 5, seed=3)  # input order does not matter
    assert folds != make_folds(CASES, 5, seed=4)
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == CASES
    assert sorted(len(f["val"]) for f in folds) == [4, 4, 5, 5, 5]
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == CASES


def test_stratified_folds_spread_tumor_sizes():
    volumes = {c: float(i) for i, c in enumerate(CASES)}  # case i has tumor volume i
    folds = make_folds(CASES, 5, seed=0, tumor_volumes=volumes)
    assert sorted(c for f in folds for c in f["val"]) == CASES
    for f in folds:
        ranks = sorted(int(volumes[c]) // 5 for c in f["val"])
        assert ranks == list(range(len(ranks)))  # one case from each size quintile block
    with pytest.raises(ValueError, match="tumor_volumes lacks 1 case"):
        make_folds(CASES, 5, tumor_volumes={c: 1.0 for c in CASES[1:]})


def test_split_file_is_written_then_honoured_and_validated(tmp_path, caplog):
    path = tmp_path / "splits.json"
    folds = get_or_create_splits(path, CASES, 5, seed=0)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["n_folds"] == 5 and doc["folds"] == folds
    # a hand-edited split is honoured as written (not regenerated from the seed)
    custom = [{"train": CASES[5:], "val": CASES[:5]}, {"train": CASES[:5], "val": CASES[5:]}]
    write_splits(path, custom, overwrite=True)
    with caplog.at_level(logging.INFO):
        assert get_or_create_splits(path, CASES, 5, seed=0) == custom
    assert "existing split file" in caplog.text and "in no fold" not in caplog.text
    # cases added to the data after the split was written are named, not silently dropped
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert get_or_create_splits(path, CASES + ["case_new1", "case_new0"], 5, seed=0) == custom
    assert (f"2 of the {len(CASES) + 2} cases found are in no fold of {path} and will not be used: "
            "case_new0, case_new1") in caplog.text
    assert fold_cases(custom, 0) == custom[0] and fold_cases(custom, "all")["train"] == CASES
    with pytest.raises(ValueError, match="fold 2 does not exist"):
        fold_cases(custom, 2)
    # nnU-Net's bare-list format reads too
    (tmp_path / "nnunet.json").write_text(json.dumps(custom))
    assert load_splits(tmp_path / "nnunet.json", CASES) == custom
    with pytest.raises(FileExistsError, match="output exists"):
        write_splits(path, custom)


def test_a_run_that_loses_the_race_to_write_the_split_file_uses_the_winners(tmp_path, monkeypatch, caplog):
    # two stages started at once into the same --out: both see no splits.json, one writes it first
    import ktstrain.splits as splits_mod

    path = tmp_path / "splits.json"
    winner = [{"train": CASES[3:], "val": CASES[:3]}]
    real_write = splits_mod.write_splits

    def other_run_wins(p, folds, **kw):
        real_write(p, winner)  # the other run's file lands between our check and our write
        return real_write(p, folds, **kw)  # ours then finds it there

    monkeypatch.setattr(splits_mod, "write_splits", other_run_wins)
    with caplog.at_level(logging.INFO):
        assert get_or_create_splits(path, CASES, 5, seed=0) == winner
    assert "was written by another run meanwhile" in caplog.text
    assert json.loads(path.read_text())["folds"] == winner


def test_split_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "splits.json"
    write_splits(path, [{"train": CASES[1:] + ["case_00999"], "val": CASES[:1]}])
    with pytest.raises(ValueError, match=r"fold 0 names case ids not in the data: case_00999"):
        load_splits(path, CASES)
    with pytest.raises(ValueError, match=r"fold 0 names case ids not in the data: case_00999"):
        get_or_create_splits(path, CASES)
    path.write_text(json.dumps([{"train": CASES[:3], "val": CASES[2:4]}]))
    with pytest.raises(ValueError, match="both trains and validates on case_00002"):
        load_splits(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_splits(path)
    with pytest.raises(FileNotFoundError, match="split file not found"):
        load_splits(tmp_path / "missing.json")


def test_report000_named_split():
    cases = [f"case_{i:05d}" for i in range(210)]
    split = named_split("report000", cases)
    assert split["val"] == sorted(REPORT000_VALIDATION) and len(split["val"]) == 11
    assert len(split["train"]) == 199 and not set(split["train"]) & set(split["val"])
    with pytest.raises(ValueError, match="case_00189, case_00195"):
        named_split("report000", cases[:180])
    partial = named_split("report000", cases[:180], allow_missing=True)
    assert len(partial["val"]) == 9 and "case_00189" not in partial["val"]
