#!/usr/bin/env bash
# Every test, in stages: the Go tools (etcd, kube-apiserver, ...), the real ARC (from its
# release sources), lint, the Rust build, unit tests, integration tests against a real
# kube-apiserver, and the end to end against the real ARC controller and listener.
# Prints how long each stage took, and last a line `total: N passed, M failed` that
# counts every test (cargo's test results and the e2e scenarios).
#
#   scripts/test.sh            (what `make test` and CI run)
#
# Env: ARC_WATCHDOG_E2E_* settings of the e2e (see `target/debug/e2e --help`);
#      ARC_WATCHDOG_TEST_LOG (default target/test.log) keeps the whole output.
set -uo pipefail
cd "$(dirname "$0")/.."

log="${ARC_WATCHDOG_TEST_LOG:-target/test.log}"
mkdir -p "$(dirname "$log")"
: > "$log"
stages=()
failed_stage=""

now() { date +%s; }

# stage NAME COMMAND...: runs the command, its output to the terminal and the log;
# records the time; stops at the first failed stage (its output is the tail CI keeps).
stage() {
  local name="$1"; shift
  echo "==> stage $name: $*"
  local t0; t0="$(now)"
  "$@" 2>&1 | tee -a "$log"
  local rc="${PIPESTATUS[0]}"
  stages+=("$(printf '%-12s %5ss  %s' "$name" "$(( $(now) - t0 ))" "$([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)")")")
  if [[ "$rc" != 0 ]]; then
    failed_stage="$name"
  fi
  return "$rc"
}

summary() {
  echo
  echo "==> stages"
  local s; for s in "${stages[@]}"; do echo "    $s"; done
  # cargo: "test result: ok. 12 passed; 0 failed; ..."; e2e: "scenario <id>: PASS|FAIL ..."
  local passed failed
  passed="$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed;?$/) n += $i } END { print n + 0 }' "$log")"
  failed="$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed;?$/) n += $i } END { print n + 0 }' "$log")"
  passed=$(( passed + $(grep -c '^scenario .*: PASS' "$log") ))
  failed=$(( failed + $(grep -c '^scenario .*: FAIL' "$log") ))
  [[ -n "$failed_stage" ]] && echo "    stopped at stage $failed_stage"
  echo "total: $passed passed, $failed failed"
}
trap summary EXIT

t_all="$(now)"
stage go-tools tests/scripts/build-go-tools.sh || exit 1
stage arc tests/scripts/build-arc.sh 0.14.2 0.9.2 || exit 1
stage lint make --no-print-directory lint || exit 1
stage build cargo test --workspace --all-targets --no-run || exit 1
stage build-bins cargo build -p arc-watchdog-tests -p arc-watchdog -p arc-watchdog-webhook --bins || exit 1
stage unit bash -c 'cargo test --workspace --all-targets --exclude arc-watchdog-tests && cargo test -p arc-watchdog-tests --lib --bins --test manifests --test chart' || exit 1
stage integration cargo test -p arc-watchdog-tests --test 'integration_*' || exit 1
stage e2e "${CARGO_TARGET_DIR:-target}/debug/e2e" || exit 1
echo "==> all stages passed in $(( $(now) - t_all ))s"
