# shellcheck shell=bash
# Starting and stopping the registries under test. Source this file; it defines functions only.
#
# Every registry is started fresh, in its own process group (so stopping it also stops
# anything it spawned), on a free loopback port, with its data under a directory chosen by
# the caller, or under a key prefix of the benchmark's S3 bucket (a ROOT of the form
# `s3:PREFIX`). After registry_start succeeds these globals describe the running server:
#   REG_PID  the server process id (also its process group id)
#   REG_URL  http://127.0.0.1:PORT
#   REG_LOG  the file that receives its stdout and stderr
#
# Requires: BENCH_WORK (scratch directory), DATAPLANE_BIN, DISTRIBUTION_BIN, DOCKER_REGISTRY_BIN,
# and free_port from tests/harness/lib/common.sh; for S3 roots also the variables printed by
# `tests/harness/s3 up` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
# AWS_ENDPOINT_URL, S3_BUCKET), exported so that the data plane finds its credentials.

# The registries in the order they are measured, with their display names (used by bench/run).
# shellcheck disable=SC2034
REGISTRIES=(dataplane distribution docker-registry)
# shellcheck disable=SC2034
declare -A REGISTRY_TITLE=(
  [dataplane]="dataplane"
  [distribution]="Distribution v3"
  [docker-registry]="docker-registry 2.8"
)

REG_PID=""
REG_URL=""
REG_LOG=""

# Access control of the next registry_start: "none" (open, the default), or "basic" (one
# credential, BENCH_USER/BENCH_PASSWORD, that may push and pull; anonymous clients get 401):
#   dataplane: a configuration file with the private namespace `bench`, one credential whose
#     argon2 hash comes from `dataplane hash-secret`, and access tokens valid for an hour;
#   Distribution: htpasswd authentication, the bcrypt line made by bench_htpasswd_line.
REG_ACCESS=none
BENCH_USER=bench-push
BENCH_PASSWORD=""
# The service (audience) of the data plane's access tokens in "basic" mode.
BENCH_TOKEN_SERVICE=bench

# The process groups started and not yet stopped, so that the exit trap can stop leftovers.
declare -A LIVE_PGIDS=()

# distribution_config FILE ROOT PORT: writes a Distribution (v2.8 or v3) configuration with
# storage at ROOT (a directory, or `s3:PREFIX`: the S3 driver with PREFIX as its root
# directory, path-style requests and redirects to S3 disabled, so that blobs pass through the
# registry as with the other storage), deletes enabled and the in-memory blob descriptor cache
# (both as in the configuration shipped with these registries), listening on loopback only.
distribution_config() {
  local file=$1 root=$2 port=$3
  cat >"$file" <<EOF
version: 0.1
log:
  level: info
storage:
  cache:
    blobdescriptor: inmemory
EOF
  if [[ "$root" == s3:* ]]; then
    cat >>"$file" <<EOF
  s3:
    accesskey: "$AWS_ACCESS_KEY_ID"
    secretkey: "$AWS_SECRET_ACCESS_KEY"
    region: "$AWS_REGION"
    regionendpoint: "$AWS_ENDPOINT_URL"
    bucket: "$S3_BUCKET"
    rootdirectory: "/${root#s3:}"
    forcepathstyle: true
    secure: false
    v4auth: true
  redirect:
    disable: true
EOF
  else
    cat >>"$file" <<EOF
  filesystem:
    rootdirectory: $root
EOF
  fi
  cat >>"$file" <<EOF
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
}

# distribution_auth_config FILE: appends htpasswd authentication (the bench credential) to a
# Distribution configuration written by distribution_config.
distribution_auth_config() {
  local file=$1 htpasswd="$BENCH_WORK/htpasswd"
  bench_htpasswd_line "$BENCH_USER" "$BENCH_PASSWORD" >"$htpasswd" || return 1
  cat >>"$file" <<EOF
auth:
  htpasswd:
    realm: bench
    path: $htpasswd
EOF
}

# bench_htpasswd_line USER PASSWORD: prints a `user:bcrypt-hash` line for Distribution's
# htpasswd authentication, with `htpasswd -B` (apache2-utils), or else with Python's `crypt`
# module (the C library's bcrypt, `$2b$`); both at bcrypt's lowest cost, 4.
bench_htpasswd_line() {
  local user=$1 password=$2
  if command -v htpasswd >/dev/null; then
    htpasswd -nbBC 4 "$user" "$password" | sed '/^$/d'
  else
    # shellcheck disable=SC2016
    BENCH_PW="$password" python3 -W ignore -c '
import crypt, os, sys
hashed = crypt.crypt(os.environ["BENCH_PW"], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
if not hashed or not hashed.startswith("$2"):
    sys.exit("no bcrypt in crypt(3); install apache2-utils for htpasswd")
print(sys.argv[1] + ":" + hashed)' "$user"
  fi
}

# dataplane_storage ROOT: prints the `storage:` section of a data plane configuration for ROOT
# (a directory, or `s3:PREFIX`: the benchmark's bucket under that key prefix, path-style).
dataplane_storage() {
  local root=$1
  if [[ "$root" == s3:* ]]; then
    printf 'storage:\n  s3: {bucket: "%s", region: "%s", endpoint: "%s", prefix: "%s/", forcePathStyle: true}\n' \
      "$S3_BUCKET" "$AWS_REGION" "$AWS_ENDPOINT_URL" "${root#s3:}"
  else
    printf 'storage:\n  filesystem: {root: "%s"}\n' "$root"
  fi
}

# dataplane_config FILE ROOT: writes a data plane configuration with storage at ROOT and
# everything else at its defaults (used for S3 roots; a directory is given with --root).
dataplane_config() {
  local file=$1 root=$2
  {
    printf 'apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n'
    dataplane_storage "$root"
  } >"$file"
}

# dataplane_auth_config FILE ROOT: writes a data plane configuration with the private namespace
# `bench`, the bench credential (push and pull on `bench`) and access tokens valid for an hour
# (so none expires during a run). The secret's hash comes from `dataplane hash-secret`, which
# reads the secret on stdin and prints its PHC string.
dataplane_auth_config() {
  local file=$1 root=$2 hash
  hash="$(printf '%s' "$BENCH_PASSWORD" | "$DATAPLANE_BIN" hash-secret 2>"$BENCH_WORK/hash-secret.err" | tail -n 1)" || hash=""
  if [[ "$hash" != \$argon2* ]]; then
    printf 'dataplane hash-secret did not print an argon2 hash: %s\n' \
      "$(tail -n 1 "$BENCH_WORK/hash-secret.err" 2>/dev/null)" >&2
    return 1
  fi
  cat >"$file" <<EOF
apiVersion: registry.thalassa.cloud/v1alpha1
kind: DataPlaneConfig
$(dataplane_storage "$root")
namespaces:
  - {name: bench, visibility: private}
credentials:
  - id: $BENCH_USER
    secretHash: '$hash'
    scope: containerRegistry
    namespaces: [bench]
tokens:
  service: $BENCH_TOKEN_SERVICE
  ttl: 1h
EOF
}

# registry_launch NAME ROOT PORT: starts NAME in the background in a new session, with the
# access control chosen by REG_ACCESS.
registry_launch() {
  local name=$1 root=$2 port=$3
  local config="$BENCH_WORK/$name.yml"
  case "$name" in
    dataplane)
      if [[ "$root" == s3:* ]]; then
        if [[ "$REG_ACCESS" == basic ]]; then
          dataplane_auth_config "$config" "$root" || return 1
        else
          dataplane_config "$config" "$root"
        fi
        setsid "$DATAPLANE_BIN" serve --config "$config" --listen "127.0.0.1:$port" \
          </dev/null >>"$REG_LOG" 2>&1 &
      elif [[ "$REG_ACCESS" == basic ]]; then
        dataplane_auth_config "$config" "$root" || return 1
        setsid "$DATAPLANE_BIN" serve --config "$config" --listen "127.0.0.1:$port" --root "$root" \
          </dev/null >>"$REG_LOG" 2>&1 &
      else
        setsid "$DATAPLANE_BIN" serve --listen "127.0.0.1:$port" --root "$root" \
          </dev/null >>"$REG_LOG" 2>&1 &
      fi
      ;;
    distribution)
      distribution_config "$config" "$root" "$port"
      if [[ "$REG_ACCESS" == basic ]]; then distribution_auth_config "$config" || return 1; fi
      OTEL_TRACES_EXPORTER=none setsid "$DISTRIBUTION_BIN" serve "$config" \
        </dev/null >>"$REG_LOG" 2>&1 &
      ;;
    docker-registry)
      distribution_config "$config" "$root" "$port"
      if [[ "$REG_ACCESS" == basic ]]; then distribution_auth_config "$config" || return 1; fi
      # Its AWS SDK refuses to start when AWS_CA_BUNDLE is set (it cannot apply a CA bundle to
      # the driver's own HTTP transport); the bench's S3 server is plain HTTP anyway.
      env -u AWS_CA_BUNDLE setsid "$DOCKER_REGISTRY_BIN" serve "$config" </dev/null >>"$REG_LOG" 2>&1 &
      ;;
    *)
      printf 'unknown registry: %s\n' "$name" >&2
      return 1
      ;;
  esac
  REG_PID=$!
  LIVE_PGIDS[$REG_PID]=1
}

# registry_start NAME ROOT: starts NAME with an empty data directory ROOT (or an unused S3 key
# prefix, `s3:PREFIX`) and waits until `GET /v2/` answers. Retries on another port if the
# server dies (e.g. the port was taken).
registry_start() {
  local name=$1 root=$2 attempt port deadline code
  REG_LOG="$BENCH_WORK/logs/$name.log"
  mkdir -p "$BENCH_WORK/logs"
  [[ "$root" == s3:* ]] || mkdir -p "$root"
  for attempt in 1 2 3; do
    port="$(free_port)"
    printf '=== start %s on port %s (attempt %s) root %s\n' "$name" "$port" "$attempt" "$root" >>"$REG_LOG"
    registry_launch "$name" "$root" "$port" || return 1
    REG_URL="http://127.0.0.1:$port"
    deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
      if ! kill -0 "$REG_PID" 2>/dev/null; then
        break
      fi
      code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$REG_URL/v2/" || true)"
      if [[ "$code" == 200 || "$code" == 401 ]]; then
        return 0
      fi
      sleep 0.1
    done
    registry_stop
  done
  printf '%s did not start; last log lines:\n' "$name" >&2
  tail -n 5 "$REG_LOG" >&2
  return 1
}

# registry_stop: stops the current server (SIGTERM, then SIGKILL) and waits for it.
registry_stop() {
  [[ -n "$REG_PID" ]] || return 0
  local i
  kill -TERM -- "-$REG_PID" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$REG_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$REG_PID" 2>/dev/null || true
  wait "$REG_PID" 2>/dev/null || true
  unset "LIVE_PGIDS[$REG_PID]"
  REG_PID=""
}

# registries_stop_all: stops every process group this run started and did not stop yet
# (for the exit trap).
registries_stop_all() {
  local pgid
  for pgid in "${!LIVE_PGIDS[@]}"; do
    kill -KILL -- "-$pgid" 2>/dev/null || true
    wait "$pgid" 2>/dev/null || true
  done
  LIVE_PGIDS=()
  REG_PID=""
}

# registry_cpu_ticks: prints the server's user+system CPU time so far, in clock ticks.
registry_cpu_ticks() {
  local stat rest
  stat="$(</proc/"$REG_PID"/stat)" || return 1
  rest="${stat##*) }"
  # Fields after the command name start at field 3 (state); utime and stime are fields 14, 15.
  awk '{ print $12 + $13 }' <<<"$rest"
}

# registry_sys_ticks: prints the server's system (kernel) CPU time so far, in clock ticks.
registry_sys_ticks() {
  local stat rest
  stat="$(</proc/"$REG_PID"/stat)" || return 1
  rest="${stat##*) }"
  awk '{ print $13 }' <<<"$rest"
}

# registry_status_kib FIELD: prints a /proc/PID/status field of the server, in KiB (e.g. VmHWM).
registry_status_kib() {
  awk -v f="$1:" '$1 == f { print $2 }' "/proc/$REG_PID/status"
}
