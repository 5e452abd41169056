# shellcheck shell=bash
# The measurements, against the server described by REG_URL/REG_PID (see registries.sh).
# Source this file; it defines functions only. Each measurement prints its figures on stdout
# and returns non-zero with a one-line reason on stderr when the registry misbehaves.
#
# All clients are the same for every registry: curl for blob transfers and manifest writes,
# wrk for the manifest GET load.

OCI_MANIFEST_TYPE="application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_TYPE="application/vnd.oci.image.config.v1+json"
OCI_LAYER_TYPE="application/vnd.oci.image.layer.v1.tar+gzip"

# Upper bound for one blob transfer; a registry slower than ~2 MB/s on 1 GiB is a failure anyway.
BLOB_TIMEOUT="${BLOB_TIMEOUT:-600}"

# Extra curl arguments for every request to the registry under test, e.g. `--user U:P` when
# it runs with access control (empty: anonymous).
REG_CURL_AUTH=()

# reg_curl ARGS...: curl with REG_CURL_AUTH.
reg_curl() {
  curl "${REG_CURL_AUTH[@]}" "$@"
}

# now: the wall clock in seconds with microseconds.
now() {
  printf '%s\n' "$EPOCHREALTIME"
}

# elapsed START END: prints END-START in seconds.
elapsed() {
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f\n", b - a }'
}

# upload_location REPO: starts an upload session and prints its absolute Location URL.
upload_location() {
  local repo=$1 headers status location
  headers="$(reg_curl -sS -X POST -o /dev/null -D - --max-time 30 "$REG_URL/v2/$repo/blobs/uploads/")" || {
    echo "POST upload: curl failed" >&2
    return 1
  }
  status="$(awk 'NR == 1 { print $2 }' <<<"$headers")"
  location="$(tr -d '\r' <<<"$headers" | awk 'tolower($1) == "location:" { print $2 }' | tail -n 1)"
  if [[ "$status" != 202 || -z "$location" ]]; then
    echo "POST upload: status $status, location '${location}'" >&2
    return 1
  fi
  [[ "$location" == http* ]] || location="$REG_URL$location"
  printf '%s\n' "$location"
}

# push_blob REPO FILE DIGEST: pushes FILE as one blob (POST a session, then one PUT with the
# whole body, streamed by curl, and ?digest=). Prints the seconds taken by POST + PUT.
push_blob() {
  local repo=$1 file=$2 digest=$3 start location sep out
  start="$(now)"
  location="$(upload_location "$repo")" || return 1
  sep='?'
  [[ "$location" != *\?* ]] || sep='&'
  out="$(reg_curl -sS -o /dev/null -w '%{http_code}' -X PUT --max-time "$BLOB_TIMEOUT" \
    -H 'Content-Type: application/octet-stream' -H 'Expect:' \
    -T "$file" "$location${sep}digest=$digest")" || {
    echo "PUT blob: curl failed" >&2
    return 1
  }
  if [[ "$out" != 201 ]]; then
    echo "PUT blob: status $out" >&2
    return 1
  fi
  elapsed "$start" "$(now)"
}

# pull_blob REPO DIGEST SIZE: downloads a blob to /dev/null, checks its size and prints seconds.
pull_blob() {
  local repo=$1 digest=$2 size=$3 out code got secs
  out="$(reg_curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' \
    --max-time "$BLOB_TIMEOUT" "$REG_URL/v2/$repo/blobs/$digest")" || {
    echo "GET blob: curl failed" >&2
    return 1
  }
  read -r code got secs <<<"$out"
  if [[ "$code" != 200 || "$got" != "$size" ]]; then
    echo "GET blob: status $code, $got of $size bytes" >&2
    return 1
  fi
  printf '%s\n' "$secs"
}

# put_small_blob REPO FILE: pushes a small file as a blob and prints its digest.
put_small_blob() {
  local repo=$1 file=$2 digest
  digest="sha256:$(sha256sum "$file" | awk '{ print $1 }')"
  push_blob "$repo" "$file" "$digest" >/dev/null || return 1
  printf '%s\n' "$digest"
}

# make_manifest DIR: writes DIR/config.json, DIR/layer.bin and DIR/manifest.json, an OCI
# image manifest referencing them. Prints the manifest's digest.
make_manifest() {
  local dir=$1 config_digest layer_digest
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%064d"]}}' 0 \
    >"$dir/config.json"
  head -c 4096 /dev/urandom >"$dir/layer.bin"
  config_digest="sha256:$(sha256sum "$dir/config.json" | awk '{ print $1 }')"
  layer_digest="sha256:$(sha256sum "$dir/layer.bin" | awk '{ print $1 }')"
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"%s","size":%d},"layers":[{"mediaType":"%s","digest":"%s","size":%d}]}' \
    "$OCI_MANIFEST_TYPE" "$OCI_CONFIG_TYPE" "$config_digest" "$(stat -c %s "$dir/config.json")" \
    "$OCI_LAYER_TYPE" "$layer_digest" 4096 >"$dir/manifest.json"
  printf 'sha256:%s\n' "$(sha256sum "$dir/manifest.json" | awk '{ print $1 }')"
}

# put_manifest_blobs REPO DIR: pushes the config and layer written by make_manifest to REPO.
put_manifest_blobs() {
  local repo=$1 dir=$2
  put_small_blob "$repo" "$dir/config.json" >/dev/null && put_small_blob "$repo" "$dir/layer.bin" >/dev/null
}

# put_manifest REPO TAG FILE: uploads FILE as a manifest under TAG.
put_manifest() {
  local repo=$1 tag=$2 file=$3 code
  code="$(reg_curl -sS -o /dev/null -w '%{http_code}' -X PUT --max-time 30 -H 'Expect:' \
    -H "Content-Type: $OCI_MANIFEST_TYPE" -T "$file" "$REG_URL/v2/$repo/manifests/$tag")" || {
    echo "PUT manifest: curl failed" >&2
    return 1
  }
  if [[ "$code" != 201 ]]; then
    echo "PUT manifest $tag: status $code" >&2
    return 1
  fi
}

# check_manifest_get REPO TAG DIGEST: one GET by tag must return the manifest with its digest.
check_manifest_get() {
  local repo=$1 tag=$2 digest=$3 headers got
  headers="$(reg_curl -sS -o /dev/null -D - --max-time 10 -H "Accept: $OCI_MANIFEST_TYPE" \
    "$REG_URL/v2/$repo/manifests/$tag")" || return 1
  got="$(tr -d '\r' <<<"$headers" | awk 'tolower($1) == "docker-content-digest:" { print $2 }')"
  if [[ "$(awk 'NR == 1 { print $2 }' <<<"$headers")" != 200 || "$got" != "$digest" ]]; then
    echo "GET manifest: expected 200 with $digest, got: $(head -n 1 <<<"$headers" | tr -d '\r') digest '$got'" >&2
    return 1
  fi
}

# wrk_manifest REPO TAG SECONDS [WRK_ARGS...]: manifest GET by tag at 64 connections
# (2 threads); WRK_ARGS are added to wrk's (e.g. `-H 'Authorization: ...'`).
# Prints "REQ_PER_SEC P50_MS P99_MS SERVER_CPU_US_PER_REQ".
wrk_manifest() {
  local repo=$1 tag=$2 secs=$3
  shift 3
  wrk_get "$REG_URL/v2/$repo/manifests/$tag" "$secs" -H "Accept: $OCI_MANIFEST_TYPE" "$@"
}

# wrk_get URL SECONDS [WRK_ARGS...]: GETs of URL at 64 connections (2 threads), the server
# being the process REG_PID. Prints "REQ_PER_SEC P50_MS P99_MS SERVER_CPU_US_PER_REQ".
wrk_get() {
  local url=$1 secs=$2 out ticks0 ticks1 hz
  shift 2
  hz="$(getconf CLK_TCK)"
  ticks0="$(registry_cpu_ticks)"
  out="$(wrk -t2 -c64 -d"${secs}s" --latency "$@" "$url" 2>&1)" || {
    echo "wrk failed: $(tail -n 1 <<<"$out")" >&2
    return 1
  }
  ticks1="$(registry_cpu_ticks)"
  printf '%s\n' "$out" >>"$BENCH_WORK/logs/wrk.log"
  if grep -q 'Non-2xx or 3xx responses' <<<"$out"; then
    echo "wrk: $(grep 'Non-2xx or 3xx responses' <<<"$out" | xargs)" >&2
    return 1
  fi
  if grep -q 'Socket errors' <<<"$out"; then
    echo "wrk: $(grep 'Socket errors' <<<"$out" | xargs)" >&2
    return 1
  fi
  awk -v t0="$ticks0" -v t1="$ticks1" -v hz="$hz" '
    function ms(v,   n) {
      n = v + 0
      if (v ~ /us$/) return n / 1000
      if (v ~ /ms$/) return n
      if (v ~ /m$/) return n * 60000
      if (v ~ /s$/) return n * 1000
      return n
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    $1 == "Requests/sec:" { rps = $2 }
    $1 ~ /^[0-9]+$/ && $2 == "requests" { total = $1 }
    END {
      if (rps == "" || p50 == "" || p99 == "" || total == 0) exit 1
      printf "%s %.3f %.3f %.1f\n", rps, p50, p99, (t1 - t0) / hz * 1e6 / total
    }' <<<"$out" || {
    echo "wrk: unparsable output: $(tr '\n' ' ' <<<"$out" | cut -c1-200)" >&2
    return 1
  }
}

# create_tags REPO FILE COUNT: PUTs manifest FILE under COUNT tags, 32 requests in flight.
# Prints the seconds taken.
create_tags() {
  local repo=$1 file=$2 count=$3 config="$BENCH_WORK/tags.curl" start codes ok
  awk -v n="$count" -v base="$REG_URL/v2/$repo/manifests/" -v f="$file" 'BEGIN {
    for (i = 1; i <= n; i++) {
      printf "url = \"%stag-%05d\"\nupload-file = \"%s\"\noutput = \"/dev/null\"\n", base, i, f
    }
  }' >"$config"
  start="$(now)"
  codes="$(reg_curl -sS --parallel --parallel-max 32 --max-time 60 -X PUT -H 'Expect:' \
    -H "Content-Type: $OCI_MANIFEST_TYPE" -w '%{http_code}\n' -K "$config" 2>/dev/null)" || true
  ok="$(grep -c '^201$' <<<"$codes" || true)"
  if ((ok != count)); then
    echo "tag PUTs: $ok of $count returned 201 ($(sort <<<"$codes" | uniq -c | sort -rn | head -n 3 | xargs))" >&2
    return 1
  fi
  elapsed "$start" "$(now)"
}

# tags_count URL: prints the number of tags in a tags list response and whether a Link
# header (pagination) was present, as "COUNT LINK(0/1)".
tags_count() {
  local url=$1 body="$BENCH_WORK/tags.json" headers count link
  headers="$(reg_curl -sS -o "$body" -D - --max-time 60 "$url")" || return 1
  count="$(jq '.tags | length' "$body" 2>/dev/null)" || count=0
  link=0
  if tr -d '\r' <<<"$headers" | grep -qi '^link:'; then link=1; fi
  printf '%s %s\n' "${count:-0}" "$link"
}

# bearer_token SERVICE SCOPE: asks the registry's token endpoint (`GET /token`, with the
# credentials of REG_CURL_AUTH) for an access token and prints it.
bearer_token() {
  local service=$1 scope=$2 body token
  body="$(reg_curl -sS -f --max-time 30 -G --data-urlencode "service=$service" \
    --data-urlencode "scope=$scope" "$REG_URL/token")" || {
    echo "GET /token: curl failed or non-2xx" >&2
    return 1
  }
  token="$(jq -r '.token // .access_token // empty' <<<"$body")"
  if [[ -z "$token" ]]; then
    echo "GET /token: no token in the answer" >&2
    return 1
  fi
  printf '%s\n' "$token"
}

# time_get URL: one GET to /dev/null; prints curl's total time in seconds (must be 200).
time_get() {
  local out code secs
  out="$(reg_curl -sS -o /dev/null -w '%{http_code} %{time_total}' --max-time 60 "$1")" || return 1
  read -r code secs <<<"$out"
  if [[ "$code" != 200 ]]; then
    echo "GET $1: status $code" >&2
    return 1
  fi
  printf '%s\n' "$secs"
}
