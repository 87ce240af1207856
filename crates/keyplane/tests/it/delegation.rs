//! Resource indicators (RFC 8707) and token exchange (RFC 8693), end to end on both backends.
//!
//! Resources: a service declares resource URIs; `resource=` on a token request sets the token's
//! audience and narrows its scopes (`invalid_target` / `invalid_scope` otherwise); `/v1/authz`
//! and the gateway accept a token for that service's scopes only when its audience names one
//! of them, and a change to the service reaches every check at once.
//!
//! Exchange: an agent client trades a user's access token (or an API key) for a short-lived
//! token with `act`; only actors the subject's `may_act` names, never wider than the subject
//! (scopes or audience), refused with RFC 8693's codes, visible in the JWT, introspection,
//! `/v1/authz` headers and the activity log, and dead as soon as the subject credential is.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use keyplane_core::domain::secret::random_base62;
use keyplane_testkit::reqwest::{header, Method, StatusCode};
use keyplane_testkit::{json, Answer, TestApp};
use serde_json::Value;

const FORM: &str = "application/x-www-form-urlencoded";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
const MCP: &str = "https://mcp.example.com/mcp";
const THIRD: &str = "https://third.example.com";

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client of the default organization: (id, secret).
async fn client(app: &TestApp, scopes: &[&str], format: &str, extra: Value) -> (String, String) {
    let mut body = json!({"name": format!("c {}", random_base62(6)), "scopes": scopes, "token_format": format});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let a = app
        .post("/v1/oauth-clients", &app.admin_key.clone(), body)
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let v = a.json();
    (
        v["client_id"].as_str().unwrap().into(),
        v["client_secret"].as_str().unwrap().into(),
    )
}

/// `POST /v1/oauth/token` with HTTP Basic and this form.
async fn token_form(app: &TestApp, (id, secret): &(String, String), form: &str) -> Answer {
    let resp = app
        .http
        .post(format!("{}/v1/oauth/token", app.base))
        .basic_auth(id, Some(secret))
        .header(header::CONTENT_TYPE, FORM)
        .body(form.to_string())
        .send()
        .await
        .unwrap();
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap(),
    }
}

async fn token(app: &TestApp, c: &(String, String), form: &str) -> String {
    let a = token_form(app, c, form).await;
    assert_eq!(a.status, StatusCode::OK, "{form}: {}", a.text);
    a.json()["access_token"].as_str().unwrap().to_string()
}

fn error_of(a: &Answer) -> String {
    a.json()["error"].as_str().unwrap_or("").to_string()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

async fn introspect(app: &TestApp, t: &str) -> Value {
    let a = app
        .http
        .post(format!("{}/v1/oauth/token/introspect", app.base))
        .bearer_auth(&app.admin_key)
        .header(header::CONTENT_TYPE, FORM)
        .body(format!("token={}", enc(t)))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    a.json().await.unwrap()
}

async fn patch_service(app: &TestApp, id: &str, body: Value) -> Answer {
    app.call(
        Method::PATCH,
        &format!("/v1/services/{id}"),
        Some(&app.admin_key.clone()),
        Some(body),
    )
    .await
}

async fn service(app: &TestApp, name: &str, scopes: &[&str], resources: &[&str]) -> String {
    let a = app
        .post(
            "/v1/services",
            &app.admin_key.clone(),
            json!({"name": name, "scopes": scopes, "resources": resources}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    a.json()["id"].as_str().unwrap().to_string()
}

// ----- resource indicators -----

async fn resources(app: TestApp) {
    let admin = app.admin_key.clone();
    let mcp = service(&app, "mcp", &["mcp:read", "mcp:write"], &[MCP]).await;
    service(&app, "third", &["third:read"], &[THIRD]).await;
    service(&app, "plain", &["plain:read"], &[]).await;

    // Registration: the URI is checked, and belongs to one service only.
    let a = app
        .post(
            "/v1/services",
            &admin,
            json!({"name": "bad", "scopes": ["bad:x"], "resources": ["https://x.example/#frag"]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    let a = app
        .post("/v1/services", &admin, json!({"name": "dup", "scopes": ["dup:x"], "resources": ["HTTPS://MCP.example.com/mcp"]}))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    // Nor with the default port written out: it is the same resource.
    let a = app
        .post("/v1/services", &admin, json!({"name": "dup", "scopes": ["dup:x"], "resources": ["https://mcp.example.com:443/mcp"]}))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    let listed = app.get("/v1/services", &admin).await.json();
    let m = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "mcp")
        .unwrap()
        .clone();
    assert_eq!(m["resources"], json!([MCP]));

    for format in ["jwt", "opaque"] {
        let c = client(
            &app,
            &["mcp:read", "third:read", "plain:read"],
            format,
            json!({}),
        )
        .await;
        // `resource`: only that service's scopes, and it is the audience.
        let a = token_form(
            &app,
            &c,
            &format!("grant_type=client_credentials&resource={}", enc(MCP)),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json()["scope"], "mcp:read");
        let for_mcp = a.json()["access_token"].as_str().unwrap().to_string();
        if format == "jwt" {
            assert_eq!(claims(&for_mcp)["aud"], MCP);
        }
        let i = introspect(&app, &for_mcp).await;
        assert_eq!(i["active"], true);
        assert_eq!(i["aud"], MCP);
        // `audience` is read as a synonym; two resources make an audience list.
        let both = token(
            &app,
            &c,
            &format!(
                "grant_type=client_credentials&resource={}&audience={}",
                enc(MCP),
                enc(THIRD)
            ),
        )
        .await;
        let i = introspect(&app, &both).await;
        assert_eq!(i["aud"], json!([MCP, THIRD]), "{i}");
        assert_eq!(i["scope"], "mcp:read third:read");
        if format == "jwt" {
            assert_eq!(claims(&both)["aud"], json!([MCP, THIRD]));
        }
        // The same resource with its scheme's default port written out (RFC 3986 §6.2.3),
        // and the host in capitals: the same service, and the audience as declared.
        let a = token_form(
            &app,
            &c,
            &format!(
                "grant_type=client_credentials&resource={}",
                enc("HTTPS://MCP.example.com:443/mcp")
            ),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let with_port = a.json()["access_token"].as_str().unwrap().to_string();
        assert_eq!(introspect(&app, &with_port).await["aud"], MCP);
        // Any other port is another resource.
        let a = token_form(
            &app,
            &c,
            &format!(
                "grant_type=client_credentials&resource={}",
                enc("https://mcp.example.com:8443/mcp")
            ),
        )
        .await;
        assert_eq!(error_of(&a), "invalid_target", "{}", a.text);
        // Refusals: unknown or malformed resource, a scope of another service, nothing held.
        for (form, error) in [
            (
                format!("resource={}", enc("https://unknown.example")),
                "invalid_target",
            ),
            (format!("resource={}", enc("not a uri")), "invalid_target"),
            (
                format!("resource={}", enc("https://mcp.example.com/mcp#x")),
                "invalid_target",
            ),
            (
                format!("resource={}&scope=plain:read", enc(MCP)),
                "invalid_scope",
            ),
            (
                format!("resource={}&scope=mcp:write", enc(MCP)),
                "invalid_scope",
            ),
        ] {
            let a = token_form(&app, &c, &format!("grant_type=client_credentials&{form}")).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{form}: {}", a.text);
            assert_eq!(error_of(&a), error, "{form}: {}", a.text);
        }
        let only_plain = client(&app, &["plain:read"], format, json!({})).await;
        let a = token_form(
            &app,
            &only_plain,
            &format!("grant_type=client_credentials&resource={}", enc(MCP)),
        )
        .await;
        assert_eq!(error_of(&a), "invalid_target", "{}", a.text);

        // /v1/authz: the service declares a resource, so its scopes need that audience.
        let general = token(&app, &c, "grant_type=client_credentials").await;
        let a = app.authz(Some(&general), Some("mcp:read")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text);
        assert!(a
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
        assert!(a.text.contains("audience"), "{}", a.text);
        assert_eq!(
            app.authz(Some(&for_mcp), Some("mcp:read")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            app.authz(Some(&both), Some("mcp:read third:read"))
                .await
                .status,
            StatusCode::OK
        );
        // A service without resources checks no audience; a token for MCP lacks its scope.
        assert_eq!(
            app.authz(Some(&general), Some("plain:read")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            app.authz(Some(&for_mcp), Some("plain:read")).await.status,
            StatusCode::FORBIDDEN
        );
    }

    // An API key is bound by its scopes alone.
    let (_, key) = app.key(&admin, json!({"scopes": ["mcp:read"]})).await;
    assert_eq!(
        app.authz(Some(&key), Some("mcp:read")).await.status,
        StatusCode::OK
    );

    // Taking the resource away takes the check away at once; declaring it again restores it.
    let c = client(&app, &["mcp:read"], "jwt", json!({})).await;
    let general = token(&app, &c, "grant_type=client_credentials").await;
    assert_eq!(
        app.authz(Some(&general), Some("mcp:read")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let a = patch_service(&app, &mcp, json!({"resources": []})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["resources"], json!([]));
    assert_eq!(
        app.authz(Some(&general), Some("mcp:read")).await.status,
        StatusCode::OK
    );
    let a = patch_service(&app, &mcp, json!({"resources": [MCP]})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        app.authz(Some(&general), Some("mcp:read")).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Only the admin key changes services; an unknown id is 404; another's URI is 409.
    let (_, manager) = app
        .key(
            &admin,
            json!({"roles": ["ORG-ADMIN"], "scopes": ["mcp:read"]}),
        )
        .await;
    let a = app
        .call(
            Method::PATCH,
            &format!("/v1/services/{mcp}"),
            Some(&manager),
            Some(json!({"resources": []})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert_eq!(
        patch_service(&app, "svc_nope", json!({"resources": []}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        patch_service(&app, &mcp, json!({"resources": [THIRD]}))
            .await
            .status,
        StatusCode::CONFLICT
    );
    let events = app.get("/v1/activity?action=service.update", &admin).await;
    assert_eq!(events.json()["items"].as_array().unwrap().len(), 2);
}
on_both!(resource_indicators, resources);

/// The gateway checks the audience too, from the rule's scope's service.
async fn gateway_audience(backend: keyplane_testkit::Backend) {
    let dir = keyplane_testkit::TempDir::new();
    let Some((app, _upstream)) = crate::dpop::spawn_with_gateway(backend, dir.path(), &[]).await
    else {
        return;
    };
    let gw = app.gateway_base().unwrap();
    let svc = app.get("/v1/services", &app.admin_key.clone()).await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ai-guard")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let guard = "https://guard.example.com";
    let a = patch_service(&app, &svc, json!({"resources": [guard]})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let c = client(&app, &["ai-guard:read"], "opaque", json!({})).await;
    let general = token(&app, &c, "grant_type=client_credentials").await;
    let bound = token(
        &app,
        &c,
        &format!("grant_type=client_credentials&resource={}", enc(guard)),
    )
    .await;
    let call = |t: String| {
        let http = app.http.clone();
        let url = format!("{gw}/v1/text/guard");
        async move {
            http.post(url)
                .bearer_auth(t)
                .json(&json!({"messages": [{"role": "user", "content": "hi"}], "recipe": "x"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(call(general).await, StatusCode::UNAUTHORIZED);
    assert_eq!(call(bound).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_audience_sqlite() {
    gateway_audience(keyplane_testkit::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_audience_postgres() {
    gateway_audience(keyplane_testkit::Backend::Postgres).await;
}

// ----- token exchange -----

fn exchange_form(subject: &str, extra: &str) -> String {
    format!(
        "grant_type={}&subject_token={}&subject_token_type={}{extra}",
        enc(EXCHANGE),
        enc(subject),
        enc(AT)
    )
}

async fn revoke(app: &TestApp, (id, secret): &(String, String), t: &str) {
    let a = app
        .http
        .post(format!("{}/v1/oauth/token/revoke", app.base))
        .basic_auth(id, Some(secret))
        .header(header::CONTENT_TYPE, FORM)
        .body(format!("token={}", enc(t)))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::OK);
}

async fn exchange(app: TestApp) {
    let admin = app.admin_key.clone();
    service(&app, "docs", &["docs:read", "docs:write"], &[]).await;
    service(&app, "mcp", &["mcp:read"], &[MCP]).await;
    let agent = client(&app, &["docs:read", "mcp:read"], "jwt", json!({})).await;
    let second = client(&app, &["docs:read", "mcp:read"], "opaque", json!({})).await;
    let stranger = client(&app, &["docs:read", "mcp:read"], "jwt", json!({})).await;
    let user = client(
        &app,
        &["docs:read", "docs:write", "mcp:read"],
        "jwt",
        json!({"may_act": [agent.0, second.0]}),
    )
    .await;
    let subject = token(&app, &user, "grant_type=client_credentials").await;

    // The agent acts for the user: the intersection of both, with `act`.
    let a = token_form(&app, &agent, &exchange_form(&subject, "")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    assert_eq!(v["issued_token_type"], AT);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["scope"], "docs:read mcp:read");
    assert!(v["expires_in"].as_i64().unwrap() <= 300, "{v}");
    let acting = v["access_token"].as_str().unwrap().to_string();
    let c = claims(&acting);
    assert_eq!(c["sub"], user.0.as_str());
    assert_eq!(c["client_id"], agent.0.as_str());
    assert_eq!(c["act"], json!({"sub": agent.0}));
    let i = introspect(&app, &acting).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["sub"], user.0.as_str());
    assert_eq!(i["client_id"], agent.0.as_str());
    assert_eq!(i["act"], json!({"sub": agent.0}));
    let z = app.authz(Some(&acting), Some("docs:read")).await;
    assert_eq!(z.status, StatusCode::OK, "{}", z.text);
    assert_eq!(z.header("x-keyplane-subject"), Some(user.0.as_str()));
    assert_eq!(z.header("x-keyplane-actor"), Some(agent.0.as_str()));
    // The user's own token has no actor.
    let z = app.authz(Some(&subject), Some("docs:read")).await;
    assert_eq!(z.header("x-keyplane-actor"), None);

    // Narrower is fine; wider is refused (the agent lacks docs:write; nobody holds admin).
    let a = token_form(&app, &agent, &exchange_form(&subject, "&scope=docs:read")).await;
    assert_eq!(a.json()["scope"], "docs:read", "{}", a.text);
    for scope in ["docs:write", "docs:read%20docs:write", "nope:x"] {
        let a = token_form(
            &app,
            &agent,
            &exchange_form(&subject, &format!("&scope={scope}")),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{scope}: {}", a.text);
        assert_eq!(error_of(&a), "invalid_scope", "{scope}: {}", a.text);
    }
    // An actor the subject does not name: invalid_request, and nothing is issued.
    let a = token_form(&app, &stranger, &exchange_form(&subject, "")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(error_of(&a), "invalid_request");
    assert!(a.text.contains("may_act"), "{}", a.text);
    // Malformed requests.
    for (form, error) in [
        (format!("grant_type={}&subject_token_type={}", enc(EXCHANGE), enc(AT)), "invalid_request"),
        (format!("grant_type={}&subject_token={}", enc(EXCHANGE), enc(&subject)), "invalid_request"),
        (
            format!(
                "grant_type={}&subject_token={}&subject_token_type=urn:ietf:params:oauth:token-type:saml2",
                enc(EXCHANGE),
                enc(&subject)
            ),
            "invalid_request",
        ),
        (exchange_form("kpt_not_a_token", ""), "invalid_request"),
        (
            exchange_form(&subject, "&requested_token_type=urn:ietf:params:oauth:token-type:refresh_token"),
            "invalid_request",
        ),
        (exchange_form(&subject, &format!("&actor_token={}", enc(&subject))), "invalid_request"),
        // The actor token must be the authenticated client's own.
        (
            exchange_form(&subject, &format!("&actor_token={}&actor_token_type={}", enc(&subject), enc(AT))),
            "invalid_request",
        ),
        (
            exchange_form(&subject, &format!("&resource={}", enc("https://unknown.example"))),
            "invalid_target",
        ),
    ] {
        let a = token_form(&app, &agent, &form).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{form}: {}", a.text);
        assert_eq!(error_of(&a), error, "{form}: {}", a.text);
    }
    // With a proper actor token it works.
    let own = token(&app, &agent, "grant_type=client_credentials").await;
    let a = token_form(
        &app,
        &agent,
        &exchange_form(
            &subject,
            &format!("&actor_token={}&actor_token_type={}", enc(&own), enc(AT)),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // Audience: a subject token for MCP can be exchanged only for MCP.
    let for_mcp = token(
        &app,
        &user,
        &format!("grant_type=client_credentials&resource={}", enc(MCP)),
    )
    .await;
    let a = token_form(&app, &agent, &exchange_form(&for_mcp, "")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let t = a.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&t)["aud"], MCP);
    assert_eq!(a.json()["scope"], "mcp:read");
    assert_eq!(
        app.authz(Some(&t), Some("mcp:read")).await.status,
        StatusCode::OK
    );
    // An unrestricted subject may be narrowed to a resource.
    let a = token_form(
        &app,
        &agent,
        &exchange_form(&subject, &format!("&resource={}", enc(MCP))),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["scope"], "mcp:read");

    // A chain: the second agent acts on the first agent's token; `act` nests.
    let a = token_form(&app, &second, &exchange_form(&acting, "")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let chained = a.json()["access_token"].as_str().unwrap().to_string();
    let i = introspect(&app, &chained).await;
    assert_eq!(i["sub"], user.0.as_str());
    assert_eq!(
        i["act"],
        json!({"sub": second.0, "act": {"sub": agent.0}}),
        "{i}"
    );
    // Revoking the first exchanged token ends the chained one; the original still lives.
    revoke(&app, &agent, &acting).await;
    assert_eq!(introspect(&app, &chained).await["active"], false);
    assert_eq!(introspect(&app, &subject).await["active"], true);

    // The subject's revocation ends every token exchanged from it, at once.
    let a = token_form(&app, &second, &exchange_form(&subject, "")).await;
    let opaque = a.json()["access_token"].as_str().unwrap().to_string();
    assert!(
        opaque.starts_with("kpt_") || !opaque.contains('.'),
        "{opaque}"
    );
    assert_eq!(
        introspect(&app, &opaque).await["act"],
        json!({"sub": second.0})
    );
    assert_eq!(
        app.authz(Some(&opaque), Some("docs:read")).await.status,
        StatusCode::OK
    );
    revoke(&app, &user, &subject).await;
    assert_eq!(introspect(&app, &opaque).await["active"], false);
    assert_eq!(
        app.authz(Some(&opaque), Some("docs:read")).await.status,
        StatusCode::UNAUTHORIZED
    );
    // And a revoked subject cannot be exchanged again.
    let a = token_form(&app, &agent, &exchange_form(&subject, "")).await;
    assert_eq!(error_of(&a), "invalid_request", "{}", a.text);

    // Withdrawing the permission stops new exchanges.
    let a = app
        .call(
            Method::PATCH,
            &format!("/v1/oauth-clients/{}", user.0),
            Some(&admin),
            Some(json!({"may_act": []})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["may_act"], json!([]));
    let fresh = token(&app, &user, "grant_type=client_credentials").await;
    let a = token_form(&app, &agent, &exchange_form(&fresh, "")).await;
    assert_eq!(error_of(&a), "invalid_request", "{}", a.text);
    // `may_act` names clients of the organization only.
    let a = app
        .call(
            Method::PATCH,
            &format!("/v1/oauth-clients/{}", user.0),
            Some(&admin),
            Some(json!({"may_act": ["kpc_doesnotexist"]})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);

    // An API key as the subject: `sub` is the key, and revoking the key ends the token.
    let (key_id, key) = app
        .key(
            &admin,
            json!({"scopes": ["docs:read"], "may_act": [agent.0]}),
        )
        .await;
    let a = token_form(&app, &agent, &exchange_form(&key, "")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let from_key = a.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(a.json()["scope"], "docs:read");
    assert_eq!(claims(&from_key)["sub"], key_id.as_str());
    let z = app.authz(Some(&from_key), Some("docs:read")).await;
    assert_eq!(z.header("x-keyplane-subject"), Some(key_id.as_str()));
    assert_eq!(z.header("x-keyplane-actor"), Some(agent.0.as_str()));
    let a = token_form(&app, &stranger, &exchange_form(&key, "")).await;
    assert_eq!(error_of(&a), "invalid_request", "{}", a.text);
    let r = app
        .post(&format!("/v1/api-keys/{key_id}/revoke"), &admin, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(introspect(&app, &from_key).await["active"], false);
    assert_eq!(
        app.authz(Some(&from_key), Some("docs:read")).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The activity log names both parties.
    let events = app
        .get("/v1/activity?action=access_token.exchange", &admin)
        .await
        .json();
    let items = events["items"].as_array().unwrap();
    assert!(items.len() >= 6, "{events}");
    assert!(items
        .iter()
        .any(|e| e["details"]["subject"] == key_id.as_str()
            && e["details"]["actor"] == agent.0.as_str()));
    assert!(items
        .iter()
        .any(|e| e["details"]["act"] == json!({"sub": second.0, "act": {"sub": agent.0}})));

    // The metadata advertises the grant.
    let m = app
        .call(
            Method::GET,
            "/.well-known/oauth-authorization-server",
            None,
            None,
        )
        .await
        .json();
    assert!(m["grant_types_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == EXCHANGE));
}
on_both!(token_exchange, exchange);

/// Another organization's subject token is refused like one that allows nobody.
async fn exchange_across_orgs(app: TestApp) {
    let admin = app.admin_key.clone();
    service(&app, "docs", &["docs:read"], &[]).await;
    let o = app.post("/v1/orgs", &admin, json!({"name": "other"})).await;
    assert_eq!(o.status, StatusCode::CREATED, "{}", o.text);
    let other_org = o.json()["id"].as_str().unwrap().to_string();
    let agent = client(&app, &["docs:read"], "jwt", json!({})).await;
    // A client of the other organization cannot name the agent…
    let a = app
        .post(
            "/v1/oauth-clients",
            &admin,
            json!({"name": "theirs", "org_id": other_org, "scopes": ["docs:read"], "may_act": [agent.0]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    // …so its tokens cannot be exchanged by it.
    let theirs = app
        .post(
            "/v1/oauth-clients",
            &admin,
            json!({"name": "theirs", "org_id": other_org, "scopes": ["docs:read"]}),
        )
        .await
        .json();
    let theirs = (
        theirs["client_id"].as_str().unwrap().to_string(),
        theirs["client_secret"].as_str().unwrap().to_string(),
    );
    let t = token(&app, &theirs, "grant_type=client_credentials").await;
    let a = token_form(&app, &agent, &exchange_form(&t, "")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(error_of(&a), "invalid_request");
}
on_both!(token_exchange_across_orgs, exchange_across_orgs);

/// Two nodes: a subject revoked on one node ends the exchanged token on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_revoked_on_one_node_ends_the_exchanged_token_on_the_other() {
    let Some(a) = keyplane_testkit::spawn_app(keyplane_testkit::Backend::Postgres).await else {
        return;
    };
    let b = a.spawn_second_node().await;
    service(&a, "docs", &["docs:read"], &[]).await;
    let agent = client(&a, &["docs:read"], "opaque", json!({})).await;
    let (key_id, key) = a
        .key(
            &a.admin_key.clone(),
            json!({"scopes": ["docs:read"], "may_act": [agent.0]}),
        )
        .await;
    let t = token(&b, &agent, &exchange_form(&key, "")).await;
    assert_eq!(
        b.authz(Some(&t), Some("docs:read")).await.status,
        StatusCode::OK
    );
    let r = a
        .post(
            &format!("/v1/api-keys/{key_id}/revoke"),
            &a.admin_key.clone(),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if b.authz(Some(&t), Some("docs:read")).await.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node b still accepts the token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A DPoP-bound subject token is exchanged only with a proof of its key, and the exchanged
/// token is bound to that key too.
async fn exchange_bound(app: TestApp) {
    use crate::dpop::{jkt, proof, token as dpop_token, token_url};
    use crate::pkjwt::TestKey;
    service(&app, "docs", &["docs:read"], &[]).await;
    let agent = client(&app, &["docs:read"], "jwt", json!({})).await;
    let user = client(&app, &["docs:read"], "jwt", json!({"may_act": [agent.0]})).await;
    let key = TestKey::es256("k");
    let url = token_url(&app);
    let a = dpop_token(&app, &user.0, &user.1, &[&proof(&key, "POST", &url, None)]).await;
    assert_eq!(a.json()["token_type"], "DPoP", "{}", a.text);
    let bound = a.json()["access_token"].as_str().unwrap().to_string();

    let send = |proof: Option<String>| {
        let http = app.http.clone();
        let url = url.clone();
        let agent = agent.clone();
        let body = exchange_form(&bound, "");
        async move {
            let mut r = http
                .post(url)
                .basic_auth(&agent.0, Some(&agent.1))
                .header(header::CONTENT_TYPE, FORM)
                .body(body);
            if let Some(p) = proof {
                r = r.header("DPoP", p);
            }
            let resp = r.send().await.unwrap();
            Answer {
                status: resp.status(),
                headers: resp.headers().clone(),
                text: resp.text().await.unwrap(),
            }
        }
    };
    // Without a proof, or with another key's: refused.
    let a = send(None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(error_of(&a), "invalid_dpop_proof");
    let other = TestKey::ed25519("o");
    let a = send(Some(proof(&other, "POST", &url, None))).await;
    assert_eq!(error_of(&a), "invalid_dpop_proof", "{}", a.text);
    // With the subject's key: a token bound to the same key, acting for the user.
    let a = send(Some(proof(&key, "POST", &url, None))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["token_type"], "DPoP");
    let t = a.json()["access_token"].as_str().unwrap().to_string();
    let c = claims(&t);
    assert_eq!(c["cnf"]["jkt"], jkt(&key).as_str());
    assert_eq!(c["act"]["sub"], agent.0.as_str());
    // As Bearer it is refused, like any bound token.
    assert_eq!(
        app.authz(Some(&t), Some("docs:read")).await.status,
        StatusCode::UNAUTHORIZED
    );
}
on_both!(token_exchange_dpop_bound_subject, exchange_bound);
