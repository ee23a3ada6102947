# Newcomer entry points. `make help` lists them.
.PHONY: help test deps lint unit demo bench testcluster

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

test: deps lint unit  ## the whole test suite (installs redis-server/kubectl when missing)

deps:  ## install what the tests need, when missing
	scripts/install-test-deps.sh

lint:  ## formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:  ## cargo test over the workspace (real redis-server, API double, kubectl)
	cargo test --workspace --no-fail-fast

demo: deps  ## local demo: a real redis-server, two workers, tasks submitted and drained
	scripts/demo.sh

bench:  ## benchmark one workpool-worker against BullMQ; writes BENCHMARKS.md
	python3 bench/run.py

testcluster:  ## run the test control plane (API double + process kubelet) for kubectl
	cargo build -p workpool-worker  # the worker image maps to this binary
	cargo run -p workpool-tests --bin workpool-testcluster -- --kubeconfig .sandbox/kubeconfig
