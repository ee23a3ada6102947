// The dashboards' schema check (tests/kind/dashboard-schema/main.go): a module of its own
// so that its one dependency is pinned here with its checksum.
module workpool.dev/tests/kind/dashboard-schema

go 1.24

require github.com/grafana/grafana-foundation-sdk/go v0.0.22
