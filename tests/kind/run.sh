#!/usr/bin/env bash
# The end-to-end suites against the two-node kind cluster of `make kind` (`make kind-e2e`):
#
#   1. the Rust suites that take WORKPOOL_E2E_KUBECONFIG (the API conformance scenarios:
#      kubectl, kube-rs, managed fields), pointed at the kind cluster;
#   2. tests/kind/scenarios.py: the operator installed by the chart keeps real worker pods
#      working on both nodes through a deleted pod, a SIGKILLed worker, an autoscaling
#      burst, and a drain of the worker node, without losing a task;
#   3. afterwards the cluster is whole again: every Deployment and StatefulSet available,
#      both nodes schedulable, the example pools ready.
#
#   tests/kind/run.sh                    everything (runs `make kind` first when the cluster
#                                        is not there)
#   tests/kind/run.sh --scenarios-only   only 2 and 3
#   tests/kind/run.sh --repeat N         each scenario N times
#   tests/kind/run.sh -- ARGS            ARGS go to the Rust test binaries (a filter, --nocapture)
#
# The tests see the cluster only through WORKPOOL_E2E_KUBECONFIG (.kind/kubeconfig); your
# KUBECONFIG and ~/.kube/config are neither read nor changed. Each test works in a
# namespace of its own and deletes it (tests/kind/README.md says what they touch).
set -euo pipefail
KIND_LOG_TAG=kind-e2e
. "$(dirname "$0")/../../scripts/kind-lib.sh"
kind_use_env
cd "$KIND_ROOT"

# The Rust suites that run against a cluster named by WORKPOOL_E2E_KUBECONFIG.
RUST_SUITES=(conformance_kubectl conformance_kube_rs conformance_managed_fields)

rust=1 repeat=1 test_args=()
while [ $# -gt 0 ]; do
  case $1 in
  --scenarios-only) rust=0 ;;
  --repeat) repeat=$2; shift ;;
  --) shift; test_args=("$@"); break ;;
  *) kind_die "unknown argument $1 (--scenarios-only, --repeat N, -- ARGS)" ;;
  esac
  shift
done

if ! { docker info >/dev/null 2>&1 && command -v kind >/dev/null 2>&1 &&
  kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; }; then
  kind_log "no kind cluster $KIND_CLUSTER: running make kind first"
  scripts/kind-quickstart.sh
  kind_use_env
fi
kind export kubeconfig --name "$KIND_CLUSTER" --kubeconfig "$KIND_KUBECONFIG" >/dev/null 2>&1
export WORKPOOL_E2E_KUBECONFIG="$KIND_KUBECONFIG"
# kubectl here (the check that the cluster is whole again) uses the same cluster
export KUBECONFIG="$KIND_KUBECONFIG"
timings=()
timed() {
  local name=$1 start rc=0
  shift
  start=$(date +%s)
  "$@" || rc=$?
  timings+=("$(printf '%-40s %4ss %s' "$name" "$(($(date +%s) - start))" "$([ "$rc" = 0 ] && echo passed || echo "FAILED (exit $rc)")")")
  return "$rc"
}
failed=0

if [ "$rust" = 1 ]; then
  args=()
  for suite in "${RUST_SUITES[@]}"; do
    [ -f "tests/tests/$suite.rs" ] || kind_die "tests/tests/$suite.rs is gone: update RUST_SUITES in $0"
    args+=(--test "$suite")
  done
  kind_log "Rust suites against kind: ${RUST_SUITES[*]}"
  timed "Rust suites (${#RUST_SUITES[@]})" cargo test -p workpool-tests "${args[@]}" -- "${test_args[@]}" || failed=1
fi

timed "scenarios (x$repeat)" python3 tests/kind/scenarios.py --kubeconfig "$KIND_KUBECONFIG" --repeat "$repeat" || failed=1

# The cluster is whole again (the drain evicted whatever ran on the worker node).
whole() {
  kubectl wait --for=condition=Available deployments --all -A --timeout=240s >/dev/null &&
    for sts in $(kubectl get statefulsets -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{" "}{end}'); do
      kubectl -n "${sts%/*}" rollout status "statefulset/${sts#*/}" --timeout=240s >/dev/null || return 1
    done &&
    ! kubectl get nodes -o jsonpath='{.items[*].spec.unschedulable}' | grep -q true &&
    for pool in $(kubectl get wp -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{" "}{end}'); do
      kubectl -n "${pool%/*}" wait --for=condition=Ready "wp/${pool#*/}" --timeout=240s >/dev/null || return 1
    done
}
timed "cluster whole again" whole || { failed=1; kubectl get pods -A -o wide >&2; }

printf '\ntests/kind/run.sh:\n' >&2
printf '  %s\n' "${timings[@]}" >&2
[ "$failed" = 0 ]
