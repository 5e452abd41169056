# shellcheck shell=bash
# Shared helpers for tests/harness scripts. Source this file; it defines functions only.
#
# Binary cache layout (outside the work tree):
#   $cache/<name>-<version>/<name>   the built or installed binary
#   $cache/bin/<name>                symlink to the current version

harness_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# Prints a progress line to stderr.
log() {
  printf '[harness %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
  log "ERROR: $*"
  exit 1
}

# Loads the version pins into the environment.
load_versions() {
  local root
  root="$(harness_root)"
  set -a
  # shellcheck source=SCRIPTDIR/../versions.env
  . "$root/versions.env"
  set +a
}

default_cache() {
  printf '%s\n' "${REGISTRY_HARNESS_CACHE:-$HOME/.cache/registry-harness}"
}

# Go settings shared by every build: local toolchain only, module mode, static binaries.
go_env() {
  export GOTOOLCHAIN=local
  export GOFLAGS=-mod=mod
  export CGO_ENABLED="${CGO_ENABLED:-0}"
}

# cached CACHE NAME VERSION: true (and refreshes bin/NAME) if NAME at VERSION is already cached.
cached() {
  local cache=$1 name=$2 version=$3
  local target="$cache/$name-$version/$name"
  if [[ -x "$target" ]]; then
    link_bin "$cache" "$name" "$version"
    log "$name $version: cached"
    return 0
  fi
  return 1
}

# link_bin CACHE NAME VERSION: points $cache/bin/NAME at the cached version.
link_bin() {
  local cache=$1 name=$2 version=$3
  mkdir -p "$cache/bin"
  ln -sfn "../$name-$version/$name" "$cache/bin/$name"
}

# store_bin CACHE NAME VERSION FILE: moves a freshly built FILE into the cache atomically.
store_bin() {
  local cache=$1 name=$2 version=$3 file=$4
  local dir="$cache/$name-$version"
  mkdir -p "$dir"
  install -m 0755 "$file" "$dir/.$name.tmp"
  mv -f "$dir/.$name.tmp" "$dir/$name"
  link_bin "$cache" "$name" "$version"
}

# go_install_cached CACHE NAME VERSION PACKAGE@VERSION [extra go flags...]:
# `go install` a module that has no replace directives, timing the build.
go_install_cached() {
  local cache=$1 name=$2 version=$3 pkg=$4
  shift 4
  cached "$cache" "$name" "$version" && return 0
  go_env
  local gobin timing
  gobin="$(mktemp -d)"
  timing="$(mktemp)"
  log "$name $version: building $pkg"
  # `time` reports wall and CPU (user + sys) seconds; CPU is what to compare across machines.
  (
    TIMEFORMAT="%R %U %S"
    { time GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "$@" "$pkg" 2>&3; } 3>&2 2>"$timing"
  )
  local built="$gobin/$name"
  [[ -x "$built" ]] || built="$gobin/$(basename "${pkg%@*}")"
  store_bin "$cache" "$name" "$version" "$built"
  rm -rf "$gobin"
  local wall user sys
  read -r wall user sys <"$timing"
  rm -f "$timing"
  log "$name $version: built in ${wall%.*} s wall, $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%d", u + s }') s CPU"
}

# Prints a loopback TCP port that nothing listens on right now (for servers that cannot
# report an ephemeral port themselves). Small race window: callers retry on bind failure.
free_port() {
  local port i low=10000 high=32767 ephemeral
  # Below the kernel's ephemeral range, so that no client connection (or one lingering in
  # TIME-WAIT, which some servers such as MinIO refuse to share a port with) can hold it.
  ephemeral="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
  if ((ephemeral > low + 1000)); then high=$((ephemeral - 1)); fi
  for ((i = 0; i < 200; i++)); do
    port=$((low + RANDOM % (high - low + 1)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      printf '%s\n' "$port"
      return 0
    fi
  done
  die "no free loopback port found"
}

# Resolves a harness binary: the cache first, then PATH (Debian packages).
harness_bin() {
  local name=$1 cache
  cache="$(default_cache)"
  if [[ -x "$cache/bin/$name" ]]; then
    printf '%s\n' "$cache/bin/$name"
  elif command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  else
    die "$name not found: run tests/harness/install"
  fi
}
