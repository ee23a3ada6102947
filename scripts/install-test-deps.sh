#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: a Rust toolchain with rustfmt and
# clippy, redis-server (the tests start their own on a free loopback port), kubectl (the
# conformance tests drive the API double with the real client), python3, openssl (the
# test cluster's certificates), and the Kubernetes components of the real test control
# plane, built from source with Go (scripts/k8s-bin.sh; cached after the first build), and
# CoreDNS and a Prometheus with Kubernetes discovery for the chart tests (same way).
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# The real node of the test cluster: containerd with its CRI plugin, runc, the CNI
# plugins, iptables for kube-proxy, nsenter/flock, busybox for the worker image's sh.
command -v containerd >/dev/null 2>&1 || need_apt+=(containerd)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
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

# The real control plane. Without Go the tests fall back to the API double (and say so),
# except in CI, where a missing real control plane is a failure.
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
  echo "install-test-deps: no Go toolchain: tests will use the API double instead of the real control plane"
fi

echo "install-test-deps: redis-server $(redis-server --version | awk '{print $3}'), \
kubectl $(kubectl version --client 2>/dev/null | awk 'NR==1{print $3}'), $(cargo --version)"
