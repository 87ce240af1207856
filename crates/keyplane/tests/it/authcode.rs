//! The authorization-code grant end to end (issue 14 §2–§4): an app registers itself (RFC
//! 7591), a person signs in to the console and consents, the code is redeemed once with PKCE,
//! refresh tokens rotate and a replayed one revokes the grant, connected apps are listed and
//! revoked, a removed member's and a blocked app's tokens stop; and what an attacker tries.

use crate::console::{csrf_of, Console};
use crate::support::{admin_console, introspect, password_link, redeem_link, PASSWORD};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use keyplane_testkit::reqwest::{self, header, StatusCode};
use keyplane_testkit::{json, spawn_app_with, Backend, Options, TestApp};
use serde_json::Value;
use std::collections::HashMap;

const RESOURCE: &str = "https://mcp.example.com/mcp";
const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn open_registration() -> Options {
    Options::default().env("KEYPLANE_OAUTH_REGISTRATION", "open")
}

/// A PKCE pair: the verifier and its S256 challenge.
fn pkce(seed: &str) -> (String, String) {
    let verifier = format!("{seed}-{}", "v".repeat(60));
    let challenge = B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    (verifier, challenge)
}

/// The query of a URL, decoded.
fn query_of(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// The service the apps ask for, and a member with a password: their id.
async fn setup(app: &TestApp, email: &str) -> (String, Console) {
    let r = app
        .post(
            "/v1/services",
            &app.admin_key,
            json!({ "name": "mcp", "scopes": ["mcp:read", "mcp:write"], "resources": [RESOURCE] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (admin, csrf) = admin_console(app).await;
    member_signed_in(app, admin, &csrf, email).await
}

/// A member (made through the API) with a password, and a console that is not signed in yet.
async fn member_signed_in(
    app: &TestApp,
    mut admin: Console,
    csrf: &str,
    email: &str,
) -> (String, Console) {
    let r = app
        .post(
            "/v1/members",
            &app.admin_key,
            json!({ "email": email, "role": "member" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let link = password_link(&mut admin, csrf, &id).await;
    assert_eq!(redeem_link(app, &link).await, StatusCode::SEE_OTHER);
    (id, Console::new(app))
}

/// Registers a public app; its client id.
async fn register(app: &TestApp, body: Value) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/oauth/register", app.base))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn public_app(app: &TestApp) -> String {
    let r = register(
        app,
        json!({
            "client_name": "Test MCP client",
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    assert!(
        v.get("client_secret").is_none(),
        "a public app has no secret: {v}"
    );
    assert_eq!(v["token_endpoint_auth_method"], "none");
    v["client_id"].as_str().unwrap().to_string()
}

fn authorize_query(client_id: &str, challenge: &str, state: &str, scope: Option<&str>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", RESOURCE);
    if let Some(sc) = scope {
        s.append_pair("scope", sc);
    }
    s.finish()
}

/// Signs `c` in as `email`, starting from an authorization request: the sign-in page carries
/// the way back, and signing in leads back to it.
async fn sign_in_for(c: &mut Console, email: &str, query: &str) -> String {
    let (status, _, location) = c.get(&format!("/console/authorize?{query}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let to_sign_in = location.unwrap();
    assert!(
        to_sign_in.starts_with("/console/sign-in?next="),
        "{to_sign_in}"
    );
    let (status, page, _) = c.get(&to_sign_in).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("name=\"next\""),
        "the form carries the way back"
    );
    let next = query_of(&to_sign_in)["next"].clone();
    let pre = csrf_of(&page);
    let (status, body, location) = c
        .post(
            "/console/sign-in",
            &[
                ("csrf", pre.as_str()),
                ("method", "member"),
                ("email", email),
                ("password", PASSWORD),
                ("next", next.as_str()),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let back = location.unwrap();
    assert_eq!(back, format!("/console/authorize?{query}"));
    back
}

/// The consent page's form fields (hidden parameters and the CSRF token).
fn consent_form(page: &str) -> Vec<(String, String)> {
    let form = &page[page
        .find("action=\"/console/authorize\"")
        .expect("the consent form")..];
    let form = &form[..form.find("</form>").unwrap()];
    form.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|i| {
            let attr = |n: &str| {
                let start = i.find(&format!("{n}=\"")).unwrap() + n.len() + 2;
                let end = start + i[start..].find('"').unwrap();
                html_unescape(&i[start..end])
            };
            (attr("name"), attr("value"))
        })
        .collect()
}

fn html_unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x2F;", "/")
        .replace("&#x3a;", ":")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Authorizes `query` for the signed-in person: through the consent page when it asks, at
/// once when their grant already covers it; the redirect to the app.
async fn code_for(c: &mut Console, query: &str) -> String {
    let (status, _, location) = c.get(&format!("/console/authorize?{query}")).await;
    if status == StatusCode::SEE_OTHER {
        return location.unwrap();
    }
    consent(c, query, "approve").await
}

/// Shows the consent page and answers it; the redirect to the app.
async fn consent(c: &mut Console, query: &str, decision: &str) -> String {
    let (status, page, _) = c.get(&format!("/console/authorize?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Test MCP client"), "the app's name is shown");
    assert!(page.contains(RESOURCE), "the resource is shown");
    let mut form = consent_form(&page);
    form.push(("decision".into(), decision.into()));
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, body, location) = c.post("/console/authorize", &form, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    location.unwrap()
}

async fn token_form(app: &TestApp, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let r = app
        .http
        .post(format!("{}/v1/oauth/token", app.base))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    if status == StatusCode::OK {
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    }
    (status, r.json().await.unwrap())
}

async fn redeem(app: &TestApp, client_id: &str, code: &str, verifier: &str) -> (StatusCode, Value) {
    token_form(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn refresh(
    app: &TestApp,
    client_id: &str,
    rt: &str,
    scope: Option<&str>,
) -> (StatusCode, Value) {
    let mut f = vec![
        ("grant_type", "refresh_token"),
        ("client_id", client_id),
        ("refresh_token", rt),
    ];
    if let Some(s) = scope {
        f.push(("scope", s));
    }
    token_form(app, &f).await
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_string()
}

async fn active(app: &TestApp, token: &str) -> bool {
    introspect(app, token).await["active"] == true
}

/// The whole flow, as an MCP client and a person go through it.
async fn flow(app: TestApp) {
    let email = "ana@example.com";
    let (ana, mut browser) = setup(&app, email).await;
    let client_id = public_app(&app).await;

    // The metadata names the endpoints, S256, `none`, RFC 9207's `iss`, and registration.
    let meta: Value = app
        .http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            app.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        meta["authorization_endpoint"],
        format!("{}/v1/oauth/authorize", app.base)
    );
    assert_eq!(
        meta["registration_endpoint"],
        format!("{}/v1/oauth/register", app.base)
    );
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(meta["response_types_supported"], json!(["code"]));
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    for g in ["authorization_code", "refresh_token", "client_credentials"] {
        assert!(
            meta["grant_types_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(g)),
            "{g}"
        );
    }
    assert!(meta["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("none")));

    // The authorization endpoint sends the browser to the console with the same parameters.
    let (verifier, challenge) = pkce("one");
    let query = authorize_query(&client_id, &challenge, "st-1", None);
    let r = no_redirects()
        .get(format!("{}/v1/oauth/authorize?{query}", app.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(
        r.headers()["location"],
        format!("/console/authorize?{query}")
    );

    // Not signed in: to the sign-in page and back; then the consent page; Allow.
    sign_in_for(&mut browser, email, &query).await;
    let back = consent(&mut browser, &query, "approve").await;
    assert!(back.starts_with(&format!("{REDIRECT}?")), "{back}");
    let q = query_of(&back);
    assert_eq!(q["state"], "st-1");
    assert_eq!(q["iss"], app.base, "RFC 9207: the issuer in the response");
    let code = q["code"].clone();

    // The code, redeemed with the verifier: an access token for the resource, as Ana.
    let (status, t) = redeem(&app, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "mcp:read mcp:write");
    let (access1, refresh1) = (s(&t, "access_token"), s(&t, "refresh_token"));
    let i = introspect(&app, &access1).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["sub"], ana);
    assert_eq!(i["client_id"], client_id);
    assert_eq!(i["aud"], RESOURCE);
    assert_eq!(
        app.authz(Some(&access1), Some("mcp:read")).await.status,
        StatusCode::OK
    );
    // Consent is recorded in the activity log.
    let events = app
        .get("/v1/activity?action=oauth_grant.consent", &app.admin_key)
        .await
        .json();
    assert_eq!(
        events["items"][0]["details"]["client_id"], client_id,
        "{events}"
    );

    // Refresh: rotated; a narrower scope narrows the access token only.
    let (status, t2) = refresh(&app, &client_id, &refresh1, None).await;
    assert_eq!(status, StatusCode::OK, "{t2}");
    let refresh2 = s(&t2, "refresh_token");
    assert_ne!(refresh2, refresh1);
    let (status, t3) = refresh(&app, &client_id, &refresh2, Some("mcp:read")).await;
    assert_eq!(status, StatusCode::OK, "{t3}");
    assert_eq!(t3["scope"], "mcp:read");
    let access3 = s(&t3, "access_token");
    let refresh3 = s(&t3, "refresh_token");
    assert_eq!(
        app.authz(Some(&access3), Some("mcp:write")).await.status,
        StatusCode::FORBIDDEN,
        "a narrowed token lacks the scope"
    );
    let (status, e) = refresh(&app, &client_id, &refresh3, Some("mcp:read mcp:admin")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"], "invalid_scope", "{e}");
    // That refusal used refresh3 up (it was redeemed); the next one is needed from a new flow.

    // A used refresh token presented again: the grant is revoked, every token of it stops.
    let (status, e) = refresh(&app, &client_id, &refresh2, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"], "invalid_grant", "{e}");
    assert!(!active(&app, &access1).await, "the grant's tokens stop");
    assert!(!active(&app, &access3).await);
    assert_eq!(
        app.authz(Some(&access1), Some("mcp:read")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let grants = app.get("/v1/oauth-grants", &app.admin_key).await.json();
    assert_eq!(grants["items"][0]["status"], "revoked", "{grants}");
    assert_eq!(grants["items"][0]["revoked_reason"], "refresh_token_reuse");

    // A new authorization asks again (the grant is gone); a replayed code revokes it too.
    let (verifier, challenge) = pkce("two");
    let query = authorize_query(&client_id, &challenge, "st-2", Some("mcp:read"));
    let back = consent(&mut browser, &query, "approve").await;
    let code = query_of(&back)["code"].clone();
    let (status, t) = redeem(&app, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["scope"], "mcp:read");
    let access = s(&t, "access_token");
    assert!(active(&app, &access).await);
    let (status, e) = redeem(&app, &client_id, &code, &verifier).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(
        !active(&app, &access).await,
        "a replayed code revokes what it gave"
    );

    // Consent remembered: once allowed, the same request goes straight back with a code.
    let (verifier, challenge) = pkce("three");
    let query = authorize_query(&client_id, &challenge, "st-3", None);
    consent(&mut browser, &query, "approve").await;
    let (verifier4, challenge4) = pkce("four");
    let query4 = authorize_query(&client_id, &challenge4, "st-4", Some("mcp:read"));
    let (status, _, location) = browser.get(&format!("/console/authorize?{query4}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "no question asked twice");
    let code4 = query_of(&location.unwrap())["code"].clone();
    let _ = verifier;
    let (status, t) = redeem(&app, &client_id, &code4, &verifier4).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let access = s(&t, "access_token");

    let grants = app.get("/v1/oauth-grants", &app.admin_key).await.json();
    let live: Vec<&Value> = grants["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["status"] == "active")
        .collect();
    assert_eq!(
        live.len(),
        1,
        "one live grant per person, app and resource: {grants}"
    );
    let grant_id = live[0]["id"].as_str().unwrap().to_string();
    assert_eq!(live[0]["member_id"], ana);
    assert_eq!(live[0]["scopes"], json!(["mcp:read", "mcp:write"]));

    // Connected apps: revoking the grant stops its tokens at once.
    let r = app
        .post(
            &format!("/v1/oauth-grants/{grant_id}/revoke"),
            &app.admin_key,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["status"], "revoked");
    assert!(!active(&app, &access).await);
    assert_eq!(
        app.authz(Some(&access), Some("mcp:read")).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The console's Connected apps: Ana sees hers; another member cannot revoke it; Ana can.
    let (verifier, challenge) = pkce("seven");
    let query = authorize_query(&client_id, &challenge, "st-7", None);
    let back = consent(&mut browser, &query, "approve").await;
    let (status, t) = redeem(&app, &client_id, &query_of(&back)["code"], &verifier).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let access = s(&t, "access_token");
    let (status, page, _) = browser.get("/console/apps").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Test MCP client") && page.contains(RESOURCE),
        "{page}"
    );
    let live_id = app.get("/v1/oauth-grants", &app.admin_key).await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["status"] == "active")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(page.contains(&live_id));
    let (mut admin, admin_csrf) = admin_console(&app).await;
    let r = app
        .post(
            "/v1/members",
            &app.admin_key,
            json!({ "email": "eve@example.com", "role": "member" }),
        )
        .await;
    let eve = r.json()["id"].as_str().unwrap().to_string();
    let (mut eve_console, eve_csrf) =
        crate::support::member_console(&app, &mut admin, &admin_csrf, &eve, "eve@example.com")
            .await;
    let (status, page, _) = eve_console.get("/console/apps").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains(&live_id),
        "a member sees only their own apps: {page}"
    );
    let (status, _, _) = eve_console
        .post(
            &format!("/console/apps/{live_id}/revoke"),
            &[],
            Some(&eve_csrf),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another member's grant is out of reach"
    );
    assert!(active(&app, &access).await);
    let (status, page, _) = admin.get("/console/apps").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&live_id) && page.contains(email),
        "a manager sees the organization's"
    );
    let (_, page, _) = browser.get("/console/apps").await;
    let ana_csrf = csrf_of(&page);
    let (status, body, _) = browser
        .post(
            &format!("/console/apps/{live_id}/revoke"),
            &[],
            Some(&ana_csrf),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !active(&app, &access).await,
        "revoked in the console: the next call is refused"
    );

    // A removed member's tokens stop at once.
    let (verifier, challenge) = pkce("six");
    let query = authorize_query(&client_id, &challenge, "st-6", None);
    let back = consent(&mut browser, &query, "approve").await;
    let (status, t) = redeem(&app, &client_id, &query_of(&back)["code"], &verifier).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let access = s(&t, "access_token");
    let refresh_token = s(&t, "refresh_token");
    assert!(active(&app, &access).await);
    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/members/{ana}"),
            Some(&app.admin_key),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    assert!(
        !active(&app, &access).await,
        "a removed member's token stops"
    );
    let (status, _) = refresh(&app, &client_id, &refresh_token, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
on_both!(
    authorization_code_end_to_end,
    flow,
    super::open_registration()
);

/// What the authorization endpoint and the token endpoint refuse, and how.
async fn refusals(app: TestApp) {
    let email = "bo@example.com";
    let (_, mut browser) = setup(&app, email).await;
    let client_id = public_app(&app).await;
    let (verifier, challenge) = pkce("r");

    // The client or its redirect URI cannot be trusted: a page, never a redirect.
    let page = |q: String| {
        let app = &app;
        async move {
            let r = no_redirects()
                .get(format!("{}/console/authorize?{q}", app.base))
                .send()
                .await
                .unwrap();
            (
                r.status(),
                r.headers().get("location").cloned(),
                r.text().await.unwrap(),
            )
        }
    };
    let bad_redirect =
        authorize_query(&client_id, &challenge, "s", None).replace("callback", "elsewhere");
    let (status, location, body) = page(bad_redirect).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        location.is_none(),
        "never sent to an unregistered redirect URI"
    );
    assert!(body.contains("redirect URI"), "{body}");
    let (status, location, _) = page(authorize_query("app_unknown", &challenge, "s", None)).await;
    assert_eq!(
        (status, location.is_none()),
        (StatusCode::BAD_REQUEST, true)
    );
    let (status, location, _) = page(
        authorize_query(&client_id, &challenge, "s", None)
            .replace("127.0.0.1%3A9", "127.0.0.1%3A9.evil.example"),
    )
    .await;
    assert_eq!(
        (status, location.is_none()),
        (StatusCode::BAD_REQUEST, true)
    );

    // Everything else goes back to the app as an error, with its state and the issuer.
    let back_error = |q: String| {
        let app = &app;
        async move {
            let r = no_redirects()
                .get(format!("{}/console/authorize?{q}", app.base))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SEE_OTHER, "{q}");
            let to = r.headers()["location"].to_str().unwrap().to_string();
            assert!(to.starts_with(REDIRECT), "{to}");
            let q = query_of(&to);
            assert_eq!(q["iss"], app.base);
            (q["error"].clone(), q.get("state").cloned())
        }
    };
    let base = authorize_query(&client_id, &challenge, "s", None);
    let without = |name: &str| {
        base.split('&')
            .filter(|p| !p.starts_with(&format!("{name}=")))
            .collect::<Vec<_>>()
            .join("&")
    };
    assert_eq!(
        back_error(without("code_challenge")).await,
        ("invalid_request".into(), Some("s".into()))
    );
    assert_eq!(
        back_error(base.replace("code_challenge_method=S256", "code_challenge_method=plain"))
            .await
            .0,
        "invalid_request"
    );
    assert_eq!(
        back_error(without("code_challenge_method")).await.0,
        "invalid_request"
    );
    assert_eq!(back_error(without("resource")).await.0, "invalid_target");
    assert_eq!(
        back_error(base.replace("mcp.example.com", "other.example.com"))
            .await
            .0,
        "invalid_target"
    );
    assert_eq!(
        back_error(format!("{base}&resource=https%3A%2F%2Fother.example.com"))
            .await
            .0,
        "invalid_target",
        "one resource per authorization"
    );
    assert_eq!(
        back_error(format!("{base}&scope=mcp%3Aadmin")).await.0,
        "invalid_scope"
    );
    assert_eq!(
        back_error(base.replace("response_type=code", "response_type=token"))
            .await
            .0,
        "unsupported_response_type"
    );
    // A parameter sent twice is not trusted either.
    assert_eq!(
        back_error(format!("{base}&code_challenge=x")).await.0,
        "invalid_request"
    );

    // The consent form needs the session's CSRF token; the admin key is nobody to consent.
    sign_in_for(&mut browser, email, &base).await;
    let (_, consent_page, _) = browser.get(&format!("/console/authorize?{base}")).await;
    let csp = no_redirects()
        .get(format!("{}/console/authorize?{base}", app.base))
        .header("cookie", browser.cookie_header())
        .send()
        .await
        .unwrap()
        .headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:9;"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let mut form: Vec<(String, String)> = consent_form(&consent_page)
        .into_iter()
        .filter(|(k, _)| k != "csrf")
        .collect();
    form.push(("decision".into(), "approve".into()));
    let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, _, location) = browser.post("/console/authorize", &f, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(location.is_none());
    let (mut admin, _) = admin_console(&app).await;
    let (status, body, _) = admin.get(&format!("/console/authorize?{base}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("admin key is not a person"), "{body}");

    // Deny: `access_denied` with the state; nothing granted.
    let back = consent(&mut browser, &base, "deny").await;
    let q = query_of(&back);
    assert_eq!(
        (q["error"].as_str(), q["state"].as_str()),
        ("access_denied", "s")
    );
    assert!(!q.contains_key("code"));

    // The token endpoint: a wrong verifier, another redirect URI, another client, garbage.
    let back = code_for(&mut browser, &base).await;
    let code = query_of(&back)["code"].clone();
    let other = public_app(&app).await;
    let (status, e) = redeem(&app, &other, &code, &verifier).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // (That attempt used the code up; the replay below revokes the grant.)
    let back = code_for(&mut browser, &base).await;
    let code = query_of(&back)["code"].clone();
    let (status, e) = redeem(&app, &client_id, &code, &pkce("wrong").0).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{e}"
    );
    assert!(e["error_description"]
        .as_str()
        .unwrap()
        .contains("code_verifier"));
    let back = code_for(&mut browser, &base).await;
    let code = query_of(&back)["code"].clone();
    let (status, e) = token_form(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client_id),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/other"),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, e) = redeem(&app, &client_id, "not-a-code", &verifier).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, e) = redeem(&app, "app_nobody", "x", &verifier).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let (status, e) = refresh(&app, &client_id, "kpr_nothing", None).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // A public app sending a secret is told not to.
    let (status, e) = token_form(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("client_secret", "x"),
            ("refresh_token", "y"),
        ],
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    // A blocked app: its tokens stop, it authenticates nowhere, and the person is told.
    let back = code_for(&mut browser, &base).await;
    let (status, t) = redeem(&app, &client_id, &query_of(&back)["code"], &verifier).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let access = s(&t, "access_token");
    let r = app
        .post(
            "/v1/oauth-apps/block",
            &app.admin_key,
            json!({ "client_id": client_id }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["status"], "blocked");
    assert!(!active(&app, &access).await);
    let (status, _) = refresh(&app, &client_id, &s(&t, "refresh_token"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = page(base.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("blocked"), "{body}");
    let apps = app.get("/v1/oauth-apps", &app.admin_key).await.json();
    assert!(apps["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["client_id"] == client_id && a["status"] == "blocked"));
}
on_both!(
    authorization_code_refusals,
    refusals,
    super::open_registration()
);

/// Registration: off by default (and absent from the metadata), open, or behind a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_policies() {
    let meta = |app: &TestApp| {
        let url = format!("{}/.well-known/oauth-authorization-server", app.base);
        let http = app.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let body = json!({ "client_name": "x", "redirect_uris": ["https://app.example/cb"] });
    let Some(off) = spawn_app_with(Backend::Sqlite, Options::default()).await else {
        return;
    };
    assert!(meta(&off).await.get("registration_endpoint").is_none());
    let r = register(&off, body.clone()).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let token = "an-initial-access-token-of-forty-characters";
    let Some(gated) = spawn_app_with(
        Backend::Sqlite,
        Options::default()
            .env("KEYPLANE_OAUTH_REGISTRATION", "token")
            .env("KEYPLANE_OAUTH_REGISTRATION_TOKEN", token),
    )
    .await
    else {
        return;
    };
    assert!(meta(&gated).await["registration_endpoint"].is_string());
    let r = register(&gated, body.clone()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let r = gated
        .http
        .post(format!("{}/v1/oauth/register", gated.base))
        .bearer_auth("wrong-wrong-wrong-wrong-wrong-wrong-wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = gated
        .http
        .post(format!("{}/v1/oauth/register", gated.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    // RFC 7591's default method is client_secret_basic: a secret, shown once.
    assert_eq!(v["token_endpoint_auth_method"], "client_secret_basic");
    assert!(
        v["client_secret"].as_str().is_some_and(|s| s.len() > 20),
        "{v}"
    );
    assert_eq!(v["client_secret_expires_at"], 0);

    // Bad metadata: the RFC 7591 error codes.
    for (bad, code) in [
        (
            json!({ "redirect_uris": ["http://app.example/cb"] }),
            "invalid_redirect_uri",
        ),
        (json!({ "redirect_uris": [] }), "invalid_redirect_uri"),
        (
            json!({ "redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"] }),
            "invalid_client_metadata",
        ),
        (
            json!({ "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt" }),
            "invalid_client_metadata",
        ),
    ] {
        let r = gated
            .http
            .post(format!("{}/v1/oauth/register", gated.base))
            .bearer_auth(token)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], code, "{bad}: {e}");
    }
    let r = gated
        .http
        .post(format!("{}/v1/oauth/register", gated.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(format!("{{\"client_name\": \"{}\"}}", "x".repeat(6000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "metadata too large");

    // Open registration is bounded per address: 10 a minute, then 429 with Retry-After.
    let Some(open) = spawn_app_with(Backend::Sqlite, open_registration()).await else {
        return;
    };
    for i in 0..10 {
        let r = register(&open, body.clone()).await;
        assert_eq!(r.status(), StatusCode::CREATED, "registration {i}");
    }
    let r = register(&open, body.clone()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    let apps = open
        .get("/v1/oauth-apps?limit=200", &open.admin_key)
        .await
        .json();
    assert_eq!(
        apps["items"].as_array().unwrap().len(),
        10,
        "nothing stored past the limit"
    );
}

/// A confidential registered app authenticates with its secret at the token endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_app_needs_its_secret() {
    let Some(app) = spawn_app_with(Backend::Sqlite, open_registration()).await else {
        return;
    };
    let (_, mut browser) = setup(&app, "cy@example.com").await;
    let r = register(
        &app,
        json!({ "client_name": "Test MCP client", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic" }),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    let (client_id, secret) = (s(&v, "client_id"), s(&v, "client_secret"));
    let (verifier, challenge) = pkce("c");
    let query = authorize_query(&client_id, &challenge, "s", None);
    sign_in_for(&mut browser, "cy@example.com", &query).await;
    let back = consent(&mut browser, &query, "approve").await;
    let code = query_of(&back)["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    // Without the secret: invalid_client (the code is not used up by a failed authentication).
    let (status, e) = token_form(
        &app,
        &[&form[..], &[("client_id", client_id.as_str())]].concat(),
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let r = app
        .http
        .post(format!("{}/v1/oauth/token", app.base))
        .basic_auth(&client_id, Some("wrong"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .http
        .post(format!("{}/v1/oauth/token", app.base))
        .basic_auth(&client_id, Some(&secret))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let t: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{t}");
    assert!(t["refresh_token"].is_string());
}

/// Serves client ID metadata documents on 127.0.0.1: `/good.json` names itself, `/liar.json`
/// names another URL, `/big.json` is over 5 KiB, `/slow.json` never finishes, `/moved.json`
/// redirects to the good one. The base URL.
async fn metadata_server() -> String {
    use axum::response::IntoResponse;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let b = base.clone();
    let doc = move |name: &str, client_id: String| {
        json!({
            "client_id": client_id,
            "client_name": format!("Doc app {name}"),
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        })
    };
    let (g, l, bg) = (b.clone(), b.clone(), b.clone());
    let router = axum::Router::new()
        .route(
            "/good.json",
            get(move || async move { axum::Json(doc("good", format!("{g}/good.json"))) }),
        )
        .route(
            "/liar.json",
            get(move || async move {
                axum::Json(
                    json!({"client_id": format!("{l}/good.json"), "redirect_uris": [REDIRECT]}),
                )
            }),
        )
        .route(
            "/big.json",
            get(move || async move {
                let mut d =
                    json!({"client_id": format!("{bg}/big.json"), "redirect_uris": [REDIRECT]});
                d["padding"] = json!("x".repeat(6000));
                axum::Json(d)
            }),
        )
        .route(
            "/slow.json",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                "never"
            }),
        )
        .route(
            "/moved.json",
            get(move || async move {
                axum::response::Redirect::temporary(&format!("{b}/good.json")).into_response()
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// Apps identified by their client ID metadata document (CIMD): fetched on first sight,
/// checked against the URL, listed; and what a lying, large, slow, redirecting or internal
/// document gets.
async fn metadata_documents(app: TestApp) {
    let email = "di@example.com";
    let (_, mut browser) = setup(&app, email).await;
    let docs = metadata_server().await;
    let meta: Value = app
        .http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            app.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["client_id_metadata_document_supported"], true);

    let client_id = format!("{docs}/good.json");
    let (verifier, challenge) = pkce("doc");
    let query = authorize_query(&client_id, &challenge, "d", None);
    sign_in_for(&mut browser, email, &query).await;
    let (status, page, _) = browser.get(&format!("/console/authorize?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Doc app good"), "the document's name");
    assert!(page.contains(&client_id), "the document's URL is shown");
    let mut form = consent_form(&page);
    form.push(("decision".into(), "approve".into()));
    let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, _, location) = browser.post("/console/authorize", &f, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let code = query_of(&location.unwrap())["code"].clone();
    let (status, t) = redeem(&app, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(
        introspect(&app, &s(&t, "access_token")).await["client_id"],
        client_id
    );
    let apps = app.get("/v1/oauth-apps", &app.admin_key).await.json();
    let listed = apps["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["client_id"] == client_id)
        .cloned();
    assert_eq!(
        listed.as_ref().map(|a| a["kind"].clone()),
        Some(json!("metadata")),
        "{apps}"
    );
    let events = app
        .get("/v1/activity?action=oauth_app.discover", &app.admin_key)
        .await
        .json();
    assert_eq!(events["items"][0]["target"], client_id, "{events}");

    // Documents that cannot be used: a page for the person, never a redirect.
    for (path, why) in [
        ("liar.json", "not the URL"),
        ("big.json", "larger than"),
        ("slow.json", "request failed"),
        ("moved.json", "answered 307"),
        ("missing.json", "answered 404"),
    ] {
        let q = authorize_query(&format!("{docs}/{path}"), &challenge, "d", None);
        let started = std::time::Instant::now();
        let (status, body, location) = browser.get(&format!("/console/authorize?{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(location.is_none(), "{path}");
        assert!(body.contains(why), "{path}: {body}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{path} took too long"
        );
    }
    // Internal addresses are never fetched, even with loopback allowed; nor plain http
    // elsewhere.
    for (url, why) in [
        ("https://10.0.0.1/client.json", "not a public address"),
        (
            "https://169.254.169.254/latest/meta-data/client.json",
            "not a public address",
        ),
        ("https://[fd00::1]/client.json", "not a public address"),
        (
            "https://[::ffff:192.168.0.1]/client.json",
            "not a public address",
        ),
        ("http://app.example/client.json", "https://"),
        ("https://app.example", "path"),
    ] {
        let q = authorize_query(url, &challenge, "d", None);
        let (status, body, location) = browser.get(&format!("/console/authorize?{q}")).await;
        assert_eq!(
            (status, location.is_none()),
            (StatusCode::BAD_REQUEST, true),
            "{url}: {body}"
        );
        assert!(body.contains(why), "{url}: {body}");
    }
}
on_both!(
    client_id_metadata_documents,
    metadata_documents,
    super::open_registration().env("KEYPLANE_CLIENT_METADATA_ALLOW_LOOPBACK", "true")
);

/// Without the loopback allowance (the default), a loopback document is not fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_documents_need_the_operators_allowance() {
    let Some(app) = spawn_app_with(Backend::Sqlite, Options::default()).await else {
        return;
    };
    let (_, mut browser) = setup(&app, "el@example.com").await;
    let docs = metadata_server().await;
    let (_, challenge) = pkce("x");
    let q = authorize_query(&format!("{docs}/good.json"), &challenge, "d", None);
    let (status, body, _) = browser.get(&format!("/console/authorize?{q}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("https://"), "{body}");
}

/// A token request of the authorization-code grant with `DPoP` proofs.
async fn token_with_dpop(
    app: &TestApp,
    form: &[(&str, &str)],
    proofs: &[&str],
) -> (StatusCode, Value) {
    let mut r = app
        .http
        .post(format!("{}/v1/oauth/token", app.base))
        .form(form);
    for p in proofs {
        r = r.header("DPoP", *p);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// DPoP (RFC 9449 §5): a public app that proves a key gets tokens bound to it, and its refresh
/// token too; a refresh without a proof, or with another key's, is refused (and, as a failed
/// redemption, does not give the thief the next refresh token).
async fn dpop_bound_refresh(app: TestApp) {
    use crate::dpop::{jkt, proof, token_url};
    use crate::pkjwt::TestKey;
    let (_, mut browser) = setup(&app, "fi@example.com").await;
    let client_id = public_app(&app).await;
    let (verifier, challenge) = pkce("dpop");
    let query = authorize_query(&client_id, &challenge, "s", None);
    sign_in_for(&mut browser, "fi@example.com", &query).await;
    let back = consent(&mut browser, &query, "approve").await;
    let code = query_of(&back)["code"].clone();
    let key = TestKey::es256("app-key");
    let url = token_url(&app);
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", client_id.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, t) = token_with_dpop(&app, &form, &[&proof(&key, "POST", &url, None)]).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["token_type"], "DPoP");
    let access = s(&t, "access_token");
    assert_eq!(introspect(&app, &access).await["cnf"]["jkt"], jkt(&key));
    let rt = s(&t, "refresh_token");
    let refresh_form = [
        ("grant_type", "refresh_token"),
        ("client_id", client_id.as_str()),
        ("refresh_token", rt.as_str()),
    ];
    // Without a proof, or with another key's: refused, and the refresh token is not used up
    // by the refusal (a thief without the key cannot burn it).
    let (status, e) = token_with_dpop(&app, &refresh_form, &[]).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_dpop_proof")),
        "{e}"
    );
    let thief = TestKey::es256("thief");
    let (status, e) =
        token_with_dpop(&app, &refresh_form, &[&proof(&thief, "POST", &url, None)]).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_dpop_proof")),
        "{e}"
    );
    assert!(active(&app, &access).await, "the grant stands");
    // With the key: refreshed, bound to the same key.
    let (status, t) =
        token_with_dpop(&app, &refresh_form, &[&proof(&key, "POST", &url, None)]).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["token_type"], "DPoP");
    assert_eq!(
        introspect(&app, &s(&t, "access_token")).await["cnf"]["jkt"],
        jkt(&key)
    );
    // The next refresh token is bound too.
    let next = s(&t, "refresh_token");
    let (status, e) = token_with_dpop(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client_id.as_str()),
            ("refresh_token", next.as_str()),
        ],
        &[&proof(&thief, "POST", &url, None)],
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_dpop_proof")),
        "{e}"
    );
}
on_both!(
    refresh_tokens_are_bound_with_dpop,
    dpop_bound_refresh,
    super::open_registration()
);
