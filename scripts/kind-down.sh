#!/usr/bin/env bash
# `make kind-down`: undoes `make kind`. The example pools are deleted first (while the
# operator runs to remove their consumers: their finalizer), then the release is
# uninstalled, and what `helm uninstall` left is checked against what the chart promises
# to leave (docs/operations.md: the CRD, kept on purpose; the Redis PVC only with
# redis.persistence.retainOnUninstall). Then the cluster is deleted and, when it was
# started here and no kind cluster is left on it, the private Docker engine stopped.
# Exits non-zero when the uninstall left something it should not have (after deleting the
# cluster all the same).
set -euo pipefail
KIND_LOG_TAG=kind-down
. "$(dirname "$0")/kind-lib.sh"
kind_use_env
cd "$KIND_ROOT"
export KUBECONFIG="$KIND_KUBECONFIG"

if ! docker info >/dev/null 2>&1 || ! command -v kind >/dev/null 2>&1 ||
  ! kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  kind_log "no kind cluster $KIND_CLUSTER: nothing to do"
  exit 0
fi
kind export kubeconfig --name "$KIND_CLUSTER" --kubeconfig "$KIND_KUBECONFIG" >/dev/null 2>&1

leftovers_ok=1
if helm status workpool -n workpool-system >/dev/null 2>&1; then
  kubectl delete -f examples/sleep-pool.yaml -f examples/script-pool.yaml --ignore-not-found --timeout=120s
  kubectl delete secret workpool-redis --ignore-not-found
  helm uninstall workpool -n workpool-system --wait --timeout 5m
  # What is left of the release: objects with its instance label, anywhere (but those of
  # the Prometheus named workpool, which its operator labels the same way).
  kinds=$(kubectl api-resources --verbs=list -o name | grep -v -e '^events' -e '^componentstatuses' | paste -sd, -)
  left=$(kubectl get "$kinds" -A -l app.kubernetes.io/instance=workpool,app.kubernetes.io/managed-by!=prometheus-operator --ignore-not-found -o \
    jsonpath='{range .items[*]}{.kind}/{.metadata.name}{"\n"}{end}' 2>/dev/null | sort -u)
  expected="CustomResourceDefinition/workpools.workpool.dev"
  unexpected=$(comm -23 <(echo "$left" | grep -v '^$' || true) <(echo "$expected"))
  kind_log "left by helm uninstall: ${left//$'\n'/, }"
  if [ -n "$unexpected" ]; then
    kind_log "helm uninstall left what the chart does not promise to keep: ${unexpected//$'\n'/, }"
    leftovers_ok=0
  fi
  kubectl get crd workpools.workpool.dev -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}' |
    grep -qx keep || { kind_log "the WorkPool CRD is gone or not marked keep"; leftovers_ok=0; }
fi

kind delete cluster --name "$KIND_CLUSTER"
rm -f "$KIND_KUBECONFIG"
if kind_private_engine && [ -z "$(kind get clusters 2>/dev/null)" ]; then
  "$KIND_ROOT/scripts/kind-docker.sh" down
fi
[ "$leftovers_ok" = 1 ]
