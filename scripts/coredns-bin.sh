#!/usr/bin/env bash
# Builds CoreDNS for the test cluster's real node from CoreDNS's own Go module (the release
# pinned in tests/k8s/coredns/go.mod, through the Go module proxy; nothing prebuilt is
# downloaded), with only the plugins the cluster DNS needs (tests/k8s/coredns/main.go).
# The binary lands in the same cache as scripts/k8s-bin.sh's, keyed by CoreDNS version, and
# is reused when present; prints its directory on stdout (the last line).
#
#   scripts/coredns-bin.sh           build when missing, print the bin directory
#   scripts/coredns-bin.sh --check   exit 0 when the binary is there, 1 otherwise
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tests/k8s/coredns"
version=$(awk '$1=="require" && $2=="github.com/coredns/coredns" {print $3; exit}' "$mod/go.mod")
[ -n "$version" ] || { echo "coredns-bin: no coredns version in $mod/go.mod" >&2; exit 2; }
cache=${WORKPOOL_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workpool/k8s}
bin="$cache/coredns-$version/bin"
if [ "${1:-}" = "--check" ]; then [ -x "$bin/coredns" ]; exit; fi
if [ -x "$bin/coredns" ]; then echo "$bin"; exit 0; fi
command -v go >/dev/null || { echo "coredns-bin: no Go toolchain (go) on PATH" >&2; exit 3; }
start=$(date +%s)
echo "coredns-bin: building CoreDNS $version from source" >&2
tmp="$bin.partial"
rm -rf "$tmp"; mkdir -p "$tmp"
(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/coredns" .)
rm -rf "$bin"; mv "$tmp" "$bin"
echo "coredns-bin: built in $(( $(date +%s) - start ))s into $bin" >&2
echo "$bin"
