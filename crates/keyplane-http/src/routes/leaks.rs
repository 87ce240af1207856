//! Leaked-credential reports: GitHub's secret-scanning partner endpoint
//! (`POST /v1/leaks/github`, authenticated by its signature only), reports by any authenticated
//! caller (`POST /v1/leaks`), the patterns scanners need (`GET /v1/leaks/patterns`), and the
//! public form for people who find a key (`GET`/`POST /leaks/report`), which answers the same
//! page whatever the key was. See docs/leaks.md.

use crate::auth::{request_meta, Caller};
use crate::error::{ApiError, ApiResult, AppJson};
use crate::no_store::NoStore;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyplane_core::domain::secret::random_base62;
use keyplane_core::Error;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A report body is read up to this many bytes (GitHub batches a few matches).
const MAX_REPORT_BYTES: usize = 1024 * 1024;
/// The public form's body is read up to this many bytes.
const MAX_FORM_BYTES: usize = 8 * 1024;
/// The cookie the public form's token is bound to.
const FORM_COOKIE: &str = "kp_leak_form";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/leaks/github", post(github))
        .route("/v1/leaks/patterns", get(patterns))
        .route("/leaks/report", get(form_page).post(form_submit))
}

/// The authenticated route (merged with the management routes, so denials are recorded).
pub fn management_router() -> Router<AppState> {
    Router::new().route("/v1/leaks", post(report))
}

/// GitHub's feedback on one reported token.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakFeedback {
    /// The hex SHA-256 of the reported token (the token itself is never sent back).
    pub token_hash: String,
    /// The `type` the report gave.
    pub token_type: String,
    /// `true_positive` (a credential keyplane issued) or `false_positive`.
    pub label: String,
}

/// Receive a report from GitHub's secret-scanning partner program: a JSON array of
/// `{token, type, url, source}`, signed with ECDSA P-256 over the raw body
/// (`Github-Public-Key-Identifier`, `Github-Public-Key-Signature`). Needs no keyplane
/// credential; a bad signature changes nothing (401; throttled per address like any failed
/// authentication, then 429), and the same report again is refused (409).
#[utoipa::path(post, path = "/v1/leaks/github", operation_id = "leaks_github", tag = "leaks",
    params(("Github-Public-Key-Identifier" = String, Header, description = "The signing key's identifier"),
           ("Github-Public-Key-Signature" = String, Header, description = "Base64 of the DER ECDSA P-256 SHA-256 signature of the raw body")),
    request_body(content = String, content_type = "application/json", description = "`[{\"token\", \"type\", \"url\", \"source\"}]`"),
    responses((status = 200, body = Vec<LeakFeedback>), (status = 401, body = crate::error::Problem, description = "missing or bad signature"),
        (status = 409, body = crate::error::Problem, description = "the same report was received before"), (status = 422, body = crate::error::Problem),
        (status = 429, body = crate::error::Problem, description = "too many bad signatures from this address")))]
pub async fn github(State(s): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let meta = request_meta(&parts);
    let Ok(body) = axum::body::to_bytes(body, MAX_REPORT_BYTES).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("a report is at most {MAX_REPORT_BYTES} bytes"),
        )
        .into_response();
    };
    let h = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    match s
        .app
        .leak_report_github(
            &body,
            h("github-public-key-identifier"),
            h("github-public-key-signature"),
            &meta,
        )
        .await
    {
        Ok(feedback) => Json(
            feedback
                .into_iter()
                .map(|f| LeakFeedback {
                    token_hash: f.token_hash,
                    token_type: f.token_type,
                    label: f.label.into(),
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(Error::Unauthenticated(why)) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid-signature",
            "Invalid signature",
            why,
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A scanner's regular expression for one kind of keyplane credential.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakPatternView {
    /// `api_key`, `client_secret` or `admin_key`.
    pub kind: String,
    pub prefix: String,
    pub regex: String,
    /// How a scanner rules out a match that is no credential, with no call to keyplane.
    pub checksum: String,
}

/// The patterns of this deployment's credentials.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakPatternsView {
    pub patterns: Vec<LeakPatternView>,
}

/// The regular expressions a secret scanner needs, one per configured credential format.
#[utoipa::path(get, path = "/v1/leaks/patterns", operation_id = "leaks_patterns", tag = "leaks",
    responses((status = 200, body = LeakPatternsView)))]
pub async fn patterns(State(s): State<AppState>) -> Json<LeakPatternsView> {
    Json(LeakPatternsView {
        patterns: s
            .app
            .leak_patterns()
            .into_iter()
            .map(|p| LeakPatternView {
                kind: p.kind.into(),
                prefix: p.prefix,
                regex: p.regex,
                checksum: p.checksum.into(),
            })
            .collect(),
    })
}

/// A token someone found.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakReportRequest {
    /// The credential as found (an API key or a client secret).
    pub token: String,
    /// Where it was found.
    #[serde(default)]
    pub url: Option<String>,
    /// What kind of place that is (e.g. `commit`, `paste`); `api` when absent.
    #[serde(default)]
    pub source: Option<String>,
}

/// The reported credential, when the reporter may see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakedCredentialView {
    /// `api_key`, `client_secret` or `admin_key`.
    pub kind: String,
    /// The key's id, or the client's id for a client secret.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    /// `revoked`, `notified` or `already_inactive`.
    pub action: String,
}

/// The answer to a report.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakReportView {
    /// Always true: the report was taken (whether the token was a credential is not said).
    pub received: bool,
    /// Present only when the token is a credential the reporter may see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<LeakedCredentialView>,
}

/// Report a leaked credential. Any valid credential may report; a live key or client secret
/// is revoked (or only recorded, under `leaks.policy = "notify"`) whoever owns it, but the
/// answer names it only to a caller who may see it.
#[utoipa::path(post, path = "/v1/leaks", operation_id = "leaks_report", tag = "leaks", request_body = LeakReportRequest,
    responses((status = 200, body = LeakReportView), (status = 422, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn report(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<LeakReportRequest>,
) -> ApiResult<NoStore<Json<LeakReportView>>> {
    let answer = s
        .app
        .leak_report(
            &c.principal,
            &b.token,
            b.url.as_deref(),
            b.source.as_deref(),
            &c.meta,
        )
        .await?;
    Ok(NoStore(Json(LeakReportView {
        received: true,
        credential: answer.visible.map(|h| LeakedCredentialView {
            kind: h.kind.as_str().into(),
            id: h.credential_id,
            secret_id: h.secret_id,
            action: h.action.as_str().into(),
        }),
    })))
}

// ----- the public form -----

const PAGE_HEAD: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Report a leaked credential</title><style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5}input{width:100%;padding:.4rem;margin:.2rem 0 1rem;box-sizing:border-box}button{padding:.5rem 1rem}</style></head><body>\n";

/// The answer to every accepted report, whatever the token was: the same bytes.
const THANKS: &str = "<h1>Thank you</h1>\n<p>Your report was received. If what you sent is a live credential of this service, it is being handled now. Nothing more is said here, whatever you sent.</p>\n<p><a href=\"/leaks/report\">Report another</a></p>\n</body></html>\n";

fn html(status: StatusCode, body: String, cookie: Option<String>) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, c);
    }
    resp
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == FORM_COOKIE).then(|| v.to_string())
        })
}

fn over_tls(parts: &axum::http::request::Parts) -> bool {
    crate::edge::Conn::tls(&parts.extensions)
        || parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The form, with a token bound to a fresh cookie.
async fn form_page(State(s): State<AppState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let nonce = random_base62(32);
    let token = s.app.leak_form_token(&nonce);
    let secure = if over_tls(&parts) { "; Secure" } else { "" };
    let cookie = format!(
        "{FORM_COOKIE}={nonce}; Path=/leaks/report; HttpOnly; SameSite=Strict; Max-Age=7200{secure}"
    );
    let body = format!(
        "{PAGE_HEAD}<h1>Report a leaked credential</h1>\n<p>Found an API key or client secret of this service in public (a repository, a paste, a log)? Report it here and it will be handled. This page never says whether what you sent was valid.</p>\n<form method=\"post\" action=\"/leaks/report\">\n<input type=\"hidden\" name=\"form_token\" value=\"{token}\">\n<label for=\"token\">The credential</label>\n<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required maxlength=\"512\">\n<label for=\"url\">Where you found it (optional)</label>\n<input id=\"url\" name=\"url\" type=\"url\" maxlength=\"2048\">\n<button type=\"submit\">Report</button>\n</form>\n</body></html>\n"
    );
    html(StatusCode::OK, body, Some(cookie))
}

/// A report through the form: throttled per address, then the form's token checked, then the
/// same page for any token — the report is handled after the answer, so neither the page nor
/// its timing depends on the token.
async fn form_submit(State(s): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let meta = request_meta(&parts);
    if let Err(Error::TooManyRequests(wait)) = s.app.leak_form_admit(&meta) {
        let mut resp = html(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{PAGE_HEAD}<h1>Too many reports</h1>\n<p>Too many reports from your address; try again in a minute.</p>\n</body></html>\n"),
            None,
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => Bytes::new(),
    };
    let mut token = None;
    let mut url = None;
    let mut form_token = None;
    for (k, v) in form_urlencoded::parse(&bytes) {
        match k.as_ref() {
            "token" => token = Some(v.into_owned()),
            "url" => url = Some(v.into_owned()),
            "form_token" => form_token = Some(v.into_owned()),
            _ => {}
        }
    }
    let fresh = match (cookie_of(&parts.headers), form_token) {
        (Some(nonce), Some(t)) => s.app.leak_form_token_ok(&t, &nonce),
        _ => false,
    };
    if !fresh {
        return html(
            StatusCode::BAD_REQUEST,
            format!("{PAGE_HEAD}<h1>Please try again</h1>\n<p>This form has expired or was not sent from this site. <a href=\"/leaks/report\">Open it again</a>.</p>\n</body></html>\n"),
            None,
        );
    }
    if let Some(token) = token.filter(|t| !t.trim().is_empty() && t.len() <= 512) {
        let app = s.app.clone();
        tokio::spawn(async move {
            app.leak_report_form(&token, url.as_deref(), &meta).await;
        });
    }
    html(StatusCode::OK, format!("{PAGE_HEAD}{THANKS}"), None)
}
