#!/usr/bin/env bash
# How the shipped default model was trained: on synthetic phantoms only, on 2 CPU cores.
#   bash training/train_default.sh [WORKDIR]
# WORKDIR (default ./default-model-work) gets the phantoms, the preprocessing cache and the runs;
# the bundle is written to KidneyTumorSeg/KidneyTumorSegLib/models/default (use --overwrite by hand to replace it).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-default-model-work}
DATA=$WORK/phantoms
KITS=../shared/data/kits19-labels
mkdir -p "$DATA"
# 24 random phantoms (seeds 10000..10023, intensity randomisation on) ...
python3 - "$DATA" <<'PY'
import sys
from pathlib import Path
from KidneyTumorSegLib.phantom import write_phantom_cases
root = Path(sys.argv[1])
have = len(list(root.glob("case_*")))
if have < 24:
    write_phantom_cases(root, 24 - have, seed0=10000 + have, start_index=have, randomize_intensity=True)
PY
# ... and 8 shaped by real KiTS19 label maps (cases < 150 with thick slices; evaluation uses cases >= 150)
if [ -d "$KITS" ]; then
  n=100
  for c in 00004 00006 00007 00008 00009 00010 00011 00012; do
    [ -d "$DATA/case_00$n" ] || kidneytumorseg phantom "$DATA/kits_$c" --seed $((20000 + 10#$c)) --kits-label "$KITS/case_$c.nii.gz"
    [ -d "$DATA/case_00$n" ] || mv "$DATA/kits_$c/case_00000" "$DATA/case_00$n"
    rmdir "$DATA/kits_$c" 2>/dev/null || true
    n=$((n + 1))
  done
fi
# round 1: 30/30/25 short epochs from scratch (about 45 minutes on 2 cores)
for stage in coarse kidney tumor; do
  kidneytumorseg-train train --config training/configs/cpu/$stage.json --data "$DATA" --out "$WORK/runs" \
    --fold 0 --device cpu --workers 2 --no-progress ${RESUME:+--resume}
done
# round 2: longer, from round 1's weights; two stages at a time on one thread each (faster than one on two)
round2() {
  OMP_NUM_THREADS=1 kidneytumorseg-train train --config training/configs/cpu/$1-continued.json --data "$DATA" \
    --out "$WORK/runs2" --cache "$WORK/runs/cache" --splits "$WORK/runs/splits.json" --init "$WORK/runs/$1_fold0" \
    --fold 0 --device cpu --no-progress ${RESUME:+--resume}
}
round2 kidney & k=$!; round2 tumor & t=$!; wait "$k"; wait "$t"  # either failing stops the script
round2 coarse
kidneytumorseg-train export --roi "$WORK/runs2/coarse_fold0" --kidney "$WORK/runs2/kidney_fold0" \
  --tumor "$WORK/runs2/tumor_fold0" -o KidneyTumorSeg/KidneyTumorSegLib/models/default \
  --name kidneytumorseg-default-phantom-cpu --version 0.1 \
  --description "CPU-sized cascade trained on synthetic phantoms only (see README)" \
  --data-description "32 synthetic phantoms (24 random, 8 shaped by KiTS19 label maps), fold 0 of 5"
