#!/usr/bin/env bash
# keyplane's benchmark (issue 6). One command: installs what it lacks (wrk, the peer's npm
# packages), builds keyplane and the bare axum baseline in release mode, and measures the
# baseline, the peer (node oidc-provider) and keyplane on SQLite and PostgreSQL under the same
# load: the server pinned to core 0, wrk (one thread, fixed connections and duration) on core 1.
# Prints one table and writes BENCHMARKS.md.
#
# The machine-identity scenarios (issue 12) send one pre-signed ES256 token per request, made
# by bench/tools' jwtgen just before each scenario (a `jti` is never sent twice; DPoP proofs'
# `iat` must be recent): `token_pkjwt` (private_key_jwt client assertions), `token_dpop`
# (client_secret_basic with a DPoP proof) on keyplane and the peer, and `authz_dpop`
# (`/v1/authz` with a DPoP-bound token and its proof) on keyplane.
#
#   bench/run.sh            full run (about 10 s per scenario; PostgreSQL when reachable)
#   bench/run.sh --usage    issue 15's scenarios only: the baseline, `authz` and `authz_limited`
#                           (usage counting and one rate limit on the key, never reached) on
#                           SQLite, and the two-node Redis overshoot (PostgreSQL and Redis);
#                           prints the figures and leaves BENCHMARKS.md alone
#   bench/run.sh --identity issue 12's scenarios only: the baseline, the peer's and keyplane's
#                           `token_pkjwt` and `token_dpop`, keyplane's `authz` and `authz_dpop`,
#                           on SQLite and PostgreSQL; prints the figures and leaves
#                           BENCHMARKS.md alone
#   bench/run.sh --short    a few seconds per scenario, SQLite only, no 1M-key run; exits 1
#                           when any ratio is below half its target (CI)
#
# Environment: KEYPLANE_BENCH_DATABASE_URL (PostgreSQL server where a database may be created;
# default postgres://postgres@127.0.0.1:5432/postgres), KEYPLANE_BENCH_TARGET (cargo target
# folder; default ~/.cache/keyplane-bench-target).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="$ROOT/bench"
SHORT=0
USAGE_ONLY=0
[[ "${1:-}" == "--short" ]] && SHORT=1
[[ "${1:-}" == "--usage" ]] && USAGE_ONLY=1
# Only these scenarios (empty: all).
ONLY=""
[[ "${1:-}" == "--identity" ]] && ONLY="authz token_pkjwt token_dpop authz_dpop"
wanted() { [[ -z "$ONLY" || " $ONLY " == *" $1 "* ]]; }
if ((SHORT)); then DUR=3; else DUR=10; fi
REDIS_URL="${KEYPLANE_BENCH_REDIS_URL:-redis://127.0.0.1:6379}"
CONNS=32
PG_ADMIN="${KEYPLANE_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export CARGO_TARGET_DIR="${KEYPLANE_BENCH_TARGET:-$HOME/.cache/keyplane-bench-target}"
WORK="$(mktemp -d /tmp/keyplane-bench.XXXXXX)"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
printf "load_before\t%s\n" "$(cut -d" " -f1-3 /proc/loadavg)" >>"$RESULTS"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "== $*" >&2; }
note() { printf '%s\t%s\n' "$1" "$2" >>"$RESULTS"; }

# ---- tools
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
if ! command -v wrk >/dev/null; then
  say "installing wrk (Debian package)"
  as_root apt-get install -y wrk >/dev/null || { as_root apt-get update >/dev/null && as_root apt-get install -y wrk >/dev/null; }
fi
HAVE_PEER=0
if command -v node >/dev/null && command -v npm >/dev/null; then
  if [[ ! -d "$BENCH/peer/node_modules/oidc-provider" ]]; then
    say "installing the peer (npm ci in bench/peer)"
    (cd "$BENCH/peer" && npm ci --no-audit --no-fund >/dev/null 2>&1)
  fi
  HAVE_PEER=1
else
  say "node/npm not found: the peer is left out"
fi

say "building keyplane and the bench tools (release, $CARGO_TARGET_DIR)"
BUILD_START=$(date +%s)
(cd "$ROOT" && cargo build --release -q -p keyplane)
cargo build --release -q --manifest-path "$BENCH/tools/Cargo.toml"
note build_seconds $(($(date +%s) - BUILD_START))
BIN="$CARGO_TARGET_DIR/release"

# ---- helpers
PORT=18780
wait_http() { # URL [tries]
  for _ in $(seq 1 "${2:-500}"); do curl -sf -o /dev/null "$1" && return 0; sleep 0.01; done
  echo "no answer from $1" >&2; return 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cached_keys() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^keyplane_cache_keys / {print $2}'; }
wait_cached() { # COUNT: until keyplane's cache holds at least COUNT keys (3 minutes at most)
  for _ in $(seq 1 1800); do
    (( $(cached_keys | cut -d. -f1) >= $1 )) && return 0
    sleep 0.1
  done
  echo "the cache never reached $1 keys" >&2; return 1
}
# wrk on core 1 against a server on core 0. run NAME SERVER SCRIPT URL [duration]
run() {
  local name=$1 server=$2 script=$3 url=$4 d=${5:-$DUR}
  wanted "$name" || return 0
  cat "$BENCH/lua/common.lua" "$BENCH/lua/$script" >"$WORK/s.lua"
  local line
  line=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${d}s" -s "$WORK/s.lua" "$url" 2>"$WORK/wrk.err" | grep '^RESULT' || true)
  cat "$WORK/wrk.err" >&2
  [[ -n "$line" ]] || { echo "wrk gave no result for $name/$server" >&2; return 1; }
  # presigned.lua ran out of tokens: the server outran the count; say so in the report.
  grep -q 'pre-signed tokens sent' "$WORK/wrk.err" && note "exhausted_${name}_$server" 1
  read -r _ rps p50 p99 non2xx errs <<<"$line"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$server" "$rps" "$p50" "$p99" "$non2xx" "$errs" >>"$WORK/scenarios.tsv"
  printf '  %-28s %-16s %10s req/s  p50 %6s ms  p99 %6s ms  non-2xx %s\n' "$name" "$server" "$rps" "$p50" "$p99" "$non2xx" >&2
}
b64() { printf '%s' "$1" | base64 -w0; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
: >"$WORK/scenarios.tsv"

# ---- the raw signing and verification rates on core 0 (the JWT and DPoP targets' references)
VERIFY=0
if command -v openssl >/dev/null; then
  read -r sig VERIFY < <(taskset -c 0 openssl speed -seconds 2 ecdsap256 2>/dev/null | awk '/256 bits ecdsa \(nistp256\)/ {print $(NF-1), $NF}' | tail -1)
  note es256_sign_per_s "${sig:-0}"
  note es256_verify_per_s "${VERIFY:-0}"
fi
# How many pre-signed tokens a scenario gets: every request checks one ES256 signature on core
# 0, so twice what core 0 verifies in the scenario's time is more than any server can take.
VERIFY=${VERIFY%.*}
PRESIGNED=$(( (${VERIFY:-0} > 0 ? VERIFY : 30000) * DUR * 2 + 2000 ))
JWT="$WORK/jwt"
"$BIN/jwtgen" key "$JWT"
# run_presigned NAME SERVER assertions|proofs URL JWTGEN_ARGS...: makes the tokens, then runs
# presigned.lua (the other BENCH_* variables as the caller set them).
run_presigned() {
  local name=$1 server=$2 kind=$3 url=$4
  wanted "$name" || return 0
  shift 4
  "$BIN/jwtgen" "$kind" "$JWT" "$PRESIGNED" "$WORK/presigned" "$@"
  BENCH_LINES="$WORK/presigned" BENCH_SLOT=$([[ $kind == assertions ]] && echo assertion || echo dpop) \
    run "$name" "$server" presigned.lua "$url"
  rm -f "$WORK/presigned"
}

# ---- the bare baseline
say "baseline (bare axum)"
taskset -c 0 "$BIN/baseline" "127.0.0.1:$PORT" 2>/dev/null &
PIDS+=($!); BASE_PID=$!
wait_http "http://127.0.0.1:$PORT/v1/authz"
BENCH_METHOD=GET run authz baseline static.lua "http://127.0.0.1:$PORT/v1/authz"
kill "$BASE_PID"; wait "$BASE_PID" 2>/dev/null || true

# ---- the peer
((USAGE_ONLY)) && HAVE_PEER=0
if ((HAVE_PEER)); then
  say "peer (node oidc-provider $(node -p 'require(process.argv[1]).version' "$BENCH/peer/node_modules/oidc-provider/package.json"))"
  PEER_PORT=18790
  (cd "$BENCH/peer" && BENCH_CLIENT_JWK="$JWT/jwk.json" PORT=$PEER_PORT exec taskset -c 0 node server.mjs 2>/dev/null) &
  PIDS+=($!); PEER_PID=$!
  P="http://127.0.0.1:$PEER_PORT"
  wait_http "$P/.well-known/openid-configuration"
  sec() { echo "$1-secret-for-the-benchmark"; }
  export BENCH_METHOD=POST
  BENCH_AUTH=$(b64 "opaque:$(sec opaque)") BENCH_BODY="grant_type=client_credentials&scope=bench:read" run token_opaque_basic peer static.lua "$P/token"
  BENCH_AUTH="" BENCH_BODY="grant_type=client_credentials&scope=bench:read&client_id=opaque-post&client_secret=$(sec opaque-post)" run token_opaque_post peer static.lua "$P/token"
  BENCH_AUTH=$(b64 "jwt:$(sec jwt)") BENCH_BODY="grant_type=client_credentials&scope=bench:read" run token_jwt_basic peer static.lua "$P/token"
  BENCH_AUTH="" BENCH_BODY="grant_type=client_credentials&scope=bench:read&client_id=jwt-post&client_secret=$(sec jwt-post)" run token_jwt_post peer static.lua "$P/token"
  TOKEN=$(curl -s -u "opaque:$(sec opaque)" "$P/token" -d grant_type=client_credentials -d scope=bench:read | json_field access_token)
  BENCH_AUTH=$(b64 "opaque:$(sec opaque)") BENCH_BODY="token=$TOKEN" run introspect_token peer static.lua "$P/token/introspection"
  wanted revoke_then_check && BENCH_OUT="$WORK/peer-tokens" BENCH_AUTH=$(b64 "opaque:$(sec opaque)") BENCH_PATH=/token BENCH_BODY="grant_type=client_credentials&scope=bench:read" \
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s "$BENCH/lua/collect.lua" "$P" >/dev/null
  BENCH_KEYS="$WORK/peer-tokens" BENCH_AUTH=$(b64 "opaque:$(sec opaque)") BENCH_REVOKE=/token/revocation BENCH_INTROSPECT=/token/introspection \
    run revoke_then_check peer revoke.lua "$P"
  # private_key_jwt, and DPoP-bound tokens for a Basic client (the peer's `pkjwt` and `dpop`).
  BENCH_AUTH="" BENCH_BODY="grant_type=client_credentials&scope=bench:read&client_id=pkjwt" \
    run_presigned token_pkjwt peer assertions "$P/token" pkjwt "$P/token"
  BENCH_AUTH=$(b64 "dpop:$(sec dpop)") BENCH_BODY="grant_type=client_credentials&scope=bench:read" \
    run_presigned token_dpop peer proofs "$P/token" POST "$P/token"
  unset BENCH_METHOD BENCH_AUTH BENCH_BODY
  kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true
fi

# ---- keyplane on one backend: bench_keyplane LABEL DATABASE_URL
ADMIN="kpa_bench_admin_key_$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)"
PEPPER="bench-pepper-$(head -c 32 /dev/urandom | base64 | tr -dc A-Za-z0-9)"
start_keyplane() { # DATABASE_URL DATA_DIR
  KEYPLANE_DATABASE="$1" KEYPLANE_DATA_DIR="$2" KEYPLANE_LISTEN="127.0.0.1:$PORT" \
    KEYPLANE_ADMIN_KEY="$ADMIN" KEYPLANE_PEPPER="$PEPPER" KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG=0 \
    KEYPLANE_LOG=warn taskset -c 0 "$BIN/keyplane" serve 2>>"$WORK/keyplane.log" &
  KP_PID=$!
  PIDS+=($KP_PID)
}
stop_keyplane() { kill "$KP_PID"; wait "$KP_PID" 2>/dev/null || true; }
bench_keyplane() {
  local label=$1 db=$2 dir="$WORK/$1"
  mkdir -p "$dir"
  local K="http://127.0.0.1:$PORT"
  say "keyplane on $label"
  start_keyplane "$db" "$dir"
  wait_http "$K/readyz"
  note "idle_rss_kb_$label" "$(rss_kb "$KP_PID")"
  curl -sf "$K/v1/services" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"bench","scopes":["bench:read"]}' >/dev/null
  local key cid csec jid jsec token
  key=$(curl -sf "$K/v1/api-keys" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"bench","scopes":["bench:read"]}' | json_field key)
  read -r cid csec < <(curl -sf "$K/v1/oauth-clients" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"bench opaque","scopes":["bench:read"],"token_format":"opaque"}' | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["client_id"], v["client_secret"])')
  read -r jid jsec < <(curl -sf "$K/v1/oauth-clients" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"bench jwt","scopes":["bench:read"],"token_format":"jwt"}' | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["client_id"], v["client_secret"])')
  token=$(curl -sf -u "$cid:$csec" "$K/v1/oauth/token" -d grant_type=client_credentials | json_field access_token)
  # Machine identity: a private_key_jwt client with the benchmark's ES256 key (inline JWKS), and
  # a client whose tokens must be DPoP-bound; one bound token for authz_dpop.
  local pid did dsec dtoken
  pid=$(curl -sf "$K/v1/oauth-clients" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d "{\"name\":\"bench pkjwt\",\"scopes\":[\"bench:read\"],\"token_format\":\"opaque\",\"token_endpoint_auth_method\":\"private_key_jwt\",\"jwks\":{\"keys\":[$(cat "$JWT/jwk.json")]}}" | json_field client_id)
  read -r did dsec < <(curl -sf "$K/v1/oauth-clients" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"bench dpop","scopes":["bench:read"],"token_format":"opaque","dpop_bound_access_tokens":true}' | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["client_id"], v["client_secret"])')
  "$BIN/jwtgen" proofs "$JWT" 1 "$WORK/one-proof" POST "$K/v1/oauth/token"
  dtoken=$(curl -sf -u "$did:$dsec" "$K/v1/oauth/token" -d grant_type=client_credentials -H "DPoP: $(cat "$WORK/one-proof")" | json_field access_token)
  local s="-$label"
  BENCH_METHOD=GET BENCH_BEARER="$key" run authz "keyplane$s" static.lua "$K/v1/authz?scope=bench:read"
  # Issue 15: every check is counted for usage; this key also carries a rate limit (never
  # reached), so each check also counts against it.
  local lkey
  lkey=$(curl -sf "$K/v1/api-keys" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"bench limited","scopes":["bench:read"],"rate_limits":[{"name":"burst","limit":1000000000000,"window":"1s"}]}' | json_field key)
  BENCH_METHOD=GET BENCH_BEARER="$lkey" run authz_limited "keyplane$s" static.lua "$K/v1/authz?scope=bench:read"
  if ((USAGE_ONLY)); then
    stop_keyplane
    return 0
  fi
  # A JWT access token at /v1/authz: its signature is checked once, then the token is kept
  # verified (tied to the keyring and its client) like an opaque one.
  local jtoken
  jtoken=$(curl -sf -u "$jid:$jsec" "$K/v1/oauth/token" -d grant_type=client_credentials | json_field access_token)
  BENCH_METHOD=GET BENCH_BEARER="$jtoken" run authz_jwt "keyplane$s" static.lua "$K/v1/authz?scope=bench:read"
  export BENCH_METHOD=POST
  BENCH_AUTH=$(b64 "$cid:$csec") BENCH_BODY="grant_type=client_credentials" run token_opaque_basic "keyplane$s" static.lua "$K/v1/oauth/token"
  BENCH_AUTH="" BENCH_BODY="grant_type=client_credentials&client_id=$cid&client_secret=$csec" run token_opaque_post "keyplane$s" static.lua "$K/v1/oauth/token"
  BENCH_AUTH=$(b64 "$jid:$jsec") BENCH_BODY="grant_type=client_credentials" run token_jwt_basic "keyplane$s" static.lua "$K/v1/oauth/token"
  BENCH_AUTH="" BENCH_BODY="grant_type=client_credentials&client_id=$jid&client_secret=$jsec" run token_jwt_post "keyplane$s" static.lua "$K/v1/oauth/token"
  BENCH_AUTH=$(b64 "$cid:$csec") BENCH_BODY="token=$token" run introspect_token "keyplane$s" static.lua "$K/v1/oauth/token/introspect"
  BENCH_AUTH=$(b64 "$cid:$csec") BENCH_BODY="token=$key" run introspect_api_key "keyplane$s" static.lua "$K/v1/oauth/token/introspect"
  BENCH_AUTH="" BENCH_BODY="grant_type=client_credentials&client_id=$pid" \
    run_presigned token_pkjwt "keyplane$s" assertions "$K/v1/oauth/token" "$pid" "$K/v1/oauth/token"
  BENCH_AUTH=$(b64 "$did:$dsec") BENCH_BODY="grant_type=client_credentials" \
    run_presigned token_dpop "keyplane$s" proofs "$K/v1/oauth/token" POST "$K/v1/oauth/token"
  # The ?scope= form; the proof names the original request's URL (X-Original-URL, method GET).
  local orig="https://api.example/bench"
  BENCH_METHOD=GET BENCH_AUTH="" BENCH_BODY="" BENCH_DPOP_TOKEN="$dtoken" BENCH_ORIGINAL_URL="$orig" \
    run_presigned authz_dpop "keyplane$s" proofs "$K/v1/authz?scope=bench:read" GET "$orig" "$dtoken"
  unset BENCH_METHOD BENCH_AUTH BENCH_BODY
  if [[ -n "$ONLY" ]]; then
    stop_keyplane
    return 0
  fi
  export BENCH_METHOD=POST
  BENCH_OUT="$WORK/kp-tokens" BENCH_AUTH=$(b64 "$cid:$csec") BENCH_PATH=/v1/oauth/token BENCH_BODY="grant_type=client_credentials" \
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s "$BENCH/lua/collect.lua" "$K" >/dev/null
  BENCH_KEYS="$WORK/kp-tokens" BENCH_AUTH=$(b64 "$cid:$csec") BENCH_REVOKE=/v1/oauth/token/revoke BENCH_INTROSPECT=/v1/oauth/token/introspect \
    run revoke_then_check "keyplane$s" revoke.lua "$K"
  unset BENCH_METHOD BENCH_AUTH BENCH_BODY
  # A token revoked early in the scenario must be refused now: a check that it revoked for real.
  # (The tenth, not the first: wrk builds, and throws away, a first request per thread.)
  local early
  early=$(sed -n 10p "$WORK/kp-tokens")
  if curl -sf "$K/v1/authz" -H "Authorization: Bearer $early" -o /dev/null; then
    echo "a revoked token was accepted" >&2
    exit 1
  fi

  if ((SHORT == 0)); then
    # Many active keys: 1,000, then 1,000,000, seeded while keyplane is stopped; on start it
    # reads the active keys into its cache in the background (KEYPLANE_CACHE_PRELOAD), and the
    # check runs once the cache holds them all. Both rows rotate over 1,000 keys (all of the
    # first set; every 999th of the million), so they write the same number of last-used times
    # per second and differ only in how many keys the cache holds.
    stop_keyplane
    "$BIN/seed" "$db" "$PEPPER" 1000 bench:read "$WORK/keys-1k" 1 2>>"$WORK/seed.log"
    start_keyplane "$db" "$dir"
    wait_http "$K/readyz"
    wait_cached 1000
    BENCH_KEYS="$WORK/keys-1k" BENCH_PATH="/v1/authz?scope=bench:read" run authz_1k_keys "keyplane$s" rotate.lua "$K"
    note "rss_kb_1k_$label" "$(rss_kb "$KP_PID")"
    note "cached_1k_$label" "$(cached_keys)"
    stop_keyplane
    local t0
    t0=$(date +%s)
    "$BIN/seed" "$db" "$PEPPER" 999000 bench:read "$WORK/keys-all" 999 2>>"$WORK/seed.log"
    note "seed_1m_seconds_$label" $(($(date +%s) - t0))
    t0=$(date +%s%N)
    start_keyplane "$db" "$dir"
    wait_http "$K/readyz"
    wait_cached 1000000
    note "preload_1m_ms_$label" $((($(date +%s%N) - t0) / 1000000))
    note "cached_1m_$label" "$(cached_keys)"
    note "rss_kb_1m_$label" "$(rss_kb "$KP_PID")"
    BENCH_KEYS="$WORK/keys-all" BENCH_PATH="/v1/authz?scope=bench:read" run authz_1m_keys "keyplane$s" rotate.lua "$K"
    rm -f "$WORK/keys-all"
  fi
  stop_keyplane
  # Start to ready on the existing database.
  local t0 t1
  t0=$(date +%s%N)
  start_keyplane "$db" "$dir"
  until curl -sf -o /dev/null "$K/readyz"; do sleep 0.002; done
  t1=$(date +%s%N)
  note "start_ms_$label" $(((t1 - t0) / 1000000))
  stop_keyplane
}

# ---- issue 15: a rate limit shared by two nodes through Redis, hammered on both at once.
# ratelimit_overshoot DATABASE_URL LIMIT: the key's limit is LIMIT per hour; both nodes (core
# 0) get wrk (core 1, one each) for DUR seconds; what was allowed is read back from the usage
# API (exact), and the overshoot is what was allowed beyond LIMIT.
ratelimit_overshoot() {
  local db=$1 limit=$2 A="http://127.0.0.1:$PORT" B="http://127.0.0.1:$((PORT + 1))"
  say "rate limit across two nodes through Redis ($REDIS_URL), limit $limit"
  mkdir -p "$WORK/rl-a" "$WORK/rl-b"
  KEYPLANE_REDIS_URL="$REDIS_URL" start_keyplane "$db" "$WORK/rl-a"
  local pa=$KP_PID
  wait_http "$A/readyz"
  KEYPLANE_DATABASE="$db" KEYPLANE_DATA_DIR="$WORK/rl-b" KEYPLANE_LISTEN="127.0.0.1:$((PORT + 1))" \
    KEYPLANE_ADMIN_KEY="$ADMIN" KEYPLANE_PEPPER="$PEPPER" KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG=0 \
    KEYPLANE_REDIS_URL="$REDIS_URL" KEYPLANE_LOG=warn taskset -c 0 "$BIN/keyplane" serve 2>>"$WORK/keyplane.log" &
  local pb=$!
  PIDS+=($pb)
  wait_http "$B/readyz"
  curl -sf "$A/v1/services" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"name":"bench","scopes":["bench:read"]}' >/dev/null || true
  local created key kid
  created=$(curl -sf "$A/v1/api-keys" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d "{\"name\":\"shared limit\",\"scopes\":[\"bench:read\"],\"rate_limits\":[{\"name\":\"burst\",\"limit\":$limit,\"window\":\"1h\"}]}")
  key=$(json_field key <<<"$created")
  kid=$(json_field id <<<"$created")
  cat "$BENCH/lua/common.lua" "$BENCH/lua/static.lua" >"$WORK/rl.lua"
  BENCH_METHOD=GET BENCH_BEARER="$key" taskset -c 1 wrk -t1 -c16 -d"${DUR}s" -s "$WORK/rl.lua" "$A/v1/authz?scope=bench:read" >"$WORK/rl-a.out" 2>&1 &
  local wa=$!
  BENCH_METHOD=GET BENCH_BEARER="$key" taskset -c 1 wrk -t1 -c16 -d"${DUR}s" -s "$WORK/rl.lua" "$B/v1/authz?scope=bench:read" >"$WORK/rl-b.out" 2>&1 &
  local wb=$!
  wait "$wa" "$wb"
  sleep 2.5 # both nodes flush their usage counts (every second)
  local allowed limited rps_a rps_b
  read -r allowed limited < <(curl -sf "$A/v1/usage?credential_id=$kid" -H "Authorization: Bearer $ADMIN" | python3 -c '
import json, sys
v = json.load(sys.stdin)
a = sum(b["counts"].get("allowed", 0) for b in v["buckets"])
r = sum(b["counts"].get("rate_limited", 0) for b in v["buckets"])
print(a, r)')
  rps_a=$(awk '/^RESULT/ {print $2}' "$WORK/rl-a.out")
  rps_b=$(awk '/^RESULT/ {print $2}' "$WORK/rl-b.out")
  note ratelimit_limit "$limit"
  note ratelimit_allowed "$allowed"
  note ratelimit_refused "$limited"
  note ratelimit_rps "$(python3 -c "print(round(${rps_a:-0} + ${rps_b:-0}))")"
  note ratelimit_sync_ms 50
  printf '  two nodes, limit %s: %s allowed, %s refused, %s + %s req/s\n' "$limit" "$allowed" "$limited" "$rps_a" "$rps_b" >&2
  kill "$pa" "$pb"; wait "$pa" "$pb" 2>/dev/null || true
}

bench_keyplane sqlite "sqlite://$WORK/sqlite/keyplane.db"
if ((USAGE_ONLY)); then
  if command -v psql >/dev/null && psql "$PG_ADMIN" -qc 'select 1' >/dev/null 2>&1; then
    PG_DB="keyplane_bench_rl_$$"
    psql "$PG_ADMIN" -qc "CREATE DATABASE $PG_DB" >/dev/null
    ratelimit_overshoot "${PG_ADMIN%/*}/$PG_DB" 20000
    psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
  fi
  python3 "$BENCH/report.py" usage "$RESULTS" "$WORK/scenarios.tsv" /dev/null "$DUR" "$CONNS"
  exit 0
fi
PG_DB=""
if ((SHORT == 0)) && command -v psql >/dev/null && psql "$PG_ADMIN" -qc 'select 1' >/dev/null 2>&1; then
  PG_DB="keyplane_bench_$$"
  psql "$PG_ADMIN" -qc "CREATE DATABASE $PG_DB" >/dev/null
  bench_keyplane postgres "${PG_ADMIN%/*}/$PG_DB"
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
fi

if [[ -n "$ONLY" ]]; then
  python3 "$BENCH/report.py" usage "$RESULTS" "$WORK/scenarios.tsv" /dev/null "$DUR" "$CONNS"
  exit 0
fi

# ---- issue 15: the Redis-shared rate limit's overshoot (full run, with PostgreSQL)
if ((SHORT == 0)) && [[ -n "$PG_DB" ]]; then
  RL_DB="keyplane_bench_rl_$$"
  psql "$PG_ADMIN" -qc "CREATE DATABASE $RL_DB" >/dev/null
  ratelimit_overshoot "${PG_ADMIN%/*}/$RL_DB" 20000 || true
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $RL_DB WITH (FORCE)" >/dev/null
fi

# ---- the two-node revocation test's figures (full run, with PostgreSQL)
if ((SHORT == 0)) && [[ -n "$PG_DB" ]]; then
  say "two-node revocation (cargo test, the it suite's nodes test)"
  line=$(cd "$ROOT" && CARGO_TARGET_DIR="${KEYPLANE_TEST_TARGET:-$HOME/.cache/keyplane-target}" \
    KEYPLANE_TEST_DATABASE_URL="${PG_ADMIN%/*}/postgres" cargo test -q -p keyplane --test it nodes::a_revocation 2>&1 | grep 'two-node revocation' || true)
  note two_node "${line:-not run}"
fi

MODE=full; ((SHORT)) && MODE=short
python3 "$BENCH/report.py" "$MODE" "$RESULTS" "$WORK/scenarios.tsv" "$ROOT/BENCHMARKS.md" "$DUR" "$CONNS"
