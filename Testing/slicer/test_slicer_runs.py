"""One background run in Slicer (KidneyTumorSegSlicer/runs.py): input export, ROI, the run's settings on the
command line, progress, failure and cancel, with the real core in a background process (stand-ins for
``slicer`` and ``qt``: slicer_stubs.py)."""
from __future__ import annotations

import shutil
import unittest
from pathlib import Path

from slicer_stubs import RoiNode, StubbedModuleTest, bundle_with_own_values, has_module

NEEDS_CORE = unittest.skipUnless(has_module("KidneyTumorSegLib.background") and has_module("KidneyTumorSegLib.geometry.slicer_geometry"),
                                 "needs KidneyTumorSegLib.background and .slicer_geometry")


def _growthArgs(settings):
    """The tumor growth option of the run's command line ([] when the model's setting is kept)."""
    argv = settings.to_argv()
    return argv[argv.index("--tumor-growth"):argv.index("--tumor-growth") + 2] if "--tumor-growth" in argv else []


def _modelValueOptions(command):
    """The candidate threshold and kidney count options of a command line, with their values."""
    found = []
    for n, arg in enumerate(command):
        if arg in ("--candidate-threshold", "--keep-components"):
            found += command[n:n + 2]
    return found


class _Process:
    """A finished-later background process that hands out the events it was given."""

    def __init__(self, events):
        self.events = list(events)
        self.running = True

    def poll(self):
        events, self.events = self.events, []
        return events


class RunsWithoutSlicerTest(StubbedModuleTest):
    @NEEDS_CORE
    def test_async_run_exports_the_input_and_delivers_outputs_on_its_grid(self):
        import json

        import numpy as np
        import SimpleITK as sitk
        from helpers_bundle import make_tiny_bundle

        bundle = make_tiny_bundle(self.tmp / "fg", fg_bias=8.0).path
        phantom, node = self.phantom_node()
        # an ROI turned 90 degrees about S: its x axis points anterior, so its 40 mm run along P in LPS
        roi_to_world = np.eye(4)
        roi_to_world[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
        roi_to_world[:3, 3] = (0.0, -50.0, -200.0)
        roi = RoiNode(roi_to_world, (40.0, 60.0, 60.0))
        delivered = {}
        self.logic._loadResults = lambda run, outputs: delivered.update(
            {k: (Path(v), Path(v).read_bytes()) for k, v in outputs.items()})
        progress, finished = [], []
        run = self.logic.startSegmentation(node, model=str(bundle), device="cpu", roiNode=roi,
                                           progressCallback=lambda f, text: progress.append((f, text)),
                                           finishCallback=finished.append)
        self.assertTrue(run.timer.active)
        self.run_to_end(run)
        self.assertEqual(run.status, "done", run.error)
        self.assertEqual(finished, [run])
        self.assertFalse(run.workDir.exists(), "the temporary folder is removed")
        self.assertTrue({"segmentation", "report", "candidates"} <= set(delivered))
        fractions = [f for f, _ in progress]
        self.assertTrue(fractions and fractions == sorted(fractions) and fractions[-1] <= 1.0)
        self.assertTrue(any(text.startswith("Segmenting kidneys") for _, text in progress))
        report = json.loads(delivered["report"][1])
        self.assertIn("region of interest given by the user; stage 1 skipped", report["messages"])
        lo, hi = np.asarray(report["roi_lps_mm"])
        want_lo, want_hi = np.array([-30.0, 30.0, -230.0]), np.array([30.0, 70.0, -170.0])
        self.assertTrue(np.all(lo <= want_lo + 1e-3) and np.all(hi >= want_hi - 1e-3), (lo, hi))
        self.assertTrue(np.all(want_lo - lo <= 10.0) and np.all(hi - want_hi <= 10.0), (lo, hi))
        # the label map came back on the phantom's own grid (RAS -> LPS export round trip)
        path, data = delivered["label"]
        label_path = self.tmp / path.name
        label_path.write_bytes(data)
        label = sitk.ReadImage(str(label_path))
        np.testing.assert_allclose(label.GetOrigin(), phantom.image.origin, atol=1e-4)
        np.testing.assert_allclose(label.GetSpacing(), phantom.image.spacing, atol=1e-6)
        np.testing.assert_allclose(label.GetDirection(), phantom.image.direction, atol=1e-6)
        self.assertEqual(sitk.GetArrayFromImage(label).shape, phantom.image.array.shape)

    @unittest.skipUnless(has_module("KidneyTumorSegLib.geometry.slicer_geometry"), "needs KidneyTumorSegLib.geometry.slicer_geometry")
    def test_quality_sets_the_test_time_augmentations_and_an_unknown_one_is_refused(self):
        from helpers_bundle import make_tiny_bundle

        bundle = str(make_tiny_bundle(self.tmp / "q").path)
        _, node = self.phantom_node()
        self.assertEqual([q.value for q in self.kts.Quality], ["fast", "balanced", "full"])
        self.assertEqual(self.kts.Quality.BALANCED.label(), "Balanced (4 test-time flips)")
        for quality, tta in (("fast", 1), ("balanced", 4), ("full", 12), (self.kts.Quality.BALANCED, 4)):
            with self.subTest(quality=quality):
                run = self.logic._prepareRun(node, bundle, "cpu", quality, 0.8, 2, None, None, False)
                try:
                    self.assertEqual(run.options["settings"].tta, tta)
                    self.assertTrue((run.workDir / "input.nrrd").is_file())
                finally:
                    shutil.rmtree(run.workDir)
        tmp = Path(self.kts.slicer.app.temporaryPath)
        before = sorted(tmp.iterdir()) if tmp.exists() else []
        with self.assertRaises(ValueError) as caught:
            self.logic._prepareRun(node, bundle, "cpu", "best", 0.8, 2, None, None, False)
        self.assertEqual(str(caught.exception), "quality must be 'fast', 'balanced' or 'full', not 'best'")
        self.assertEqual(sorted(tmp.iterdir()) if tmp.exists() else [], before, "nothing is written for a refused run")

    @NEEDS_CORE
    def test_tumor_growth_choice_reaches_the_core_and_an_unknown_one_is_refused(self):
        import json
        from helpers_bundle import make_tiny_bundle
        from KidneyTumorSegLib.background import run_segmentation
        from KidneyTumorSegLib.config import PostprocessConfig

        # a model shipped with one growth pass, as the default model is
        post = PostprocessConfig(tumor_growth_passes=1, tumor_growth_mm=13.0)
        bundle = str(make_tiny_bundle(self.tmp / "g", fg_bias=8.0, post=post).path)
        _, node = self.phantom_node()
        self.assertEqual([g.value for g in self.kts.TumorGrowth], ["model", "off", "1", "2", "3"])
        self.assertEqual(self.kts.TumorGrowth.MODEL.label(), "Model's setting")
        self.assertEqual(self.kts.KidneyTumorSegParameterNode.__annotations__["tumorGrowth"], self.kts.TumorGrowth)
        cases = ((None, []), (self.kts.TumorGrowth.MODEL, []), ("off", ["--tumor-growth", "0"]),
                 (self.kts.TumorGrowth.TWO, ["--tumor-growth", "2"]), (5, ["--tumor-growth", "5"]))
        for choice, args in cases:
            with self.subTest(choice=choice):
                run = self.logic._prepareRun(node, bundle, "cpu", "fast", 0.8, 2, None, None, False, choice)
                try:
                    self.assertEqual(_growthArgs(run.options["settings"]), args)
                    if choice == "off" or choice is None:
                        # the core runs with it: the report names the growth setting it ran with
                        outputs = run_segmentation(**run.options)
                        report = json.loads(Path(outputs["report"]).read_text())
                        self.assertEqual(report["tumor_growth"], {"passes": 0 if choice == "off" else 1, "mm": 13.0})
                finally:
                    shutil.rmtree(run.workDir)
        tmp = Path(self.kts.slicer.app.temporaryPath)
        before = sorted(tmp.iterdir()) if tmp.exists() else []
        for bad in ("always", 9, -1, True):
            with self.subTest(bad=bad), self.assertRaises(ValueError) as caught:
                self.logic._prepareRun(node, bundle, "cpu", "fast", 0.8, 2, None, None, False, bad)
            self.assertEqual(str(caught.exception), "tumorGrowth must be None (the model's setting), 'off' or a number "
                                                    f"of passes from 0 to 8, not {bad!r}")
        self.assertEqual(sorted(tmp.iterdir()) if tmp.exists() else [], before, "nothing is written for a refused run")

    @NEEDS_CORE
    def test_failed_run_reports_the_core_message_and_cancel_stops_the_process(self):
        from helpers_bundle import make_tiny_bundle

        _, node = self.phantom_node()
        self.logic._loadResults = lambda run, outputs: self.fail("nothing may be loaded")
        empty = make_tiny_bundle(self.tmp / "bg", fg_bias=-8.0).path
        run = self.logic.startSegmentation(node, model=str(empty), device="cpu")
        self.run_to_end(run)
        self.assertEqual(run.status, "failed")
        self.assertIn("no kidney found", run.error)
        self.assertFalse(run.workDir.exists())

        finished = []
        run = self.logic.startSegmentation(node, model=str(empty), device="cpu", finishCallback=finished.append)
        run.timer.fire()
        self.logic.cancel(run)
        self.assertEqual(run.status, "cancelled")
        self.assertEqual(finished, [run])
        self.assertFalse(run.timer.active)
        self.assertFalse(run.process.running)
        self.assertFalse(run.workDir.exists())
        self.logic.cancel(run)  # a second cancel changes nothing
        self.assertEqual(finished, [run])

    @NEEDS_CORE
    def test_untouched_settings_leave_an_imported_models_own_values(self):
        """The model's candidate threshold 0.6 and one kidney: a run with untouched settings sends neither."""
        from KidneyTumorSegLib.background import SegmentationProcess

        runsettings = self.helper("runsettings")
        bundle = str(self.logic.importModel(str(bundle_with_own_values(self.tmp / "own").path), overwrite=True))
        _, node = self.phantom_node()
        model = self.logic.modelValues(bundle)
        panel = runsettings.panelValues(model)  # the panel's widgets start at the model's values
        self.assertEqual(panel, {"candidateThreshold": 0.6, "keepComponents": 1})
        for overrides, sent in ((runsettings.panelOverrides(panel["candidateThreshold"], panel["keepComponents"], model), []),
                                ({"candidateThreshold": None, "keepComponents": None}, []),  # a script's defaults
                                (runsettings.panelOverrides(0.7, 1, model), ["--candidate-threshold", "0.7"]),
                                (runsettings.panelOverrides(0.6, 2, model), ["--keep-components", "2"])):
            with self.subTest(overrides=overrides):
                run = self.logic._prepareRun(node, bundle, "cpu", "fast", overrides["candidateThreshold"],
                                             overrides["keepComponents"], None, None, False)
                try:
                    command = SegmentationProcess(**run.options).command
                finally:
                    shutil.rmtree(run.workDir)
                self.assertEqual(_modelValueOptions(command), sent)

    def test_progress_within_a_stage_reaches_the_panel_with_its_message(self):
        """Many events per stage (a sliding window's): the overall fraction and the message, in order."""
        runs = self.runs
        events = [{"event": "start"},
                  {"event": "progress", "stage": "kidney", "stage_fraction": 0.0, "fraction": 0.2,
                   "message": "Segmenting kidneys"},
                  {"event": "progress", "stage": "kidney", "stage_fraction": 0.125, "fraction": 0.2375,
                   "message": "window 3 of 24"},
                  {"event": "progress", "stage": "tumor", "stage_fraction": 0.5, "fraction": 0.675,
                   "message": "window 7 of 14"}]
        run = runs.SegmentationRun(None, {}, self.tmp / "work", None, False)
        run.process = _Process(events)
        shown = []
        run.progressCallback = lambda fraction, text: shown.append((fraction, text))
        runs.poll(run, lambda *a: self.fail("still running: nothing is loaded"))
        self.assertEqual(shown, [(0.2, "Segmenting kidneys"), (0.2375, "Segmenting kidneys: window 3 of 24"),
                                 (0.675, "Segmenting tumors: window 7 of 14")])
        self.assertEqual((run.fraction, run.stageText, run.status), (0.675, "Segmenting tumors: window 7 of 14", "running"))
