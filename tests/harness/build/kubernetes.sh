#!/usr/bin/env bash
# Build the Kubernetes binaries the test harness runs (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kubectl) from the Go module
# proxy, and cache them by version.
#
# Usage: bash tests/harness/build/kubernetes.sh [CACHE_DIR]
#
# Result: CACHE_DIR/<name>-<version>/<name> plus a stable symlink
# CACHE_DIR/bin/<name>. A no-op when every binary of the pinned version exists.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod requires the staging
# modules (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 and replaces them with
# ./staging directories that are not part of the module zip. A throw-away
# wrapper module requires k8s.io/kubernetes and replaces every staging module
# with its published v0.Y.Z release instead.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$here/../lib/common.sh"
load_versions

cache="${1:-$(default_cache)}"
mkdir -p "$cache/bin"
cache="$(cd "$cache" && pwd)"

kv="${KUBERNETES_VERSION#v}"
minor="$(cut -d. -f2 <<<"$kv")"
sv="0.${kv#1.}" # staging modules: v1.37.2 -> v0.37.2
names=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

log() { printf '[kubernetes %s] %s\n' "$kv" "$*" >&2; }

link_all() {
  local n
  for n in "${names[@]}"; do
    ln -sfn "../$n-$kv/$n" "$cache/bin/$n"
  done
}

missing=0
for n in "${names[@]}"; do
  [[ -x "$cache/$n-$kv/$n" ]] || missing=1
done
if ((missing == 0)); then
  link_all
  log "cached in $cache"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

work="$cache/src/kubernetes-$kv"
rm -rf "$work"
mkdir -p "$work/out"
cd "$work"

log "resolving k8s.io/kubernetes@v$kv"
gomod="$(go mod download -json "k8s.io/kubernetes@v$kv" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
[[ -f "$gomod" ]] || { log "cannot download k8s.io/kubernetes@v$kv"; exit 1; }
mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod" | sort -u)
((${#staging[@]} > 0)) || { log "no staging replaces found in $gomod"; exit 1; }
log "${#staging[@]} staging modules pinned to v$sv"

{
  echo "module local/k8sbins"
  echo
  echo "go $(go env GOVERSION | sed 's/^go//')"
  echo
  echo "require k8s.io/kubernetes v$kv"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do
    echo "	$m => $m v$sv"
  done
  echo ")"
} >go.mod

{
  echo "//go:build tools"
  echo
  echo "// Package tools pins the Kubernetes commands this module builds."
  echo "package tools"
  echo
  echo "import ("
  for n in "${names[@]}"; do
    echo "	_ \"k8s.io/kubernetes/cmd/$n\""
  done
  echo ")"
} >tools.go

log "go mod tidy"
go mod tidy

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$kv -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=0000000000000000000000000000000000000000"
  ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

pkgs=()
for n in "${names[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$n"); done

log "go build ${names[*]} (one invocation; a cold build takes a while)"
start=$SECONDS
go build -trimpath -ldflags "$ldflags" -o out/ "${pkgs[@]}"
log "built in $((SECONDS - start)) s"

for n in "${names[@]}"; do
  mkdir -p "$cache/$n-$kv"
  mv "out/$n" "$cache/$n-$kv/$n.tmp"
  mv "$cache/$n-$kv/$n.tmp" "$cache/$n-$kv/$n"
done
link_all
"$cache/bin/kubectl" version --client >&2
rm -rf "$work"
log "done: $cache/bin"
