#!/usr/bin/env bash
# `make kind`: the README's kind quickstart, run as written and checked, on a two-node
# kind cluster. Exits 0 only when every step passed, and leaves the cluster running:
#   KUBECONFIG=.kind/kubeconfig kubectl get wp -A
#
#   0. docker, kind, helm, kubectl, the node image, base images   (scripts/kind-env.sh)
#   1. kind create cluster: control plane + worker, pods on both
#   2. docker build -f images/*.Dockerfile under the chart's references; kind load
#   3. the Prometheus Operator, its CRDs and a Prometheus (scripts/kind-monitoring.sh)
#   4. helm install (ServiceMonitor, PodMonitor, PrometheusRule on); helm test
#   5. the example pools, with the bundled Redis' URL in a Secret
#   6. tasks submitted; every pool converges (kubectl get wp): backlog and pending 0,
#      ready = desired, and the workers counted every task as succeeded
#   7. the dashboards decode strictly as Grafana dashboards (tests/kind/dashboard-schema);
#      Prometheus scrapes the operator and the workers, loaded the alerts, and every
#      dashboard query returns data (tests/kind/check_monitoring.py)
#   8. helm upgrade with a changed value; helm test again; the pools work on
# Each step's time is printed at the end. `make kind-down` removes it all.
#
# Environment: KIND_CLUSTER (default workpool), NODE_IMAGE (a kind node image to use
# instead of building one), KIND_SKIP_MONITORING=1 (steps 3 and 7 left out), KIND_FRESH=1
# (delete an existing cluster first, as CI does).
set -euo pipefail
KIND_LOG_TAG=kind
. "$(dirname "$0")/kind-lib.sh"
cd "$KIND_ROOT"

VERSION=$(kind_app_version)
RELEASE=workpool
NAMESPACE=workpool-system
POOLS_NAMESPACE=default
timings=()
# `step NAME FUNCTION`: FUNCTION in a subshell with errexit on (so its first failing
# command fails the step; a function called in an `||` list would run on), timed.
# `step --here NAME FUNCTION` runs it in this shell (it sets the environment).
step() {
  local here=0 name start rc=0
  [ "$1" = --here ] && here=1 && shift
  name=$1
  shift
  kind_log "── $name"
  start=$(date +%s)
  set +e
  if [ "$here" = 1 ]; then "$@"; else (set -e; "$@"); fi
  rc=$?
  set -e
  timings+=("$(printf '%-46s %4ss%s' "$name" "$(($(date +%s) - start))" "$([ "$rc" = 0 ] || echo "  FAILED (exit $rc)")")")
  return "$rc"
}
report() {
  local rc=$?
  [ ${#timings[@]} -gt 0 ] && printf '\nmake kind, step times:\n' >&2 && printf '  %s\n' "${timings[@]}" >&2
  if [ "$rc" != 0 ]; then
    echo "make kind: FAILED (exit $rc)" >&2
    if grep -qs "server:" "$KIND_KUBECONFIG"; then
      echo "--- cluster state for the diagnosis:" >&2
      kubectl --kubeconfig "$KIND_KUBECONFIG" get nodes,pods -A -o wide >&2 2>&1 || true
      kubectl --kubeconfig "$KIND_KUBECONFIG" get wp -A >&2 2>&1 || true
      kubectl --kubeconfig "$KIND_KUBECONFIG" get events -A --sort-by=.lastTimestamp 2>&1 | tail -25 >&2 || true
    fi
  fi
  exit "$rc"
}
trap report EXIT

# The README's kind steps must be the ones run here: every command line of its quickstart
# block (between the kind-quickstart markers) has to appear in this script.
readme_in_sync() {
  local block missing=0 line
  block=$(awk '/<!-- kind-quickstart:begin -->/{on=1; next} /<!-- kind-quickstart:end -->/{on=0} on' README.md |
    grep -v '^```' | sed -e 's/[[:space:]]*#.*$//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*\\$//' | grep -v '^$')
  [ -n "$block" ] || kind_die "README.md has no kind quickstart block (<!-- kind-quickstart:begin/end -->)"
  while IFS= read -r line; do
    grep -qF -- "$line" "$0" || { echo "README kind step not run by $0: $line" >&2; missing=1; }
  done <<<"$block"
  return "$missing"
}
step "README steps = this script" readme_in_sync

# 0. ----------------------------------------------------------------------------------
env_up() {
  unset WORKPOOL_KIND_ENV
  eval "$(scripts/kind-env.sh)"
  # its last line, only when everything was there
  [ "${WORKPOOL_KIND_ENV:-}" = 1 ]
}
step --here "0. docker, kind, helm, node image, base images" env_up
kind_log "$(docker version --format 'docker {{.Server.Version}}'), $(kind version | awk '{print "kind", $2}'), helm $(helm version --template '{{.Version}}'), kubectl $(kubectl version --client -o json | jq -r .clientVersion.gitVersion)"

# 1. ----------------------------------------------------------------------------------
cluster_up() {
  # A cluster whose node containers are not running (its engine was stopped), or any
  # cluster when KIND_FRESH=1 (CI): deleted, then made anew.
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER" &&
    { [ -n "${KIND_FRESH:-}" ] ||
      [ "$(docker inspect -f '{{.State.Running}}' "$KIND_CLUSTER-control-plane" 2>/dev/null)" != true ] ||
      [ "$(docker inspect -f '{{.State.Running}}' "$KIND_CLUSTER-worker" 2>/dev/null)" != true ]; }; then
    kind_log "deleting cluster $KIND_CLUSTER (KIND_FRESH set, or its nodes are not running)"
    kind delete cluster --name "$KIND_CLUSTER"
  fi
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    kind_log "cluster $KIND_CLUSTER exists: reusing it"
    kind export kubeconfig --name "$KIND_CLUSTER" --kubeconfig .kind/kubeconfig
  else
    kind create cluster --name workpool --config .kind/cluster.yaml --kubeconfig .kind/kubeconfig --wait 3m
  fi
  kubectl wait --for=condition=Ready nodes --all --timeout=180s
  [ "$(kubectl get nodes --no-headers | wc -l)" -ge 2 ] || { kubectl get nodes; return 1; }
  kubectl -n kube-system rollout status deployment/coredns --timeout=180s
  # pods on both nodes: neither may carry a NoSchedule taint
  if kubectl get nodes -o jsonpath='{range .items[*]}{.spec.taints[*].effect}{"\n"}{end}' | grep -q NoSchedule; then
    kubectl get nodes -o custom-columns=NAME:.metadata.name,TAINTS:.spec.taints
    return 1
  fi
}
step "1. kind create cluster (2 nodes)" cluster_up

# 2. ----------------------------------------------------------------------------------
images() {
  for i in operator worker redis; do
    docker build -f images/$i.Dockerfile -t ghcr.io/workpool-dev/workpool-$i:0.1.0 .
    kind load docker-image --name workpool ghcr.io/workpool-dev/workpool-$i:0.1.0
  done
}
[ "$VERSION" = 0.1.0 ] || kind_die "the README's image tags say 0.1.0, the chart's appVersion is $VERSION: update both"
[ "$KIND_CLUSTER" = workpool ] || kind_die "the README's steps name the cluster workpool (KIND_CLUSTER=$KIND_CLUSTER)"
step "2. docker build + kind load (3 images)" images

# 3. ----------------------------------------------------------------------------------
if [ -z "${KIND_SKIP_MONITORING:-}" ]; then
  step "3. Prometheus Operator + Prometheus" scripts/kind-monitoring.sh
fi

# 4. ----------------------------------------------------------------------------------
chart() {
  local verb=install
  helm status workpool -n workpool-system >/dev/null 2>&1 && verb=upgrade
  if [ "$verb" = install ]; then
    helm install workpool charts/workpool -n workpool-system --create-namespace \
      --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true \
      --set metrics.prometheusRule.enabled=true --wait
  else
    kind_log "release workpool exists: upgrading it with the same values"
    helm upgrade workpool charts/workpool -n workpool-system \
      --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true \
      --set metrics.prometheusRule.enabled=true --wait
  fi
  helm test workpool -n workpool-system
}
step "4. helm install + helm test" chart

# 5. ----------------------------------------------------------------------------------
pools() {
  url=$(kubectl -n workpool-system get secret workpool-redis -o jsonpath='{.data.redis-url}' | base64 -d)
  [ -n "$url" ]
  kubectl create secret generic workpool-redis --from-literal=url="$url" --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -f examples/sleep-pool.yaml -f examples/script-pool.yaml
}
step "5. example pools" pools
# (the steps run in subshells: the URL again for the steps that submit tasks)
url=$(kubectl -n workpool-system get secret workpool-redis -o jsonpath='{.data.redis-url}' | base64 -d)

# 6. ----------------------------------------------------------------------------------
# `submit NAME ARGS...`: workpool-worker submit ARGS in a pod, waited for.
submit() {
  local name=$1
  shift
  kubectl delete pod "$name" --ignore-not-found --wait=true >/dev/null
  kubectl run "$name" --restart=Never --image ghcr.io/workpool-dev/workpool-worker:0.1.0 \
    --env WORKPOOL_REDIS_URL="$url" -- submit "$@" >/dev/null
  kubectl wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$name" --timeout=120s >/dev/null ||
    { kubectl logs "$name" >&2; return 1; }
  kind_log "$name: $(kubectl logs "$name")"
}

# `converged POOL TASKS`: the pool's status says nothing is waiting or held and every
# wanted pod is ready, and its workers counted TASKS (at least) as succeeded.
converged() {
  local pool=$1 tasks=$2 deadline=$((SECONDS + 240)) status done_count
  while [ $SECONDS -lt $deadline ]; do
    status=$(kubectl get wp "$pool" -o json | jq -c '{gen: (.metadata.generation == .status.observedGeneration),
      backlog: .status.queue.backlog, pending: .status.queue.pending, dead: .status.queue.deadLetters,
      desired: .status.desiredReplicas, ready: .status.readyReplicas}')
    done_count=$(worker_succeeded "$pool")
    if jq -e '.gen and .backlog == 0 and .pending == 0 and .desired > 0 and .ready == .desired' <<<"$status" >/dev/null &&
      [ "$done_count" -ge "$tasks" ]; then
      kind_log "wp/$pool converged: $status, $done_count tasks succeeded"
      return 0
    fi
    sleep 3
  done
  kind_log "wp/$pool did not converge in 240s: $status, $done_count of $tasks tasks succeeded"
  kubectl get wp "$pool" -o yaml >&2
  return 1
}

# Tasks the pool's worker pods counted as succeeded (their /metrics, read through the API
# server's pod proxy), summed over the pods that run now.
worker_succeeded() {
  local pool=$1 pod total=0 n
  for pod in $(kubectl get pods -l "workpool.dev/pool=$pool" --field-selector=status.phase=Running -o name); do
    n=$(kubectl get --raw "/api/v1/namespaces/$POOLS_NAMESPACE/pods/${pod#pod/}:9090/proxy/metrics" 2>/dev/null |
      awk '/^workpool_worker_tasks_total\{.*outcome="succeeded"/{s+=$NF} END{printf "%d", s}')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}

tasks() {
  kubectl run workpool-submit --restart=Never --image ghcr.io/workpool-dev/workpool-worker:0.1.0 \
    --env WORKPOOL_REDIS_URL="$url" -- submit --stream sleepy --payload '{"ms": 500}' --count 200
  kubectl wait --for=jsonpath='{.status.phase}'=Succeeded pod/workpool-submit --timeout=120s
  submit workpool-submit-words --stream words --payload '"hello from kind"' --count 20
  kubectl get wp
  converged sleepy 200
  converged shout 20
  kubectl get wp -o wide
}
# (The README's last line, `kubectl get wp -w`, is for watching: here the pools are
# waited for until they converge.)
kubectl delete pod workpool-submit --ignore-not-found >/dev/null 2>&1 || true
step "6. tasks submitted, kubectl get wp converges" tasks

# 7. ----------------------------------------------------------------------------------
# The dashboards against Grafana's own dashboard types (grafana-foundation-sdk): Grafana
# itself (AGPL) is not installed.
dashboard_schema() {
  (cd tests/kind/dashboard-schema && go run . "$KIND_ROOT"/charts/workpool/dashboards/*.json)
}
step "7a. dashboards: Grafana's schema (foundation SDK)" dashboard_schema
if [ -z "${KIND_SKIP_MONITORING:-}" ]; then
  step "7b. Prometheus: targets, alerts, dashboard queries" \
    python3 tests/kind/check_monitoring.py --kubeconfig .kind/kubeconfig --release workpool --namespace workpool-system
fi

# 8. ----------------------------------------------------------------------------------
upgrade() {
  local before after
  before=$(kubectl -n workpool-system get secret workpool-redis -o jsonpath='{.data.redis-url}')
  helm upgrade workpool charts/workpool -n workpool-system --reuse-values --set operator.replicas=2 --set operator.leaderElection.enabled=true --wait
  helm test workpool -n workpool-system
  after=$(kubectl -n workpool-system get secret workpool-redis -o jsonpath='{.data.redis-url}')
  [ "$before" = "$after" ] || { kind_log "helm upgrade changed the Redis URL (its password)"; return 1; }
  kubectl -n workpool-system rollout status deployment/workpool-operator --timeout=120s
  # the pools work on after the upgrade: more tasks, counted on top of the first ones
  local before_count
  before_count=$(worker_succeeded sleepy)
  submit workpool-submit-after-upgrade --stream sleepy --payload '{"ms": 100}' --count 40
  converged sleepy $((before_count + 40))
}
step "8. helm upgrade + helm test, pools work on" upgrade

cat >&2 <<EOF

make kind: all steps passed. The cluster "$KIND_CLUSTER" keeps running:
  export KUBECONFIG=$KIND_KUBECONFIG      # or: eval "\$(scripts/kind-env.sh)"
  kubectl get wp -A -w                          # desired, ready, busy, backlog
  kubectl scale wp sleepy --replicas=4
  kubectl -n monitoring port-forward svc/prometheus-operated 9090   # http://localhost:9090
  tests/kind/run.sh                             # the e2e suites against this cluster
  make kind-down                                # helm uninstall, then delete the cluster
EOF
