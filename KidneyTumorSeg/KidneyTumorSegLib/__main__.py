"""``python -m KidneyTumorSegLib``: the command line (used by the Slicer module via PythonSlicer)."""
import sys

from .cli import main

sys.exit(main())
