#!/usr/bin/env bash
# Here, before a device run: pack into .devkit/ (ignored by git, carried to the lent machine) what its image lacks.
#   bash training/device_prepare.sh [N_KITS_LABELS]
# - site.tar.xz: the project's dependencies that the GPU image does not have (its python3 is 3.12 with torch,
#   numpy, scipy, pillow, safetensors, tqdm, requests), as CPython 3.12 x86-64 wheels unpacked and xz-packed
#   (SimpleITK's wheel alone is 53 MB, over what a run can carry beside the project; packed: 34 MB in all);
# - kits19/: KiTS19 label maps of cases < 150 with at most 200 slices (default 30), which the session
#   shapes a quarter of its training phantoms by (the evaluation uses cases >= 150).
# A device run carries at most 64 MiB; this prints what will travel.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-30}
KIT=.devkit
mkdir -p "$KIT"
grep -qx '/.devkit/' .gitignore || { echo "add /.devkit/ to .gitignore first" >&2; exit 1; }
if [ ! -f "$KIT/site.tar.xz" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$tmp/whl" \
    "SimpleITK>=2.3,<3" "monai>=1.3,<1.7" "connected-components-3d>=3.12,<5" "slicerio>=1.0,<2" "pynrrd>=1.0,<2"
  mkdir "$tmp/site"
  for w in "$tmp"/whl/*.whl; do python3 -m zipfile -e "$w" "$tmp/site"; done
  tar -C "$tmp/site" -cf - . | xz -T2 -6 > "$KIT/site.tar.xz.tmp"
  mv "$KIT/site.tar.xz.tmp" "$KIT/site.tar.xz"
  rm -rf "$tmp"
fi
LABELS=../shared/data/kits19-labels
if [ -d "$LABELS" ] && [ ! -d "$KIT/kits19" ]; then
  python3 - "$LABELS" "$KIT/kits19.tmp" "$N" <<'PY'
import shutil, sys
from pathlib import Path
import SimpleITK as sitk
src, dst, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
dst.mkdir(parents=True, exist_ok=True)
took = 0
for case in range(13, 150):
    p = src / f"case_{case:05d}.nii.gz"
    if took >= n or not p.is_file():
        continue
    r = sitk.ImageFileReader(); r.SetFileName(str(p)); r.ReadImageInformation()
    if min(r.GetSize()) <= 200:  # KiTS19 stores slices on the first axis: keep the shorter scans
        shutil.copy(p, dst / p.name); took += 1
print(f"{took} KiTS19 label maps")
PY
  mv "$KIT/kits19.tmp" "$KIT/kits19"
fi
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
kit=$(du -sb "$KIT" | cut -f1)
echo "travels: project $((tracked / 1048576)) MiB + .devkit $((kit / 1048576)) MiB = $(((tracked + kit) / 1048576)) MiB (limit 64)"
[ $((tracked + kit)) -lt $((64 * 1048576)) ] || { echo "over the 64 MiB a device run carries" >&2; exit 1; }
