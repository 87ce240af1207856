//! Helpers shared by the issue-10 tests (`ceiling`, `races`, `lifecycle`, `visibility`): the
//! spec's authority model (docs/authorization.md) written out once, console sign-ins, the token
//! endpoint and introspection, well-formed ids that exist nowhere, and comparable snapshots.

use crate::console::{csrf_of, Console};
use base64::Engine;
use keyplane_testkit::reqwest::{self, header, Method, StatusCode};
use keyplane_testkit::{json, Answer, TestApp};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::IpAddr;

// ----- the spec's authority and ceiling (docs/authorization.md) -----

/// Every management permission.
pub(crate) const ALL_PERMISSIONS: [&str; 8] = [
    "keys:manage",
    "keys:own",
    "clients:manage",
    "members:manage",
    "projects:manage",
    "roles:manage",
    "activity:read",
    "tokens:introspect",
];

/// What a caller may do, or what a target carries: its permissions, its scopes and its rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Authority {
    /// The admin key (or a console session opened with it): above owners, within every ceiling.
    pub top: bool,
    /// An owner, or an owner's key or client (for a caller: acts with an owner's rank).
    pub owner: bool,
    pub perms: BTreeSet<String>,
    /// `None`: every scope (the admin key, a member's console session, a member as a target).
    pub scopes: Option<BTreeSet<String>>,
}

impl Authority {
    pub(crate) fn admin_key() -> Self {
        Authority {
            top: true,
            owner: true,
            perms: set(&ALL_PERMISSIONS),
            scopes: None,
        }
    }

    pub(crate) fn new(owner: bool, perms: BTreeSet<String>, scopes: Option<&[&str]>) -> Self {
        Authority {
            top: false,
            owner,
            perms,
            scopes: scopes.map(set),
        }
    }

    /// The spec's `within(self, target)`: only owners touch owners; the target's permissions and
    /// scopes are subsets of the caller's. The admin key is within every ceiling.
    pub(crate) fn within(&self, target: &Authority) -> bool {
        if self.top {
            return true;
        }
        if target.owner && !self.owner {
            return false;
        }
        let scopes_ok = match (&target.scopes, &self.scopes) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(t), Some(c)) => t.is_subset(c),
        };
        // Managing every key includes managing one's own.
        let mut held = self.perms.clone();
        if held.contains("keys:manage") {
            held.insert("keys:own".to_string());
        }
        target.perms.is_subset(&held) && scopes_ok
    }

    /// What removal asks (revoke a key, delete a client, remove a member): only owners touch
    /// owners.
    pub(crate) fn may_remove(&self, target: &Authority) -> bool {
        self.top || self.owner || !target.owner
    }

    pub(crate) fn has(&self, perm: &str) -> bool {
        self.top || self.perms.contains(perm)
    }
}

pub(crate) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The permissions of a member role (`owner`, `admin`, `member`).
pub(crate) fn member_role_perms(role: &str) -> BTreeSet<String> {
    match role {
        "owner" | "admin" => set(&ALL_PERMISSIONS),
        "member" => set(&["keys:own"]),
        other => panic!("no member role {other}"),
    }
}

// ----- ids that exist nowhere -----

/// CRC-32 (IEEE), as keyplane's secrets and client ids carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// A well-formed credential-shaped id under `prefix` (43 base62 characters and the base62
/// CRC-32 of everything before), which no deployment will ever have made: e.g. a client id.
pub(crate) fn well_formed_unknown(prefix: &str) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut text = format!("{prefix}{}", "0".repeat(42) + "1");
    let mut n = crc32(text.as_bytes());
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    text.push_str(std::str::from_utf8(&sum).expect("ASCII"));
    text
}

/// A client id that exists nowhere (default `kpc_` prefix).
pub(crate) fn ghost_client() -> String {
    well_formed_unknown("kpc_")
}

// ----- snapshots -----

/// An API key view as a comparable snapshot: what a refused request must not change.
pub(crate) fn key_snapshot(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for volatile in ["key", "message", "last_used_at"] {
            o.remove(volatile);
        }
    }
    v
}

/// An OAuth client view as a comparable snapshot (uses and ages of secrets left out).
pub(crate) fn client_snapshot(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for volatile in ["client_secret", "secret_id", "message"] {
            o.remove(volatile);
        }
        if let Some(secrets) = o.get_mut("secrets").and_then(Value::as_array_mut) {
            for s in secrets {
                if let Some(s) = s.as_object_mut() {
                    for volatile in ["last_used_at", "use_count", "age_days"] {
                        s.remove(volatile);
                    }
                }
            }
        }
    }
    v
}

pub(crate) fn short(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    if t.len() < text.len() {
        format!("{t}…")
    } else {
        t
    }
}

pub(crate) fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ----- management calls -----

pub(crate) async fn patch(app: &TestApp, path: &str, token: &str, body: Value) -> Answer {
    app.call(Method::PATCH, path, Some(token), Some(body)).await
}

pub(crate) async fn delete(app: &TestApp, path: &str, token: &str) -> Answer {
    app.call(Method::DELETE, path, Some(token), None).await
}

/// `POST` as the admin key, which must answer 201; the answer's JSON.
pub(crate) async fn admin_create(app: &TestApp, path: &str, body: Value) -> Value {
    let a = app.post(path, &app.admin_key, body).await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "set-up: POST {path}: {}",
        a.text
    );
    a.json()
}

/// Creates an OAuth client as the admin key: (client id, its first secret, that secret's id).
pub(crate) async fn admin_client(app: &TestApp, body: Value) -> (String, String, String) {
    let v = admin_create(app, "/v1/oauth-clients", body).await;
    (
        v["client_id"].as_str().expect("client_id").to_string(),
        v["client_secret"]
            .as_str()
            .expect("client_secret")
            .to_string(),
        v["secret_id"].as_str().expect("secret_id").to_string(),
    )
}

/// A member made by the admin key in `org`: its id.
pub(crate) async fn admin_member(app: &TestApp, org: &str, email: &str, role: &str) -> String {
    admin_create(
        app,
        "/v1/members",
        json!({ "org_id": org, "email": email, "role": role }),
    )
    .await["id"]
        .as_str()
        .expect("member id")
        .to_string()
}

/// Every item of a paginated list (`path` without `cursor`, with `limit=200`).
pub(crate) async fn all_pages(app: &TestApp, path: &str, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..500 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let p = match &cursor {
            Some(c) => format!("{path}{sep}cursor={c}"),
            None => path.to_string(),
        };
        let a = app.get(&p, token).await;
        assert_eq!(a.status, StatusCode::OK, "GET {p}: {}", a.text);
        let v = a.json();
        out.extend(v["items"].as_array().expect("items").iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("more than 500 pages at {path}");
}

// ----- OAuth endpoints -----

pub(crate) const FORM: &str = "application/x-www-form-urlencoded";

pub(crate) fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// An HTTP client whose connections come from `addr` (any 127.0.0.0/8 address reaches the
/// server): failed client authentications are throttled per address, so a test that presents
/// many wrong secrets on purpose spreads them over addresses.
pub(crate) fn client_from(addr: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(addr)
        .build()
        .expect("HTTP client")
}

/// `POST /v1/oauth/token` (client credentials, HTTP Basic), from `http`.
pub(crate) async fn token_with(
    app: &TestApp,
    http: &reqwest::Client,
    id: &str,
    secret: &str,
) -> Answer {
    let resp = http
        .post(format!("{}/v1/oauth/token", app.base))
        .header(header::AUTHORIZATION, basic(id, secret))
        .header(header::CONTENT_TYPE, FORM)
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("token request");
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.expect("body"),
    }
}

pub(crate) async fn token(app: &TestApp, id: &str, secret: &str) -> Answer {
    token_with(app, &app.http, id, secret).await
}

/// RFC 7662 introspection of `t`, asked with the admin key (it holds `tokens:introspect`).
pub(crate) async fn introspect(app: &TestApp, t: &str) -> Value {
    let resp = app
        .http
        .post(format!("{}/v1/oauth/token/introspect", app.base))
        .bearer_auth(&app.admin_key)
        .header(header::CONTENT_TYPE, FORM)
        .body(format!("token={t}"))
        .send()
        .await
        .expect("introspection request");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "introspection: {text}");
    serde_json::from_str(&text).expect("introspection JSON")
}

// ----- the console -----

pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// A console session opened with the admin key, and its CSRF token.
pub(crate) async fn admin_console(app: &TestApp) -> (Console, String) {
    let mut c = Console::new(app);
    let (_, page, _) = c.get("/console/sign-in").await;
    let pre = csrf_of(&page);
    let (status, body, _) = c
        .post(
            "/console/sign-in",
            &[
                ("csrf", &pre),
                ("method", "admin"),
                ("admin_key", &app.admin_key),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "admin sign-in: {body}");
    let (status, page, _) = c.get("/console/overview").await;
    assert_eq!(status, StatusCode::OK, "admin console overview");
    let csrf = csrf_of(&page);
    (c, csrf)
}

/// A one-time password link for `member`, made in `console` (signed in with `csrf`): the token.
pub(crate) async fn password_link(console: &mut Console, csrf: &str, member: &str) -> String {
    let (status, body, _) = console
        .post(&format!("/console/members/{member}/link"), &[], Some(csrf))
        .await;
    assert_eq!(status, StatusCode::OK, "password link: {body}");
    let answer: Value = serde_json::from_str(&body).expect("link JSON");
    let link = answer["secret"]["items"][0]["value"]
        .as_str()
        .expect("the link")
        .to_string();
    link.split("#token=").nth(1).expect("a token").to_string()
}

/// Sets a member's password with a link token: the status of `POST /console/welcome`.
pub(crate) async fn redeem_link(app: &TestApp, token: &str) -> StatusCode {
    let mut c = Console::new(app);
    let (_, page, _) = c.get("/console/welcome").await;
    let pre = csrf_of(&page);
    let (status, _, _) = c
        .post(
            "/console/welcome",
            &[
                ("csrf", pre.as_str()),
                ("token", token),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
            None,
        )
        .await;
    status
}

/// A member's console session (email and password), and its CSRF token. The member gets a
/// password through a link the admin console makes.
pub(crate) async fn member_console(
    app: &TestApp,
    admin: &mut Console,
    admin_csrf: &str,
    member: &str,
    email: &str,
) -> (Console, String) {
    let link = password_link(admin, admin_csrf, member).await;
    assert_eq!(
        redeem_link(app, &link).await,
        StatusCode::SEE_OTHER,
        "set the password of {email}"
    );
    let mut c = Console::new(app);
    let (_, page, _) = c.get("/console/sign-in").await;
    let pre = csrf_of(&page);
    let (status, body, location) = c
        .post(
            "/console/sign-in",
            &[
                ("csrf", pre.as_str()),
                ("method", "member"),
                ("email", email),
                ("password", PASSWORD),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "sign-in of {email}: {body}");
    assert_eq!(location.as_deref(), Some("/console/overview"));
    let (status, page, _) = c.get("/console/overview").await;
    assert_eq!(status, StatusCode::OK, "overview of {email}");
    let csrf = csrf_of(&page);
    (c, csrf)
}
