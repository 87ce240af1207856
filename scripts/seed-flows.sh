#!/usr/bin/env bash
# Runs the curl commands of seeds 000 (Pangea service clients) and 001 (Pentographer OAuth
# clients and API keys) against a real keyplane, and checks every answer field by field.
#
#   scripts/seed-flows.sh [path/to/keyplane]      (default: target/debug/keyplane)
#
# For each seed it starts keyplane on a free port in a temporary folder with that seed's secret
# prefixes, registers a service with the scopes `pangea:service:ai-guard:read` and `:write`,
# creates a client, then runs the seed's commands as the seed prints them, with only the host
# replaced. So that the commands stay verbatim, curl takes its extra options (--silent,
# --show-error, --max-time, and --dump-header to read the status) from a private .curlrc
# (CURL_HOME); the script's own management calls use `curl -q`, which skips it.
#
# One line per check; the last line is `N passed, M failed`. Exits non-zero on any failure.
# Needs bash, curl, base64 and python3 (not jq).

set -euo pipefail

BIN=${1:-target/debug/keyplane}
if [[ ! -x $BIN ]]; then
    echo "no keyplane executable at $BIN (build it with: cargo build -p keyplane)" >&2
    exit 2
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

# Only what this script sets reaches keyplane.
while IFS= read -r var; do
    unset "$var"
done < <(compgen -e | grep '^KEYPLANE_' || true)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keyplane-seed-flows.XXXXXX")
SERVER_PID=""
SERVER_LOG=""

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
cleanup() {
    local rc=$?
    stop_server
    if [[ $rc -ne 0 && -n $SERVER_LOG && -f $SERVER_LOG ]]; then
        echo "--- the last lines of keyplane's log ($SERVER_LOG):"
        tail -n 40 "$SERVER_LOG" || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----- curl: the seeds' commands read their extra options from here -----

export CURL_HOME="$WORK/curl"
mkdir -p "$CURL_HOME"
HEADERS="$CURL_HOME/headers"
cat >"$CURL_HOME/.curlrc" <<EOF
silent
show-error
max-time = 20
dump-header = "$HEADERS"
EOF

# ----- checks -----

PASSED=0
FAILED=0

pass() {
    PASSED=$((PASSED + 1))
    echo "PASS  $1"
}
fail() {
    FAILED=$((FAILED + 1))
    echo "FAIL  $1"
    if [[ -n ${2:-} ]]; then
        printf '      %s\n' "$2"
    fi
}

# The status of the last answer a seed command got (the last status line: --location may follow).
STATUS=""
BODY_FILE=""
# answer NAME: files the last seed command's body (from $WORK/out) and headers under NAME.
answer() {
    local name=$1
    mv "$WORK/out" "$WORK/$name.body"
    if [[ -f $HEADERS ]]; then
        mv "$HEADERS" "$WORK/$name.headers"
    else
        : >"$WORK/$name.headers"
    fi
    BODY_FILE="$WORK/$name.body"
    STATUS=$(awk '/^HTTP\//{s=$2} END{print s}' "$WORK/$name.headers")
}

expect_status() {
    local name=$1 want=$2
    if [[ $STATUS == "$want" ]]; then
        pass "$name: HTTP $want"
    else
        fail "$name: HTTP $want" "got HTTP ${STATUS:-none}: $(head -c 600 "$BODY_FILE")"
    fi
}

# The value of header $2 in the answer filed as $1 (case-insensitive name, last occurrence).
header_of() {
    awk -v want="$(tr '[:upper:]' '[:lower:]' <<<"$2")" -F': *' '
        { name = tolower($1); sub(/\r$/, "") }
        name == want { v = substr($0, length($1) + 1); sub(/^: */, "", v) }
        END { print v }' "$WORK/$1.headers"
}

# The Python behind check_json: `j` is the body parsed as JSON (None if it is not JSON), `raw`
# the body as text, `E` the environment.
PY_CHECK='
import json, os, sys
raw = open(sys.argv[1], encoding="utf-8").read()
try:
    j = json.loads(raw)
except ValueError:
    j = None
E = os.environ
try:
    ok = eval(sys.argv[2])
except Exception as e:
    print("      error: %r" % e)
    ok = False
sys.exit(0 if ok is True else 1)
'

# check_json DESCRIPTION PYTHON-EXPRESSION: checks the last answer's body.
check_json() {
    local name=$1 expr=$2
    if python3 -c "$PY_CHECK" "$BODY_FILE" "$expr"; then
        pass "$name"
    else
        fail "$name" "[$expr] on: $(head -c 600 "$BODY_FILE")"
    fi
}

# json_get FILE PYTHON-EXPRESSION: prints a value out of a JSON file.
json_get() {
    python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# ----- the server -----

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

ADMIN_KEY=""
HOST=""
# start_server NAME [VAR=VALUE...]: keyplane on a free port with a fresh SQLite database.
start_server() {
    local name=$1
    shift
    local dir="$WORK/$name" port
    mkdir -p "$dir"
    port=$(free_port)
    ADMIN_KEY="kpa_seed_flows_$(python3 -c 'import secrets; print(secrets.token_hex(20))')"
    HOST="http://127.0.0.1:$port"
    SERVER_LOG="$dir/keyplane.log"
    env "$@" \
        KEYPLANE_ADMIN_KEY="$ADMIN_KEY" \
        KEYPLANE_PEPPER="$(python3 -c 'import secrets; print(secrets.token_hex(24))')" \
        KEYPLANE_DATA_DIR="$dir" \
        "$BIN" serve --listen "127.0.0.1:$port" --database "sqlite://$dir/keyplane.db" \
        >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 1 150); do
        if curl -q -fsS --max-time 2 "$HOST/healthz" >/dev/null 2>&1; then
            pass "$name: keyplane answers /healthz on $HOST"
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            fail "$name: keyplane exited before answering /healthz" "$(tail -n 20 "$SERVER_LOG")"
            SERVER_PID=""
            return 1
        fi
        sleep 0.1
    done
    fail "$name: keyplane did not answer /healthz within 15 seconds" "$(tail -n 20 "$SERVER_LOG")"
    return 1
}

# admin_post NAME PATH JSON: a management call with the admin key; the answer is filed as NAME.
admin_post() {
    local name=$1 path=$2 body=$3
    rm -f "$HEADERS"
    curl -q -sS --max-time 20 -D "$HEADERS" -o "$WORK/out" \
        -H "Authorization: Bearer $ADMIN_KEY" -H 'Content-Type: application/json' \
        --data "$body" "$HOST$path"
    answer "$name"
}

READ_SCOPE='pangea:service:ai-guard:read'
WRITE_SCOPE='pangea:service:ai-guard:write'
export READ_SCOPE WRITE_SCOPE

register_service() {
    local seed=$1
    admin_post "$seed-service" /v1/services \
        "{\"name\": \"ai-guard\", \"scopes\": [\"$READ_SCOPE\", \"$WRITE_SCOPE\"]}"
    expect_status "$seed: register the ai-guard service" 201
}

# create_client SEED LABEL NAME FORMAT: exports CLIENT_ID and CLIENT_SECRET.
create_client() {
    local seed=$1 label=$2 name=$3 format=$4
    admin_post "$seed-$label-client" /v1/oauth-clients \
        "{\"name\": \"$name\", \"scopes\": [\"$READ_SCOPE\", \"$WRITE_SCOPE\"], \"token_format\": \"$format\"}"
    expect_status "$seed: create the $format client \"$name\"" 201
    check_json "$seed: the client_id has the prefix $CLIENT_ID_PREFIX" \
        'j["client_id"].startswith(E["CLIENT_ID_PREFIX"])'
    check_json "$seed: the client_secret has the prefix $CLIENT_SECRET_PREFIX" \
        'j["client_secret"].startswith(E["CLIENT_SECRET_PREFIX"])'
    CLIENT_ID=$(json_get "$BODY_FILE" 'j["client_id"]')
    CLIENT_SECRET=$(json_get "$BODY_FILE" 'j["client_secret"]')
    export CLIENT_ID CLIENT_SECRET
}

# authz NAME SCOPE TOKEN: /v1/authz with the token as a bearer credential; filed as NAME.
authz() {
    local name=$1 scope=$2 token=$3
    rm -f "$HEADERS"
    curl -q -sS --max-time 20 -D "$HEADERS" -o "$WORK/out" \
        -H "Authorization: Bearer $token" "$HOST/v1/authz?scope=$scope"
    answer "$name"
}

########################################################################################
# Seed 000: Pangea's service clients (client_secret_basic, /v1beta/oauth/token...).
########################################################################################

echo "== seed 000: Pangea AI Guard service client"
export CLIENT_ID_PREFIX=psa_ CLIENT_SECRET_PREFIX=pck_ ACCESS_TOKEN_PREFIX=pts_
start_server seed000 \
    KEYPLANE_CLIENT_ID_PREFIX=psa_ KEYPLANE_CLIENT_SECRET_PREFIX=pck_ KEYPLANE_ACCESS_TOKEN_PREFIX=pts_
export ISSUER=$HOST
register_service seed000
create_client seed000 service "My Service Client" opaque

# --- GET /.well-known/oauth-authorization-server
curl --location "$HOST/.well-known/oauth-authorization-server" >"$WORK/out"
answer seed000-metadata
expect_status "seed000 metadata" 200
check_json "seed000 metadata: issuer is $ISSUER" 'j["issuer"] == E["ISSUER"]'
check_json "seed000 metadata: token_endpoint" \
    'j["token_endpoint"] == E["ISSUER"] + "/v1/oauth/token"'
check_json "seed000 metadata: introspection_endpoint" \
    'j["introspection_endpoint"] == E["ISSUER"] + "/v1/oauth/token/introspect"'
check_json "seed000 metadata: revocation_endpoint" \
    'j["revocation_endpoint"] == E["ISSUER"] + "/v1/oauth/token/revoke"'
# The seed's grant plus token exchange (RFC 8693), which keyplane also issues for.
check_json "seed000 metadata: grant_types_supported" \
    'j["grant_types_supported"] == ["client_credentials", "authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"]'
check_json "seed000 metadata: response_types_supported" \
    'j["response_types_supported"] == ["code"]'
check_json "seed000 metadata: scopes_supported has $READ_SCOPE and $WRITE_SCOPE" \
    'E["READ_SCOPE"] in j["scopes_supported"] and E["WRITE_SCOPE"] in j["scopes_supported"]'
check_json "seed000 metadata: token_endpoint_auth_methods_supported" \
    'j["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]'
ADVERTISED_TOKEN_ENDPOINT=$(json_get "$BODY_FILE" 'j["token_endpoint"]')

# --- Set the environment.
export PANGEA_CLIENT_ID="$CLIENT_ID"
export PANGEA_CLIENT_SECRET="$CLIENT_SECRET"

# --- Concatenate the client ID and client secret with a colon and base64 encode the result.
export PANGEA_BASIC_AUTHENTICATION_CREDENTIAL=$(echo -n $PANGEA_CLIENT_ID:$PANGEA_CLIENT_SECRET | base64)

export PANGEA_TOKEN_ENDPOINT="$HOST/v1beta/oauth/token"

if [[ $PANGEA_BASIC_AUTHENTICATION_CREDENTIAL == *$'\n'* ]]; then
    # GNU base64 wraps its output at 76 columns, and "id:secret" is longer than the 57 bytes
    # that fit on one line (Pangea's own 36-character ids make 73 bytes, so this happens with
    # Pangea too). curl then sends the header's second half as a line of its own, which is not
    # a header: the request is malformed HTTP and the server's HTTP parser refuses it.
    echo "NOTE  the seed's \`echo -n \$PANGEA_CLIENT_ID:\$PANGEA_CLIENT_SECRET | base64\` wrapped its output at 76 columns (GNU base64)"
    curl --location "$PANGEA_TOKEN_ENDPOINT" \
        --header "Authorization: Basic $PANGEA_BASIC_AUTHENTICATION_CREDENTIAL" \
        --header 'Content-Type: application/x-www-form-urlencoded' \
        --data-urlencode 'grant_type=client_credentials' \
        --data-urlencode 'scope=pangea:service:ai-guard:read' >"$WORK/out"
    answer seed000-token-wrapped
    expect_status "seed000 token with the wrapped credential is malformed HTTP, refused" 400
    echo "NOTE  continuing with the same credential unwrapped: \`... | base64 | tr -d '\\n'\` (the one change to the seed's commands)"
    export PANGEA_BASIC_AUTHENTICATION_CREDENTIAL=$(echo -n $PANGEA_CLIENT_ID:$PANGEA_CLIENT_SECRET | base64 | tr -d '\n')
fi
check_json "seed000: the Basic credential decodes to client_id:client_secret" \
    '__import__("base64").b64decode(E["PANGEA_BASIC_AUTHENTICATION_CREDENTIAL"]).decode() == E["PANGEA_CLIENT_ID"] + ":" + E["PANGEA_CLIENT_SECRET"]'

# --- Request access token: POST /v1beta/oauth/token
curl --location "$PANGEA_TOKEN_ENDPOINT" \
--header "Authorization: Basic $PANGEA_BASIC_AUTHENTICATION_CREDENTIAL" \
--header 'Content-Type: application/x-www-form-urlencoded' \
--data-urlencode 'grant_type=client_credentials' \
--data-urlencode 'scope=pangea:service:ai-guard:read' >"$WORK/out"
answer seed000-token
expect_status "seed000 token" 200
check_json "seed000 token: token_type is Bearer" 'j["token_type"] == "Bearer"'
check_json "seed000 token: expires_in is 3599..3600" \
    'type(j["expires_in"]) is int and 3599 <= j["expires_in"] <= 3600'
check_json "seed000 token: scope is $READ_SCOPE" 'j["scope"] == E["READ_SCOPE"]'
check_json "seed000 token: access_token starts with $ACCESS_TOKEN_PREFIX" \
    'j["access_token"].startswith(E["ACCESS_TOKEN_PREFIX"]) and len(j["access_token"]) > 20'
check_json "seed000 token: exactly access_token, token_type, expires_in, scope" \
    'sorted(j) == ["access_token", "expires_in", "scope", "token_type"]'
if [[ $(header_of seed000-token Cache-Control) == no-store ]]; then
    pass "seed000 token: Cache-Control: no-store"
else
    fail "seed000 token: Cache-Control: no-store" "got: $(header_of seed000-token Cache-Control)"
fi
export PANGEA_ACCESS_TOKEN=$(json_get "$BODY_FILE" 'j["access_token"]')

# The same request at the token endpoint the metadata advertises.
curl --location "$ADVERTISED_TOKEN_ENDPOINT" \
--header "Authorization: Basic $PANGEA_BASIC_AUTHENTICATION_CREDENTIAL" \
--header 'Content-Type: application/x-www-form-urlencoded' \
--data-urlencode 'grant_type=client_credentials' \
--data-urlencode 'scope=pangea:service:ai-guard:read' >"$WORK/out"
answer seed000-token-advertised
expect_status "seed000 token at the advertised token_endpoint" 200
check_json "seed000 token at the advertised token_endpoint: scope is $READ_SCOPE" \
    'j["scope"] == E["READ_SCOPE"] and j["token_type"] == "Bearer"'

# The token as a bearer credential (what the AI Guard API does with it).
authz seed000-authz-read "$READ_SCOPE" "$PANGEA_ACCESS_TOKEN"
expect_status "seed000 /v1/authz?scope=$READ_SCOPE with the token" 200
authz seed000-authz-write "$WRITE_SCOPE" "$PANGEA_ACCESS_TOKEN"
expect_status "seed000 /v1/authz?scope=$WRITE_SCOPE with the read-only token" 403

# --- Introspect access token
export PANGEA_INTROSPECTION_ENDPOINT="$HOST/v1beta/oauth/token/introspect"
curl --location "$PANGEA_INTROSPECTION_ENDPOINT" \
--header "Authorization: Basic $PANGEA_BASIC_AUTHENTICATION_CREDENTIAL" \
--header 'Content-Type: application/x-www-form-urlencoded' \
--data-urlencode "token=$PANGEA_ACCESS_TOKEN" >"$WORK/out"
answer seed000-introspect
expect_status "seed000 introspect" 200
check_json "seed000 introspect: active is true" 'j["active"] is True'
check_json "seed000 introspect: iss is the issuer" 'j["iss"] == E["ISSUER"]'
check_json "seed000 introspect: sub is a non-empty string" 'isinstance(j["sub"], str) and j["sub"] != ""'
check_json "seed000 introspect: iat and nbf are now (integers)" \
    'type(j["iat"]) is int and type(j["nbf"]) is int and j["nbf"] == j["iat"] and abs(j["iat"] - __import__("time").time()) < 120'
check_json "seed000 introspect: exp is iat + 3600" 'type(j["exp"]) is int and j["exp"] - j["iat"] == 3600'
check_json "seed000 introspect: jti is a non-empty string" 'isinstance(j["jti"], str) and j["jti"] != ""'
check_json "seed000 introspect: client_id is the client's" 'j["client_id"] == E["PANGEA_CLIENT_ID"]'
check_json "seed000 introspect: token_type is Bearer" 'j["token_type"] == "Bearer"'
check_json "seed000 introspect: username is the client's name" 'j["username"] == "My Service Client"'
check_json "seed000 introspect: scope is $READ_SCOPE" 'j["scope"] == E["READ_SCOPE"]'

# --- Revoke access
export PANGEA_REVOCATION_ENDPOINT="$HOST/v1beta/oauth/token/revoke"
curl --location "$PANGEA_REVOCATION_ENDPOINT" \
--header "Authorization: Basic $PANGEA_BASIC_AUTHENTICATION_CREDENTIAL" \
--header 'Content-Type: application/x-www-form-urlencoded' \
--data-urlencode "token=$PANGEA_ACCESS_TOKEN" >"$WORK/out"
answer seed000-revoke
expect_status "seed000 revoke" 200
check_json "seed000 revoke: no response body" 'raw == ""'

# Introspection of the revoked token: the same command as before.
curl --location "$PANGEA_INTROSPECTION_ENDPOINT" \
--header "Authorization: Basic $PANGEA_BASIC_AUTHENTICATION_CREDENTIAL" \
--header 'Content-Type: application/x-www-form-urlencoded' \
--data-urlencode "token=$PANGEA_ACCESS_TOKEN" >"$WORK/out"
answer seed000-introspect-revoked
expect_status "seed000 introspect after revocation" 200
check_json 'seed000 introspect after revocation: exactly {"active": false}' 'j == {"active": False}'

authz seed000-authz-revoked "$READ_SCOPE" "$PANGEA_ACCESS_TOKEN"
expect_status "seed000 /v1/authz with the revoked token" 401

# Revocation of a token that does not exist: the same command with another token.
export PANGEA_ACCESS_TOKEN="pts_thisTokenWasNeverIssuedByKeyplane0000000000000000"
curl --location "$PANGEA_REVOCATION_ENDPOINT" \
--header "Authorization: Basic $PANGEA_BASIC_AUTHENTICATION_CREDENTIAL" \
--header 'Content-Type: application/x-www-form-urlencoded' \
--data-urlencode "token=$PANGEA_ACCESS_TOKEN" >"$WORK/out"
answer seed000-revoke-unknown
expect_status "seed000 revoke an unknown token" 200
check_json "seed000 revoke an unknown token: the seed's not-found body" \
    'j == {"error": "invalid_request", "error_description": "The token does not exist"}'

stop_server

########################################################################################
# Seed 001: Pentographer's OAuth clients (client_secret_post at /api/oauth/token) and keys.
########################################################################################

echo "== seed 001: Pentographer OAuth clients and API keys"
# ptgc_ client ids, ptgs_ secrets and ptg_ API keys are the seed's; it shows access tokens only
# as "your_temporary_jwt_access_token", so opaque access tokens get a prefix of their own.
export CLIENT_ID_PREFIX=ptgc_ CLIENT_SECRET_PREFIX=ptgs_ ACCESS_TOKEN_PREFIX=ptgt_ API_KEY_PREFIX=ptg_
start_server seed001 \
    KEYPLANE_CLIENT_ID_PREFIX=ptgc_ KEYPLANE_CLIENT_SECRET_PREFIX=ptgs_ \
    KEYPLANE_ACCESS_TOKEN_PREFIX=ptgt_ KEYPLANE_API_KEY_PREFIX=ptg_
export ISSUER=$HOST
register_service seed001
export BOTH_SCOPES="$READ_SCOPE $WRITE_SCOPE"

for format in jwt opaque; do
    create_client seed001 "$format" "Pentographer $format integration" "$format"

    # --- Requesting an Access Token
    curl -X POST "$HOST/api/oauth/token" \
      -H "Content-Type: application/x-www-form-urlencoded" \
      -d "grant_type=client_credentials" \
      -d "client_id=$CLIENT_ID" \
      -d "client_secret=$CLIENT_SECRET" >"$WORK/out"
    answer "seed001-$format-token"
    expect_status "seed001 $format token" 200
    check_json "seed001 $format token: token_type is Bearer" 'j["token_type"] == "Bearer"'
    check_json "seed001 $format token: expires_in is 3600" 'j["expires_in"] == 3600'
    check_json "seed001 $format token: scope is all the client's scopes" \
        'sorted(j["scope"].split(" ")) == sorted(E["BOTH_SCOPES"].split(" "))'
    if [[ $format == jwt ]]; then
        check_json "seed001 jwt token: access_token is a JWT (typ at+jwt, iss, client_id, scope)" '
(lambda p: len(p) == 3
    and json.loads(__import__("base64").urlsafe_b64decode(p[0] + "=" * (-len(p[0]) % 4)))["typ"] == "at+jwt"
    and (lambda c: c["iss"] == E["ISSUER"] and c["client_id"] == E["CLIENT_ID"] and c["scope"] == j["scope"] and c["exp"] - c["iat"] == 3600)
        (json.loads(__import__("base64").urlsafe_b64decode(p[1] + "=" * (-len(p[1]) % 4)))))(j["access_token"].split("."))'
    else
        check_json "seed001 opaque token: access_token starts with $ACCESS_TOKEN_PREFIX" \
            'j["access_token"].startswith(E["ACCESS_TOKEN_PREFIX"])'
    fi
    ACCESS_TOKEN=$(json_get "$BODY_FILE" 'j["access_token"]')

    # --- Authenticating Requests: Authorization: Bearer <your_access_token_or_ptg_key>
    authz "seed001-$format-authz" "$READ_SCOPE%20$WRITE_SCOPE" "$ACCESS_TOKEN"
    expect_status "seed001 $format token as Bearer on /v1/authz" 200
    if [[ $(header_of "seed001-$format-authz" X-Keyplane-Subject) == "$CLIENT_ID" ]]; then
        pass "seed001 $format token as Bearer on /v1/authz: X-Keyplane-Subject is the client"
    else
        fail "seed001 $format token as Bearer on /v1/authz: X-Keyplane-Subject is the client" \
            "got: $(header_of "seed001-$format-authz" X-Keyplane-Subject)"
    fi

    # A wrong secret is refused as the seed's clients would see it.
    curl -X POST "$HOST/api/oauth/token" \
      -H "Content-Type: application/x-www-form-urlencoded" \
      -d "grant_type=client_credentials" \
      -d "client_id=$CLIENT_ID" \
      -d "client_secret=${CLIENT_SECRET_PREFIX}wrong" >"$WORK/out"
    answer "seed001-$format-token-wrong-secret"
    expect_status "seed001 $format token with a wrong secret" 401
    check_json "seed001 $format token with a wrong secret: error is invalid_client" \
        'j["error"] == "invalid_client"'
done

# A static API key as the bearer credential: it has the seed's ptg_ prefix.
admin_post seed001-api-key /v1/api-keys \
    "{\"name\": \"pentographer-mcp\", \"scopes\": [\"$READ_SCOPE\"]}"
expect_status "seed001 create an API key" 201
check_json "seed001 API key starts with $API_KEY_PREFIX" 'j["key"].startswith(E["API_KEY_PREFIX"])'
API_KEY=$(json_get "$BODY_FILE" 'j["key"]')
authz seed001-key-authz "$READ_SCOPE" "$API_KEY"
expect_status "seed001 ptg_ API key as Bearer on /v1/authz" 200

stop_server

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
