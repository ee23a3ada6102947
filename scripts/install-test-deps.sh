#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: a Rust toolchain with rustfmt and
# clippy, redis-server and redis-sentinel (the tests start their own on free loopback
# ports: single servers, Sentinel sets, Redis Clusters), kubectl, python3, the real
# node's packages (containerd, runc, CNI plugins, iptables, util-linux, busybox), and the
# Kubernetes components of the real test cluster, built from source with Go
# (scripts/k8s-bin.sh; cached after the first build), and CoreDNS and a Prometheus with
# Kubernetes discovery for the chart tests (same way). Certificates are made in Rust
# (rcgen): no openssl.
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# Sentinel tests run Debian's redis-sentinel (the same program as redis-server).
command -v redis-sentinel >/dev/null 2>&1 || need_apt+=(redis-sentinel)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# The real node of the test cluster: containerd with its CRI plugin, runc, the CNI
# plugins, iptables for kube-proxy, nsenter/flock, busybox for the worker image's sh.
command -v containerd >/dev/null 2>&1 || need_apt+=(containerd)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
# The client libraries' tests (clients/node) need node and npm.
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# Debian's kubectl package is old (1.20) but real; images that ship a newer one keep it.
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-test-deps: installing ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-test-deps: cargo is missing; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The real control plane and node. Without Go they cannot be built: the tests and targets
# that need them fail saying so (in CI this script fails at once).
here=$(dirname "$0")
if command -v go >/dev/null 2>&1; then
  "$here/k8s-bin.sh" >/dev/null
  "$here/coredns-bin.sh" >/dev/null
  # KWOK's simulated nodes: the operator's fault test at scale (tests/tests/operator_scale_faults.rs)
  # and make bench-scale.
  "$here/kwok-bin.sh" >/dev/null
  "$here/prometheus-bin.sh" >/dev/null
elif [ "${CI:-}" = "true" ]; then
  echo "install-test-deps: CI=true and no Go toolchain: the real control plane cannot be built" >&2
  exit 1
else
  echo "install-test-deps: no Go toolchain: the real control plane cannot be built (install Go 1.26); the tests that need it will fail saying so"
fi

# The client libraries (clients/): redis-py and pytest for Python (a private venv under
# .sandbox/ where the system pip refuses, which `make clients-test` then uses), the Node
# package's locked modules (npm ci), the Go module's dependencies.
clients=$(cd "$here/../clients" && pwd)
if ! python3 -c 'import redis, pytest' 2>/dev/null; then
  echo "install-test-deps: installing redis-py and pytest for clients/python"
  if ! python3 -m pip install --quiet --disable-pip-version-check "redis==8.1.0" "pytest>=8" 2>/tmp/clients-pip.log; then
    echo "install-test-deps: system pip refused ($(tail -n 1 /tmp/clients-pip.log)); using .sandbox/clients-venv"
    python3 -m venv "$clients/../.sandbox/clients-venv"
    "$clients/../.sandbox/clients-venv/bin/python" -m pip install --quiet --disable-pip-version-check "redis==8.1.0" "pytest>=8"
  fi
fi
if [ ! -f "$clients/node/node_modules/.package-lock.json" ] || [ "$clients/node/package-lock.json" -nt "$clients/node/node_modules/.package-lock.json" ]; then
  echo "install-test-deps: npm ci in clients/node"
  (cd "$clients/node" && npm ci --no-audit --no-fund --loglevel=error)
fi
if command -v go >/dev/null 2>&1; then
  (cd "$clients/go" && go mod download)
fi

echo "install-test-deps: redis-server $(redis-server --version | awk '{print $3}'), \
kubectl $(kubectl version --client 2>/dev/null | awk 'NR==1{print $3}'), $(cargo --version)"
