"""KidneyTumorSeg in a browser: trame-slicer serves Slicer's scene, views and segment editor; this package adds
the KidneyTumorSeg panel (``kidneytumorseg web``, extra ``[web]``).

- ``datafolder``: the one folder the app reads and writes (CTs, uploads, models), paths confined to it
- ``session``: the CT, the run and the result on the scene, through the Slicer module's helpers
- ``panel``: the panel's widgets
- ``app``: the trame app (views, segment editor, panel, the run polled from asyncio)
- ``server``: the command line
"""
