#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, written by the operator's crdgen) into the
# chart (charts/workpool/files/crds/), which installs them from templates/crds.yaml.
# tests/chart/test_crds.py fails when the chart's copy is stale: run this after
# regenerating crds/.
set -euo pipefail
cd "$(dirname "$0")/.."
src=crds
dst=charts/workpool/files/crds
shopt -s nullglob
files=("$src"/*.yaml)
if [ ${#files[@]} -eq 0 ]; then
  echo "sync-chart-crds: no $src/*.yaml yet (generate them with the operator's crdgen first)" >&2
  exit 1
fi
mkdir -p "$dst"
# remove copies whose source is gone, then copy byte for byte
for f in "$dst"/*.yaml; do
  [ -e "$src/$(basename "$f")" ] || { rm -f "$f"; echo "sync-chart-crds: removed $f"; }
done
for f in "${files[@]}"; do
  if ! cmp -s "$f" "$dst/$(basename "$f")"; then
    cp "$f" "$dst/"
    echo "sync-chart-crds: updated $dst/$(basename "$f")"
  fi
done
