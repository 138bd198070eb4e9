"""ktstrain.config: every shipped training configuration parses and keeps the method's spacings."""
from __future__ import annotations


def test_every_shipped_training_configuration_parses_and_keeps_the_method_spacings():
    from pathlib import Path

    from KidneyTumorSegLib.presets import default_stages
    from ktstrain.config import load_config, parse_config

    root = Path(__file__).resolve().parents[2] / "training" / "configs"
    paths = sorted(root.rglob("*.json"))
    assert len(paths) >= 9
    presets = {s.role: s for s in default_stages()}
    for p in paths:
        cfg = load_config(p)
        assert cfg.stage.spacing == presets[cfg.stage.role].spacing, p  # the reports' spacings, CPU-sized or not
        assert cfg.stage.window == presets[cfg.stage.role].window, p
        # the complete form a run writes into its checkpoints is itself a configuration that gives the same run
        again = parse_config(cfg.to_dict())
        assert again.to_dict() == cfg.to_dict() and again.preprocess == cfg.preprocess, p
