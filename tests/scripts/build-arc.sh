#!/usr/bin/env bash
# Builds the real ARC (actions-runner-controller) controller and listeners that the
# end-to-end tests run, from ARC's release source archives, into a cache outside the
# repository:
#   $ARC_WATCHDOG_CACHE/arc-<version>/manager                          the controller
#   $ARC_WATCHDOG_CACHE/arc-<version>/ghalistener                      the listener
#   $ARC_WATCHDOG_CACHE/arc-<version>/github-runnerscaleset-listener   the legacy listener (<= 0.10)
#   $ARC_WATCHDOG_CACHE/arc-<version>/src/                             the verified source (CRDs)
#
# The archives are `actions-runner-controller-gha-runner-scale-set-<version>.tar.gz`, as
# GitHub serves a tag's archive. Each extracted tree is checked against the Go module hash
# pinned in tests/arc/SOURCES before anything is built, then built as ARC's Dockerfile
# does: ARC's own go.mod is the main module (its replace directives apply), CGO off,
# -trimpath, build.Version set (the controller deletes an AutoscalingRunnerSet whose
# version label differs from its own). ARC's dependencies come from the Go module proxy.
# Idempotent: rebuilt only when the pin or this script changes. Prints timings.
#
#   tests/scripts/build-arc.sh [0.14.2] [0.9.2] [0.10.1] [0.8.1]    (no arguments: 0.14.2 0.9.2)
#
# Env: ARC_WATCHDOG_ARC_SOURCES  directory holding the archives (default ../shared/arc
#                                next to the repository, when it exists);
#      ARC_WATCHDOG_CACHE        where builds go (default ~/.cache/arc-watchdog);
#      ARC_WATCHDOG_PRINT_DIRS=1 only prints "arc-<version>=dir" lines, building nothing.
# Go's own env applies (GOPROXY, GOFLAGS, ...).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$(cd "$root/.." && pwd)"
cache="${ARC_WATCHDOG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/arc-watchdog}"
pins="$root/arc/SOURCES"
module="github.com/actions/actions-runner-controller"
default_sources="$repo/../shared/arc"
sources="${ARC_WATCHDOG_ARC_SOURCES:-}"
if [[ -z "$sources" && -d "$default_sources" ]]; then
  sources="$(cd "$default_sources" && pwd)"
fi

versions=("$@")
(( ${#versions[@]} > 0 )) || versions=(0.14.2 0.9.2)

pin_of() { # version -> "commit modversion h1" from tests/arc/SOURCES
  awk -v v="$1" '!/^#/ && $1 == v { print $2, $3, $4 }' "$pins"
}

for v in "${versions[@]}"; do
  [[ -n "$(pin_of "$v")" ]] || {
    echo "error: ARC $v is not pinned in $pins (pinned: $(awk '!/^#/ {printf "%s ", $1}' "$pins"))" >&2
    exit 1
  }
done

if [[ "${ARC_WATCHDOG_PRINT_DIRS:-}" == 1 ]]; then
  for v in "${versions[@]}"; do echo "arc-$v=$cache/arc-$v"; done
  exit 0
fi

command -v go >/dev/null || { echo "error: 'go' not found: install Go >= 1.24 (https://go.dev/dl/)" >&2; exit 1; }
now() { date +%s; }

# Go's h1: module hash (golang.org/x/mod/sumdb/dirhash Hash1) of an extracted module tree:
# the files a module zip holds (nested modules left out), each as "sha256hex  module@version/path",
# sorted by path, hashed again, base64.
module_hash() { # dir module@version
  local dir="$1" prefix="$2"
  (
    cd "$dir"
    local nested; nested="$(find . -mindepth 2 -name go.mod -printf '%h/\n' | sed 's|^\./||')"
    find . -type f -printf '%P\n' | LC_ALL=C sort | while IFS= read -r f; do
      local n skip=
      for n in $nested; do [[ "$f" == "$n"* ]] && skip=1; done
      [[ -n "$skip" ]] && continue
      printf '%s  %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$prefix/$f"
    done
  ) | sha256sum | perl -ne 'print pack("H*", substr($_, 0, 64))' | base64
}

missing_archive() { # version archive-name
  local v="$1" name="$2"
  echo "error: ARC $v's release source is not available: no $name in ${sources:-(no directory given)}" >&2
  echo "       Download GitHub's archive of the tag gha-runner-scale-set-$v:" >&2
  echo "         https://github.com/actions/actions-runner-controller/archive/refs/tags/gha-runner-scale-set-$v.tar.gz" >&2
  echo "       save it as <dir>/$name and run again with ARC_WATCHDOG_ARC_SOURCES=<dir>." >&2
  echo "       Its files are checked against the hash pinned in tests/arc/SOURCES." >&2
}

build_version() { # version
  local v="$1" out="$cache/arc-$1"
  local commit modver sum; read -r commit modver sum <<<"$(pin_of "$v")"
  local key; key="$( (echo "$v $commit $modver $sum"; cat "${BASH_SOURCE[0]}") | sha256sum | cut -c1-16)"
  if [[ -x "$out/manager" && -x "$out/ghalistener" && -f "$out/.key" && "$(cat "$out/.key")" == "$key" ]]; then
    echo "==> arc $v: up to date in $out"
    return 0
  fi
  local name="actions-runner-controller-gha-runner-scale-set-$v.tar.gz"
  [[ -n "$sources" && -f "$sources/$name" ]] || { missing_archive "$v" "$name"; return 1; }
  echo "==> arc $v: building controller and listener from $sources/$name into $out (cold: minutes on 2 cores)"
  local t0; t0="$(now)"
  rm -rf "$out"
  mkdir -p "$out"
  local tmp; tmp="$(mktemp -d "$out/extract.XXXXXX")"
  tar -xzf "$sources/$name" -C "$tmp"
  local tree="$tmp/actions-runner-controller-gha-runner-scale-set-$v"
  [[ -f "$tree/go.mod" ]] || { echo "error: $name has no actions-runner-controller-gha-runner-scale-set-$v/go.mod" >&2; rm -rf "$out"; return 1; }
  local got; got="h1:$(module_hash "$tree" "$module@$modver")"
  if [[ "$got" != "$sum" ]]; then
    echo "error: $sources/$name does not hold ARC $v's release source:" >&2
    echo "       its files hash to $got, tests/arc/SOURCES pins $sum ($module@$modver, commit $commit)" >&2
    rm -rf "$out"
    return 1
  fi
  mv "$tree" "$out/src"
  rm -rf "$tmp"
  echo "    source verified ($sum); downloading ARC's dependencies"
  (cd "$out/src" && go mod download)
  echo "    modules ready after $(( $(now) - t0 ))s; compiling"
  local ldflags="-s -w -X $module/build.Version=$v"
  local what pkg bin t1
  for what in "manager:." "ghalistener:./cmd/ghalistener" "github-runnerscaleset-listener:./cmd/githubrunnerscalesetlistener"; do
    bin="${what%%:*}" pkg="${what#*:}"
    [[ -d "$out/src/$pkg" ]] || continue
    t1="$(now)"
    (cd "$out/src" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$bin.tmp" "$pkg")
    mv "$out/$bin.tmp" "$out/$bin"
    echo "    $bin compiled in $(( $(now) - t1 ))s"
  done
  echo "$key" > "$out/.key"
  echo "==> arc $v: built in $(( $(now) - t0 ))s"
}

total0="$(now)"
for v in "${versions[@]}"; do build_version "$v"; done
echo "==> arc ready in $(( $(now) - total0 ))s (cache: $cache)"
