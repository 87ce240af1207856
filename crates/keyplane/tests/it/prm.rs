//! RFC 9728 protected resource metadata and the challenges that point to it (issue 14 §1):
//! documents field by field (§2), their URLs (§3.1) and `resource` (§3.3), through the gateway
//! (`gateway_resource`), through the API listener by host and path, through `/v1/authz` behind
//! a real nginx, and what an attacker can and cannot make of them.

use crate::gateway::upstream;
use crate::nginx::{nginx_or_skip, start_nginx};
use keyplane_testkit::reqwest::{Method, StatusCode};
use keyplane_testkit::{json, Backend, Options, TempDir, TestApp};
use serde_json::Value;
use std::collections::BTreeSet;

/// A challenge's scheme and auth-params (RFC 9110 §11.2), quoted values unescaped. Panics on
/// anything that is not one well-formed challenge, so a value that broke out of its quotes
/// fails the test.
pub(crate) fn parse_challenge(v: &str) -> (String, Vec<(String, String)>) {
    let (scheme, mut rest) = v.split_once(' ').unwrap_or((v, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if rest.is_empty() {
            break;
        }
        let (name, after) = rest.split_once('=').expect("name=value");
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad parameter name {name:?} in {v:?}"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        assert_eq!(
            chars.next().map(|c| c.1),
            Some('"'),
            "unquoted value in {v:?}"
        );
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next().expect("quoted-pair").1),
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.expect("closing quote");
        params.push((name.to_string(), value));
        rest = &after[end..];
        assert!(
            rest.is_empty() || rest.starts_with(','),
            "junk after a value in {v:?}"
        );
    }
    (scheme.to_string(), params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let found: Vec<&str> = params
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(found.len() <= 1, "{name} repeated");
    found.first().copied()
}

/// The metadata URL a client derives from a resource URI (RFC 9728 §3.1), written out here
/// independently of keyplane's own code.
fn derived_metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap();
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let path = if path == "/" { "" } else { path };
    format!("{scheme}://{host}/.well-known/oauth-protected-resource{path}")
}

/// Checks a metadata answer against RFC 9728 §2 and §3.2, and what keyplane puts in it.
async fn check_document(
    app: &TestApp,
    resp: keyplane_testkit::reqwest::Response,
    resource: &str,
    name: &str,
    scopes: &[&str],
) -> Value {
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["access-control-allow-origin"], "*");
    let cc = h["cache-control"].to_str().unwrap();
    assert!(cc.starts_with("public, max-age="), "{cc}");
    let age: u32 = cc["public, max-age=".len()..].parse().unwrap();
    assert!(age > 0 && age <= 3600, "a short max-age: {age}");
    let doc: Value = resp.json().await.unwrap();
    let keys: BTreeSet<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "resource",
            "authorization_servers",
            "scopes_supported",
            "bearer_methods_supported",
            "resource_name",
            "dpop_signing_alg_values_supported",
        ]),
        "exactly these fields; no jwks_uri (the resource signs nothing): {doc}"
    );
    // §3.3: the resource is the URI the metadata URL was derived from, exactly.
    assert_eq!(doc["resource"], resource);
    let issuer = app.app().settings().oauth.issuer.clone();
    assert_eq!(doc["authorization_servers"], json!([issuer]));
    assert_eq!(doc["scopes_supported"], json!(scopes));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(doc["resource_name"], name);
    // The authorization server's own metadata is reachable from it and agrees on DPoP.
    let as_meta: Value = app
        .http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            doc["authorization_servers"][0].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(as_meta["issuer"], doc["authorization_servers"][0]);
    assert_eq!(
        doc["dpop_signing_alg_values_supported"],
        as_meta["dpop_signing_alg_values_supported"]
    );
    doc
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const GATEWAY_RULES: &str = r#"
[[services]]
name = "ai-guard"
scopes = ["ai-guard:read", "ai-guard:write"]
resources = ["RESOURCE"]

[[services]]
name = "other"
scopes = ["other:read"]
resources = ["https://other.example.com/mcp"]

[[routes]]
methods = ["POST"]
path = "/v1/text/guard"
scopes = ["ai-guard:read"]
"#;

async fn gateway_flow(backend: Backend) {
    let up = upstream().await;
    let dir = TempDir::new();
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/v1/text/guard");
    let config = dir.path().join("keyplane.toml");
    std::fs::write(&config, GATEWAY_RULES.replace("RESOURCE", &resource)).unwrap();
    let Some(app) = keyplane_testkit::spawn_app_with(
        backend,
        Options::default()
            .env("KEYPLANE_CONFIG", config.to_str().unwrap())
            .env("KEYPLANE_GATEWAY_LISTEN", &format!("127.0.0.1:{port}"))
            .env("KEYPLANE_UPSTREAM", &up)
            .env("KEYPLANE_GATEWAY_RESOURCE", &resource),
    )
    .await
    else {
        return;
    };
    let gw = app.gateway_base().unwrap();
    let admin = app.admin_key.clone();
    let call = |token: Option<&str>| {
        let mut r = app
            .http
            .post(format!("{gw}/v1/text/guard"))
            .json(&json!({ "messages": [{ "role": "user", "content": "hi" }], "recipe": "pangea_prompt_guard" }));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    // Nothing presented: 401, a challenge without an error code, the route's scope and the
    // metadata URL; the body is what it always was.
    let anon = call(None).await.unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let (scheme, params) = parse_challenge(anon.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(scheme, "Bearer");
    assert_eq!(param(&params, "error"), None, "RFC 6750 §3.1: {params:?}");
    assert_eq!(param(&params, "scope"), Some("ai-guard:read"));
    let url = param(&params, "resource_metadata").unwrap().to_string();
    assert_eq!(url, derived_metadata_url(&resource));
    assert_eq!(
        anon.json::<Value>().await.unwrap()["error"],
        "invalid_token"
    );

    // The URL from the header leads to the document, and the document to keyplane.
    let doc = app.http.get(&url).send().await.unwrap();
    check_document(
        &app,
        doc,
        &resource,
        "ai-guard",
        &["ai-guard:read", "ai-guard:write"],
    )
    .await;
    // The well-known URL without the path answers the gateway's one resource too.
    let root = app
        .http
        .get(format!("{gw}/.well-known/oauth-protected-resource"))
        .send()
        .await
        .unwrap();
    check_document(
        &app,
        root,
        &resource,
        "ai-guard",
        &["ai-guard:read", "ai-guard:write"],
    )
    .await;
    // Another path is not this resource's metadata, and not the upstream's business either.
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource/v1/text/guard/x",
    ] {
        let other = app.http.get(format!("{gw}{path}")).send().await.unwrap();
        assert_eq!(other.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(other.headers()["content-type"], "application/problem+json");
    }
    let post = app.http.post(&url).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    let pre = app
        .http
        .request(Method::OPTIONS, &url)
        .header("Origin", "https://inspector.example")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "mcp-protocol-version")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), StatusCode::NO_CONTENT);
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");

    // A credential presented and refused: invalid_token, and the same pointers.
    let bad = call(Some("kp_nonsense")).await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let (_, params) = parse_challenge(bad.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(param(&params, "error"), Some("invalid_token"));
    assert_eq!(param(&params, "resource_metadata"), Some(url.as_str()));
    assert_eq!(param(&params, "scope"), Some("ai-guard:read"));

    // A token without the route's scope: 403 insufficient_scope naming the scope (step-up).
    let (_, writer) = app
        .key(&admin, json!({ "name": "w", "scopes": ["ai-guard:write"] }))
        .await;
    let few = call(Some(&writer)).await.unwrap();
    assert_eq!(few.status(), StatusCode::FORBIDDEN);
    let (_, params) = parse_challenge(few.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(param(&params, "error"), Some("insufficient_scope"));
    assert_eq!(param(&params, "scope"), Some("ai-guard:read"));
    assert_eq!(param(&params, "resource_metadata"), Some(url.as_str()));

    // With the scope, the request reaches the upstream.
    let (_, reader) = app
        .key(&admin, json!({ "name": "r", "scopes": ["ai-guard:read"] }))
        .await;
    let ok = call(Some(&reader)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.headers().get("www-authenticate").is_none());

    // The service stops declaring the resource: no metadata, no resource_metadata, and a reload
    // of the rules is refused (the previous ones stay) until it is declared again.
    let services = app.get("/v1/services", &admin).await.json();
    let id = services["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ai-guard")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let patch = |resources: Value| {
        app.http
            .patch(format!("{}/v1/services/{id}", app.base))
            .bearer_auth(&admin)
            .header("Keyplane-Override-Config", "true")
            .json(&json!({ "resources": resources }))
            .send()
    };
    assert_eq!(patch(json!([])).await.unwrap().status(), StatusCode::OK);
    // (The gateway behaves as without a gateway_resource: the request goes through the rules,
    // and none allows it.)
    assert_eq!(
        app.http.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let anon = call(None).await.unwrap();
    let (_, params) = parse_challenge(anon.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(param(&params, "resource_metadata"), None);
    assert_eq!(param(&params, "scope"), Some("ai-guard:read"));
    let reload = app.post("/v1/admin/routes/reload", &admin, json!({})).await;
    assert_eq!(
        reload.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reload.text
    );
    assert!(reload.text.contains("gateway_resource"), "{}", reload.text);
    assert_eq!(
        patch(json!([resource])).await.unwrap().status(),
        StatusCode::OK
    );
    let reload = app.post("/v1/admin/routes/reload", &admin, json!({})).await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.text);
    assert_eq!(
        app.http.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
}

mod gateway {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::gateway_flow(keyplane_testkit::Backend::Sqlite).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::gateway_flow(keyplane_testkit::Backend::Postgres).await;
    }
}

/// A gateway resource that no service declares refuses the start, and one that is not a
/// resource URI at all refuses the configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_gateway_resource_refuses_the_start() {
    let up = upstream().await;
    for (resource, why) in [
        (
            "https://nobody.example.com/mcp",
            "not a resource URI of any service",
        ),
        ("mcp.example.com/mcp", "absolute"),
    ] {
        let dir = TempDir::new();
        let config = dir.path().join("keyplane.toml");
        std::fs::write(
            &config,
            GATEWAY_RULES.replace("RESOURCE", "https://mcp.example.com/mcp"),
        )
        .unwrap();
        let db = keyplane_testkit::TestDb::fresh(Backend::Sqlite)
            .await
            .unwrap();
        let mut env = std::collections::HashMap::new();
        for (k, v) in [
            ("KEYPLANE_CONFIG", config.to_str().unwrap()),
            ("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0"),
            ("KEYPLANE_UPSTREAM", up.as_str()),
            ("KEYPLANE_GATEWAY_RESOURCE", resource),
            ("KEYPLANE_DATABASE", db.url.as_str()),
            ("KEYPLANE_LISTEN", "127.0.0.1:0"),
            (
                "KEYPLANE_PEPPER",
                "a-test-pepper-that-is-long-enough-0123456789abcdef",
            ),
            ("KEYPLANE_DATA_DIR", dir.path().to_str().unwrap()),
        ] {
            env.insert(k.to_string(), v.to_string());
        }
        let err = match keyplane::config::Config::load(&Default::default(), None, &env) {
            Err(e) => format!("{e:#}"),
            Ok(c) => match keyplane::server::start(&c, std::future::pending()).await {
                Err(e) => format!("{e:#}"),
                Ok(r) => {
                    r.shutdown().await.unwrap();
                    panic!("{resource} was accepted");
                }
            },
        };
        assert!(err.contains(why), "{resource}: {err}");
    }
}

async fn api_listener(app: TestApp) {
    let admin = app.admin_key.clone();
    for (name, scopes, resources) in [
        (
            "tenant-a",
            vec!["a:read"],
            vec!["https://a.example.com/mcp"],
        ),
        (
            "tenant-b",
            vec!["b:read", "b:write"],
            vec!["https://b.example.com/mcp", "https://b.example.com/"],
        ),
    ] {
        let r = app
            .post(
                "/v1/services",
                &admin,
                json!({ "name": name, "scopes": scopes, "resources": resources }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let get = |host: &str, path: &str, extra: Option<(&str, &str)>| {
        let mut r = app
            .http
            .get(format!(
                "{}/.well-known/oauth-protected-resource{path}",
                app.base
            ))
            .header("Host", host);
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.send()
    };
    let a = get("a.example.com", "/mcp", None).await.unwrap();
    check_document(
        &app,
        a,
        "https://a.example.com/mcp",
        "tenant-a",
        &["a:read"],
    )
    .await;
    // Host names are case-insensitive.
    let b = get("B.Example.COM", "/mcp", None).await.unwrap();
    check_document(
        &app,
        b,
        "https://b.example.com/mcp",
        "tenant-b",
        &["b:read", "b:write"],
    )
    .await;
    // `https://b.example.com/` has its metadata at the well-known URL itself (§3.1).
    let b_root = get("b.example.com", "", None).await.unwrap();
    check_document(
        &app,
        b_root,
        "https://b.example.com/",
        "tenant-b",
        &["b:read", "b:write"],
    )
    .await;

    // Another tenant's host, an unknown host, an unknown path: 404, never a neighbour's document.
    for (host, path) in [
        ("evil.example.com", "/mcp"),
        ("a.example.com", "/mcp/"),
        ("a.example.com", "/other"),
        ("a.example.com", ""),
        ("a.example.com.evil.example", "/mcp"),
        ("a.example.com", "/mcp?x=1"),
    ] {
        let r = get(host, path, None).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{host}{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body = r.text().await.unwrap();
        assert!(!body.contains("example.com"), "{body}");
    }
    // X-Forwarded-Host counts only from a trusted proxy (none is configured here).
    let spoofed = get(
        "b.example.com",
        "/mcp",
        Some(("X-Forwarded-Host", "a.example.com")),
    )
    .await
    .unwrap();
    assert_eq!(
        spoofed.json::<Value>().await.unwrap()["resource"],
        "https://b.example.com/mcp"
    );
    // Huge paths are refused cleanly: past any resource URI's length a 404, past the request
    // target limit a 414 with a body.
    let long = get("a.example.com", &format!("/{}", "m".repeat(1000)), None)
        .await
        .unwrap();
    assert_eq!(long.status(), StatusCode::NOT_FOUND);
    let huge = get("a.example.com", &format!("/{}", "m".repeat(9000)), None)
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::URI_TOO_LONG);
    assert_eq!(huge.headers()["content-type"], "application/problem+json");

    // /v1/authz: the forwarded request's URL picks the resource for the challenge.
    let authz = |url: &str, query: &str| {
        app.http
            .get(format!("{}/v1/authz{query}", app.base))
            .header("X-Original-URL", url)
            .send()
    };
    let r = authz("https://a.example.com/mcp/tools?x=1", "?scope=a:read")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (scheme, params) = parse_challenge(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(scheme, "Bearer");
    assert_eq!(param(&params, "error"), None);
    assert_eq!(param(&params, "scope"), Some("a:read"));
    assert_eq!(
        param(&params, "resource_metadata"),
        Some("https://a.example.com/.well-known/oauth-protected-resource/mcp")
    );
    // A URL that names no resource: still a Bearer challenge with the scope, no metadata.
    let r = authz("https://a.example.com/mcpx", "?scope=a:read")
        .await
        .unwrap();
    let (scheme, params) = parse_challenge(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(scheme, "Bearer");
    assert_eq!(param(&params, "scope"), Some("a:read"));
    assert_eq!(param(&params, "resource_metadata"), None);
    // The longest resource wins; the host's root resource takes the rest.
    let r = authz("https://b.example.com/elsewhere", "?scope=b:read")
        .await
        .unwrap();
    let (_, params) = parse_challenge(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(
        param(&params, "resource_metadata"),
        Some("https://b.example.com/.well-known/oauth-protected-resource")
    );
    // A refused credential: invalid_token; a credential lacking the scope: insufficient_scope.
    let (_, key) = app
        .key(&admin, json!({ "name": "b", "scopes": ["b:read"] }))
        .await;
    for (token, scope, status, error) in [
        (
            "kp_nonsense",
            "b:read",
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            key.as_str(),
            "b:write",
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
    ] {
        let r = app
            .http
            .get(format!("{}/v1/authz?scope={scope}", app.base))
            .header("X-Original-URL", "https://b.example.com/mcp")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        let (_, params) = parse_challenge(r.headers()["www-authenticate"].to_str().unwrap());
        assert_eq!(param(&params, "error"), Some(error));
        assert_eq!(param(&params, "scope"), Some(scope));
        assert_eq!(
            param(&params, "resource_metadata"),
            Some("https://b.example.com/.well-known/oauth-protected-resource/mcp")
        );
    }

    // Header injection: scopes from the query with quotes, backslashes and CR/LF stay inside
    // their quoted-string, and the challenge is still one well-formed header.
    let r = app
        .http
        .get(format!(
            "{}/v1/authz?scope=a%22%2C%20error%3D%22pwned%5C%0D%0ASet-Cookie%3A%20x%3D1",
            app.base
        ))
        .header("X-Original-URL", "https://a.example.com/mcp")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("set-cookie").is_none());
    let all: Vec<_> = r.headers().get_all("www-authenticate").iter().collect();
    assert_eq!(all.len(), 1);
    let (_, params) = parse_challenge(all[0].to_str().unwrap());
    assert_eq!(param(&params, "error"), Some("insufficient_scope"));
    assert_eq!(
        param(&params, "scope"),
        Some("a\", error=\"pwned\\Set-Cookie: x=1")
    );
    // A path with quotes in the forwarded URL changes nothing: the URL in the challenge is the
    // resource's own.
    let r = authz("https://a.example.com/mcp/%22,x=%22", "?scope=a:read")
        .await
        .unwrap();
    let (_, params) = parse_challenge(r.headers()["www-authenticate"].to_str().unwrap());
    assert_eq!(
        param(&params, "resource_metadata"),
        Some("https://a.example.com/.well-known/oauth-protected-resource/mcp")
    );
}
on_both!(api_listener_metadata, api_listener);

/// Forward auth behind the real nginx: the 401 with its challenge reaches the client, the
/// metadata URL in it is served through nginx by keyplane, and a 403 keeps its challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_behind_nginx() {
    let Some(nginx) = nginx_or_skip("the nginx protected resource metadata test") else {
        return;
    };
    let up = upstream().await;
    let dir = TempDir::new();
    let cfg = dir.path().join("keyplane.toml");
    std::fs::write(&cfg, "# rules come after the service\n").unwrap();
    let app = keyplane_testkit::spawn_app_with(
        Backend::Sqlite,
        Options::default().env("KEYPLANE_CONFIG", cfg.to_str().unwrap()),
    )
    .await
    .unwrap();
    let admin = app.admin_key.clone();
    let (_nginx, front) = start_nginx(&nginx, dir.path(), &app.base, &up).await;
    let resource = format!("{front}/v1/text/guard");
    let r = app
        .post(
            "/v1/services",
            &admin,
            json!({ "name": "ai-guard", "scopes": ["ai-guard:read", "ai-guard:write"], "resources": [resource] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    std::fs::write(&cfg, crate::gateway::RULES).unwrap();
    assert_eq!(
        app.post("/v1/admin/routes/reload", &admin, json!({}))
            .await
            .status,
        StatusCode::OK
    );
    let call = |token: Option<&str>| {
        let mut r = app
            .http
            .post(&resource)
            .json(&json!({ "messages": [{ "role": "user", "content": "hi" }], "recipe": "pangea_prompt_guard" }));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    let anon = call(None).await.unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<_> = anon.headers().get_all("www-authenticate").iter().collect();
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    let (scheme, params) = parse_challenge(challenges[0].to_str().unwrap());
    assert_eq!(scheme, "Bearer");
    assert_eq!(param(&params, "scope"), Some("ai-guard:read"));
    let url = param(&params, "resource_metadata").unwrap().to_string();
    assert_eq!(url, derived_metadata_url(&resource));
    assert!(url.starts_with(&front), "served through nginx: {url}");
    let doc = app.http.get(&url).send().await.unwrap();
    check_document(
        &app,
        doc,
        &resource,
        "ai-guard",
        &["ai-guard:read", "ai-guard:write"],
    )
    .await;

    let (_, writer) = app
        .key(&admin, json!({ "name": "w", "scopes": ["ai-guard:write"] }))
        .await;
    let few = call(Some(&writer)).await.unwrap();
    assert_eq!(few.status(), StatusCode::FORBIDDEN);
    let challenges: Vec<_> = few.headers().get_all("www-authenticate").iter().collect();
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    let (_, params) = parse_challenge(challenges[0].to_str().unwrap());
    assert_eq!(param(&params, "error"), Some("insufficient_scope"));
    assert_eq!(param(&params, "scope"), Some("ai-guard:read"));
    assert_eq!(param(&params, "resource_metadata"), Some(url.as_str()));

    let (_, reader) = app
        .key(&admin, json!({ "name": "r", "scopes": ["ai-guard:read"] }))
        .await;
    let ok = call(Some(&reader)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.headers().get("www-authenticate").is_none());
}
