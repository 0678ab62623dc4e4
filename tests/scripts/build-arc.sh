#!/usr/bin/env bash
# Builds the real ARC (actions-runner-controller) controller and listener that the end-to-end
# tests run, from the Go wrapper modules tests/go/arc-<version>/ (each pins one ARC release
# tag by pseudo-version), into a cache outside the repository:
#   $ARC_WATCHDOG_CACHE/arc-<version>/{manager,ghalistener}
# Built like ARC's release images: CGO_ENABLED=0, -trimpath, build.Version set (the
# controller deletes an AutoscalingRunnerSet whose version label does not match its own).
# Idempotent: rebuilt only when the wrapper's go.mod/go.sum change. Prints timings.
#
#   tests/scripts/build-arc.sh [0.14.2] [0.9.2]      (no arguments: both)
#
# Env: ARC_WATCHDOG_CACHE (default ~/.cache/arc-watchdog);
#      ARC_WATCHDOG_PRINT_DIRS=1 only prints "arc-<version>=dir" lines, building nothing.
# Go's own env applies (GOPROXY, GOFLAGS, ...).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${ARC_WATCHDOG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/arc-watchdog}"
module="github.com/actions/actions-runner-controller"

versions=("$@")
(( ${#versions[@]} > 0 )) || versions=(0.14.2 0.9.2)

for v in "${versions[@]}"; do
  [[ -f "$root/go/arc-$v/go.mod" ]] || { echo "error: no wrapper module tests/go/arc-$v (known: $(cd "$root/go" && ls -d arc-* | tr '\n' ' '))" >&2; exit 1; }
done

if [[ "${ARC_WATCHDOG_PRINT_DIRS:-}" == 1 ]]; then
  for v in "${versions[@]}"; do echo "arc-$v=$cache/arc-$v"; done
  exit 0
fi

command -v go >/dev/null || { echo "error: 'go' not found: install Go >= 1.24 (https://go.dev/dl/)" >&2; exit 1; }
now() { date +%s; }

build_version() { # version
  local v="$1" moddir="$root/go/arc-$1" out="$cache/arc-$1"
  local key; key="$(cat "$moddir/go.mod" "$moddir/go.sum" | sha256sum | cut -c1-16)"
  if [[ -x "$out/manager" && -x "$out/ghalistener" && -f "$out/.key" && "$(cat "$out/.key")" == "$key" ]]; then
    echo "==> arc $v: up to date in $out"
    return 0
  fi
  echo "==> arc $v: building controller and listener into $out (cold: several minutes on 2 cores)"
  local t0; t0="$(now)"
  mkdir -p "$out"
  if ! (cd "$moddir" && go mod download "$module"); then
    echo "error: the Go module proxy did not serve $module at the version pinned in $moddir/go.mod" >&2
    echo "       (release tags of ARC are not semver tags: they are only reachable as pseudo-versions)" >&2
    return 1
  fi
  (cd "$moddir" && go mod download)
  echo "    modules ready after $(( $(now) - t0 ))s; compiling"
  local ldflags="-s -w -X $module/build.Version=$v"
  local t1; t1="$(now)"
  (cd "$moddir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/manager.tmp" "$module")
  echo "    controller (manager) compiled in $(( $(now) - t1 ))s"
  t1="$(now)"
  (cd "$moddir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/ghalistener.tmp" "$module/cmd/ghalistener")
  echo "    listener (ghalistener) compiled in $(( $(now) - t1 ))s"
  mv "$out/manager.tmp" "$out/manager"
  mv "$out/ghalistener.tmp" "$out/ghalistener"
  echo "$key" > "$out/.key"
  echo "==> arc $v: built in $(( $(now) - t0 ))s"
}

total0="$(now)"
for v in "${versions[@]}"; do build_version "$v"; done
echo "==> arc ready in $(( $(now) - total0 ))s (cache: $cache)"
