#!/usr/bin/env bash
# Builds the MinIO S3 server (test peer only; AGPLv3, never shipped) and caches it.
# Usage: build/minio.sh CACHE_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$here/../lib/common.sh"
load_versions
cache="${1:-$(default_cache)}"

go_install_cached "$cache" minio "$MINIO_VERSION" "github.com/minio/minio@$MINIO_VERSION"
