#!/usr/bin/env bash
# The chart, dashboards, alerts, images and handler-example tests (tests/chart/), with
# what they need installed when missing:
#   pip: helm-python-sdk (the real Helm v4 library, offline), kubernetes-validate, pytest,
#        matplotlib (monitoring/render_dashboards.py draws the dashboards to PNG)
#   apt: prometheus (promtool + a real Prometheus for the PromQL checks), redis-server
#   go:  upstream Prometheus with kubernetes_sd_configs (Debian's is built without it),
#        built once from its Go module through the Go module proxy and cached
#   our binaries (cargo build): workpool-worker for the helm-test hook and handler
#        examples; workpool-testcluster, -operator, -pause, -node-probe for the test cluster
# and the test cluster itself: a real control plane and a real node (containerd, runc,
# CNI, kubelet, kube-proxy, CoreDNS, local-path StorageClass `standard`; images built from
# our binaries), started here in the background (workpool-testcluster --no-crds), its
# kubeconfig exported as WORKPOOL_CHART_KUBECONFIG, and
# stopped (SIGTERM: it tears everything down) when the tests end. The chart is installed
# into it with the real Helm library (tests/chart/test_install.py, incluster.py).
# WORKPOOL_CHART_KUBECONFIG set by the caller: that cluster is used and none is started.
# WORKPOOL_CHART_CLUSTER=0: no cluster (the cluster tests skip; with CI=true they fail).
# Extra arguments go to pytest, e.g. scripts/chart-test.sh -k dashboards.
# With CI=true a missing component fails its tests instead of skipping them, and a test
# cluster that cannot start fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_PACKAGES=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 "pytest>=8" pyyaml jsonschema matplotlib)
PY=python3

if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi

# --- Python packages -----------------------------------------------------------------
if ! $PY -c 'import helm_python, kubernetes_validate, pytest, yaml, jsonschema, matplotlib' 2>/dev/null; then
  echo "chart-test: installing ${PIP_PACKAGES[*]}"
  if ! $PY -m pip install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}" 2>/tmp/chart-test-pip.log; then
    # a Python that refuses system-wide installs (PEP 668): a private venv under .sandbox/
    echo "chart-test: system pip refused ($(tail -n 1 /tmp/chart-test-pip.log)); using .sandbox/chart-venv"
    $PY -m venv .sandbox/chart-venv
    PY=.sandbox/chart-venv/bin/python
    $PY -m pip install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
  fi
fi
[ -x .sandbox/chart-venv/bin/python ] && ! python3 -c 'import helm_python' 2>/dev/null && PY=.sandbox/chart-venv/bin/python

# --- Debian packages -----------------------------------------------------------------
need_apt=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "chart-test: installing ${need_apt[*]}"
  $sudo apt-get update -qq
  # no service starts inside containers (policy-rc.d); where one does, it is stopped below
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [[ " ${need_apt[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 \
     && systemctl is-active --quiet prometheus 2>/dev/null; then
    echo "chart-test: stopping the prometheus service the package started (the tests run their own)"
    $sudo systemctl stop prometheus || true
    $sudo systemctl disable prometheus >/dev/null 2>&1 || true
  fi
fi

CI_ON=false
case "${CI:-}" in 1|true|TRUE|True|yes) CI_ON=true ;; esac
want_cluster=true
[ -n "${WORKPOOL_CHART_KUBECONFIG:-}" ] || [ "${WORKPOOL_CHART_CLUSTER:-1}" = 0 ] && want_cluster=false
target="${CARGO_TARGET_DIR:-target}"

# --- our binaries ------------------------------------------------------------------------
# Always built (a no-op when fresh): the node imports images built from these very files.
if command -v cargo >/dev/null 2>&1; then
  if $want_cluster; then
    echo "chart-test: cargo build (worker, operator, test cluster)"
    cargo build --quiet -p workpool-worker -p workpool-operator -p workpool-tests --bins
  elif [ -z "${WORKPOOL_WORKER_BIN:-}" ]; then
    cargo build --quiet -p workpool-worker
  fi
fi

# --- Prometheus with kubernetes_sd_configs (scripts/prometheus-bin.sh; make deps builds it)
if [ -z "${WORKPOOL_PROMETHEUS_K8S_BIN:-}" ] && command -v go >/dev/null 2>&1; then
  if prom=$(scripts/prometheus-bin.sh); then
    export WORKPOOL_PROMETHEUS_K8S_BIN="$prom"
  fi
fi

# --- the test cluster ----------------------------------------------------------------------
cluster_pid=""
stop_cluster() {
  if [ -n "$cluster_pid" ] && kill -0 "$cluster_pid" 2>/dev/null; then
    echo "chart-test: stopping the test cluster"
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
  fi
  cluster_pid=""
}
trap stop_cluster EXIT
trap 'stop_cluster; exit 130' INT TERM
if $want_cluster; then
  dir="$PWD/.sandbox/chart-test"
  mkdir -p "$dir"
  rm -f "$dir/kubeconfig"
  error=""
  if [ ! -x "$target/debug/workpool-testcluster" ]; then
    error="$target/debug/workpool-testcluster is not built (cargo build -p workpool-tests --bins)"
  else
    echo "chart-test: starting the test cluster (real control plane, real node); log: $dir/testcluster.log"
    t0=$(date +%s)
    "$target/debug/workpool-testcluster" --no-crds --kubeconfig "$dir/kubeconfig" \
      >"$dir/testcluster.log" 2>&1 &
    cluster_pid=$!
    # the kubeconfig is written once the node is Ready and the add-ons are installed
    while [ ! -f "$dir/kubeconfig" ]; do
      if ! kill -0 "$cluster_pid" 2>/dev/null; then
        wait "$cluster_pid" 2>/dev/null || true
        cluster_pid=""
        error="the test cluster did not start: $(grep -v '^\s*$' "$dir/testcluster.log" | tail -n 5 | tr '\n' ' ')"
        break
      fi
      if [ $(( $(date +%s) - t0 )) -gt 300 ]; then
        error="the test cluster was not ready after 300s (log: $dir/testcluster.log)"
        stop_cluster
        break
      fi
      sleep 1
    done
  fi
  if [ -z "$error" ]; then
    echo "chart-test: test cluster ready in $(( $(date +%s) - t0 ))s"
    export WORKPOOL_CHART_KUBECONFIG="$dir/kubeconfig"
  elif $CI_ON; then
    echo "chart-test: CI=true and $error" >&2
    exit 1
  else
    echo "chart-test: $error; the tests that install the chart skip"
    export WORKPOOL_CHART_CLUSTER_ERROR="$error"
  fi
fi

echo "chart-test: $($PY -c 'import helm_python as h; print("helm", h.helm_sdk_version())'), \
kubernetes-validate $($PY -c 'import kubernetes_validate as k; print(k.version.__version__)' 2>/dev/null || echo '?'), \
$(promtool --version 2>&1 | head -n 1)"
rc=0
$PY -m pytest tests/chart -p no:cacheprovider -q -rs --durations=8 "$@" || rc=$?
exit $rc
