#!/usr/bin/env bash
# CI's kind step (`make kind-ci`, called by .ci/run after `make test`): the README's kind
# quickstart (`make kind`), the kind end-to-end suites (`make kind-e2e`), and `make
# kind-down`, which runs whatever happened before it (a failed step still deletes the
# cluster and stops the private Docker engine). Exit status: the first failure. Prints
# the time of each part.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0 times=()
part() {
  local name=$1 start r
  shift
  start=$(date +%s)
  "$@"
  r=$?
  times+=("$(printf '%-12s %5ss  exit %s' "$name" "$(($(date +%s) - start))" "$r")")
  [ "$rc" != 0 ] || rc=$r
  return "$r"
}
part "make kind" env KIND_FRESH=1 scripts/kind-quickstart.sh && part "kind-e2e" tests/kind/run.sh
part "kind-down" scripts/kind-down.sh
printf '\nkind-ci:\n' >&2
printf '  %s\n' "${times[@]}" >&2
exit "$rc"
