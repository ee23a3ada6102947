#!/usr/bin/env bash
# Builds the tools of the kind path from their own Go modules, at the versions in
# scripts/kind-versions.sh, through the Go module proxy (nothing prebuilt is downloaded),
# into $KIND_CACHE/bin. Each is built once per version and reused.
#
#   scripts/kind-tools.sh [TOOL...]   build what is missing (default: kind helm kubectl)
#
# Tools: kind, helm (the CLI users run), kubectl (a link to scripts/k8s-bin.sh's, the
# cluster's release), and for the node image: kubeadm and crictl (at the cluster's
# release), coredns (CoreDNS with the plugins of kubeadm's Corefile), local-path-provisioner
# (the dynamic provisioner of kind's `standard` StorageClass); for the monitoring:
# prometheus-operator and prometheus-config-reloader.
set -euo pipefail
KIND_LOG_TAG=kind-tools
. "$(dirname "$0")/kind-lib.sh"

tools_dir="$KIND_CACHE/tools"
src_dir="$KIND_CACHE/src"
mkdir -p "$KIND_BIN" "$tools_dir" "$src_dir"
command -v go >/dev/null 2>&1 || kind_die "no Go toolchain (go): needed to build the kind tools from their modules"
# The module proxy only (no direct VCS fetches), static binaries.
GOPROXY=$(go env GOPROXY | cut -d, -f1)
export GOPROXY CGO_ENABLED=0 GOFLAGS=-mod=mod

k8s_version=$(kind_k8s_version)
k8s_ldflags() {
  local minor=${k8s_version#v1.} p flags="-s -w"
  minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    flags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# `go_tool NAME VERSION-KEY MODULE@VERSION PACKAGE LDFLAGS`: build PACKAGE of MODULE in a
# module of its own (so the tool's go.mod decides its dependencies; replace directives in
# it, which `go install m@v` refuses, do not matter) into tools/NAME-KEY, link it in bin/.
go_tool() {
  local name=$1 key=$2 modver=$3 pkg=$4 ldflags=$5
  local out="$tools_dir/$name-$key/$name" mod="$src_dir/$name-$key"
  if [ ! -x "$out" ]; then
    kind_log "building $name $key from $modver"
    rm -rf "$mod"
    mkdir -p "$mod" "$(dirname "$out")"
    (cd "$mod" && go mod init "workpool.local/kind-tools/$name" >/dev/null 2>&1 &&
      go get "$modver" >/dev/null 2>&1 || go get "$modver")
    local start=$(date +%s)
    (cd "$mod" && nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$out.partial" "$pkg")
    mv "$out.partial" "$out"
    kind_log "built $name in $(($(date +%s) - start))s"
  fi
  ln -sfn "$out" "$KIND_BIN/$name"
}

# `derived_tool NAME FROM-MODULE-DIR PACKAGE LDFLAGS [MAIN.GO]`: build PACKAGE in a copy of
# one of the project's pinned Go modules (tests/k8s, tests/k8s/coredns), so it is the same
# release as what that module builds (and shares its Go build cache); MAIN.GO replaces
# the copy's main package when given.
derived_tool() {
  local name=$1 from=$2 pkg=$3 ldflags=$4 main=${5:-}
  local key
  key=$(cat "$from/go.mod" ${main:+"$main"} | sha256sum | cut -c1-12)
  local out="$tools_dir/$name-$key/$name" mod="$src_dir/$name-$key"
  if [ ! -x "$out" ]; then
    kind_log "building $name from $(basename "$from")/go.mod"
    rm -rf "$mod"
    mkdir -p "$mod" "$(dirname "$out")"
    cp "$from/go.mod" "$from/go.sum" "$mod/"
    chmod u+w "$mod/go.mod" "$mod/go.sum"
    sed -i "s#^module .*#module workpool.local/kind-tools/$name#" "$mod/go.mod"
    [ -n "$main" ] && cp "$main" "$mod/main.go"
    local start=$(date +%s)
    (cd "$mod" && nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$out.partial" "$pkg")
    mv "$out.partial" "$out"
    kind_log "built $name in $(($(date +%s) - start))s"
  fi
  ln -sfn "$out" "$KIND_BIN/$name"
}

build() {
  case $1 in
  kind) go_tool kind "$KIND_VERSION" "sigs.k8s.io/kind@$KIND_VERSION" sigs.k8s.io/kind "-s -w" ;;
  helm)
    go_tool helm "$HELM_VERSION" "helm.sh/helm/v4@$HELM_VERSION" helm.sh/helm/v4/cmd/helm \
      "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.metadata= -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
    ;;
  crictl)
    go_tool crictl "$CRI_TOOLS_VERSION" "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" sigs.k8s.io/cri-tools/cmd/crictl \
      "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION"
    ;;
  kubectl)
    local k8s_bin
    k8s_bin=$("$KIND_ROOT/scripts/k8s-bin.sh" | tail -1)
    ln -sfn "$k8s_bin/kubectl" "$KIND_BIN/kubectl"
    ;;
  kubeadm) derived_tool kubeadm "$KIND_ROOT/tests/k8s" k8s.io/kubernetes/cmd/kubeadm "$(k8s_ldflags)" ;;
  coredns)
    derived_tool coredns "$KIND_ROOT/tests/k8s/coredns" . "-s -w" "$KIND_ROOT/images/kind-node/coredns.go"
    ;;
  prometheus-operator | prometheus-config-reloader)
    local cmd=operator
    [ "$1" = prometheus-config-reloader ] && cmd=prometheus-config-reloader
    go_tool "$1" "$PROMETHEUS_OPERATOR_VERSION" \
      "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
      "github.com/prometheus-operator/prometheus-operator/cmd/$cmd" \
      "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_OPERATOR_VERSION#v} -X github.com/prometheus/common/version.Branch=${PROMETHEUS_OPERATOR_VERSION}"
    ;;
  local-path-provisioner)
    go_tool local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION" \
      "github.com/rancher/local-path-provisioner@$LOCAL_PATH_PROVISIONER_VERSION" \
      github.com/rancher/local-path-provisioner "-s -w -X main.VERSION=$LOCAL_PATH_PROVISIONER_VERSION"
    ;;
  *) kind_die "unknown tool $1 (kind helm kubectl kubeadm crictl coredns local-path-provisioner prometheus-operator prometheus-config-reloader)" ;;
  esac
}

[ $# -gt 0 ] || set -- kind helm kubectl
for tool in "$@"; do build "$tool"; done
