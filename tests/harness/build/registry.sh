#!/usr/bin/env bash
# Builds the CNCF Distribution v3 registry, the reference peer registry, and caches it.
# Usage: build/registry.sh CACHE_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$here/../lib/common.sh"
load_versions
cache="${1:-$(default_cache)}"

go_install_cached "$cache" registry "$DISTRIBUTION_VERSION" "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"
