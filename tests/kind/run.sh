#!/usr/bin/env bash
# Runs the workpool-tests conformance scenarios against a real kind cluster.
#
#   tests/kind/run.sh              create (or reuse) the kind cluster `workpool-e2e`,
#                                  run the suites, delete the cluster if this run made it
#   KEEP_CLUSTER=1 tests/kind/run.sh   keep the cluster afterwards
#   tests/kind/run.sh -- NAME      extra arguments go to the test binaries (a filter, --nocapture)
#
# Needs: kind, a working Docker engine, cargo, kubectl (scripts/k8s-bin.sh builds the pinned one).
# The tests only ever see the cluster through WORKPOOL_E2E_KUBECONFIG (a kubeconfig
# written to a temporary file here); your KUBECONFIG and ~/.kube/config are left alone.
set -euo pipefail

CLUSTER="${CLUSTER_NAME:-workpool-e2e}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

die() {
    echo "tests/kind/run.sh: $*" >&2
    exit 2
}

command -v kind >/dev/null 2>&1 ||
    die "kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation; v0.27.0 or newer)"
command -v docker >/dev/null 2>&1 ||
    die "docker is not installed: kind runs its node in a Docker container"
docker info >/dev/null 2>&1 ||
    die "the Docker engine is not reachable (docker info failed): start it, or check your permissions"
command -v cargo >/dev/null 2>&1 || die "cargo is not installed"
{ [ -x "$("$(dirname "$0")/../../scripts/k8s-bin.sh" --dir)/kubectl" ] || command -v kubectl >/dev/null 2>&1; } ||
    echo "tests/kind/run.sh: no kubectl (scripts/k8s-bin.sh builds one): the kubectl scenarios will be skipped" >&2

TMP="$(mktemp -d "${TMPDIR:-/tmp}/workpool-e2e.XXXXXX")"
KUBECONFIG_FILE="$TMP/kubeconfig"
CREATED=0

cleanup() {
    local rc=$?
    if [ "$CREATED" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
        echo "tests/kind/run.sh: deleting kind cluster $CLUSTER" >&2
        kind delete cluster --name "$CLUSTER" >&2 || rc=1
    else
        echo "tests/kind/run.sh: kind cluster $CLUSTER kept (kind get kubeconfig --name $CLUSTER)" >&2
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    echo "tests/kind/run.sh: reusing kind cluster $CLUSTER" >&2
else
    echo "tests/kind/run.sh: creating kind cluster $CLUSTER" >&2
    CREATED=1
    kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml" --wait 180s \
        --kubeconfig "$KUBECONFIG_FILE"
fi
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
chmod 600 "$KUBECONFIG_FILE"

# Extra arguments after `--` go to the test binaries.
if [ "${1:-}" = "--" ]; then
    shift
fi

cd "$REPO"
WORKPOOL_E2E_KUBECONFIG="$KUBECONFIG_FILE" cargo test -p workpool-tests \
    --test conformance_kubectl --test conformance_kube_rs --test conformance_managed_fields -- "$@"
