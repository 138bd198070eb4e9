"""Adding back or removing a tumor candidate (KidneyTumorSegSlicer/candidates.py, kidneyregion.py): the core's
rule on the segments' arrays, the kidney region kept with a result, the report after an edit (stand-ins:
slicer_stubs.py; real MRML: test_slicer_candidates_mrml.py, test_slicer_mrml.py)."""
from __future__ import annotations

from slicer_stubs import StubbedModuleTest


class CandidatesWithoutSlicerTest(StubbedModuleTest):
    def test_candidate_edits_move_voxels_between_tumor_and_nearest_kidney(self):
        """The Slicer edit's rule is the core's (findings.choose_candidate), on the segments' arrays."""
        import numpy as np
        from KidneyTumorSegLib.findings.findings import assign_to_nearest, choose_candidate

        def candidateUpdates(arrays, mask, keep, tumorId, kidneyIds, spacing, region):
            kidneys, tumor = choose_candidate({k: arrays[k] for k in kidneyIds}, arrays[tumorId], mask, keep, region,
                                              spacing)
            return dict(kidneys, **{tumorId: tumor})

        shape = (5, 6, 40)
        left, right, tumor = (np.zeros(shape, bool) for _ in range(3))
        left[:, :, :3] = True
        right[:, :, 37:] = True
        tumor[:, :, 3:9] = True  # a kept tumor on the left kidney's edge
        rejected = np.zeros(shape, bool)
        rejected[:, 2:4, 30:37] = True  # a rejected candidate: kidney voxels of the right kidney
        right |= rejected
        arrays = {"kidney_left": left, "kidney_right": right, "kidney_tumor": tumor}
        kidneys = ["kidney_left", "kidney_right"]
        spacing = (3.0, 1.0, 1.0)
        region = left | right | tumor  # the kidney region the cascade found

        removed = candidateUpdates(arrays, tumor, False, "kidney_tumor", kidneys, spacing, region)
        self.assertFalse(removed["kidney_tumor"].any())
        self.assertTrue((removed["kidney_left"] == (left | tumor)).all())  # far from the right kidney
        self.assertTrue((removed["kidney_right"] == right).all())

        added = candidateUpdates(arrays, rejected, True, "kidney_tumor", kidneys, spacing, region)
        self.assertTrue((added["kidney_tumor"] == (tumor | rejected)).all())
        self.assertTrue((added["kidney_right"] == (right & ~rejected)).all())
        self.assertTrue((added["kidney_left"] == left).all())
        total = sum(a.astype(int) for a in added.values())
        self.assertLessEqual(int(total.max()), 1, "no voxel in two segments")

        # a tumor between both kidneys is split by distance, also when the box must grow to find them
        right_only = right & ~rejected
        for cols in (slice(3, 37), slice(15, 25)):  # touching both kidneys; too far for the box's margin
            between = np.zeros(shape, bool)
            between[:, :, cols] = True
            split = assign_to_nearest(between, {"l": left, "r": right_only}, (1.0, 1.0, 1.0), margin=2)
            near_left = between.copy()
            near_left[:, :, 20:] = False  # column 19.5 is as far from both
            self.assertTrue((split["l"] == (left | near_left)).all(), cols)
            self.assertTrue((split["r"] == (right_only | (between & ~near_left))).all(), cols)

        # a rejected candidate outside the kidney region is not kidney: its voxels become background
        outside = np.zeros(shape, bool)
        outside[:, :, 20:24] = True
        grown = dict(arrays, kidney_tumor=tumor | outside)
        dropped = candidateUpdates(grown, outside, False, "kidney_tumor", kidneys, spacing, region)
        self.assertFalse((dropped["kidney_left"] | dropped["kidney_right"] | dropped["kidney_tumor"])[outside].any())

    def test_the_kidney_region_is_kept_at_the_candidates_voxels(self):
        import numpy as np

        kidneyregion = self.helper("kidneyregion")
        rng = np.random.default_rng(3)
        candidateMap = rng.integers(0, 4, (7, 9, 11)).astype(np.uint16)
        region = rng.random((7, 9, 11)) > 0.5
        text = kidneyregion.packRegion(candidateMap, region)
        unpacked = kidneyregion.unpackRegion(candidateMap, text)
        np.testing.assert_array_equal(unpacked, region & (candidateMap > 0))
        self.assertIsNone(kidneyregion.unpackRegion(candidateMap[:-1], text), "a map it does not fit")
        self.assertIsNone(kidneyregion.unpackRegion(candidateMap, "garbage"))

        class Node:  # a candidate map node of a result loaded before the region was kept
            def __init__(self):
                self.attributes = {}

            def GetAttribute(self, name):
                return self.attributes.get(name)

            def SetAttribute(self, name, value):
                self.attributes[name] = value

        node, segments = Node(), [region & (candidateMap == 1), candidateMap == 3]
        np.testing.assert_array_equal(kidneyregion.kidneyRegion(node, candidateMap, segments), segments[0] | segments[1])
        node.SetAttribute(self.helper("nodes").ATTR_KIDNEY_REGION, text)
        np.testing.assert_array_equal(kidneyregion.kidneyRegion(node, candidateMap, segments), unpacked)

    def test_report_follows_the_edit(self):
        report = {"tumor_candidates": [{"id": 1, "volume_ml": 30.0, "kept": True},
                                       {"id": 2, "volume_ml": 1.5, "kept": False}], "kept_tumors": 1}
        edited = self.candidates.reportWithKept(report, {2}, 1, False)
        self.assertEqual([c["kept"] for c in edited["tumor_candidates"]], [False, True])
        self.assertEqual((edited["kept_tumors"], edited["total_tumor_volume_ml"]), (1, 1.5))
        self.assertEqual(edited["manual_changes"], [{"candidate": 1, "kept": False}])
        self.assertTrue(report["tumor_candidates"][0]["kept"], "the input report is not changed")
