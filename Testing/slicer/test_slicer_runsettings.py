"""The panel's and scripts' choices as the core's run settings (KidneyTumorSegSlicer/runsettings.py): the
presets' meaning, and only the model values the user changed passed on (stand-ins: slicer_stubs.py)."""
from __future__ import annotations

from slicer_stubs import StubbedModuleTest


class RunSettingsWithoutSlicerTest(StubbedModuleTest):
    def setUp(self):
        super().setUp()
        self.runsettings = self.helper("runsettings")

    def test_choices_become_the_cores_settings(self):
        from KidneyTumorSegLib.presets import Quality, TumorGrowth
        from KidneyTumorSegLib.run_settings import RunSettings

        settings = self.runsettings.runSettings()
        self.assertEqual(settings, RunSettings(save_candidates=True))  # the model's values: none set
        settings = self.runsettings.runSettings(self.kts.Device.GPU, Quality.FULL, 0.65, 1, TumorGrowth.TWO)
        self.assertEqual((settings.device, settings.tta, settings.candidate_threshold, settings.keep_components,
                          settings.tumor_growth_passes, settings.save_candidates), ("cuda", 12, 0.65, 1, 2, True))
        self.assertEqual(self.runsettings.runSettings("cuda:1", "balanced").device, "cuda:1")
        # one definition of each choice: the module's combo boxes list the core's presets
        self.assertIs(self.kts.Quality, Quality)
        self.assertIs(self.kts.TumorGrowth, TumorGrowth)
        self.assertEqual([(g.value, g.passes) for g in TumorGrowth],
                         [("model", None), ("off", 0), ("1", 1), ("2", 2), ("3", 3)])
        self.assertEqual([(q.value, q.tta) for q in Quality], [("fast", 1), ("balanced", 4), ("full", 12)])

    def test_only_the_values_the_user_changed_are_passed_on(self):
        model = {"candidateThreshold": 0.6, "keepComponents": 1}
        overrides = self.runsettings.panelOverrides
        self.assertEqual(overrides(0.6, 1, model), {"candidateThreshold": None, "keepComponents": None})
        self.assertEqual(overrides(0.7, 1, model), {"candidateThreshold": 0.7, "keepComponents": None})
        self.assertEqual(overrides(0.6, 2, model), {"candidateThreshold": None, "keepComponents": 2})
        # the spin box shows two decimals: a model's 0.625 shown as 0.63 is the model's value, not a change
        self.assertEqual(overrides(0.63, 2, {"candidateThreshold": 0.625, "keepComponents": 2}),
                         {"candidateThreshold": None, "keepComponents": None})
        # a model that cannot be read: nothing overrides it
        self.assertEqual(overrides(0.8, 2, {}), {"candidateThreshold": None, "keepComponents": None})

    def test_the_panel_shows_the_model_values_its_widgets_can_hold(self):
        values = self.runsettings.panelValues
        self.assertEqual(values({"candidateThreshold": 0.6, "keepComponents": 1}),
                         {"candidateThreshold": 0.6, "keepComponents": 1})
        self.assertEqual(values({"candidateThreshold": 1.5, "keepComponents": 3}), {})
        self.assertEqual(values({}), {})
