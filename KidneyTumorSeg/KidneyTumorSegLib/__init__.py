"""KidneyTumorSeg core: kidney and kidney-tumor segmentation in abdominal CT.

Imports no ``slicer``, ``qt``, ``ctk`` or ``vtk``: the same code serves the
3D Slicer module, the ``kidneytumorseg`` command line, training and tests.
"""
__version__ = "0.1.0"
