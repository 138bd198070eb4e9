"""Model bundles in Slicer (KidneyTumorSegSlicer/models.py): problems, import, installed nnU-Net models and the
model's own values the panel starts at (stand-ins: slicer_stubs.py)."""
from __future__ import annotations

from slicer_stubs import StubbedModuleTest, bundle_with_own_values


class ModelsWithoutSlicerTest(StubbedModuleTest):
    def test_model_problem_names_what_is_missing(self):
        self.assertIn("Select a model", self.logic.modelProblem(""))
        self.assertIn("has no manifest.json", self.logic.modelProblem(str(self.tmp)))

    def test_import_model_verifies_and_copies_the_bundle(self):
        import shutil

        from helpers_bundle import make_tiny_bundle
        from KidneyTumorSegLib.bundles.bundle import BundleError, load_bundle

        bundle = make_tiny_bundle(self.tmp / "src" / "mybundle")
        (bundle.path / "notes.txt").write_text("not part of the bundle")
        target = self.logic.importModel(str(bundle.path))
        self.assertEqual(target, self.logic.userModelsFolder() / "tiny-test")
        self.assertEqual(sorted(p.name for p in target.iterdir()), sorted(["manifest.json", *bundle.files]))
        self.assertEqual(load_bundle(target).files, bundle.files)
        self.assertIn(("tiny-test", str(target)), self.logic.availableModels())
        self.assertEqual(self.logic.modelProblem(str(target)), "")
        with self.assertRaises(FileExistsError):
            self.logic.importModel(str(bundle.path / "manifest.json"))
        archive = shutil.make_archive(str(self.tmp / "bundle"), "zip", str(bundle.path.parent))
        self.assertEqual(self.logic.importModel(archive, overwrite=True), target)
        # a corrupt weight file is refused and the imported copy stays as it was
        weight = bundle.path / sorted(bundle.files)[0]
        weight.write_bytes(weight.read_bytes()[:-8] + b"corrupt!")
        with self.assertRaises(BundleError) as caught:
            self.logic.importModel(str(bundle.path), overwrite=True)
        self.assertIn("SHA-256 mismatch", str(caught.exception))
        self.assertEqual(load_bundle(target).files, bundle.files)
        self.assertEqual([p.name for p in target.parent.iterdir()], ["tiny-test"])

    def test_installed_nnunet_models_are_listed_and_importable(self):
        import json
        import os

        import torch

        ts_home = self.tmp / "ts"
        model = (ts_home / "nnunet" / "results" / "Dataset291_TotalSegmentator_part1_organs" /
                 "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres")
        (model / "fold_0").mkdir(parents=True)
        (model / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "kidney_right": 2,
                                                                   "kidney_left": 3}}))
        (model / "plans.json").write_text("{}")
        torch.save({"network_weights": {}}, model / "fold_0" / "checkpoint_final.pth")
        saved = os.environ.get("TOTALSEG_HOME_DIR")
        os.environ["TOTALSEG_HOME_DIR"] = str(ts_home)
        try:
            listed = dict((path, label) for label, path in self.logic.availableModels())
            self.assertEqual(listed[str(model)], "TotalSegmentator: Dataset291_TotalSegmentator_part1_organs (3d_fullres)")
            self.assertEqual(self.logic.modelProblem(str(model)), "")
            # the panel's first choice: the real model on this machine, not the phantom demonstration
            self.assertEqual(self.logic.preferredModelPath(), str(model))
            target = self.logic.importModel(str(model))
            self.assertEqual(target.parent, self.logic.userModelsFolder())
            manifest = json.loads((target / "manifest.json").read_text())
            self.assertEqual([s["role"] for s in manifest["stages"]], ["kidney"])  # no tumor label: kidneys only
            self.assertEqual(manifest["stages"][0]["nnunet"]["path"], str(model.resolve()))
            self.assertIn((target.name, str(target)), self.logic.availableModels())
            os.environ["TOTALSEG_HOME_DIR"] = str(self.tmp / "nothing-here")
            self.assertEqual(self.logic.preferredModelPath(), self.logic.defaultModelPath())
        finally:
            if saved is None:
                os.environ.pop("TOTALSEG_HOME_DIR", None)
            else:
                os.environ["TOTALSEG_HOME_DIR"] = saved

    def test_model_values_are_read_without_hashing_the_weights(self):
        """What a run uses unless the panel overrides it: the panel's model-value widgets start there."""
        from helpers_bundle import make_tiny_bundle

        self.assertEqual(self.logic.modelValues(str(make_tiny_bundle(self.tmp / "plain").path)),
                         {"candidateThreshold": 0.8, "keepComponents": 2})
        own = bundle_with_own_values(self.tmp / "own")
        weight = own.path / sorted(own.files)[0]
        weight.write_bytes(weight.read_bytes()[:-8] + b"corrupt!")  # found at run time, not when the panel asks
        self.assertEqual(self.logic.modelValues(str(own.path)), {"candidateThreshold": 0.6, "keepComponents": 1})
        self.assertEqual(self.logic.modelValues(str(self.tmp / "no-such-model")), {})
