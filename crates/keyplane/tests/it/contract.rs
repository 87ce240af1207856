//! The HTTP contract (issue 11): the committed `openapi.json` is valid OpenAPI 3.1 and names
//! every route the server serves (and nothing else), a client generated from it works against a
//! live server, every answer that carries a secret is marked `no-store`, and every error a
//! keyplane listener sends has a body in its route's format: RFC 9457 problem+json on the
//! management API, RFC 6749 §5.2 on the OAuth endpoints.
//!
//! The validator and the client generator are Python tools from PyPI that
//! `scripts/ensure-openapi-tools.sh` installs into a project-local virtual environment (CI runs
//! it); without them those two tests say SKIPPED on stderr and pass. Everything else here needs
//! nothing but the server.

use keyplane_testkit::reqwest::{self, header, Method, StatusCode};
use keyplane_testkit::{json, Answer, TempDir, TestApp};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn committed_document() -> Value {
    let text = std::fs::read_to_string(workspace_root().join("openapi.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A tool in the project's Python environment (`scripts/ensure-openapi-tools.sh`), or `None`.
fn python_tool(name: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("KEYPLANE_PY_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/keyplane-py"))
        })?;
    let p = venv.join("bin").join(name);
    p.exists().then_some(p)
}

fn skipped(what: &str, tool: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED: {what}, because {tool} is not installed. Run scripts/ensure-openapi-tools.sh (CI does).\n"
    );
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every (METHOD, path) operation of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((m.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    out
}

/// What the server serves: every route of `keyplane_http::router` with each method it takes,
/// written out here so that a route added without its documentation (or documentation without
/// its route) fails `the_document_names_every_route`. The web console (`/console/...`, HTML
/// pages and forms for a browser) is not part of the API and not in the document.
const SERVED: &[(&str, &str)] = &[
    ("POST", "/v1/api-keys"),
    ("GET", "/v1/api-keys"),
    ("GET", "/v1/api-keys/{id}"),
    ("PATCH", "/v1/api-keys/{id}"),
    ("DELETE", "/v1/api-keys/{id}"),
    ("POST", "/v1/api-keys/{id}/copy"),
    ("POST", "/v1/api-keys/{id}/revoke"),
    ("POST", "/v1/api-keys/{id}/regenerate"),
    ("GET", "/auth/api_keys"),
    ("POST", "/auth/api_keys"),
    ("DELETE", "/auth/api_keys/deactivate/{id}"),
    ("GET", "/v1/orgs"),
    ("POST", "/v1/orgs"),
    ("GET", "/v1/projects"),
    ("POST", "/v1/projects"),
    ("GET", "/v1/services"),
    ("POST", "/v1/services"),
    ("GET", "/v1/members"),
    ("POST", "/v1/members"),
    ("GET", "/v1/members/{id}"),
    ("PATCH", "/v1/members/{id}"),
    ("PATCH", "/v1/services/{id}"),
    ("DELETE", "/v1/members/{id}"),
    ("GET", "/v1/roles"),
    ("POST", "/v1/roles"),
    ("GET", "/v1/me"),
    ("GET", "/v1/admin/routes"),
    ("POST", "/v1/admin/routes/reload"),
    ("POST", "/v1/admin/config/apply"),
    ("GET", "/v1/activity"),
    ("POST", "/v1/leaks"),
    ("POST", "/v1/leaks/github"),
    ("GET", "/v1/leaks/patterns"),
    ("GET", "/v1/activity/verify"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/usage/top"),
    ("POST", "/v1/oauth-clients"),
    ("GET", "/v1/oauth-clients"),
    ("GET", "/v1/oauth-clients/{client_id}"),
    ("PATCH", "/v1/oauth-clients/{client_id}"),
    ("DELETE", "/v1/oauth-clients/{client_id}"),
    ("POST", "/v1/oauth-clients/{client_id}/secrets"),
    (
        "DELETE",
        "/v1/oauth-clients/{client_id}/secrets/{secret_id}",
    ),
    ("POST", "/v1/oauth-clients/{client_id}/tokens"),
    // Forward auth takes any method; the document shows GET, the form proxies send.
    ("GET", "/v1/authz"),
    ("GET", "/v1/authz/{original}"),
    ("POST", "/v1/oauth/token"),
    ("POST", "/v1beta/oauth/token"),
    ("POST", "/api/oauth/token"),
    ("POST", "/v1/oauth/token/introspect"),
    ("POST", "/v1beta/oauth/token/introspect"),
    ("POST", "/v1/oauth/token/revoke"),
    ("POST", "/v1beta/oauth/token/revoke"),
    ("GET", "/v1/oauth/authorize"),
    ("POST", "/v1/oauth/register"),
    ("GET", "/v1/oauth-grants"),
    ("POST", "/v1/oauth-grants/{id}/revoke"),
    ("GET", "/v1/oauth-apps"),
    ("POST", "/v1/oauth-apps/block"),
    ("POST", "/v1/oauth-apps/unblock"),
    ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/.well-known/jwks.json"),
    // RFC 9728 metadata (also OPTIONS, a CORS preflight, not in the document).
    ("GET", "/.well-known/oauth-protected-resource"),
    ("GET", "/.well-known/oauth-protected-resource/{path}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

const TOKEN_PATHS: [&str; 3] = ["/v1/oauth/token", "/v1beta/oauth/token", "/api/oauth/token"];

/// The OAuth endpoints, whose errors are RFC 6749 bodies (protected resource metadata is not
/// one: its 404 is problem+json).
fn is_oauth_path(path: &str) -> bool {
    (path.starts_with("/.well-known/")
        && !path.starts_with("/.well-known/oauth-protected-resource"))
        || path == "/v1/oauth/authorize"
        || path == "/v1/oauth/register"
        || TOKEN_PATHS.iter().any(|t| {
            path == *t || path == format!("{t}/introspect") || path == format!("{t}/revoke")
        })
}

/// The document's own rules, checked without any tool: unique operation ids, query parameters
/// in the query, path parameters named in the path, problem+json errors on the management API,
/// RFC 6749 errors and form bodies with schemas on the OAuth endpoints.
#[test]
fn the_document_keeps_its_own_rules() {
    let doc = committed_document();
    let mut ids = BTreeMap::new();
    for (method, path, op) in operations(&doc) {
        let at = format!("{method} {path}");
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{at} has no operationId"))
            .to_string();
        if let Some(other) = ids.insert(id.clone(), at.clone()) {
            panic!("operationId {id} names both {other} and {at}");
        }
        for p in op["parameters"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap();
            match p["in"].as_str().unwrap() {
                "path" => assert!(
                    path.contains(&format!("{{{name}}}")),
                    "{at}: path parameter {name} is not in the path"
                ),
                "query" | "header" => {}
                other => panic!("{at}: parameter {name} in {other}"),
            }
        }
        let oauth = is_oauth_path(&path);
        let management = (path.starts_with("/v1/") || path.starts_with("/auth/"))
            && !path.starts_with("/v1/authz")
            && !oauth;
        let responses = op["responses"].as_object().unwrap();
        if management {
            for status in ["400", "401", "403", "404", "422", "500"] {
                assert!(responses.contains_key(status), "{at} does not say {status}");
            }
        }
        for (status, r) in responses {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            let content = r["content"].as_object();
            if management {
                let c = content.unwrap_or_else(|| panic!("{at} {status} has no body"));
                assert_eq!(
                    c.get("application/problem+json")
                        .map(|c| &c["schema"]["$ref"]),
                    Some(&json!("#/components/schemas/Problem")),
                    "{at} {status} is not problem+json"
                );
            }
            if oauth {
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/OAuthErrorBody",
                    "{at} {status} is not an RFC 6749 error"
                );
                assert!(
                    r["headers"].get("Cache-Control").is_some(),
                    "{at} {status}: OAuth errors are never cached"
                );
            }
        }
        if path == "/v1/oauth/register" {
            // RFC 7591: client metadata as JSON, and its own errors.
            assert!(
                op["requestBody"]["content"]["application/json"].is_object(),
                "{at}: the metadata body"
            );
            for status in ["400", "401", "404"] {
                assert!(responses.contains_key(status), "{at} does not say {status}");
            }
        } else if oauth && method == "POST" {
            let body = &op["requestBody"]["content"]["application/x-www-form-urlencoded"];
            assert!(
                body["schema"]["$ref"].is_string(),
                "{at}: the form has no schema: {}",
                op["requestBody"]
            );
            for status in ["400", "401", "413", "429"] {
                assert!(responses.contains_key(status), "{at} does not say {status}");
            }
        }
    }
}

/// The document names exactly the routes the server serves, and each one answers there.
#[test]
fn the_document_names_every_route() {
    let doc = committed_document();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let served: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");
    assert!(extra.is_empty(), "documented but not served: {extra:?}");
}

async fn routes_answer(app: TestApp) {
    let admin = app.admin_key.clone();
    for (method, path) in SERVED {
        let concrete = path
            .replace("{id}", "key_nothing")
            .replace("{client_id}", "kpc_nothing")
            .replace("{secret_id}", "cs_nothing")
            .replace("{original}", "anything/here");
        let a = app
            .call(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete,
                Some(&admin),
                None,
            )
            .await;
        assert_ne!(
            a.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            a.text
        );
        assert!(
            !a.text.contains("no such route"),
            "{method} {path} is not served: {}",
            a.text
        );
    }
}
on_both!(every_documented_route_is_served, routes_answer);

/// `openapi-spec-validator` (PyPI) finds no error in the committed document.
#[test]
fn the_document_is_valid_openapi_3_1() {
    let Some(validator) = python_tool("openapi-spec-validator") else {
        return skipped("the OpenAPI validation test", "openapi-spec-validator");
    };
    let out = Command::new(validator)
        .args(["--schema", "3.1", "--validation-errors", "all"])
        .arg(workspace_root().join("openapi.json"))
        .output()
        .expect("run openapi-spec-validator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("Validation Error"),
        "openapi.json is not valid OpenAPI 3.1:\n{text}"
    );
}

const GENERATOR_CONFIG: &str = "\
project_name_override: keyplane-client
package_name_override: keyplane_client
post_hooks: []
";

/// What the generated client does against a live server, as a user would: a Python script that
/// imports it, prints one JSON line of what it saw, and exits non-zero on a failed assertion.
const CLIENT_SCRIPT: &str = r#"
import json, os, sys
from keyplane_client import AuthenticatedClient, Client
from keyplane_client.api.api_keys import api_keys_create, api_keys_list, api_keys_get
from keyplane_client.api.oauth_clients import oauth_clients_create, oauth_clients_list
from keyplane_client.api.oauth import oauth_token, oauth_introspect, oauth_revoke
from keyplane_client.models import (
    CreateApiKey, CreateClient, TokenRequest, GrantType, IntrospectionRequest, RevocationRequest,
    ApiKeyWithSecret,
    ClientWithSecret, TokenResponse, Problem,
)

base, admin = os.environ["KP_BASE"], os.environ["KP_ADMIN"]
c = AuthenticatedClient(base_url=base, token=admin, raise_on_unexpected_status=True)
seen = {}

made = api_keys_create.sync_detailed(client=c, body=CreateApiKey(name="from the generated client", scopes=["ai-guard:read"]))
assert made.status_code == 201, made
assert isinstance(made.parsed, ApiKeyWithSecret), made.parsed
assert made.headers.get("cache-control") == "no-store", made.headers
seen["key_id"], seen["key"] = made.parsed.id, made.parsed.key
assert made.parsed.scopes == ["ai-guard:read"] and made.parsed.status == "active"

listed = api_keys_list.sync(client=c, limit=50)
seen["listed"] = [k.name for k in listed.items]
assert made.parsed.id in [k.id for k in listed.items], listed

missing = api_keys_get.sync_detailed(client=c, id="key_nothing")
assert missing.status_code == 404 and isinstance(missing.parsed, Problem), missing
seen["problem"] = missing.parsed.to_dict()

client = oauth_clients_create.sync(client=c, body=CreateClient(name="generated", scopes=["ai-guard:read"]))
assert isinstance(client, ClientWithSecret), client
seen["client_id"] = client.client_id
clients = oauth_clients_list.sync(client=c)
assert client.client_id in [x.client_id for x in clients.items], clients

anonymous = Client(base_url=base, raise_on_unexpected_status=True)
t = oauth_token.sync_detailed(client=anonymous, body=TokenRequest(
    grant_type=GrantType.CLIENT_CREDENTIALS, client_id=client.client_id,
    client_secret=client.client_secret, scope="ai-guard:read"))
assert t.status_code == 200 and isinstance(t.parsed, TokenResponse), t
assert t.headers.get("cache-control") == "no-store"
seen["token_type"] = t.parsed.token_type
i = oauth_introspect.sync(client=anonymous, body=IntrospectionRequest(
    token=t.parsed.access_token, client_id=client.client_id, client_secret=client.client_secret))
seen["introspected"] = i.to_dict()
r = oauth_revoke.sync_detailed(client=anonymous, body=RevocationRequest(
    token=t.parsed.access_token, client_id=client.client_id, client_secret=client.client_secret))
assert r.status_code == 200, r
i = oauth_introspect.sync(client=anonymous, body=IntrospectionRequest(
    token=t.parsed.access_token, client_id=client.client_id, client_secret=client.client_secret))
seen["after_revoke"] = i.to_dict()
print(json.dumps(seen))
"#;

/// A Python client generated from the committed document (`openapi-python-client`, PyPI) has a
/// function for every operation, and creates and lists keys and clients and gets a token from a
/// live server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_works() {
    let (Some(generator), Some(python)) =
        (python_tool("openapi-python-client"), python_tool("python"))
    else {
        return skipped("the generated-client test", "openapi-python-client");
    };
    let dir = TempDir::new();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, GENERATOR_CONFIG).unwrap();
    let package = dir.path().join("keyplane_client");
    let out = Command::new(&generator)
        .args(["generate", "--meta", "none", "--path"])
        .arg(workspace_root().join("openapi.json"))
        .arg("--output-path")
        .arg(&package)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run openapi-python-client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the generator failed:\n{text}");
    assert!(
        !text.contains("WARNING"),
        "the generator left something out:\n{text}"
    );
    // One module per operation, named after its operationId.
    let mut generated = BTreeSet::new();
    for tag in std::fs::read_dir(package.join("api")).unwrap() {
        let tag = tag.unwrap().path();
        if tag.is_dir() {
            for f in std::fs::read_dir(&tag).unwrap() {
                let name = f.unwrap().file_name().to_string_lossy().to_string();
                if let Some(stem) = name.strip_suffix(".py") {
                    generated.insert(stem.to_string());
                }
            }
        }
    }
    for (method, path, op) in operations(&committed_document()) {
        let id = op["operationId"].as_str().unwrap();
        assert!(
            generated.contains(id),
            "no client function for {method} {path} ({id}); generated: {generated:?}"
        );
    }

    let app = keyplane_testkit::spawn_app(keyplane_testkit::Backend::Sqlite)
        .await
        .unwrap();
    app.service("ai-guard", &["ai-guard:read"]).await;
    let script = dir.path().join("use_client.py");
    std::fs::write(&script, CLIENT_SCRIPT).unwrap();
    let base = app.base.clone();
    let admin = app.admin_key.clone();
    let dir_path = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(&script)
            .env("PYTHONPATH", &dir_path)
            .env("KP_BASE", base)
            .env("KP_ADMIN", admin)
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the generated client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["listed"], json!(["from the generated client"]));
    assert_eq!(seen["problem"]["status"], 404);
    assert_eq!(seen["token_type"], "Bearer");
    assert_eq!(seen["introspected"]["active"], true);
    assert_eq!(seen["introspected"]["client_id"], seen["client_id"]);
    assert_eq!(seen["after_revoke"], json!({ "active": false }));
    // The key the client made works where the platform checks it.
    let key = seen["key"].as_str().unwrap();
    assert_eq!(
        app.authz(Some(key), Some("ai-guard:read")).await.status,
        StatusCode::OK
    );
}

/// The schemas of answers that carry a secret (a key, a client secret, an access token).
const SECRET_SCHEMAS: [&str; 5] = [
    "ApiKeyWithSecret",
    "ClientWithSecret",
    "NewClientSecret",
    "IssuedTokenView",
    "TokenResponse",
];

fn assert_no_store(what: &str, a: &Answer) {
    assert!(a.status.is_success(), "{what}: {} {}", a.status, a.text);
    assert_eq!(a.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(a.header("pragma"), Some("no-cache"), "{what}");
}

async fn secrets_not_stored(app: TestApp) {
    let admin = app.admin_key.clone();
    app.service("ai-guard", &["ai-guard:read"]).await;
    let mut checked: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut check = |method: &'static str, path: &'static str, a: Answer| {
        assert_no_store(&format!("{method} {path}"), &a);
        checked.insert((method, path));
        a.json()
    };

    let k = check(
        "POST",
        "/v1/api-keys",
        app.post(
            "/v1/api-keys",
            &admin,
            json!({ "name": "a", "scopes": ["ai-guard:read"] }),
        )
        .await,
    );
    let id = k["id"].as_str().unwrap().to_string();
    check(
        "POST",
        "/v1/api-keys/{id}/copy",
        app.post(&format!("/v1/api-keys/{id}/copy"), &admin, json!({}))
            .await,
    );
    check(
        "POST",
        "/v1/api-keys/{id}/regenerate",
        app.post(&format!("/v1/api-keys/{id}/regenerate"), &admin, json!({}))
            .await,
    );
    let seed = check(
        "POST",
        "/auth/api_keys",
        app.post(
            "/auth/api_keys",
            &admin,
            json!({ "description": "seed", "roles": ["ORG-ADMIN"] }),
        )
        .await,
    );
    // Seed 002's regeneration through the same route.
    let again = app
        .post("/auth/api_keys", &admin, json!({ "id": seed["id"] }))
        .await;
    assert_no_store("POST /auth/api_keys (regenerate)", &again);
    let c = check(
        "POST",
        "/v1/oauth-clients",
        app.post(
            "/v1/oauth-clients",
            &admin,
            json!({ "name": "c", "scopes": ["ai-guard:read"] }),
        )
        .await,
    );
    let cid = c["client_id"].as_str().unwrap().to_string();
    let secret = c["client_secret"].as_str().unwrap().to_string();
    check(
        "POST",
        "/v1/oauth-clients/{client_id}/secrets",
        app.post(
            &format!("/v1/oauth-clients/{cid}/secrets"),
            &admin,
            json!({}),
        )
        .await,
    );
    check(
        "POST",
        "/v1/oauth-clients/{client_id}/tokens",
        app.post(
            &format!("/v1/oauth-clients/{cid}/tokens"),
            &admin,
            json!({}),
        )
        .await,
    );
    for path in TOKEN_PATHS {
        let resp = app
            .http
            .post(format!("{}{path}", app.base))
            .basic_auth(&cid, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        let a = Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.unwrap(),
        };
        let path: &'static str = path;
        check("POST", path, a);
    }

    // Every operation the document says answers a secret was checked above.
    for (method, path, op) in operations(&committed_document()) {
        for r in op["responses"].as_object().unwrap().values() {
            let schema = r["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap_or("");
            if SECRET_SCHEMAS
                .iter()
                .any(|s| schema.ends_with(&format!("/{s}")))
            {
                assert!(
                    checked.contains(&(method.as_str(), path.as_str())),
                    "{method} {path} answers a secret ({schema}) but is not checked here"
                );
                assert!(
                    r["headers"].get("Cache-Control").is_some(),
                    "{method} {path}: the document does not say no-store"
                );
            }
        }
    }
}
on_both!(answers_with_secrets_are_not_stored, secrets_not_stored);

/// The shapes an error may have.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// RFC 9457 `application/problem+json`.
    Problem,
    /// RFC 6749 §5.2 `{"error", "error_description"}`, never cached.
    OAuth,
}

fn assert_shape(what: &str, a: &Answer, status: StatusCode, shape: Shape) {
    assert_eq!(a.status, status, "{what}: {}", a.text);
    let v: Value = serde_json::from_str(&a.text)
        .unwrap_or_else(|_| panic!("{what}: the body is not JSON: {:?}", a.text));
    match shape {
        Shape::Problem => {
            assert_eq!(
                a.header("content-type"),
                Some("application/problem+json"),
                "{what}"
            );
            for f in ["type", "title", "detail"] {
                assert!(v[f].is_string(), "{what}: no {f} in {v}");
            }
            assert_eq!(v["status"], status.as_u16(), "{what}");
        }
        Shape::OAuth => {
            assert_eq!(a.header("content-type"), Some("application/json"), "{what}");
            assert!(v["error"].is_string(), "{what}: {v}");
            assert!(v["error_description"].is_string(), "{what}: {v}");
            assert_eq!(a.header("cache-control"), Some("no-store"), "{what}");
        }
    }
}

async fn send(app: &TestApp, req: reqwest::RequestBuilder) -> Answer {
    let _ = app;
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap(),
    }
}

async fn error_shapes(app: TestApp) {
    let admin = app.admin_key.clone();
    let url = |p: &str| format!("{}{p}", app.base);
    let http = &app.http;
    const FORM: &str = "application/x-www-form-urlencoded";
    // Over keyplane's limits (8 KiB of request target, 32 KiB of headers), under hyper's.
    let long = "x".repeat(9_000);
    let big_header = "y".repeat(40_000);

    type Case = (&'static str, reqwest::RequestBuilder, StatusCode, Shape);
    let cases: Vec<Case> = vec![
        (
            "unknown route",
            http.get(url("/v1/nothing-here")).bearer_auth(&admin),
            StatusCode::NOT_FOUND,
            Shape::Problem,
        ),
        (
            "unknown route outside /v1",
            http.get(url("/nothing")),
            StatusCode::NOT_FOUND,
            Shape::Problem,
        ),
        (
            "wrong method",
            http.put(url("/v1/api-keys")).bearer_auth(&admin),
            StatusCode::METHOD_NOT_ALLOWED,
            Shape::Problem,
        ),
        (
            "wrong method on an id",
            http.post(url("/v1/members/mem_x")).bearer_auth(&admin),
            StatusCode::METHOD_NOT_ALLOWED,
            Shape::Problem,
        ),
        (
            "wrong method on seed 002's route",
            http.put(url("/auth/api_keys")).bearer_auth(&admin),
            StatusCode::METHOD_NOT_ALLOWED,
            Shape::Problem,
        ),
        (
            "no credential",
            http.get(url("/v1/api-keys")),
            StatusCode::UNAUTHORIZED,
            Shape::Problem,
        ),
        (
            "malformed JSON",
            http.post(url("/v1/api-keys"))
                .bearer_auth(&admin)
                .header(header::CONTENT_TYPE, "application/json")
                .body("{"),
            StatusCode::BAD_REQUEST,
            Shape::Problem,
        ),
        (
            "not JSON",
            http.post(url("/v1/api-keys"))
                .bearer_auth(&admin)
                .header(header::CONTENT_TYPE, "text/plain")
                .body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Shape::Problem,
        ),
        (
            "a field breaks a rule",
            http.post(url("/v1/api-keys"))
                .bearer_auth(&admin)
                .json(&json!({ "scopes": ["nope:read"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
            Shape::Problem,
        ),
        (
            "body too large",
            http.post(url("/v1/api-keys"))
                .bearer_auth(&admin)
                .header(header::CONTENT_TYPE, "application/json")
                .body(format!("{{\"name\":\"{}\"}}", "x".repeat(70_000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            Shape::Problem,
        ),
        (
            "URI too long",
            http.get(url(&format!("/v1/api-keys?cursor={long}")))
                .bearer_auth(&admin),
            StatusCode::URI_TOO_LONG,
            Shape::Problem,
        ),
        (
            "URI too long on forward auth",
            http.get(url(&format!("/v1/authz?scope={long}"))),
            StatusCode::URI_TOO_LONG,
            Shape::Problem,
        ),
        (
            "headers too large",
            http.get(url("/v1/api-keys"))
                .bearer_auth(&admin)
                .header("x-padding", &big_header),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Shape::Problem,
        ),
        (
            "OAuth: wrong method",
            http.get(url("/v1/oauth/token")),
            StatusCode::METHOD_NOT_ALLOWED,
            Shape::OAuth,
        ),
        (
            "OAuth: wrong method on seed 000's path",
            http.get(url("/v1beta/oauth/token/revoke")),
            StatusCode::METHOD_NOT_ALLOWED,
            Shape::OAuth,
        ),
        (
            "OAuth: wrong method on the metadata",
            http.post(url("/.well-known/oauth-authorization-server")),
            StatusCode::METHOD_NOT_ALLOWED,
            Shape::OAuth,
        ),
        (
            "OAuth: not a form",
            http.post(url("/v1/oauth/token")).json(&json!({})),
            StatusCode::BAD_REQUEST,
            Shape::OAuth,
        ),
        (
            "OAuth: no client",
            http.post(url("/v1/oauth/token"))
                .header(header::CONTENT_TYPE, FORM)
                .body("grant_type=client_credentials"),
            StatusCode::UNAUTHORIZED,
            Shape::OAuth,
        ),
        (
            "OAuth: form too large",
            http.post(url("/v1/oauth/token"))
                .header(header::CONTENT_TYPE, FORM)
                .body(format!(
                    "grant_type=client_credentials&pad={}",
                    "x".repeat(17_000)
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
            Shape::OAuth,
        ),
        (
            "OAuth: form too large on seed 001's path",
            http.post(url("/api/oauth/token"))
                .header(header::CONTENT_TYPE, FORM)
                .body(format!(
                    "grant_type=client_credentials&pad={}",
                    "x".repeat(17_000)
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
            Shape::OAuth,
        ),
        (
            "OAuth: URI too long",
            http.post(url(&format!("/v1/oauth/token?pad={long}")))
                .header(header::CONTENT_TYPE, FORM)
                .body("grant_type=client_credentials"),
            StatusCode::URI_TOO_LONG,
            Shape::OAuth,
        ),
        (
            "OAuth: headers too large",
            http.post(url("/v1/oauth/token/introspect"))
                .header(header::CONTENT_TYPE, FORM)
                .header("x-padding", &big_header)
                .body("token=x"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Shape::OAuth,
        ),
    ];
    for (what, req, status, shape) in cases {
        let a = send(&app, req).await;
        assert_shape(what, &a, status, shape);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(
                a.header("allow").is_some_and(|v| !v.is_empty()),
                "{what}: a 405 says what is allowed"
            );
        }
    }
    let allow = send(&app, http.get(url("/v1/oauth/token"))).await;
    assert_eq!(allow.header("allow"), Some("POST"));

    // Throttled client authentication: 429 `invalid_client` with Retry-After (not `slow_down`,
    // the device flow's code).
    let c = app
        .post("/v1/oauth-clients", &admin, json!({ "name": "throttled" }))
        .await
        .json();
    let cid = c["client_id"].as_str().unwrap().to_string();
    let mut last = None;
    for _ in 0..12 {
        let a = send(
            &app,
            http.post(url("/v1/oauth/token"))
                .basic_auth(&cid, Some("kps_wrong"))
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
        let throttled = a.status == StatusCode::TOO_MANY_REQUESTS;
        last = Some(a);
        if throttled {
            break;
        }
    }
    let last = last.unwrap();
    assert_shape(
        "OAuth: throttled",
        &last,
        StatusCode::TOO_MANY_REQUESTS,
        Shape::OAuth,
    );
    assert_eq!(last.json()["error"], "invalid_client");
    assert!(last.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);

    // The console's throttled sign-in says how long to wait too.
    let mut console = crate::console::Console::new(&app);
    let (_, page, _) = console.get("/console/sign-in").await;
    let pre = crate::console::csrf_of(&page);
    let mut throttled = None;
    for _ in 0..12 {
        let resp = http
            .post(url("/console/sign-in"))
            .header(header::COOKIE, console.cookie_header())
            .form(&[
                ("csrf", pre.as_str()),
                ("method", "admin"),
                ("admin_key", "kpa_not_the_admin_key"),
            ])
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(resp);
            break;
        }
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let throttled = throttled.expect("failed console sign-ins are throttled");
    let wait = throttled.headers().get(header::RETRY_AFTER);
    assert!(
        wait.is_some_and(|v| v.to_str().unwrap().parse::<u64>().unwrap() >= 1),
        "the console's 429 has Retry-After: {:?}",
        throttled.headers()
    );
}
on_both!(every_error_has_its_body, error_shapes);

/// What came back on a raw connection.
struct Raw {
    status: String,
    headers: String,
    body: String,
    /// Whether the server closed the connection (rather than the read timing out).
    closed: bool,
}

/// Sends `request` on a fresh connection and reads until the server closes it or 5 s pass.
fn raw(addr: &str, request: &[u8]) -> Raw {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // The server may answer and close before it has read everything; a failed write is fine.
    let _ = s.write_all(request);
    let mut got = vec![];
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset after the answer is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Raw {
        status: status.to_string(),
        headers: headers.to_lowercase(),
        body: body.to_string(),
        closed,
    }
}

/// Past hyper's own limits the request never reaches keyplane: hyper answers by itself, with
/// no body, and closes the connection. This pins exactly what a client sees there (see
/// docs/api.md): a request target over 65 534 bytes is a bodiless 414; more than 100 header
/// fields, or a header section well over hyper's ~400 KiB buffer, a bodiless 431 (hyper checks
/// its buffer after each read, so a section a little over 400 KiB that arrives in one read may
/// still reach keyplane, which answers 431 with a body); a header line that
/// does not parse, a bodiless 400. Below those limits keyplane's own (8 KiB target, 32 KiB of
/// headers) answer with a body (`every_error_has_its_body`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_hypers_limits() {
    let app = keyplane_testkit::spawn_app(keyplane_testkit::Backend::Sqlite)
        .await
        .unwrap();
    let addr = app.base.trim_start_matches("http://").to_string();

    let huge_target = format!(
        "GET /v1/api-keys?pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "x".repeat(70_000)
    );
    let many_headers: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many_headers = format!("GET /v1/api-keys HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    let huge_section = format!(
        "GET /v1/api-keys HTTP/1.1\r\nHost: x\r\nx-pad: {}\r\n\r\n",
        "y".repeat(1_000_000)
    );
    let bad_line = "GET /v1/api-keys HTTP/1.1\r\nHost: x\r\nbad header: x\r\n\r\n".to_string();
    let cases = [
        ("a 70 000-byte request target", huge_target, "414"),
        ("101 header fields", many_headers, "431"),
        ("a 1 000 000-byte header section", huge_section, "431"),
        ("a header name with a space", bad_line, "400"),
    ];
    for (what, request, status) in cases {
        let addr = addr.clone();
        let r = tokio::task::spawn_blocking(move || raw(&addr, request.as_bytes()))
            .await
            .unwrap();
        assert!(
            r.status.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {:?}",
            r.status
        );
        assert!(
            r.headers.contains("content-length: 0"),
            "{what}: {}",
            r.headers
        );
        assert!(r.body.is_empty(), "{what}: {:?}", r.body);
        assert!(r.closed, "{what}: hyper closes the connection");
    }

    // Just under hyper's limits, keyplane answers with a body.
    let request = format!(
        "GET /v1/api-keys?pad={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "x".repeat(60_000)
    );
    let r = tokio::task::spawn_blocking(move || raw(&addr, request.as_bytes()))
        .await
        .unwrap();
    assert!(r.status.starts_with("HTTP/1.1 414"), "{}", r.status);
    assert!(r.headers.contains("content-type: application/problem+json"));
    assert!(r.body.contains("uri-too-long"), "{}", r.body);
}
