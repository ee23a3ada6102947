#!/usr/bin/env bash
# Builds upstream Prometheus with Kubernetes service discovery, once, and prints the path
# of the binary. Debian 12's prometheus (2.42) has no kubernetes_sd_configs ("field
# kubernetes_sd_configs not found"), and the chart tests scrape pods found through the
# test cluster's API server. Prometheus 3.16.0 is Go module version v0.316.0; the build
# tags keep only the Kubernetes discovery. Cached by version under ~/.cache/workpool.
#
#   scripts/prometheus-bin.sh           build if missing, print the binary's path
#   scripts/prometheus-bin.sh --check   print the path if built, else exit 1
set -euo pipefail
PROM_MODULE=github.com/prometheus/prometheus/cmd/prometheus
PROM_VERSION=v0.316.0
prom_dir="${WORKPOOL_PROMETHEUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workpool/prometheus}/$PROM_VERSION"
if [ -x "$prom_dir/prometheus" ]; then
  echo "$prom_dir/prometheus"
  exit 0
fi
[ "${1:-}" = "--check" ] && exit 1
command -v go >/dev/null 2>&1 || { echo "prometheus-bin: Go is missing" >&2; exit 1; }
echo "prometheus-bin: building Prometheus $PROM_VERSION with kubernetes_sd (go install, once; cached in $prom_dir)" >&2
t0=$(date +%s)
mkdir -p "$prom_dir"
rm -rf "$prom_dir/partial"
if GOBIN="$prom_dir/partial" go install -tags remove_all_sd,enable_kubernetes_sd "$PROM_MODULE@$PROM_VERSION" \
    >"$prom_dir/build.log" 2>&1; then
  mv "$prom_dir/partial/prometheus" "$prom_dir/prometheus"
  rm -rf "$prom_dir/partial"
  echo "prometheus-bin: built in $(( $(date +%s) - t0 ))s" >&2
  echo "$prom_dir/prometheus"
else
  echo "prometheus-bin: building Prometheus failed: $(tail -n 3 "$prom_dir/build.log")" >&2
  rm -rf "$prom_dir/partial"
  exit 1
fi
