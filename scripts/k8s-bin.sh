#!/usr/bin/env bash
# Builds the Kubernetes components of the test cluster from Kubernetes' own Go source, at the
# release pinned in tests/k8s/go.mod, through the Go module proxy. Nothing prebuilt is
# downloaded. Binaries land in a cache directory keyed by version (outside the git tree) and
# are reused when present; prints that directory on stdout (the last line).
#
#   scripts/k8s-bin.sh            build when missing, print the bin directory
#   scripts/k8s-bin.sh --check    exit 0 when the binaries are there, 1 otherwise (no build)
#   scripts/k8s-bin.sh --dir      print the bin directory, built or not (no build)
#   scripts/k8s-bin.sh --regen V  rewrite tests/k8s/go.mod for Kubernetes release V (e.g. 1.37.2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tests/k8s"

components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

if [ "${1:-}" = "--regen" ]; then
  v=${2:?usage: k8s-bin.sh --regen 1.NN.P}
  proxy=${GOPROXY%%,*}; proxy=${proxy:-https://proxy.golang.org}
  upstream=$(curl -fsS "$proxy/k8s.io/kubernetes/@v/v$v.mod")
  {
    echo "// Kubernetes components for the test cluster, built from Kubernetes' own source at one"
    echo "// pinned release. Written by scripts/k8s-bin.sh --regen; change the version there."
    echo "module workpool.dev/tests/k8s"
    echo
    echo "go $(awk '$1=="go"{print $2; exit}' <<<"$upstream")"
    echo
    echo "tool ("
    for c in "${components[@]}"; do echo "	k8s.io/kubernetes/cmd/$c"; done
    echo "	go.etcd.io/etcd/server/v3"
    echo ")"
    echo
    echo "require k8s.io/kubernetes v$v"
    echo
    echo "// k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with"
    echo "// ./staging paths, which do not apply to a module that imports it: use the published"
    echo "// version of each from the same release instead."
    echo "replace ("
    grep '=> ./staging' <<<"$upstream" | awk -v r="v0.${v#1.}" '{print "\t"$1" => "$1" "r}'
    echo ")"
  } >"$mod/go.mod"
  (cd "$mod" && go mod tidy)
  exit 0
fi

version=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit} $1=="require" && $2=="k8s.io/kubernetes"{print $3; exit}' "$mod/go.mod")
[ -n "$version" ] || { echo "k8s-bin: no k8s.io/kubernetes version in $mod/go.mod" >&2; exit 2; }
cache=${WORKPOOL_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workpool/k8s}
bin="$cache/$version/bin"
all=("${components[@]}" etcd)

have_all() { for c in "${all[@]}"; do [ -x "$bin/$c" ] || return 1; done; }

if [ "${1:-}" = "--check" ]; then have_all; exit; fi
if [ "${1:-}" = "--dir" ]; then echo "$bin"; exit 0; fi
if have_all; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "k8s-bin: no Go toolchain (go) on PATH" >&2; exit 3; }
minor=${version#v1.}; minor=${minor%%.*}
vpkg=k8s.io/component-base/version
cpkg=k8s.io/client-go/pkg/version
ldflags="-s -w"
for p in $vpkg $cpkg; do
  ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
tmp="$cache/$version/bin.partial"
rm -rf "$tmp"; mkdir -p "$tmp"
start=$(date +%s)
echo "k8s-bin: building Kubernetes $version (${components[*]}, etcd) from source; a cold build takes a while" >&2
# One go build for every component, so the packages they share compile once.
(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" tool)
mv "$tmp/server" "$tmp/etcd" 2>/dev/null || mv "$tmp/v3" "$tmp/etcd"
rm -rf "$bin"; mv "$tmp" "$bin"
echo "k8s-bin: built in $(( $(date +%s) - start ))s into $bin" >&2
echo "$bin"
