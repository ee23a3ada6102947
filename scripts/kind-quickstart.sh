#!/usr/bin/env bash
# The kind quickstart (README "On a real cluster: kind"): a kind cluster with the workpool
# images built and loaded, the chart installed with its bundled Redis, kube-prometheus-stack
# for Prometheus and Grafana, the example pool applied and tasks submitted.
#
# Needs: kind, docker (a running engine), helm (v3 or v4), kubectl. It cannot run on the
# project's development machines (no Docker engine there); CI instead installs the same
# chart with the same values into the local test cluster (tests/chart/).
#
#   scripts/kind-quickstart.sh          create (or reuse) cluster `workpool` and install
#   scripts/kind-quickstart.sh --delete delete the cluster
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-workpool}
VERSION=$(awk -F'"' '/^appVersion:/{print $2}' charts/workpool/Chart.yaml)
VERSION=${VERSION:-0.1.0}
NODE_IMAGE=${NODE_IMAGE:-kindest/node:v1.37.2}   # the release the test cluster is built from
REGISTRY=ghcr.io/workpool-dev

die() { echo "kind-quickstart: $*" >&2; exit 1; }
for tool in kind docker helm kubectl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

if [ "${1:-}" = "--delete" ]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"

# 1. The cluster.
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER"

# 2. Our images, built from this checkout and loaded into the kind node (no registry).
for image in operator worker redis; do
  docker build -f "images/$image.Dockerfile" -t "$REGISTRY/workpool-$image:$VERSION" .
  kind load docker-image --name "$CLUSTER" "$REGISTRY/workpool-$image:$VERSION"
done

# 3. Prometheus and Grafana (kube-prometheus-stack; its Grafana sidecar loads dashboards
#    from ConfigMaps labelled grafana_dashboard=1 in every namespace).
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
helm repo update prometheus-community >/dev/null
helm upgrade --install kps prometheus-community/kube-prometheus-stack \
  --namespace monitoring --create-namespace \
  --set grafana.sidecar.dashboards.enabled=true \
  --set grafana.sidecar.dashboards.searchNamespace=ALL \
  --wait --timeout 10m

# 4. workpool, with its bundled Redis, scraped by that Prometheus (it selects on `release`).
helm upgrade --install workpool charts/workpool \
  --namespace workpool-system --create-namespace \
  --set metrics.serviceMonitor.enabled=true \
  --set metrics.serviceMonitor.additionalLabels.release=kps \
  --set metrics.podMonitor.enabled=true \
  --set metrics.podMonitor.additionalLabels.release=kps \
  --set metrics.prometheusRule.enabled=true \
  --set metrics.prometheusRule.additionalLabels.release=kps \
  --wait --timeout 5m
helm test workpool --namespace workpool-system --timeout 5m

# 5. The example pool in `default`, reading the bundled Redis' URL from a Secret there.
url=$(kubectl -n workpool-system get secret workpool-redis -o jsonpath='{.data.redis-url}' | base64 -d)
kubectl -n default create secret generic workpool-redis --from-literal=url="$url" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n default apply -f examples/sleep-pool.yaml

# 6. 200 tasks of half a second each, submitted from inside the cluster.
kubectl -n default delete pod workpool-submit --ignore-not-found
kubectl -n default run workpool-submit --restart=Never \
  --image "$REGISTRY/workpool-worker:$VERSION" --env "WORKPOOL_REDIS_URL=$url" -- \
  submit --stream sleepy --payload '{"ms": 500}' --count 200

cat <<EOF

workpool is running on kind cluster "$CLUSTER".
  kubectl get wp -A -w                          # the pool: desired, ready, busy, backlog
  kubectl scale wp sleepy --replicas=4          # manual scaling (spec.replicas)
  kubectl -n monitoring port-forward svc/kps-grafana 3000:80
      then http://localhost:3000 (admin / prom-operator), dashboards
      "workpool / Overview" and "workpool / WorkPool"
  scripts/kind-quickstart.sh --delete           # remove everything
EOF
