"""Synthetic contrast-enhanced abdominal CT phantoms with KiTS labels.

``make_phantom(seed)`` paints a patient in world coordinates (LPS mm: +x
patient left, +y posterior, +z superior) on an axis-aligned grid: body
outline with skin, subcutaneous fat and muscle wall; lungs above a
two-domed diaphragm, heart; spine (vertebral bodies with cortical shell,
discs, canal, cord, arches, processes), ribs with costal cartilage,
sternum, sacrum and iliac wings; psoas, quadratus lumborum and paraspinal
muscles; aorta (left-anterior of the spine, bifurcating), IVC (right);
liver with portal/hepatic veins, gallbladder, spleen, stomach with an
air-fluid level, pancreas, colon with mottled stool or gas, small-bowel
loops with fluid and gas, bladder; two kidneys (or one, or none) with
cortex, medullary pyramids, sinus fat, pelvis, renal vessels and ureters,
in a perirenal fat capsule; 0-3 tumours (exophytic or endophytic,
lobulated, heterogeneous, some necrotic) and simple cysts. The tissue map
becomes HU by per-tissue look-up, texture, partial-volume blur and CT-like
correlated noise (``phantom_render``). Modules: ``phantom_make`` (the
steps of ``make_phantom``), ``phantom_params`` (codes and random
parameters), ``phantom_draw`` (the draws of one case), ``phantom_place``
(grid and placement), ``phantom_body`` (slice-wise anatomy),
``phantom_organs``, ``phantom_kidney``, ``phantom_kits`` (kidneys from a real
label), ``phantom_render``, ``phantom_info`` (the description) and
``phantom_io`` (case folders on disk). This module is the public entry point.

Comparison with the one real CT here (``../shared/data/real-abdominal-ct-dicom``,
Philips, 512x512x134, 1.074 mm pixels, 3 mm slices, late-arterial /
corticomedullary look). Real values: ROI medians and the body histogram.
Phantom values: median (min-max) over 8 seeds, default options,
512x512x200 at 0.78 x 0.78 x 2.5 mm, each tissue mask from
``Phantom.tissue`` eroded by 2 voxels. Noise: sd and lag-1 correlation in
8x8-pixel patches inside subcutaneous fat (muscle for the second real
figure), the same method on both.

======================  ========================  ===========================
quantity                real CT                   phantom (default options)
======================  ========================  ===========================
body histogram peaks    -97 fat, 57 soft tissue,  -97 (-102..-87), 52 (47..72),
                        102 enhanced organs       107-117 where liver is large
subcutaneous fat        -97 (p5 -114, p95 -58)    -101 (-109..-92)
muscle                  65 (paraspinal)           52 (51..67)
liver                   103                       103 (83..118)
spleen                  ~128                      121 (112..125)
kidney cortex / medulla ~230 / 55-95              201 (177..220) / 95 (70..137)
aorta                   ~181                      214 (185..282)
vertebral cancellous    240-355                   248 (203..307)
lung                    -764 (vessels, PV)        -818 (-858..-789)
noise sd                8.2 fat, 9.5 muscle       11.7 (8.0..15.7)
noise lag-1 correlation 0.41-0.58 in-plane at     0.6-0.7 in-plane at 0.78 mm
                        1.07 mm; 0.2-0.33 z       (NPS model: ~0.5 at 1.07 mm);
                                                  0.2 (0.1..0.3) z
======================  ========================  ===========================

The default ranges follow those figures: phase drawn from late arterial to
portal venous (kidney cortex 160-240, medulla 60-150), noise 8-16 HU with
``NPS(f) ~ f exp(-(f/f0)^2)``, f0 0.17-0.25 cycles/mm, which reproduces the
real in-plane correlation and its negative side lobe (real lag-2 -0.07 to
-0.24). ``randomize_intensity=True`` widens every range (noise 5-30 HU,
all phases, tissue means jittered, PSF 0.3-1 mm) for domain randomisation.
Not modelled: beam hardening and streaks, excreted contrast, a realistic
pelvis below the hips, fine vessel trees outside the liver.
"""
from .._lazy import lazy_names

# loaded on first use: ``sample`` (the Slicer process imports it) must not pull in torch
_NAMES = {"Phantom": "phantom_make", "make_phantom": "phantom_make", "write_phantom_cases": "phantom_io"}
__all__ = sorted(_NAMES)

__getattr__ = lazy_names(__name__, _NAMES)
