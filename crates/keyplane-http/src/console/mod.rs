//! The web console at `/console`: server-rendered pages (askama templates compiled into the
//! binary), one small script and one stylesheet of our own, served from the binary too.
//!
//! The console is a client of the use cases, not a second copy of them: every handler makes the
//! same `Keyplane` call as the management API route it mirrors, with the [`Principal`] the
//! session resolves to (a member acts with their current role, see
//! `keyplane_core::console`). What differs is only the transport:
//!
//! - a session cookie (`HttpOnly; SameSite=Strict; Path=/console`, `Secure` behind TLS) instead
//!   of a bearer header; only its digest is stored, and it expires;
//! - every POST carries a CSRF token (form field `csrf`, or header `X-CSRF-Token` on the
//!   script's calls), a keyed hash of the session id; the sign-in and password forms use a
//!   pre-session cookie the same way;
//! - answers are HTML pages, or JSON for the script (which shows secrets in the show-once
//!   dialog and never writes them anywhere else);
//! - a strict Content-Security-Policy: no inline script or style, nothing from elsewhere.
//!
//! [`Principal`]: keyplane_core::domain::perm::Principal

mod actions;
mod assets;
pub mod authorize;
mod chart;
mod pages;
mod present;
mod usage;
mod views;
mod webhooks;

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use keyplane_core::domain::console::SignedIn;
use keyplane_core::domain::request::RequestMeta;
use keyplane_core::runtime::throttle::FailureThrottle;
use std::sync::Arc;

/// The session cookie.
pub const SESSION_COOKIE: &str = "kp_console";
/// The pre-session cookie that the sign-in and password forms' CSRF tokens are bound to.
pub const PRE_COOKIE: &str = "kp_console_pre";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the console keeps in memory: the throttle on failed sign-ins.
#[derive(Clone, Default)]
pub struct ConsoleState {
    pub throttle: Arc<FailureThrottle>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::root))
        .route("/console/", get(pages::root))
        .route("/console/assets/{name}", get(assets::serve))
        .route(
            "/console/sign-in",
            get(pages::sign_in).post(actions::sign_in),
        )
        .route("/console/sign-out", post(actions::sign_out))
        .route(
            "/console/welcome",
            get(pages::welcome).post(actions::welcome),
        )
        .route("/console/overview", get(pages::overview))
        .route("/console/services", post(actions::service_create))
        .route("/console/context", post(actions::switch))
        .route("/console/keys", get(pages::keys).post(actions::key_create))
        .route("/console/keys/{id}/edit", post(actions::key_edit))
        .route("/console/keys/{id}/copy", post(actions::key_copy))
        .route(
            "/console/keys/{id}/regenerate",
            post(actions::key_regenerate),
        )
        .route("/console/keys/{id}/revoke", post(actions::key_revoke))
        .route("/console/keys/{id}/leaked", post(actions::key_leaked))
        .route(
            "/console/clients",
            get(pages::clients).post(actions::client_create),
        )
        .route("/console/clients/{id}/edit", post(actions::client_edit))
        .route("/console/clients/{id}/auth", post(actions::client_auth))
        .route(
            "/console/clients/{id}/secrets",
            post(actions::client_secret_add),
        )
        .route(
            "/console/clients/{id}/secrets/{secret_id}/retire",
            post(actions::client_secret_retire),
        )
        .route(
            "/console/clients/{id}/secrets/{secret_id}/leaked",
            post(actions::client_secret_leaked),
        )
        .route("/console/clients/{id}/token", post(actions::client_token))
        .route("/console/clients/{id}/delete", post(actions::client_delete))
        .route(
            "/console/members",
            get(pages::members).post(actions::member_create),
        )
        .route("/console/members/{id}/role", post(actions::member_role))
        .route("/console/members/{id}/remove", post(actions::member_remove))
        .route("/console/members/{id}/link", post(actions::member_link))
        .route("/console/activity", get(pages::activity))
        .route("/console/search", get(pages::search))
        .route("/console/apps", get(pages::apps))
        .route("/console/apps/{id}/revoke", post(actions::grant_revoke))
        .route(
            "/console/webhooks",
            get(webhooks::page).post(webhooks::create),
        )
        .route("/console/webhooks/{id}/enabled", post(webhooks::toggle))
        .route("/console/webhooks/{id}/delete", post(webhooks::delete))
        .route(
            "/console/authorize",
            get(authorize::show).post(authorize::decide),
        )
        .layer(axum::middleware::from_fn(security_headers))
        .layer(Extension(ConsoleState::default()))
}

/// Every console answer: a strict CSP, no framing, no sniffing, and pages never cached (they
/// may show what only this session may see).
async fn security_headers(req: Request, next: axum::middleware::Next) -> Response {
    let is_asset = req.uri().path().starts_with("/console/assets/");
    let tls = crate::edge::Conn::tls(req.extensions());
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    // Over keyplane's own TLS, every cookie is `Secure` (behind a proxy, `X-Forwarded-Proto`
    // says so to `set_cookie`).
    if tls {
        let cookies: Vec<HeaderValue> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| match v.to_str() {
                Ok(s) if !s.contains("; Secure") => {
                    HeaderValue::from_str(&format!("{s}; Secure")).unwrap_or_else(|_| v.clone())
                }
                _ => v.clone(),
            })
            .collect();
        h.remove(header::SET_COOKIE);
        for c in cookies {
            h.append(header::SET_COOKIE, c);
        }
    }
    // A page may set its own (the consent page lets its form lead to the app's redirect URI).
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A cookie's value from the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request reached us over TLS (directly or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value with the console's attributes; `max_age` 0 deletes it.
pub(crate) fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: i64) -> String {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

fn meta_of(parts: &Parts) -> RequestMeta {
    crate::auth::request_meta(parts)
}

/// The script's calls say so with this header (and carry the CSRF token in it).
const CSRF_HEADER: &str = "x-csrf-token";

/// A signed-in console user, for pages (GET). Without a valid session: to the sign-in page.
pub struct Session {
    pub signed: SignedIn,
    pub csrf: String,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        let id = cookie(&parts.headers, SESSION_COOKIE).unwrap_or("");
        match s.app.console_session(id).await {
            Ok(Some(signed)) => Ok(Session {
                csrf: s.app.console_csrf_token(id),
                signed,
            }),
            Ok(None) => Err(Redirect::to("/console/sign-in").into_response()),
            Err(e) => Err(Fail::new(false, "/console", e.into()).into_response()),
        }
    }
}

/// The fields of a posted form, in order (a name may repeat, e.g. checked scopes).
#[derive(Debug, Default)]
pub struct FormData(pub Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> Self {
        FormData(form_urlencoded::parse(body).into_owned().collect())
    }
    /// The first value of `name`, trimmed; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
    /// The value of `name` exactly as sent (passwords, keys).
    pub fn raw(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    /// Whether the form has the field at all (a disabled field is not sent).
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
    /// Every value of `name`, trimmed, blanks kept: repeated rows of fields line up by index.
    pub fn column(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// A POST from a signed-in user whose CSRF token checks out: the session, the form, and
/// whether the script sent it (then the answer is JSON).
pub struct Posted {
    pub signed: SignedIn,
    pub form: FormData,
    pub js: bool,
    pub meta: RequestMeta,
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, s: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let js = parts.headers.contains_key(CSRF_HEADER);
        let id = cookie(&parts.headers, SESSION_COOKIE)
            .unwrap_or("")
            .to_string();
        let signed = match s.app.console_session(&id).await {
            Ok(Some(signed)) => signed,
            Ok(None) => {
                return Err(Fail::msg(
                    js,
                    "/console/sign-in",
                    StatusCode::UNAUTHORIZED,
                    "Your session has ended. Sign in again.",
                )
                .into_response())
            }
            Err(e) => return Err(Fail::new(js, "/console", e.into()).into_response()),
        };
        let bytes = axum::body::to_bytes(body, crate::BODY_LIMIT)
            .await
            .map_err(|_| {
                Fail::msg(
                    js,
                    "/console",
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "That form is too large.",
                )
                .into_response()
            })?;
        let form = FormData::parse(&bytes);
        let token = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| form.get("csrf").map(str::to_string))
            .unwrap_or_default();
        if !s.app.console_csrf_valid(&id, &token) {
            return Err(csrf_refused(js));
        }
        let meta = meta_of(&parts);
        // A refused action is recorded like a refused API call (see `auth::record_denials`).
        if let Some(slot) = parts.extensions.get::<crate::auth::PrincipalSlot>() {
            *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(signed.principal.clone());
        }
        Ok(Posted {
            signed,
            form,
            js,
            meta,
        })
    }
}

pub(crate) fn csrf_refused(js: bool) -> Response {
    Fail::msg(
        js,
        "/console",
        StatusCode::FORBIDDEN,
        "This form did not come from your console session (its security token is missing or \
         wrong). Reload the page and try again.",
    )
    .into_response()
}

/// A failed console request: JSON for the script, or a page that says what went wrong and
/// links back.
pub struct Fail {
    pub js: bool,
    pub back: String,
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl Fail {
    pub fn new(js: bool, back: &str, e: ApiError) -> Self {
        let message = match e.status {
            StatusCode::FORBIDDEN => format!("You may not do that: {}.", e.detail),
            StatusCode::NOT_FOUND => {
                "It no longer exists, or you may not see it. Reload the page.".to_string()
            }
            _ => sentence(&e.detail),
        };
        Fail {
            js,
            back: back.to_string(),
            status: e.status,
            message,
            field: e.field,
        }
    }
    pub fn msg(js: bool, back: &str, status: StatusCode, message: &str) -> Self {
        Fail {
            js,
            back: back.to_string(),
            status,
            message: message.to_string(),
            field: None,
        }
    }
}

/// A domain message as a sentence: capitalised, ending with a full stop.
fn sentence(s: &str) -> String {
    let mut c = s.chars();
    let mut out = match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    };
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        if self.js {
            return (
                self.status,
                axum::Json(serde_json::json!({ "error": self.message, "field": self.field })),
            )
                .into_response();
        }
        let page = views::ErrorPage {
            status: self.status.as_u16(),
            message: self.message,
            back: self.back,
        };
        (self.status, views::html(&page)).into_response()
    }
}

pub type Answer = Result<Response, Fail>;

/// Success: `{"ok": true}` for the script (it reloads the page), or back to `to`.
pub fn done(js: bool, to: &str) -> Response {
    if js {
        axum::Json(serde_json::json!({ "ok": true })).into_response()
    } else {
        Redirect::to(to).into_response()
    }
}
