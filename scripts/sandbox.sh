#!/usr/bin/env bash
# make sandbox: the whole system on this machine, no cloud and no Docker.
#
# Starts the test cluster (workpool-testcluster: a real control plane built from
# Kubernetes' source and a real node: containerd + runc + CNI + kubelet + kube-proxy +
# CoreDNS, pods are containers of images built from our binaries), a local redis-server,
# the workpool operator, applies examples/, submits tasks, prints what to type next, and
# runs until Ctrl-C. On exit everything it started is stopped.
#
# The real node needs root and the packages make deps installs; where it cannot run, the
# test cluster says what is missing and the sandbox stops (without root: make kind).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
sandbox="$root/.sandbox"
mkdir -p "$sandbox"
export KUBECONFIG="$sandbox/kubeconfig"
rm -f "$KUBECONFIG"

# The kubectl built at the cluster's own release (scripts/k8s-bin.sh), ahead of any other.
k8s_bin=$(scripts/k8s-bin.sh --dir)
[ -x "$k8s_bin/kubectl" ] && export PATH="$k8s_bin:$PATH"

need() { command -v "$1" >/dev/null 2>&1 || { echo "sandbox: $1 is missing (make deps installs it)" >&2; exit 1; }; }
need redis-server
need redis-cli
need kubectl
need python3
need curl

echo "==> building the worker, the operator and the test cluster"
cargo build -q -p workpool-worker -p workpool-operator --bins
# (All of workpool-tests' programs: the node's pause image is built from one of them.)
cargo build -q -p workpool-tests --bins
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/debug"

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "==> stopping: operator, test cluster (its node and pods), redis-server"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    # The real node takes a while to tear down (pods, containerd, mounts, netns).
    for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  echo "    nothing left running; logs are in $sandbox/"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port below the kernel's ephemeral range (outgoing connections cannot take it
# before the server binds it; see workpool_worker::testing::free_port).
free_port() {
  python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    port = random.randrange(10000, max(low, 10001))
    try:
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))
        print(port)
        break
    except OSError:
        continue
PY
}

echo "==> starting the test cluster (log: $sandbox/testcluster.log)"
"$bin/workpool-testcluster" --kubeconfig "$KUBECONFIG" \
  >"$sandbox/testcluster.log" 2>&1 &
pids+=($!)
# The kubeconfig appears once the node is Ready.
for _ in $(seq 600); do
  [ -s "$KUBECONFIG" ] && kubectl get namespace default >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "the test cluster failed to start:"; tail -20 "$sandbox/testcluster.log"; exit 1; }
  sleep 0.5
done
kubectl get namespace default >/dev/null   # the test cluster applied crds/ at start

# Pods on the real node reach this machine at the host end of the node's veth: the node's
# InternalIP with .1 as its last byte (tests/src/node). Redis listens there and on loopback
# only, never on every interface.
node_ip=$(kubectl get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
[ -n "$node_ip" ] || { echo "the node has no InternalIP"; exit 1; }
redis_host=${node_ip%.*}.1
port=$(free_port)
redis_url="redis://$redis_host:$port/0"
echo "==> starting redis-server on $redis_host:$port"
# protected-mode off: it refuses every non-loopback client of a password-less Redis, and
# the pods are such clients; the bind above is what keeps it off other networks.
redis-server --port "$port" --bind 127.0.0.1 "$redis_host" --protected-mode no \
  --save "" --appendonly no --dir "$sandbox" \
  >"$sandbox/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
kubectl create secret generic workpool-redis --from-literal=url="$redis_url" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

metrics_port=$(free_port)
echo "==> starting workpool-operator (log: $sandbox/operator.log)"
"$bin/workpool-operator" --metrics-addr "127.0.0.1:$metrics_port" --lease-namespace default \
  >"$sandbox/operator.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
  curl -fs "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break
  kill -0 "${pids[-1]}" 2>/dev/null || { echo "the operator failed to start:"; tail -20 "$sandbox/operator.log"; exit 1; }
  sleep 0.2
done

echo "==> applying examples/"
kubectl apply -f examples/

echo "==> submitting tasks: 200 sleep tasks to stream sleepy, 20 words to stream words"
"$bin/workpool-worker" submit --redis-url "$redis_url" --stream sleepy --payload '{"ms": 1000}' --count 200
for w in alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec romeo sierra tango; do
  printf '"%s"\n' "$w"    # one JSON string per task
done | "$bin/workpool-worker" submit --redis-url "$redis_url" --stream words

sleep 2
kubectl get wp
cat <<EOF

The sandbox is running. The control plane is real Kubernetes (etcd, kube-apiserver,
controller manager, scheduler, built from source on this machine).
The node is real too: kubelet, containerd and runc, a CNI bridge, kube-proxy and CoreDNS;
the worker pods are containers of an image built from target/debug/workpool-worker.
Pods reach Redis at $redis_host (this machine, as the pod network sees it).
For a real cluster, use the Helm chart (charts/workpool) on kind: make kind, or the README's steps.

In another terminal:
  export KUBECONFIG=$KUBECONFIG
  kubectl get wp -w                                   # Desired, Ready, Busy, Backlog
  kubectl get pods -l workpool.dev/pool=sleepy
  kubectl scale wp sleepy --replicas=5                # more workers, watch the backlog fall
  kubectl scale wp sleepy --replicas=1                # idle workers go first
  kubectl describe wp sleepy                          # conditions and events
  kubectl explain workpool.spec
  $bin/workpool-worker submit --redis-url $redis_url --stream sleepy --payload '{"ms": 500}' --count 100
  $bin/workpool-worker stats --redis-url $redis_url --stream sleepy --group sleepy

Operator metrics: http://127.0.0.1:$metrics_port/metrics   (/healthz, /readyz)
Logs: $sandbox/operator.log, $sandbox/testcluster.log; worker logs: kubectl logs POD

Ctrl-C stops everything.
EOF
wait "${pids[-1]}"
