"""Slicer-side helpers of the KidneyTumorSeg module (they may use slicer, qt and vtk).

The module file ``KidneyTumorSeg.py`` keeps Slicer's template (module, sample data,
parameter node, widget, logic, test) and delegates to these files:

- ``dependencies``: pip requirements and their installation (PyTorch through its extension)
- ``models``: model bundles (the shipped default, the user models folder, import)
- ``sampledata``: the synthetic phantom in the Sample Data module
- ``runsettings``: the panel's and scripts' choices as the core's run settings (only what the user changed)
- ``runs``: one background run (input export, ROI, the PythonSlicer process's environment)
- ``nodes``: node references and segment ids that tie a result together
- ``results``: loading a finished run into the scene; the findings table
- ``candidates``: adding back or removing a tumor candidate
- ``kidneyregion``: the kidney region the cascade found, kept with a result for the candidate edits
- ``labelmaps``: a segment as a numpy array on a volume's grid, read and written without temporary nodes
- ``gpu``: the GPU memory warning
- ``panel``: widget helpers that hold no state

Unlike the core (``KidneyTumorSegLib``), nothing here runs without Slicer.
"""
