"""The panel's state (KidneyTumorSeg.py's widget, KidneyTumorSegSlicer/panel.py): the output of another input
is forgotten, and the model-value widgets follow the chosen model (stand-ins: slicer_stubs.py)."""
from __future__ import annotations

from slicer_stubs import StubbedModuleTest, bundle_with_own_values


class PanelWithoutSlicerTest(StubbedModuleTest):
    def test_choosing_another_input_forgets_the_previous_result(self):
        """The next run must not overwrite the previous CT's segmentation (and move it to the new study)."""
        import types

        class Node:
            def __init__(self, id_, refs=None):
                self.id, self.refs = id_, refs or {}

            def GetID(self):
                return self.id

            def GetNodeReference(self, role):
                return self.refs.get(role)

        ctA, ctB = Node("vtkMRMLScalarVolumeNode1"), Node("vtkMRMLScalarVolumeNode2")
        segA = Node("vtkMRMLSegmentationNode1", {self.kts.REF_INPUT: ctA})
        widget = types.SimpleNamespace(_lastInputID=None)

        def forget(p):  # as the widget does on every parameter-node change
            forgot, widget._lastInputID = self.helper("panel").forgetOutputOfOtherInput(p, widget._lastInputID)
            return forgot

        p = types.SimpleNamespace(inputVolume=ctA, outputSegmentation=segA)
        self.assertFalse(forget(p))  # A's own result stays selected
        self.assertIs(p.outputSegmentation, segA)
        p.inputVolume = ctB
        self.assertTrue(forget(p))
        self.assertIsNone(p.outputSegmentation)
        # chosen by hand for B afterwards (the input did not change): kept
        p.outputSegmentation = segA
        self.assertFalse(forget(p))
        self.assertIs(p.outputSegmentation, segA)

    def test_the_model_value_widgets_start_at_the_chosen_models_values(self):
        import types

        from helpers_bundle import make_tiny_bundle

        own = str(bundle_with_own_values(self.tmp / "own").path)
        plain = str(make_tiny_bundle(self.tmp / "plain").path)
        widget = types.SimpleNamespace(_modelPathShown=None, logic=self.logic)
        show = lambda p: self.kts.KidneyTumorSegWidget._showModelValues(widget, p)  # noqa: E731
        p = types.SimpleNamespace(modelPath=own, candidateThreshold=0.8, keepComponents=2)
        show(p)
        self.assertEqual((p.candidateThreshold, p.keepComponents), (0.6, 1))
        p.candidateThreshold = 0.7  # the user's change stays while the model does
        show(p)
        self.assertEqual((p.candidateThreshold, p.keepComponents), (0.7, 1))
        p.modelPath = plain
        show(p)
        self.assertEqual((p.candidateThreshold, p.keepComponents), (0.8, 2))
        p.modelPath = str(self.tmp / "unreadable")  # nothing to show: the widgets keep their values
        show(p)
        self.assertEqual((p.candidateThreshold, p.keepComponents), (0.8, 2))
