#!/usr/bin/env bash
# Builds the OCI distribution-spec conformance runner (the redesigned runner, package main) and caches it.
# Usage: build/conformance.sh CACHE_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$here/../lib/common.sh"
load_versions
cache="${1:-$(default_cache)}"

go_install_cached "$cache" conformance "$CONFORMANCE_VERSION" "github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_VERSION"
