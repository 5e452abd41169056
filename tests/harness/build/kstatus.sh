#!/usr/bin/env bash
# Builds `kstatus`, a small command around the kstatus library
# (sigs.k8s.io/cli-utils/pkg/kstatus/status, what Flux and `kpt`/`kapply` use to tell
# whether an object is Current, InProgress or Failed), and caches it.
#
# Usage: bash tests/harness/build/kstatus.sh [CACHE_DIR]
#
#   kstatus < objects              one line per object: <kind>/<namespace>/<name> <status> <message>
#   kstatus -argocd-health FILE    the same, with the Argo CD health (Lua script FILE, run as
#                                  Argo CD runs custom health checks) instead of kstatus
#
# Objects are read as YAML documents or JSON on stdin; a List (`kubectl get -o yaml`) is
# expanded. Objects without a namespace print an empty one (`Namespace//team-a`).
#
# Result: CACHE_DIR/kstatus-<version>/kstatus plus a stable symlink CACHE_DIR/bin/kstatus,
# where <version> is CLI_UTILS_VERSION and a hash of this script and its pins, so a change to
# the program below rebuilds it. The program lives in a throw-away module under
# CACHE_DIR/src/ that requires the pinned modules.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib/common.sh
. "$here/../lib/common.sh"
load_versions

cache="${1:-$(default_cache)}"
mkdir -p "$cache/bin"
cache="$(cd "$cache" && pwd)"

hash="$(cat "${BASH_SOURCE[0]}" <(echo "$CLI_UTILS_VERSION $GOPHER_LUA_VERSION") | sha256sum | cut -c1-8)"
version="$CLI_UTILS_VERSION-$hash"
cached "$cache" kstatus "$version" && exit 0

command -v go >/dev/null || die "kstatus: go is not installed"
go_env

work="$cache/src/kstatus-$version"
rm -rf "$work"
mkdir -p "$work"
cd "$work"

cat >go.mod <<MOD
module local/kstatus

go $(go env GOVERSION | sed 's/^go//')
MOD
cat >main.go <<'GO'
// Command kstatus prints the kstatus result (or an Argo CD Lua health check's result) of
// each object read from stdin.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	health := flag.String("argocd-health", "", "an Argo CD health check (Lua) to run instead of kstatus")
	flag.Parse()
	var script string
	if *health != "" {
		text, err := os.ReadFile(*health)
		if err != nil {
			fail(err)
		}
		script = string(text)
	}
	objects, err := read(os.Stdin)
	if err != nil {
		fail(err)
	}
	for _, obj := range objects {
		var state, message string
		if script != "" {
			state, message, err = argocd(script, obj.Object)
		} else {
			var result *status.Result
			result, err = status.Compute(obj)
			if result != nil {
				state, message = string(result.Status), result.Message
			}
		}
		if err != nil {
			fail(fmt.Errorf("%s/%s: %w", obj.GetKind(), obj.GetName(), err))
		}
		message = strings.Join(strings.Fields(message), " ")
		fmt.Printf("%s/%s/%s %s %s\n", obj.GetKind(), obj.GetNamespace(), obj.GetName(), state, message)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}

// read decodes every YAML document or JSON value of r, expanding Lists.
func read(r io.Reader) ([]*unstructured.Unstructured, error) {
	decoder := yaml.NewYAMLOrJSONDecoder(r, 4096)
	var objects []*unstructured.Unstructured
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return objects, nil
			}
			return nil, err
		}
		// Integers as int64, as the API machinery (and kstatus) expect them.
		var doc map[string]interface{}
		if err := utiljson.Unmarshal(raw, &doc); err != nil {
			return nil, err
		}
		if doc == nil {
			continue
		}
		objects = append(objects, expand(&unstructured.Unstructured{Object: doc})...)
	}
}

func expand(obj *unstructured.Unstructured) []*unstructured.Unstructured {
	items, found, _ := unstructured.NestedSlice(obj.Object, "items")
	if !found || !strings.HasSuffix(obj.GetKind(), "List") {
		return []*unstructured.Unstructured{obj}
	}
	var out []*unstructured.Unstructured
	for _, item := range items {
		if m, ok := item.(map[string]interface{}); ok {
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
	return out
}

// argocd runs a health check the way Argo CD does: Lua 5.1 (gopher-lua) with only the base,
// package and table libraries, the object as the global `obj`, and the returned table's
// `status` and `message`.
func argocd(script string, obj map[string]interface{}) (string, string, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
			return "", "", err
		}
	}
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return "", "", err
	}
	hs, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the health check returned %s, not a table", l.Get(-1).Type())
	}
	state := lua.LVAsString(hs.RawGetString("status"))
	switch state {
	case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
	default:
		return "", "", fmt.Errorf("the health check returned the invalid status %q", state)
	}
	return state, lua.LVAsString(hs.RawGetString("message")), nil
}

// toLua converts a decoded JSON value as Argo CD does.
func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]interface{}:
		t := l.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetH(lua.LString(key), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}
GO

log "kstatus $version: resolving sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION, github.com/yuin/gopher-lua@$GOPHER_LUA_VERSION"
go get "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION" "github.com/yuin/gopher-lua@$GOPHER_LUA_VERSION"
go mod tidy

log "kstatus $version: go build"
timing="$(mktemp)"
(
  TIMEFORMAT="%R %U %S"
  { time go build -trimpath -ldflags "-s -w" -o kstatus . 2>&3; } 3>&2 2>"$timing"
)
read -r wall user sys <"$timing"
rm -f "$timing"
store_bin "$cache" kstatus "$version" kstatus
cd "$cache"
rm -rf "$work"
log "kstatus $version: built in ${wall%.*} s wall, $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%d", u + s }') s CPU"
