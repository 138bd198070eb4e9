"""Models on disk: the project's model bundles and the nnU-Net v2 models users bring.

``bundle`` (load, verify and save a bundle: manifest, weights, checksums),
``bundle_checks`` and ``bundle_weights`` (a manifest and weight files checked
before anything is built), ``nnunet_folder`` (trained-model folders, dataset
folders, exported zips), ``nnunet_labels`` (which labels are kidney, tumor,
cyst), ``nnunet_bundle`` (an nnU-Net model, or several, as a bundle).
"""
