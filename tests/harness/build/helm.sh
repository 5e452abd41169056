#!/usr/bin/env bash
# Builds Helm v3 (OCI chart push/pull) and caches it.
# Usage: build/helm.sh CACHE_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$here/../lib/common.sh"
load_versions
cache="${1:-$(default_cache)}"

go_install_cached "$cache" helm "$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
