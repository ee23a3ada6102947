# Newcomer entry points. `make help` lists them.
.PHONY: help test deps lint unit chart-test demo bench testcluster k8s

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

test: deps lint unit chart-test  ## the whole test suite (installs what it needs when missing)

deps:  ## install what the tests need, when missing (builds Kubernetes from source once)
	scripts/install-test-deps.sh

lint:  ## formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

CONFORMANCE := --test conformance_kubectl --test conformance_kube_rs \
	--test conformance_managed_fields --test conformance_apiserver

unit:  ## cargo test over the workspace (real control plane and redis-server), then the conformance suites against the API double
	cargo test --workspace --no-fail-fast
	WORKPOOL_TEST_API=double cargo test -p workpool-tests --no-fail-fast $(CONFORMANCE)

chart-test:  ## Helm chart, dashboards, alerts, images, handler examples (installs helm-python-sdk, kubernetes-validate, pytest, prometheus)
	scripts/chart-test.sh

k8s:  ## build the pinned Kubernetes components from source (cached)
	scripts/k8s-bin.sh

demo: deps  ## local demo: a real redis-server, two workers, tasks submitted and drained
	scripts/demo.sh

bench:  ## benchmark one workpool-worker against BullMQ; writes BENCHMARKS.md
	python3 bench/run.py

testcluster: deps  ## run the test cluster (real control plane + process kubelet) for kubectl
	cargo build -p workpool-worker  # the worker image maps to this binary
	cargo run -p workpool-tests --bin workpool-testcluster -- --kubeconfig .sandbox/kubeconfig
