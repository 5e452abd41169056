#!/usr/bin/env bash
# Builds the ORAS client (artifacts, referrers) and caches it.
# Usage: build/oras.sh CACHE_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$here/../lib/common.sh"
load_versions
cache="${1:-$(default_cache)}"

go_install_cached "$cache" oras "$ORAS_VERSION" "oras.land/oras/cmd/oras@$ORAS_VERSION"
