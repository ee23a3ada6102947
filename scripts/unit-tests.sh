#!/usr/bin/env bash
# make unit: `cargo test` over the workspace, in two halves at once. The suites of
# worker/tests need only real redis-servers; the others mostly wait on real control
# planes and nodes (a core sits idle about 60% of the time while they run), so the
# Redis-only half runs beside them instead of after. Both halves select their targets
# with --workspace, so they resolve the same features and share the one build made
# first (compile errors show once, there). The Redis-only half's output is printed after
# the other's. Exit status: non-zero when anything failed; every suite runs
# (--no-fail-fast).
#
# Together the two halves run what a plain `cargo test --workspace` runs: unit tests of
# every library and binary, every integration test file (<crate>/tests/*.rs), the
# examples built, the doc tests. A suite outside <crate>/tests/*.rs (a [[test]] with a
# `path` elsewhere) must be added here.
set -uo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --no-run --quiet || exit $?

redis_suites=() other_suites=()
for f in */tests/*.rs; do
  case $f in
  worker/tests/*) redis_suites+=(--test "$(basename "$f" .rs)") ;;
  *) other_suites+=(--test "$(basename "$f" .rs)") ;;
  esac
done

log=$(mktemp /tmp/workpool-unit-redis.XXXXXX)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast "${redis_suites[@]}" >"$log" 2>&1 &
redis_half=$!

rc=0
cargo test --workspace --no-fail-fast --lib --bins --examples "${other_suites[@]}" || rc=$?
cargo test --workspace --no-fail-fast --doc || rc=$?

redis_rc=0
wait "$redis_half" || redis_rc=$?
echo "---- make unit: the Redis-only suites (worker/tests), run beside the above: exit $redis_rc ----"
cat "$log"
[ "$rc" = 0 ] || exit "$rc"
exit "$redis_rc"
