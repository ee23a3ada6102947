#!/usr/bin/env bash
# Builds KWOK (Kubernetes WithOut Kubelet, sigs.k8s.io/kwok) for the scale benchmark's
# simulated nodes, from its own Go module at the release pinned in tests/k8s/kwok/go.mod,
# through the Go module proxy; nothing prebuilt is downloaded. `kwok` runs against a real
# API server: it keeps fake Nodes alive (status and Leases) and moves the pods bound to them
# through their lifecycle (Running, Ready; deletion) through the status subresource, with no
# container behind them. What it does is set by Stages; `stages.yaml` beside the binary holds
# KWOK's own default set, copied from the same module (node-initialize,
# node-heartbeat-with-lease, pod-ready, pod-complete, pod-delete) and the Stages of our own in
# tests/k8s/kwok/*.yaml (rewritten when one of those changes): pass it as `kwok --config`.
# Both land in the same cache as scripts/k8s-bin.sh's, keyed by KWOK version, and are reused
# when present; prints their directory on stdout (the last line).
#
#   scripts/kwok-bin.sh           build when missing, print the bin directory
#   scripts/kwok-bin.sh --check   exit 0 when the binary is there, 1 otherwise (no build)
#   scripts/kwok-bin.sh --dir     print the bin directory, built or not (no build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tests/k8s/kwok"
version=$(awk '$1=="sigs.k8s.io/kwok" && $2 ~ /^v/ {print $2; exit} $1=="require" && $2=="sigs.k8s.io/kwok" {print $3; exit}' "$mod/go.mod")
[ -n "$version" ] || { echo "kwok-bin: no sigs.k8s.io/kwok version in $mod/go.mod" >&2; exit 2; }
cache=${WORKPOOL_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workpool/k8s}
bin="$cache/kwok-$version/bin"
ours=("$mod"/*.yaml)
have() {
  [ -x "$bin/kwok" ] && [ -s "$bin/stages.yaml" ] || return 1
  for f in "${ours[@]}"; do [ "$bin/stages.yaml" -nt "$f" ] || return 1; done
}
# KWOK's default Stages from its module source (downloaded by the build), then ours.
write_stages() {
  local src s
  src=$(cd "$mod" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  for s in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
           pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    echo "---"; cat "$src/kustomize/stage/$s.yaml"
  done >"$1.tmp"
  for f in "${ours[@]}"; do echo "---"; cat "$f"; done >>"$1.tmp"
  mv "$1.tmp" "$1"
}
if [ "${1:-}" = "--check" ]; then have; exit; fi
if [ "${1:-}" = "--dir" ]; then echo "$bin"; exit 0; fi
if have; then echo "$bin"; exit 0; fi
if [ -x "$bin/kwok" ]; then write_stages "$bin/stages.yaml"; echo "$bin"; exit 0; fi
command -v go >/dev/null || { echo "kwok-bin: no Go toolchain (go) on PATH" >&2; exit 3; }
start=$(date +%s)
echo "kwok-bin: building KWOK $version from source" >&2
tmp="$bin.partial"
rm -rf "$tmp"; mkdir -p "$tmp"
ldflags="-s -w"
(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok)
write_stages "$tmp/stages.yaml"
rm -rf "$bin"; mv "$tmp" "$bin"
echo "kwok-bin: built in $(( $(date +%s) - start ))s into $bin" >&2
echo "$bin"
