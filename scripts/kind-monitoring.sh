#!/usr/bin/env bash
# Step 3 of the kind quickstart: the Prometheus Operator and a Prometheus on the kind
# cluster, in namespace `monitoring`, instead of kube-prometheus-stack (whose chart and
# images cannot be fetched on the project's machines). Everything is built here from Go
# modules at pinned versions and loaded into the nodes:
#   - the Prometheus Operator and its config reloader, github.com/prometheus-operator/
#     prometheus-operator at $PROMETHEUS_OPERATOR_VERSION (scripts/kind-tools.sh), as the
#     images the operator's own manifests name (quay.io/prometheus-operator/...);
#   - Prometheus from scripts/prometheus-bin.sh (the one the chart tests use), as
#     workpool.local/prometheus:<version>;
#   - the operator's CRDs and its RBAC/Deployment manifests from that module
#     (example/prometheus-operator-crd, example/rbac/prometheus-operator), namespace
#     `default` changed to `monitoring`;
#   - a Prometheus taking every ServiceMonitor, PodMonitor and PrometheusRule
#     (tests/kind/monitoring.yaml).
# Needs the environment of scripts/kind-env.sh and the cluster (KUBECONFIG).
set -euo pipefail
KIND_LOG_TAG=kind-monitoring
. "$(dirname "$0")/kind-lib.sh"
kind_use_env
cd "$KIND_ROOT"

"$KIND_ROOT/scripts/kind-tools.sh" prometheus-operator prometheus-config-reloader
prometheus=$("$KIND_ROOT/scripts/prometheus-bin.sh" | tail -1)
# Its release: Prometheus 3.N.P is Go module version v0.3NN.P (scripts/prometheus-bin.sh pins
# the module version; the binary, built by go install, does not know its own).
module_version=$(awk -F= '/^PROM_VERSION=/{print $2}' "$KIND_ROOT/scripts/prometheus-bin.sh")
prom_version=$(echo "$module_version" | sed -nE 's/^v0\.3([0-9]{2})\.([0-9]+)$/v3.\1.\2/p' | sed -E 's/v3\.0([0-9])/v3.\1/')
[ -n "$prom_version" ] || kind_die "cannot tell the Prometheus release of module version $module_version"
module=$(cd "$KIND_CACHE/src/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION" &&
  go list -m -f '{{.Dir}}' "github.com/prometheus-operator/prometheus-operator")
[ -d "$module/example/prometheus-operator-crd" ] || kind_die "no CRDs in $module"

# `image REF BINARY BASE DEST`: BINARY at DEST on BASE, its entrypoint.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
image() {
  local ref=$1 bin=$2 base=$3 dest=$4 dir
  dir="$tmp/$(basename "$dest")"
  mkdir -p "$dir"
  cp "$(readlink -f "$bin")" "$dir/$(basename "$dest")"
  printf 'FROM %s\nCOPY %s %s\nENTRYPOINT ["%s"]\n' "$base" "$(basename "$dest")" "$dest" "$dest" >"$dir/Dockerfile"
  docker build -q -t "$ref" "$dir" >/dev/null
  kind load docker-image --name "$KIND_CLUSTER" "$ref" >/dev/null
  kind_log "image $ref built and loaded"
}
operator_image="quay.io/prometheus-operator/prometheus-operator:$PROMETHEUS_OPERATOR_VERSION"
reloader_image="quay.io/prometheus-operator/prometheus-config-reloader:$PROMETHEUS_OPERATOR_VERSION"
prometheus_image="workpool.local/prometheus:$prom_version"
# static Go binaries on distroless/static; Prometheus (built with cgo) on Debian
image "$operator_image" "$KIND_BIN/prometheus-operator" gcr.io/distroless/static-debian12:nonroot /bin/operator
image "$reloader_image" "$KIND_BIN/prometheus-config-reloader" gcr.io/distroless/static-debian12:nonroot \
  /bin/prometheus-config-reloader
image "$prometheus_image" "$prometheus" docker.io/library/debian:bookworm-slim /bin/prometheus

kubectl apply --server-side -f "$module/example/prometheus-operator-crd/" >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl create namespace monitoring --dry-run=client -o yaml | kubectl apply -f - >/dev/null
for f in cluster-role cluster-role-binding service-account deployment service; do
  sed -e 's/namespace: default/namespace: monitoring/' \
    "$module/example/rbac/prometheus-operator/prometheus-operator-$f.yaml"
  echo ---
done | kubectl apply -f - >/dev/null
grep -q "$reloader_image" "$module/example/rbac/prometheus-operator/prometheus-operator-deployment.yaml" ||
  kind_die "the operator's Deployment does not name $reloader_image"
kubectl -n monitoring rollout status deployment/prometheus-operator --timeout=180s

sed -e "s#^  image: IMAGE#  image: $prometheus_image#" -e "s#^  version: VERSION#  version: $prom_version#" \
  tests/kind/monitoring.yaml | kubectl apply -f - >/dev/null
# The operator makes the StatefulSet prometheus-workpool; wait for it to exist, then for it.
for _ in $(seq 1 60); do
  kubectl -n monitoring get statefulset prometheus-workpool >/dev/null 2>&1 && break
  sleep 2
done
kubectl -n monitoring rollout status statefulset/prometheus-workpool --timeout=240s
kind_log "Prometheus $prom_version by the Prometheus Operator $PROMETHEUS_OPERATOR_VERSION runs in namespace monitoring"
