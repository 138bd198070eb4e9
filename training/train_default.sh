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
CONTACT=$WORK/phantoms-contact
LOWRES=$WORK/phantoms-lowres
LOWRES2=$WORK/phantoms-lowres2
# 24 random phantoms (seeds 10000..10023, intensity randomisation on, perirenal fat always present) ...
python3 - "$DATA" "$CONTACT" "$LOWRES" <<'PY'
import sys
from pathlib import Path
from KidneyTumorSegLib.phantom import write_phantom_cases
root, contact, lowres = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
have = len(list(root.glob("case_000[0-2]*")))
if have < 24:
    write_phantom_cases(root, 24 - have, seed0=10000 + have, start_index=have, randomize_intensity=True,
                        organ_contact=0.0)
# 12 more (seeds 10024..10035) where liver and spleen touch the kidneys with no fat plane, for round 3
have = len(list(contact.glob("case_*")))
if have < 12:
    write_phantom_cases(contact, 12 - have, seed0=10024 + have, start_index=24 + have, randomize_intensity=True,
                        organ_contact=1.0)
# 48 small ones (seeds 10100..10147; 288x288x80, 1.15-1.6 mm pixels, 2.5-5 mm slices; 2 s each) for round 3
have = len(list(lowres.glob("case_*")))
if have < 48:
    write_phantom_cases(lowres, 48 - have, seed0=10100 + have, start_index=200 + have, randomize_intensity=True,
                        organ_contact=0.5, shape=(80, 288, 288))
PY
# ... and 8 shaped by real KiTS19 label maps (cases < 150 with thick slices; evaluation uses cases >= 150)
if [ -d "$KITS" ]; then
  n=100
  for c in 00004 00006 00007 00008 00009 00010 00011 00012; do
    [ -d "$DATA/case_00$n" ] || kidneytumorseg phantom "$DATA/kits_$c" --seed $((20000 + 10#$c)) --organ-contact 0 \
      --kits-label "$KITS/case_$c.nii.gz"
    [ -d "$DATA/case_00$n" ] || mv "$DATA/kits_$c/case_00000" "$DATA/case_00$n"
    rmdir "$DATA/kits_$c" 2>/dev/null || true
    n=$((n + 1))
  done
fi
# round 1: 30/30/25 short epochs from scratch on the first 32 phantoms, fold 0 (about 45 minutes on 2 cores)
for stage in coarse kidney tumor; do
  kidneytumorseg-train train --config training/configs/cpu/$stage.json --data "$DATA" --out "$WORK/runs" \
    --fold 0 --device cpu --workers 2 --no-progress ${RESUME:+--resume}
done
# later rounds start from earlier weights; two stages at a time on one thread each (faster than one on two)
more() {  # more CONFIG OUT INIT FOLD DATA...
  local cfg=$1 out=$2 init=$3 fold=$4; shift 4
  OMP_NUM_THREADS=1 kidneytumorseg-train train --config "training/configs/cpu/$cfg.json" --data "$@" \
    --out "$WORK/$out" --cache "$WORK/runs/cache" --fold "$fold" --init "$WORK/$init" --device cpu --no-progress \
    ${RESUME:+--resume}
}
# round 2: kidney 100 and tumor 80 more epochs, same data and split (about 50 minutes)
more kidney-continued runs2 runs/kidney_fold0 0 "$DATA" --splits "$WORK/runs/splits.json" & k=$!
more tumor-continued runs2 runs/tumor_fold0 0 "$DATA" --splits "$WORK/runs/splits.json" & t=$!
wait "$k"; wait "$t"  # either failing stops the script
# round 3: every case, no validation (fold all). ROI: 40 more epochs from round 1 on the 44 full-size phantoms
# (its own split file, runs3/splits.json); kidney and tumor: 40 more from round 2 on all 92 (round 2 overfitted).
more coarse-continued runs3 runs/coarse_fold0 all "$DATA" "$CONTACT"
more kidney-contact runs3 runs2/kidney_fold0 all "$DATA" "$CONTACT" "$LOWRES" --splits "$WORK/runs3/splits92.json" & k=$!
more tumor-more runs3 runs2/tumor_fold0 all "$DATA" "$CONTACT" "$LOWRES" --splits "$WORK/runs3/splits92.json" & t=$!
wait "$k"; wait "$t"
# round 4: kidney and tumor 50 more epochs from round 3 on 188 phantoms (+ 96 small ones, seeds 10148..10243)
python3 - "$LOWRES2" <<'PY'
import sys
from pathlib import Path
from KidneyTumorSegLib.phantom import write_phantom_cases
root = Path(sys.argv[1])
have = len(list(root.glob("case_*")))
if have < 96:
    write_phantom_cases(root, 96 - have, seed0=10148 + have, start_index=248 + have, randomize_intensity=True,
                        organ_contact=0.5, shape=(80, 288, 288))
PY
ALL=("$DATA" "$CONTACT" "$LOWRES" "$LOWRES2")
more kidney-round4 runs4 runs3/kidney_foldall all "${ALL[@]}" --splits "$WORK/runs4/splits188.json" & k=$!
more tumor-round4 runs4 runs3/tumor_foldall all "${ALL[@]}" --splits "$WORK/runs4/splits188.json" & t=$!
wait "$k"; wait "$t"
kidneytumorseg-train export --roi "$WORK/runs3/coarse_foldall" --kidney "$WORK/runs4/kidney_foldall" \
  --tumor "$WORK/runs4/tumor_foldall" -o KidneyTumorSeg/KidneyTumorSegLib/models/default \
  --name kidneytumorseg-default-phantom-cpu --version 0.1 \
  --description "Preliminary CPU-sized cascade (0.4M parameters per stage) trained on 2 CPU cores on synthetic phantoms only (see README)" \
  --data-description "188 synthetic phantoms (180 random: 12 with liver/spleen touching the kidneys, 144 small low-resolution; 8 shaped by KiTS19 label maps)" \
  --limitations "preliminary model trained on synthetic phantoms only, below the project's accuracy bar (held-out phantoms: kidney Dice 0.90, tumor Dice 0.51); on a real CT it marked bowel next to a kidney as tumor. Not for clinical use: check every kidney outline and tumor candidate."
