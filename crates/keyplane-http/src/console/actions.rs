//! The console's forms (POST). Each checks the session and its CSRF token ([`Posted`]), makes
//! the one use-case call the management API route it mirrors makes, and answers JSON to the
//! script or redirects back. Secrets are answered only as JSON for the show-once dialog.

use super::pages::{scope, sign_in_page};
use super::{
    cookie, csrf_refused, done, set_cookie, Answer, ConsoleState, Fail, FormData, Posted,
    PRE_COOKIE, SESSION_COOKIE,
};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use keyplane_core::domain::clock::to_ms;
use keyplane_core::domain::console::{check_password_rules, hash_password, SESSION_TTL};
use keyplane_core::runtime::throttle::sign_in_keys;
use keyplane_core::usecase::api_keys::{ApiKeyPatch, Expiry, NewApiKey};
use keyplane_core::usecase::clients::{ClientPatch, NewClient};
use keyplane_core::Error;
use serde_json::json;

fn fail(js: bool, back: &str) -> impl Fn(Error) -> Fail + '_ {
    move |e| Fail::new(js, back, ApiError::from(e))
}

/// The answer that carries a secret to the show-once dialog.
fn secret(title: &str, items: Vec<(&str, String)>, token_action: Option<String>) -> Response {
    Json(json!({
        "secret": {
            "title": title,
            "warning": "Copy it now and store it somewhere safe: it will not be shown again. \
                        keyplane keeps only a keyed hash of it.",
            "items": items
                .into_iter()
                .map(|(label, value)| json!({ "label": label, "value": value }))
                .collect::<Vec<_>>(),
            "token_action": token_action,
        }
    }))
    .into_response()
}

async fn read_form(req: Request) -> (axum::http::request::Parts, FormData) {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, crate::BODY_LIMIT)
        .await
        .unwrap_or_default();
    (parts, FormData::parse(&bytes))
}

fn pre_csrf_ok(s: &AppState, headers: &HeaderMap, form: &FormData) -> bool {
    let token = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| form.get("csrf"))
        .unwrap_or("");
    match cookie(headers, PRE_COOKIE) {
        Some(pre) => s.app.console_csrf_valid(pre, token),
        None => false,
    }
}

// ----- signing in and out -----

pub async fn sign_in(
    State(s): State<AppState>,
    Extension(cs): Extension<ConsoleState>,
    req: Request,
) -> Response {
    let (parts, form) = read_form(req).await;
    let headers = &parts.headers;
    if !pre_csrf_ok(&s, headers, &form) {
        return csrf_refused(false);
    }
    let meta = crate::auth::request_meta(&parts);
    let addr = meta.throttle_addr();
    let now_ms = to_ms(s.app.now());
    let mode = if form.get("method") == Some("member") {
        "member"
    } else {
        "admin"
    };
    let email = form.get("email").unwrap_or("").to_lowercase();
    let next = form
        .get("next")
        .and_then(super::authorize::safe_next)
        .map(str::to_string);
    let who = if mode == "member" {
        email.clone()
    } else {
        "admin-key".into()
    };
    let page = |status: StatusCode, msg: String| {
        let mut r = sign_in_page(
            &s,
            headers,
            Some(msg),
            None,
            email.clone(),
            mode,
            next.clone(),
        );
        *r.status_mut() = status;
        r
    };
    let throttle_keys = sign_in_keys(&who, &addr);
    if let Some(wait) = cs.throttle.blocked(&throttle_keys, now_ms) {
        let mut r = page(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed sign-ins. Wait {wait} seconds, then try again."),
        );
        // RFC 6585 §4: a 429 may say how long to wait; a script or a proxy can read it here.
        r.headers_mut()
            .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(wait));
        return r;
    }
    let opened = if mode == "member" {
        let password = form.raw("password").to_string();
        let attempt = match s.app.console_sign_in_attempt(&email).await {
            Ok(a) => a,
            Err(e) => return Fail::new(false, "/console/sign-in", e.into()).into_response(),
        };
        let verified = tokio::task::spawn_blocking(move || attempt.verify(&password))
            .await
            .ok()
            .flatten();
        match verified {
            Some(v) => s.app.console_sign_in_member(v, &meta).await,
            None => {
                let _ = s.app.console_sign_in_failed(&meta).await;
                Err(Error::Unauthenticated("wrong email or password".into()))
            }
        }
    } else {
        s.app
            .console_sign_in_admin(form.raw("admin_key"), &meta)
            .await
    };
    match opened {
        Ok((id, _)) => {
            cs.throttle.forget(&throttle_keys[0].0);
            let mut resp =
                Redirect::to(next.as_deref().unwrap_or("/console/overview")).into_response();
            if let Ok(v) = set_cookie(
                headers,
                SESSION_COOKIE,
                id.expose(),
                SESSION_TTL.whole_seconds(),
            )
            .parse()
            {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Err(Error::Unauthenticated(_)) => {
            cs.throttle.failed(&throttle_keys, now_ms);
            page(
                StatusCode::UNAUTHORIZED,
                if mode == "member" {
                    "That email and password do not match a member who has set a password.".into()
                } else {
                    "That is not this deployment's admin key. Check for missing characters.".into()
                },
            )
        }
        Err(e) => Fail::new(false, "/console/sign-in", e.into()).into_response(),
    }
}

pub async fn sign_out(State(s): State<AppState>, headers: HeaderMap, p: Posted) -> Response {
    let _ = s.app.console_sign_out(&p.signed, &p.meta).await;
    let mut resp = Redirect::to("/console/sign-in?done=out").into_response();
    if let Ok(v) = set_cookie(&headers, SESSION_COOKIE, "", 0).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Sets a member's password through a one-time link (its token comes from the link's
/// fragment, which the script copies into the form; fragments never reach a server's logs).
pub async fn welcome(State(s): State<AppState>, req: Request) -> Response {
    let (parts, form) = read_form(req).await;
    let js = parts.headers.contains_key("x-csrf-token");
    if !pre_csrf_ok(&s, &parts.headers, &form) {
        return csrf_refused(js);
    }
    let meta = crate::auth::request_meta(&parts);
    let back = "/console/welcome";
    let token = form.raw("token").to_string();
    let password = form.raw("password").to_string();
    if let Err(e) = check_password_rules(&password, form.raw("confirm")) {
        return Fail::new(js, back, e.into()).into_response();
    }
    if s.app.console_link_member(&token).await.is_err() {
        return Fail::msg(
            js,
            back,
            StatusCode::NOT_FOUND,
            "This link has expired or was already used. Ask an owner or admin for a new one.",
        )
        .into_response();
    }
    let hash = match tokio::task::spawn_blocking(move || hash_password(&password)).await {
        Ok(Ok(h)) => h,
        _ => {
            return Fail::msg(
                js,
                back,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Could not set the password; try again.",
            )
            .into_response()
        }
    };
    match s.app.console_link_redeem(&token, &hash, &meta).await {
        Ok(_) => {
            let to = "/console/sign-in?done=password";
            if js {
                Json(json!({ "redirect": to })).into_response()
            } else {
                Redirect::to(to).into_response()
            }
        }
        Err(Error::NotFound(_)) => Fail::msg(
            js,
            back,
            StatusCode::NOT_FOUND,
            "This link has expired or was already used. Ask an owner or admin for a new one.",
        )
        .into_response(),
        Err(e) => Fail::new(js, back, e.into()).into_response(),
    }
}

/// Switches organization (the admin key) and project.
pub async fn switch(State(s): State<AppState>, p: Posted) -> Answer {
    s.app
        .console_switch(&p.signed, p.form.get("org_id"), p.form.get("project_id"))
        .await
        .map_err(fail(p.js, "/console/overview"))?;
    let back = p
        .form
        .get("back")
        .filter(|b| b.starts_with("/console/") && !b.starts_with("//"))
        .unwrap_or("/console/overview");
    Ok(done(p.js, back))
}

// ----- services -----

pub async fn service_create(State(s): State<AppState>, p: Posted) -> Answer {
    let f = &p.form;
    let scopes: Vec<String> = f
        .raw("scopes")
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect();
    s.app
        .service_create(
            &p.signed.principal,
            f.get("name").unwrap_or(""),
            f.get("description"),
            scopes,
            vec![],
            &p.meta,
        )
        .await
        .map_err(fail(p.js, "/console/overview"))?;
    Ok(done(p.js, "/console/overview"))
}

// ----- API keys -----

/// `expires` is a number of days from now; empty means never.
fn expiry(s: &AppState, f: &FormData, js: bool) -> Result<Option<time::OffsetDateTime>, Fail> {
    match f.get("expires") {
        None | Some("never") => Ok(None),
        Some(d) => match d.parse::<i64>() {
            Ok(n) if (1..=3650).contains(&n) => Ok(Some(s.app.now() + time::Duration::days(n))),
            _ => Err(Fail::msg(
                js,
                "/console/keys",
                StatusCode::UNPROCESSABLE_ENTITY,
                "Choose an expiry from the list.",
            )),
        },
    }
}

pub async fn key_create(State(s): State<AppState>, p: Posted) -> Answer {
    let back = "/console/keys";
    let (org, project) = scope(&s, &p.signed).await.map_err(fail(p.js, back))?;
    let f = &p.form;
    let rate_limits = limits_field(f, p.js, back)?.unwrap_or_default();
    let input = NewApiKey {
        org_id: Some(org),
        project_id: Some(project),
        owner_member_id: None,
        name: f.get("name").map(str::to_string),
        description: f.get("description").map(str::to_string),
        scopes: f.all("scopes"),
        roles: f.all("roles"),
        // No choice sent (a scripted form): the deployment's default, as through the API.
        expires_at: match f.get("expires") {
            None => Expiry::Default,
            Some(_) => match expiry(&s, f, p.js)? {
                Some(t) => Expiry::At(t),
                None => Expiry::Never,
            },
        },
        default_for_service: f.get("default_for_service").map(str::to_string),
        service_token: f.checked("service_token"),
        may_act: vec![],
        rate_limits,
    };
    if input.name.is_none() {
        return Err(Fail {
            field: Some("name".into()),
            ..Fail::msg(
                p.js,
                back,
                StatusCode::UNPROCESSABLE_ENTITY,
                "Give the API key a name.",
            )
        });
    }
    let (key, secret_value) = s
        .app
        .api_key_create(&p.signed.principal, input, &p.meta)
        .await
        .map_err(fail(p.js, back))?;
    Ok(secret(
        &format!("API key “{}” created", key.name),
        vec![("API key", secret_value.expose().to_string())],
        None,
    ))
}

pub async fn key_edit(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let back = "/console/keys";
    let f = &p.form;
    let expires_at = match f.get("expires") {
        Some("keep") => None,
        _ => Some(expiry(&s, f, p.js)?),
    };
    let patch = ApiKeyPatch {
        name: f.get("name").map(str::to_string),
        description: Some(f.get("description").unwrap_or("").to_string()),
        scopes: Some(f.all("scopes")),
        roles: Some(f.all("roles")),
        expires_at,
        default_for_service: Some(f.get("default_for_service").map(str::to_string)),
        may_act: None,
        rate_limits: limits_field(f, p.js, back)?,
    };
    s.app
        .api_key_update(&p.signed.principal, &id, patch, None, &p.meta)
        .await
        .map_err(fail(p.js, back))?;
    Ok(done(p.js, back))
}

pub async fn key_copy(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let (key, secret_value) = s
        .app
        .api_key_copy(&p.signed.principal, &id, None, &p.meta)
        .await
        .map_err(fail(p.js, "/console/keys"))?;
    Ok(secret(
        &format!("API key “{}” created", key.name),
        vec![("API key", secret_value.expose().to_string())],
        None,
    ))
}

pub async fn key_regenerate(
    State(s): State<AppState>,
    Path(id): Path<String>,
    p: Posted,
) -> Answer {
    let (key, secret_value) = s
        .app
        .api_key_regenerate(&p.signed.principal, &id, None, None, &p.meta)
        .await
        .map_err(fail(p.js, "/console/keys"))?;
    Ok(secret(
        &format!(
            "API key “{}” regenerated: the old secret no longer works",
            key.name
        ),
        vec![("API key", secret_value.expose().to_string())],
        None,
    ))
}

pub async fn key_revoke(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    s.app
        .api_key_revoke(&p.signed.principal, &id, None, &p.meta)
        .await
        .map_err(fail(p.js, "/console/keys"))?;
    Ok(done(p.js, "/console/keys"))
}

/// "Report as leaked": recorded as `credential.leaked` and, under the `revoke` policy, revoked.
pub async fn key_leaked(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    s.app
        .leak_report_key(&p.signed.principal, &id, p.form.get("url"), &p.meta)
        .await
        .map_err(fail(p.js, "/console/keys"))?;
    Ok(done(p.js, "/console/keys"))
}

// ----- service clients -----

fn opt_i64(f: &FormData, name: &str) -> Option<i64> {
    f.get(name).and_then(|v| v.parse().ok())
}

/// The rate limits typed in words, one a line ([`super::present::parse_limits`]). `None` when
/// the form has no such field (a scripted form), so nothing changes.
fn limits_field(
    f: &FormData,
    js: bool,
    back: &str,
) -> Result<Option<Vec<keyplane_core::domain::usage::RateLimit>>, Fail> {
    if !f.has("rate_limits") {
        return Ok(None);
    }
    super::present::parse_limits(f.raw("rate_limits"))
        .map(|ls| Some(ls.iter().map(|l| l.to_rate_limit()).collect()))
        .map_err(|e| invalid_field(js, back, "rate_limits", format!("{e}.")))
}

/// The access-token lifetime typed in words ("15 minutes", "1 hour"; a bare number is
/// seconds). Absent: the default. One that does not read is refused at the field.
fn ttl_field(f: &FormData, js: bool, back: &str) -> Result<Option<i64>, Fail> {
    match f.get("ttl") {
        None => Ok(None),
        Some(text) => super::present::parse_span(text).map(Some).ok_or_else(|| {
            invalid_field(
                js,
                back,
                "ttl",
                format!(
                    "“{text}” is not a duration: write it like “15 minutes”, “1 hour” or “1 day”."
                ),
            )
        }),
    }
}

/// What a client form says about how the client authenticates (RFC 7591 names). `None`: the
/// form did not carry that field (the key fields are disabled, so not sent, while a secret
/// method is chosen).
struct AuthFields {
    method: Option<String>,
    jwks: Option<Option<serde_json::Value>>,
    jwks_uri: Option<Option<String>>,
    federated: Option<Option<serde_json::Value>>,
    dpop: bool,
}

fn invalid_field(js: bool, back: &str, field: &str, message: String) -> Fail {
    Fail {
        field: Some(field.into()),
        ..Fail::msg(js, back, StatusCode::UNPROCESSABLE_ENTITY, &message)
    }
}

/// Reads the authentication fields; the checks are the use case's, except that the JWK set
/// must be JSON (a lone JWK is taken as a set of one).
fn auth_fields(f: &FormData, js: bool, back: &str) -> Result<AuthFields, Fail> {
    let jwks = if f.has("jwks") {
        Some(match f.get("jwks") {
            None => None,
            Some(text) => {
                let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                    invalid_field(
                        js,
                        back,
                        "jwks",
                        format!("The public keys (jwks) are not valid JSON: {e}. Paste a JWK set, {{\"keys\": [...]}}, or one public JWK."),
                    )
                })?;
                Some(if v.get("kty").is_some() && v.get("keys").is_none() {
                    json!({ "keys": [v] })
                } else {
                    v
                })
            }
        })
    } else {
        None
    };
    let jwks_uri = f
        .has("jwks_uri")
        .then(|| f.get("jwks_uri").map(str::to_string));
    let federated = if f.has("fc_issuer") {
        let (issuers, kinds, subjects, audiences) = (
            f.column("fc_issuer"),
            f.column("fc_kind"),
            f.column("fc_subject"),
            f.column("fc_audience"),
        );
        let rows: Vec<serde_json::Value> = (0..issuers.len())
            .filter_map(|i| {
                fn at<'a>(c: &[&'a str], i: usize) -> &'a str {
                    c.get(i).copied().unwrap_or("")
                }
                let (issuer, subject, audience) =
                    (at(&issuers, i), at(&subjects, i), at(&audiences, i));
                if issuer.is_empty() && subject.is_empty() && audience.is_empty() {
                    return None;
                }
                let kind = if at(&kinds, i) == "subject_pattern" {
                    "subject_pattern"
                } else {
                    "subject"
                };
                let mut row = json!({ "issuer": issuer, "audience": audience });
                row[kind] = json!(subject);
                Some(row)
            })
            .collect();
        Some((!rows.is_empty()).then_some(serde_json::Value::Array(rows)))
    } else {
        None
    };
    Ok(AuthFields {
        method: f.get("token_endpoint_auth_method").map(str::to_string),
        jwks,
        jwks_uri,
        federated,
        dpop: f.checked("dpop_bound_access_tokens"),
    })
}

pub async fn client_create(State(s): State<AppState>, p: Posted) -> Answer {
    let back = "/console/clients";
    let (org, project) = scope(&s, &p.signed).await.map_err(fail(p.js, back))?;
    let f = &p.form;
    let auth = auth_fields(f, p.js, back)?;
    let ttl = ttl_field(f, p.js, back)?;
    let rate_limits = limits_field(f, p.js, back)?.unwrap_or_default();
    let input = NewClient {
        org_id: Some(org),
        project_id: Some(project),
        owner_member_id: None,
        name: f.get("name").unwrap_or("").to_string(),
        description: f.get("description").map(str::to_string),
        scopes: f.all("scopes"),
        access_token_ttl_seconds: ttl,
        token_format: f.get("token_format").map(str::to_string),
        signing_alg: None,
        audience: None,
        secret_rotation_days: opt_i64(f, "rotation_days"),
        token_endpoint_auth_method: auth.method,
        jwks: auth.jwks.flatten(),
        jwks_uri: auth.jwks_uri.flatten(),
        federated_credentials: auth.federated.flatten(),
        dpop_bound_access_tokens: Some(auth.dpop),
        may_act: vec![],
        rate_limits,
    };
    let (client, first) = s
        .app
        .client_create(&p.signed.principal, input, &p.meta)
        .await
        .map_err(fail(p.js, back))?;
    // A client that requires DPoP gets no token from the console: it is bound to a key only
    // the client holds.
    let action = (!client.dpop_bound_access_tokens)
        .then(|| format!("/console/clients/{}/token", client.client_id));
    let mut shown = vec![("Client ID", client.client_id)];
    match first {
        Some((_, secret_value)) => shown.push(("Client secret", secret_value.expose().to_string())),
        // A private_key_jwt client has no secret to show.
        None => shown.push((
            "Authentication",
            "private_key_jwt: no secret; it signs client assertions with its private key".into(),
        )),
    }
    Ok(secret(
        &format!("Service client “{}” created", client.name),
        shown,
        action,
    ))
}

fn client_back(id: &str) -> String {
    format!(
        "/console/clients?selected={}",
        form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
    )
}

pub async fn client_edit(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let back = client_back(&id);
    let f = &p.form;
    let patch = ClientPatch {
        name: f.get("name").map(str::to_string),
        description: Some(f.get("description").unwrap_or("").to_string()),
        scopes: Some(f.all("scopes")),
        access_token_ttl_seconds: ttl_field(f, p.js, &back)?,
        token_format: f.get("token_format").map(str::to_string),
        signing_alg: None,
        audience: None,
        secret_rotation_days: Some(opt_i64(f, "rotation_days")),
        token_endpoint_auth_method: None,
        jwks: None,
        jwks_uri: None,
        federated_credentials: None,
        may_act: None,
        rate_limits: limits_field(f, p.js, &back)?,
        dpop_bound_access_tokens: None,
    };
    s.app
        .client_update(&p.signed.principal, &id, patch, None, &p.meta)
        .await
        .map_err(fail(p.js, &back))?;
    Ok(done(p.js, &back))
}

/// Changes how a client authenticates: method, keys, trusted issuers, and the DPoP requirement.
pub async fn client_auth(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let back = client_back(&id);
    let auth = auth_fields(&p.form, p.js, &back)?;
    // The form shows the whole state: an empty key field means none. Only one of `jwks` and
    // `jwks_uri` is passed when one is filled in, since setting either replaces the other.
    let (jwks, jwks_uri) = match (auth.jwks, auth.jwks_uri) {
        (Some(Some(set)), Some(None)) => (Some(Some(set)), None),
        (Some(None), Some(Some(uri))) => (None, Some(Some(uri))),
        other => other,
    };
    let patch = ClientPatch {
        token_endpoint_auth_method: auth.method,
        jwks,
        jwks_uri,
        federated_credentials: auth.federated,
        dpop_bound_access_tokens: Some(auth.dpop),
        ..ClientPatch::default()
    };
    s.app
        .client_update(&p.signed.principal, &id, patch, None, &p.meta)
        .await
        .map_err(fail(p.js, &back))?;
    Ok(done(p.js, &back))
}

pub async fn client_secret_add(
    State(s): State<AppState>,
    Path(id): Path<String>,
    p: Posted,
) -> Answer {
    let back = client_back(&id);
    let grace = opt_i64(&p.form, "old_expire_days").map(time::Duration::days);
    let (_, secret_value) = s
        .app
        .client_secret_add(&p.signed.principal, &id, grace, None, &p.meta)
        .await
        .map_err(fail(p.js, &back))?;
    Ok(secret(
        "New client secret",
        vec![
            ("Client ID", id.clone()),
            ("Client secret", secret_value.expose().to_string()),
        ],
        None,
    ))
}

pub async fn client_secret_retire(
    State(s): State<AppState>,
    Path((id, secret_id)): Path<(String, String)>,
    p: Posted,
) -> Answer {
    let back = client_back(&id);
    s.app
        .client_secret_retire(&p.signed.principal, &id, &secret_id, None, &p.meta)
        .await
        .map_err(fail(p.js, &back))?;
    Ok(done(p.js, &back))
}

/// "Report as leaked" on one secret: recorded and, under the `revoke` policy, retired.
pub async fn client_secret_leaked(
    State(s): State<AppState>,
    Path((id, secret_id)): Path<(String, String)>,
    p: Posted,
) -> Answer {
    let back = client_back(&id);
    s.app
        .leak_report_client_secret(
            &p.signed.principal,
            &id,
            &secret_id,
            p.form.get("url"),
            &p.meta,
        )
        .await
        .map_err(fail(p.js, &back))?;
    Ok(done(p.js, &back))
}

pub async fn client_token(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let back = client_back(&id);
    let issued = s
        .app
        .client_token(&p.signed.principal, &id, p.form.get("scope"), &p.meta)
        .await
        .map_err(fail(p.js, &back))?;
    Ok(secret(
        "Access token",
        vec![
            ("Access token", issued.access_token),
            ("Expires in", super::views::span_words(issued.expires_in)),
            ("Scope", issued.scope),
        ],
        None,
    ))
}

pub async fn client_delete(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    s.app
        .client_delete(&p.signed.principal, &id, None, &p.meta)
        .await
        .map_err(fail(p.js, "/console/clients"))?;
    Ok(done(p.js, "/console/clients"))
}

// ----- members -----

pub async fn member_create(State(s): State<AppState>, p: Posted) -> Answer {
    let back = "/console/members";
    let (org, _) = scope(&s, &p.signed).await.map_err(fail(p.js, back))?;
    let f = &p.form;
    s.app
        .member_create(
            &p.signed.principal,
            Some(&org),
            f.get("email").unwrap_or(""),
            f.get("name"),
            f.get("role").unwrap_or("member"),
            &p.meta,
        )
        .await
        .map_err(fail(p.js, back))?;
    Ok(done(p.js, back))
}

pub async fn member_role(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let back = "/console/members";
    s.app
        .member_set_role(
            &p.signed.principal,
            &id,
            p.form.get("role").unwrap_or(""),
            None,
            &p.meta,
        )
        .await
        .map_err(fail(p.js, back))?;
    Ok(done(p.js, back))
}

pub async fn member_remove(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let back = "/console/members";
    s.app
        .member_delete(&p.signed.principal, &id, None, &p.meta)
        .await
        .map_err(fail(p.js, back))?;
    Ok(done(p.js, back))
}

pub async fn member_link(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let (token, link) = s
        .app
        .console_link_create(&p.signed.principal, &id, &p.meta)
        .await
        .map_err(fail(p.js, "/console/members"))?;
    // Built from the configured public URL only: a request's Host header is the caller's to
    // choose, and a forged one would make keyplane hand out a link to another site.
    let base = s.app.settings().oauth.issuer.trim_end_matches('/');
    let url = format!("{base}/console/welcome#token={}", token.expose());
    let hours = (link.expires_at - s.app.now()).whole_hours();
    Ok(secret(
        "One-time password link",
        vec![
            ("Link", url),
            ("Valid for", format!("{hours} hours, for one use")),
        ],
        None,
    ))
}

pub async fn grant_revoke(State(s): State<AppState>, Path(id): Path<String>, p: Posted) -> Answer {
    let back = "/console/apps";
    s.app
        .grant_revoke(&p.signed.principal, &id, &p.meta)
        .await
        .map_err(fail(p.js, back))?;
    Ok(done(p.js, back))
}
