#!/usr/bin/env bash
# On a lent GPU machine: unpack the packages its image lacks (training/device_prepare.sh packed them into
# .devkit/ here), make the project importable without installing it, and run training/device_session.py.
#   device run, carry [".devkit"], timeout 600:  bash training/device_session.sh --out $OUT --budget 540
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .devkit/site.tar.xz ]; then
  site=$(mktemp -d /tmp/kts-site.XXXXXX)
  tar -xJf .devkit/site.tar.xz -C "$site"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/KidneyTumorSeg:$PWD/training${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
kits=()
[ -d .devkit/kits19 ] && kits=(--kits-labels .devkit/kits19)
exec python3 training/device_session.py "${kits[@]}" "$@"
