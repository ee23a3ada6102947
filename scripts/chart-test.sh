#!/usr/bin/env bash
# The chart, dashboards, alerts, images and handler-example tests (tests/chart/), with
# what they need installed when missing:
#   pip: helm-python-sdk (the real Helm v4 library, offline), kubernetes-validate, pytest,
#        matplotlib (monitoring/render_dashboards.py draws the dashboards to PNG)
#   apt: prometheus (promtool + a real Prometheus for the PromQL checks), redis-server
#   the workpool-worker binary (cargo build -p workpool-worker) for the helm-test hook and
#   handler examples, which run against real processes.
# Extra arguments go to pytest, e.g. scripts/chart-test.sh -k dashboards.
# With CI=true a missing component fails its tests instead of skipping them.
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

# --- the worker binary -----------------------------------------------------------------
if [ -z "${WORKPOOL_WORKER_BIN:-}" ]; then
  target="${CARGO_TARGET_DIR:-target}"
  if [ ! -x "$target/debug/workpool-worker" ] && [ ! -x "$target/release/workpool-worker" ]; then
    if command -v cargo >/dev/null 2>&1; then
      echo "chart-test: building workpool-worker (cargo build -p workpool-worker)"
      cargo build --quiet -p workpool-worker
    fi
  fi
fi

echo "chart-test: $($PY -c 'import helm_python as h; print("helm", h.helm_sdk_version())'), \
kubernetes-validate $($PY -c 'import kubernetes_validate as k; print(k.version.__version__)' 2>/dev/null || echo '?'), \
$(promtool --version 2>&1 | head -n 1)"
exec $PY -m pytest tests/chart -p no:cacheprovider -q -rs "$@"
