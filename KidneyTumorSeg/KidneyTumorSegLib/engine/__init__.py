"""Running networks: architectures, the sliding window, test-time augmentation, predictors, devices.

``networks`` (the 3D U-Nets and V-Net of the reports), ``inference``
(``NetworkPredictor``: normalisation, sliding window with Gaussian blending,
ensembles, out-of-memory fallbacks), ``tta`` (flips and rotations), ``intensity``
(HU windows and z-scores), ``device`` (device names, precision), ``nnunet_model``
and ``nnunet_stage`` (an nnU-Net v2 model as a cascade stage), ``reference``
(exact predictors from reference labels, for tests and benchmarks).
"""
