#!/usr/bin/env bash
# Build etcd (the server the harness's kube-apiserver stores its state in) from
# the Go module proxy, and cache it by version.
#
# Usage: bash tests/harness/build/etcd.sh [CACHE_DIR]
#
# Result: CACHE_DIR/etcd-<version>/etcd plus a stable symlink CACHE_DIR/bin/etcd.
# A no-op when the pinned version exists.
#
# go.etcd.io/etcd/v3 (the module holding the real main) uses ./local replaces
# and cannot be `go install`ed, so a throw-away wrapper module calls
# go.etcd.io/etcd/server/v3/etcdmain.Main, which is all that main does.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$here/../lib/common.sh"
load_versions

cache="${1:-$(default_cache)}"
mkdir -p "$cache/bin"
cache="$(cd "$cache" && pwd)"

ev="${ETCD_VERSION#v}"
dest="$cache/etcd-$ev/etcd"

log() { printf '[etcd %s] %s\n' "$ev" "$*" >&2; }

if [[ -x "$dest" ]]; then
  ln -sfn "../etcd-$ev/etcd" "$cache/bin/etcd"
  log "cached in $cache"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

work="$cache/src/etcd-$ev"
rm -rf "$work"
mkdir -p "$work"
cd "$work"

cat >go.mod <<MOD
module local/etcdbin

go $(go env GOVERSION | sed 's/^go//')
MOD
cat >main.go <<'GO'
// Command etcd runs the etcd server exactly as upstream's server/main.go does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO

log "resolving go.etcd.io/etcd/server/v3@v$ev"
go get "go.etcd.io/etcd/server/v3@v$ev"
go mod tidy

log "go build"
start=$SECONDS
go build -trimpath -ldflags "-s -w" -o etcd .
log "built in $((SECONDS - start)) s"

mkdir -p "$cache/etcd-$ev"
mv etcd "$dest.tmp"
mv "$dest.tmp" "$dest"
ln -sfn "../etcd-$ev/etcd" "$cache/bin/etcd"
"$cache/bin/etcd" --version >&2
rm -rf "$work"
log "done: $cache/bin/etcd"
