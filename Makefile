# Newcomer entry points. `make help` lists them.
.PHONY: help test deps lint unit chart-test crds sandbox kind kind-down kind-e2e kind-ci demo bench simulate chaos testcluster k8s

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

test: deps lint unit chart-test clients-test  ## the whole test suite (installs what it needs when missing)

deps:  ## install what the tests need, when missing (builds Kubernetes from source once)
	scripts/install-test-deps.sh

lint:  ## formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:  ## cargo test over the workspace (real redis-servers, the real control plane and node); the Redis-only suites run beside the others
	scripts/unit-tests.sh

chart-test:  ## Helm chart, dashboards, alerts, images, handler examples; starts the real test cluster (control plane + node) and installs the chart into it (installs helm-python-sdk, kubernetes-validate, pytest, prometheus)
	scripts/chart-test.sh

.PHONY: clients-test
clients-test:  ## the producer libraries (clients/: Python, Node, Go) against real redis-servers, the shared vectors and the real workpool-worker
	cargo build -q -p workpool-worker
	cd clients/python && $$([ -x ../../.sandbox/clients-venv/bin/python ] && echo ../../.sandbox/clients-venv/bin/python || echo python3) -m pytest -q
	cd clients/node && npm test
	cd clients/go && go test -count=1 ./...

k8s:  ## build the pinned Kubernetes components from source (cached)
	scripts/k8s-bin.sh

crds:  ## regenerate crds/workpool.yaml from operator/src/crd.rs and sync the chart's copy
	cargo run -q -p workpool-operator --bin crdgen -- crds/workpool.yaml
	scripts/sync-chart-crds.sh

sandbox: deps  ## the main job: local Kubernetes (real control plane and node, built here), Redis, operator, example pools; Ctrl-C stops all
	scripts/sandbox.sh

kind:  ## the README's kind quickstart, checked: 2-node kind cluster, our images, Prometheus Operator, chart, example pools (installs/starts docker, kind, helm when missing); leaves the cluster running
	scripts/kind-quickstart.sh

kind-down:  ## helm uninstall (checking what it leaves), delete the kind cluster of make kind
	scripts/kind-down.sh

kind-e2e:  ## the end-to-end scenarios on the kind cluster of make kind (tests/kind/run.sh)
	tests/kind/run.sh

.PHONY: kind-ci
kind-ci:  ## CI's kind step: make kind, make kind-e2e, then make kind-down whatever happened
	scripts/kind-ci.sh

demo: deps  ## local demo: a real redis-server, two workers, tasks submitted and drained
	scripts/demo.sh

bench:  ## benchmark one workpool-worker against BullMQ; writes BENCHMARKS.md
	python3 bench/run.py

.PHONY: bench-targets
bench-targets:  ## one pool on one Redis vs a 3-node Cluster with 3 and 6 partitions (drain, Redis CPU per task), durable submit, Sentinel failover; prints the tables for BENCHMARKS.md
	cargo build --release -p workpool-worker --features test-support --bins
	target/release/workpool-bench-targets

.PHONY: bench-wake
bench-wake: deps  ## wake from zero: first task -> pod create, with wake and with --wake=false (real control plane, operator, redis); prints the table for BENCHMARKS.md
	cargo test -p workpool-tests --test bench_wake

simulate:  ## the autoscaling simulator: workpool vs KEDA + HPA on six traces; writes bench/simulate/
	cargo run --release -p workpool-operator --bin workpool-simulate -- --out bench/simulate --seeds 10

chaos:  ## the worker chaos run (seeded faults, thousands of tasks); prints the figures for BENCHMARKS.md
	cargo build --release -p workpool-worker --features test-support --bins
	target/release/workpool-chaos --seed 1 2 3 --tasks 4000 --workers 6 --concurrency 8 \
	    --visibility-timeout 3 --chaos-secs 120

.PHONY: bench-scale
POOLS ?= 1000
PODS ?= 10
bench-scale: deps  ## the operator at scale: POOLS WorkPools x PODS pods on KWOK nodes (real control plane) beside POOLS Deployments x PODS (the kube-controller-manager, same run); prints the table and the targets for BENCHMARKS.md
	scripts/kwok-bin.sh
	cargo run --release -p workpool-tests --bin workpool-scale-bench -- --pools $(POOLS) --pods $(PODS) --json target/bench-scale-$(POOLS)x$(PODS).json

.PHONY: bench-scale-wide
bench-scale-wide: deps  ## the second shape: 10,000 WorkPools x 1 pod, and the same peer
	scripts/kwok-bin.sh
	cargo run --release -p workpool-tests --bin workpool-scale-bench -- --pools 10000 --pods 1 --namespaces 100 --json target/bench-scale-10000x1.json

testcluster: deps  ## run the test cluster (real control plane + real node) for kubectl
	cargo build -p workpool-worker -p workpool-operator -p workpool-tests --bins  # the node's images
	mkdir -p .sandbox
	cargo run -q -p workpool-tests --bin workpool-testcluster -- --kubeconfig .sandbox/kubeconfig
