"""A finished run's findings table (KidneyTumorSegSlicer/results.py): rows, column types and the candidate of a
selected row, on a table node stand-in (stand-ins: slicer_stubs.py; real MRML: test_slicer_mrml.py)."""
from __future__ import annotations

from slicer_stubs import StubbedModuleTest


class ResultsWithoutSlicerTest(StubbedModuleTest):
    def test_findings_table_rows_and_selected_candidate(self):
        import vtk

        class TableNode:
            def __init__(self):
                self.attributes = {}
                self.locked = False

            def StartModify(self):
                return 0

            def EndModify(self, was):
                pass

            def SetAndObserveTable(self, table):
                self.table = table

            def SetAttribute(self, name, value):
                self.attributes[name] = value

            def GetAttribute(self, name):
                return self.attributes.get(name)

            def SetLocked(self, locked):
                self.locked = locked

            def SetUseColumnNameAsColumnHeader(self, use):
                self.column_names_as_header = use

        report = {
            "kidneys": [{"index": 0, "side": "left", "volume_ml": 151.234}, {"index": 1, "side": "right", "volume_ml": 160.0}],
            "tumor_candidates": [
                {"id": 2, "kidney_index": 1, "side": "right", "volume_ml": 1.5, "axial_diameter_mm": 12.0,
                 "diameter_3d_mm": 14.0, "mean_probability": 0.55, "kept": False},
                {"id": 1, "kidney_index": 0, "side": "left", "volume_ml": 30.0, "axial_diameter_mm": 40.0,
                 "diameter_3d_mm": 45.0, "mean_probability": 0.93, "kept": True},
            ],
        }
        node = TableNode()
        self.results.writeFindings(node, report)
        table = node.table
        self.assertTrue(node.locked)
        # the view's rows are the table's rows (no header row in the model): selection maps 1:1
        self.assertTrue(node.column_names_as_header)
        self.assertEqual(table.GetNumberOfRows(), 4)
        names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
        self.assertIn("Volume (mL)", names)
        volume = table.GetColumnByName("Volume (mL)")
        self.assertIsInstance(volume, vtk.vtkDoubleArray)  # complete numeric column
        self.assertAlmostEqual(volume.GetValue(0), 151.23)
        probability = table.GetColumnByName("Mean probability")
        self.assertIsInstance(probability, vtk.vtkStringArray)  # kidney rows leave it empty
        self.assertEqual([probability.GetValue(r) for r in range(4)], ["", "", "0.93", "0.55"])
        self.assertIsNone(self.kts.KidneyTumorSegLogic.candidateOfRow(node, 0))
        self.assertEqual(self.kts.KidneyTumorSegLogic.candidateOfRow(node, 2), {"id": 1, "kept": True})
        self.assertEqual(self.kts.KidneyTumorSegLogic.candidateOfRow(node, 3), {"id": 2, "kept": False})
        self.assertIsNone(self.kts.KidneyTumorSegLogic.candidateOfRow(node, 4))
