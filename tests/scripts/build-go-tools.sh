#!/usr/bin/env bash
# Builds the real control-plane binaries the integration tests and the demo run (etcd,
# kube-apiserver, kube-controller-manager, kubectl) from the Go wrapper modules in tests/go/,
# promrules (tests/go/promrules: our rule-file check on Prometheus's own rule loader) and
# helm (tests/go/helm: the chart's lint, template and install tests), into a cache outside
# the repository. Idempotent: a binary is rebuilt only when its version
# or its wrapper's go.sum changes. Prints each step and how long it took.
#
#   tests/scripts/build-go-tools.sh [etcd] [kube-apiserver] [kube-controller-manager] [kubectl] [promrules] [helm]
#   (no arguments: all six)
#
# Env: ARC_WATCHDOG_CACHE (default ~/.cache/arc-watchdog) is where binaries go;
#      ARC_WATCHDOG_QUIET_UP_TO_DATE=1 prints nothing for tools already built;
#      ARC_WATCHDOG_PRINT_DIRS=1 only prints "name=dir" lines for each tool, building nothing.
set -euo pipefail

KUBE_VERSION="v1.34.4"
ETCD_VERSION="v3.6.4"   # what k8s.io/kubernetes v1.34.4 requires (go.etcd.io/etcd/client/v3)
PROMETHEUS_VERSION="v0.307.3"   # Prometheus 3.7.3's Go module, pinned in tests/go/promrules/go.mod
HELM_VERSION="v4.3.2"   # pinned in tests/go/helm/go.mod
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${ARC_WATCHDOG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/arc-watchdog}"

tools=("$@")
(( ${#tools[@]} > 0 )) || tools=(etcd kube-apiserver kube-controller-manager kubectl promrules helm)

dir_of() { # name -> cache dir
  case "$1" in
    etcd) echo "$cache/etcd-$ETCD_VERSION" ;;
    kube-apiserver|kube-controller-manager|kubectl) echo "$cache/$1-$KUBE_VERSION" ;;
    promrules) echo "$cache/promrules-$PROMETHEUS_VERSION" ;;
    helm) echo "$cache/helm-$HELM_VERSION" ;;
    *) echo "error: unknown tool '$1' (known: etcd kube-apiserver kube-controller-manager kubectl promrules helm)" >&2; return 1 ;;
  esac
}

if [[ "${ARC_WATCHDOG_PRINT_DIRS:-}" == 1 ]]; then
  for t in "${tools[@]}"; do echo "$t=$(dir_of "$t")"; done
  exit 0
fi

command -v go >/dev/null || { echo "error: 'go' not found: install Go >= 1.26 (helm v4.3's go.mod needs it; the others 1.24) (https://go.dev/dl/)" >&2; exit 1; }

now() { date +%s; }
kube_minor="$(cut -d. -f2 <<<"$KUBE_VERSION")"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build() { # name module-dir package tags ldflags
  local name="$1" moddir="$2" pkg="$3" tags="$4" ldflags="$5"
  local out; out="$(dir_of "$name")"
  # Keyed by the wrapper's pins, plus its own Go sources where it has some
  # (promrules); the others keep the key they always had.
  local srcs=("$moddir/go.mod" "$moddir/go.sum")
  local f; for f in "$moddir"/*.go; do [[ -e "$f" ]] && srcs+=("$f"); done
  local key; key="$(cat "${srcs[@]}" | sha256sum | cut -c1-16)"
  if [[ -x "$out/$name" && -f "$out/.key" && "$(cat "$out/.key")" == "$key" ]]; then
    [[ "${ARC_WATCHDOG_QUIET_UP_TO_DATE:-}" == 1 ]] || echo "==> $name: up to date in $out"
    return 0
  fi
  echo "==> $name: building $pkg into $out (cold: several minutes on 2 cores)"
  local t0; t0="$(now)"
  mkdir -p "$out"
  (cd "$moddir" && go mod download)
  echo "    modules ready after $(( $(now) - t0 ))s; compiling"
  (cd "$moddir" && CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "$key" > "$out/.key"
  echo "==> $name: built in $(( $(now) - t0 ))s: $out/$name"
}

total0="$(now)"
for t in "${tools[@]}"; do
  case "$t" in
    etcd) build etcd "$root/go/etcd" go.etcd.io/etcd/server/v3 "" "-s -w" ;;
    kube-apiserver) build kube-apiserver "$root/go/kube" k8s.io/kubernetes/cmd/kube-apiserver "selinux,notest" "$kube_ldflags" ;;
    kube-controller-manager) build kube-controller-manager "$root/go/kube" k8s.io/kubernetes/cmd/kube-controller-manager "selinux,notest" "$kube_ldflags" ;;
    kubectl) build kubectl "$root/go/kube" k8s.io/kubernetes/cmd/kubectl "selinux,notest" "$kube_ldflags" ;;
    promrules) build promrules "$root/go/promrules" . "" "-s -w" ;;
    # The version ldflag is what `helm version` prints (and what lint compares a chart's
    # kubeVersion/helm constraints against); without it helm reports only "v4.3".
    helm) build helm "$root/go/helm" helm.sh/helm/v4/cmd/helm "" "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" ;;
    *) dir_of "$t" >/dev/null ;;
  esac
done
[[ "${ARC_WATCHDOG_QUIET_UP_TO_DATE:-}" == 1 ]] || echo "==> go tools ready in $(( $(now) - total0 ))s (cache: $cache)"
