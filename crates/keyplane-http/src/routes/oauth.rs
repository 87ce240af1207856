//! OAuth 2.0: the token endpoint (RFC 6749 §4.4), introspection (RFC 7662), revocation
//! (RFC 7009), metadata (RFC 8414) and the JWKS. Errors here are RFC 6749 §5.2 bodies.

use crate::auth::{bearer, request_meta};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use keyplane_core::domain::client_auth::{AuthMethod, JWT_BEARER};
use keyplane_core::domain::dpop::DpopRequest;
use keyplane_core::domain::jose::JwsAlg;
use keyplane_core::domain::oauth::{
    ClientAssertion, ClientAuth, ClientCredentials, Endpoint, ExchangeRequest, Introspection,
    OAuthError, RevokeOutcome, INTROSPECTION_PATH, REVOCATION_PATH, TOKEN_EXCHANGE, TOKEN_PATH,
};
use keyplane_core::domain::request::RequestMeta;
use keyplane_core::domain::secret::SecretString;
use keyplane_core::usecase::grants::{AppCredentials, CodeRedemption};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// The token endpoint's paths: keyplane's own, then the ones seeds 000 and 001 use.
pub const TOKEN_PATHS: [&str; 3] = ["/v1/oauth/token", "/v1beta/oauth/token", "/api/oauth/token"];
/// The bases of the introspection and revocation endpoints (`{base}/introspect`, `{base}/revoke`).
pub const TOKEN_BASES: [&str; 2] = ["/v1/oauth/token", "/v1beta/oauth/token"];
const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Where a person authorizes an app; it sends the browser on to the console's consent page.
pub const AUTHORIZE_PATH: &str = "/v1/oauth/authorize";
/// RFC 7591 dynamic client registration.
pub const REGISTER_PATH: &str = "/v1/oauth/register";

pub fn router() -> Router<AppState> {
    let mut r = Router::new()
        .route(METADATA_PATH, get(metadata))
        .route(JWKS_PATH, get(jwks))
        .route(AUTHORIZE_PATH, get(super::apps::authorize))
        .route(REGISTER_PATH, post(super::apps::register));
    // The same handlers at the paths the seed documents use.
    for base in TOKEN_PATHS {
        r = r.route(base, post(token));
    }
    for base in TOKEN_BASES {
        r = r
            .route(&format!("{base}/introspect"), post(introspect))
            .route(&format!("{base}/revoke"), post(revoke));
    }
    r
}

/// Whether `path` is one of this module's routes, whose errors are RFC 6749 §5.2 bodies rather
/// than problem+json (also for what the router and the request limits refuse: 405, 413, 414, 431).
pub fn is_oauth_path(path: &str) -> bool {
    if path == METADATA_PATH
        || path == JWKS_PATH
        || path == REGISTER_PATH
        || path == AUTHORIZE_PATH
        || TOKEN_PATHS.contains(&path)
    {
        return true;
    }
    TOKEN_BASES.iter().any(|base| {
        path.strip_prefix(base)
            .is_some_and(|rest| rest == "/introspect" || rest == "/revoke")
    })
}

/// An RFC 6749 §5.2 error body (also the body of `/v1/authz`'s RFC 6750 refusals).
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `invalid_scope`, `unauthorized_client`,
    /// `unsupported_grant_type` or `server_error` (`/v1/authz`: `invalid_token`,
    /// `insufficient_scope`).
    pub error: String,
    /// What happened, for a person.
    pub error_description: String,
}

/// A 200 JSON answer that must not be cached (token and introspection responses): serialized
/// once into a buffer of the right size, with its three headers in a map sized for them.
fn json_no_store<T: Serialize>(body: &T) -> Response {
    let mut buf = Vec::with_capacity(512);
    if serde_json::to_writer(&mut buf, body).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    let mut resp = Response::new(axum::body::Body::from(buf));
    *resp.headers_mut() = headers;
    resp
}

/// The same answer as [`json_no_store`], for a body already written.
fn json_bytes_no_store(buf: Bytes) -> Response {
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    let mut resp = Response::new(axum::body::Body::from(buf));
    *resp.headers_mut() = headers;
    resp
}

fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// An RFC 6749 §5.2 error answer, never cached; a 4xx is marked with its code's reason for
/// the request metrics.
pub fn error_response(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    let resp = no_store(
        (
            status,
            Json(OAuthErrorBody {
                error: error.into(),
                error_description: description.into(),
            }),
        )
            .into_response(),
    );
    if status.is_client_error() {
        let reason = crate::observe::Reason::of_oauth(status, error);
        return crate::observe::mark_refused(resp, reason);
    }
    resp
}

/// RFC 9449's headers.
pub const DPOP: header::HeaderName = header::HeaderName::from_static("dpop");
pub const DPOP_NONCE: header::HeaderName = header::HeaderName::from_static("dpop-nonce");

const INVALID_CLIENT_DESCRIPTION: &str = "client authentication failed";
/// The challenge of a failed HTTP Basic client authentication.
pub const BASIC_CHALLENGE: &str =
    "Basic realm=\"keyplane\", error=\"invalid_client\", error_description=\"client authentication failed\"";

fn oauth_error(e: OAuthError) -> Response {
    match e {
        OAuthError::InvalidRequest(d) => {
            error_response(StatusCode::BAD_REQUEST, "invalid_request", d)
        }
        OAuthError::InvalidClient { basic } => {
            let mut r = error_response(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                INVALID_CLIENT_DESCRIPTION,
            );
            if basic {
                // RFC 6749 §5.2 asks for the scheme the client used; the error code and
                // description in the challenge too (RFC 6750 §3 style), so a client that
                // reads only the header (openid-client) still learns what went wrong.
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(BASIC_CHALLENGE),
                );
            }
            r
        }
        OAuthError::InvalidClientAssertion(d) => {
            error_response(StatusCode::UNAUTHORIZED, "invalid_client", d)
        }
        OAuthError::InvalidDpopProof(d) => {
            error_response(StatusCode::BAD_REQUEST, "invalid_dpop_proof", d)
        }
        OAuthError::UseDpopNonce(nonce) => {
            let mut r = error_response(
                StatusCode::BAD_REQUEST,
                "use_dpop_nonce",
                "the authorization server requires a nonce in DPoP proofs (the `DPoP-Nonce` header)",
            );
            if let Ok(v) = HeaderValue::from_str(&nonce) {
                r.headers_mut().insert(DPOP_NONCE, v);
            }
            r
        }
        OAuthError::InvalidScope(d) => error_response(StatusCode::BAD_REQUEST, "invalid_scope", d),
        OAuthError::InvalidGrant(d) => error_response(StatusCode::BAD_REQUEST, "invalid_grant", d),
        OAuthError::InvalidTarget(d) => {
            error_response(StatusCode::BAD_REQUEST, "invalid_target", d)
        }
        OAuthError::UnauthorizedClient(d) => {
            error_response(StatusCode::BAD_REQUEST, "unauthorized_client", d)
        }
        OAuthError::UnsupportedGrantType => error_response(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be `client_credentials`, `authorization_code`, `refresh_token` or `urn:ietf:params:oauth:grant-type:token-exchange`",
        ),
        // `slow_down` is the device flow's code (RFC 8628 §3.5), not one the token endpoint may
        // answer; what is refused here is client authentication, so `invalid_client`.
        OAuthError::TooManyRequests(retry) => {
            let mut r = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_client",
                format!("too many failed client authentications; retry in {retry} seconds"),
            );
            if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        OAuthError::Server => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "an internal error occurred; it has been logged",
        ),
    }
}

/// A request body of at most `limit` bytes. A form arrives in one frame: that frame is kept
/// as it is, without the queue and copy a general collector makes.
async fn read_body(mut body: axum::body::Body, limit: usize) -> Result<Bytes, ()> {
    use http_body_util::BodyExt;
    let mut first = Bytes::new();
    let mut joined: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ())?.into_data() else {
            continue;
        };
        if first.len() + joined.len() + data.len() > limit {
            return Err(());
        }
        if first.is_empty() && joined.is_empty() {
            first = data;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&first);
                first = Bytes::new();
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(if joined.is_empty() {
        first
    } else {
        Bytes::from(joined)
    })
}

/// The form of an OAuth request, read whole. Repeated parameters and a wrong content type are
/// `invalid_request` (RFC 6749 §3.2: "parameters MUST NOT be included more than once").
struct OAuthForm {
    params: Params,
    /// `resource` (RFC 8707) and `audience` (RFC 8693) values, which may repeat.
    targets: Vec<String>,
    headers: HeaderMap,
    meta: RequestMeta,
    /// Where it was posted: its path is an endpoint's canonical path or one of its aliases.
    uri: axum::http::Uri,
}

/// The largest form the OAuth endpoints read.
const FORM_LIMIT: usize = 16 * 1024;

async fn read_form(req: Request) -> Result<OAuthForm, Response> {
    let (parts, body) = req.into_parts();
    let meta = request_meta(&parts);
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.split(';').next().is_some_and(|m| {
        m.trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    }) {
        return Err(oauth_error(OAuthError::InvalidRequest(
            "send the parameters as application/x-www-form-urlencoded".into(),
        )));
    }
    let bytes = read_body(body, FORM_LIMIT).await.map_err(|_| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "the request body is too large (at most 16 KiB)",
        )
    })?;
    let (params, targets) =
        parse_form(bytes).map_err(|e| oauth_error(OAuthError::InvalidRequest(e)))?;
    Ok(OAuthForm {
        params,
        targets,
        headers: parts.headers,
        meta,
        uri: parts.uri,
    })
}

/// A form's parameters: each name and value is a range of the form's text, unless it had to
/// be unescaped (then it is owned). A form has a handful of pairs, so they are searched in a
/// small vector rather than hashed, and a plain form is read without copying a byte of it.
struct Params {
    text: Bytes,
    pairs: Vec<(Piece, Piece)>,
}

enum Piece {
    /// `text[start..end]`, with no escapes in it.
    At(usize, usize),
    Owned(Box<str>),
}

impl Params {
    fn piece<'a>(&'a self, p: &'a Piece) -> &'a str {
        match p {
            // The whole text is UTF-8 (parse_form's caller checked) and pieces are cut at
            // ASCII `&` and `=`, so this never falls back.
            Piece::At(a, b) => std::str::from_utf8(&self.text[*a..*b]).unwrap_or(""),
            Piece::Owned(s) => s,
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| match k {
                Piece::At(a, b) => &self.text[*a..*b] == name.as_bytes(),
                Piece::Owned(o) => o.as_ref() == name,
            })
            .map(|(_, v)| self.piece(v))
    }

    fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pairs.len()
    }
}

/// The pairs of an OAuth form (UTF-8 text), strictly: every escape well formed, every value
/// UTF-8, no parameter twice (RFC 6749 §3.2: "parameters MUST NOT be included more than once")
/// but `resource` (RFC 8707 §2) and `audience` (RFC 8693 §2.1), which are returned apart.
fn parse_form(text: Bytes) -> Result<(Params, Vec<String>), String> {
    let mut pairs: Vec<(Piece, Piece)> = Vec::with_capacity(6);
    let mut targets = Vec::new();
    let whole = std::str::from_utf8(&text).map_err(|_| "the form is not UTF-8".to_string())?;
    let bad = |_| "the form has a malformed %-escape or is not UTF-8".to_string();
    let piece = |start: usize, s: &str| -> Result<Piece, String> {
        Ok(match crate::auth::form_unescape(s).map_err(bad)? {
            std::borrow::Cow::Borrowed(_) => Piece::At(start, start + s.len()),
            std::borrow::Cow::Owned(o) => Piece::Owned(o.into_boxed_str()),
        })
    };
    let mut start = 0;
    for pair in whole.split('&') {
        let at = start;
        start += pair.len() + 1;
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = crate::auth::form_unescape(k).map_err(bad)?;
        if key == "resource" || key == "audience" {
            targets.push(crate::auth::form_unescape(v).map_err(bad)?.into_owned());
            continue;
        }
        let seen = pairs.iter().any(|(pk, _)| match pk {
            Piece::At(a, b) => &whole[*a..*b] == key.as_ref(),
            Piece::Owned(o) => o.as_ref() == key.as_ref(),
        });
        if seen {
            return Err(format!("the parameter `{key}` is repeated"));
        }
        let key = match key {
            std::borrow::Cow::Borrowed(_) => Piece::At(at, at + k.len()),
            std::borrow::Cow::Owned(o) => Piece::Owned(o.into_boxed_str()),
        };
        let value_at = at + pair.len() - v.len();
        pairs.push((key, piece(value_at, v)?));
    }
    Ok((Params { text, pairs }, targets))
}

/// RFC 6749 §2.3.1: the id and secret in Basic are each form-urlencoded before joining.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decode = || -> Option<(String, String)> {
        // Decoded on the stack when it fits (any real client's id and secret do).
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut buf = [0u8; 384];
        let heap;
        let raw: &[u8] = match b64.decode_slice(rest.trim(), &mut buf) {
            Ok(n) => &buf[..n],
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                heap = b64.decode(rest.trim()).ok()?;
                &heap
            }
            Err(_) => return None,
        };
        let text = std::str::from_utf8(raw).ok()?;
        let (id, secret) = text.split_once(':')?;
        Some((
            crate::auth::form_unescape(id).ok()?.into_owned(),
            crate::auth::form_unescape(secret).ok()?.into_owned(),
        ))
    };
    Some(decode().ok_or(()))
}

/// The client's credentials: a `client_assertion` (RFC 7521 §4.2), HTTP Basic, or an id and
/// secret in the form. Two methods at once is `invalid_request` (RFC 6749 §2.3).
fn client_auth(
    form: &OAuthForm,
    endpoint: Endpoint,
) -> Result<Option<ClientCredentials>, OAuthError> {
    let p = &form.params;
    match (p.get("client_assertion_type"), p.get("client_assertion")) {
        (None, None) => {}
        (Some(kind), Some(assertion)) => {
            if basic_credentials(&form.headers).is_some() || p.contains_key("client_secret") {
                return Err(OAuthError::InvalidRequest(
                    "use one client authentication method: a client assertion, HTTP Basic or client_id/client_secret in the body".into(),
                ));
            }
            if kind != JWT_BEARER {
                return Err(OAuthError::InvalidClientAssertion(format!(
                    "`client_assertion_type` must be `{JWT_BEARER}`"
                )));
            }
            return Ok(Some(ClientCredentials::Assertion(ClientAssertion {
                client_id: p.get("client_id").map(str::to_string),
                assertion: assertion.to_string(),
                endpoint,
                path: form.uri.path().to_string(),
            })));
        }
        _ => {
            return Err(OAuthError::InvalidRequest(
                "`client_assertion` and `client_assertion_type` are sent together".into(),
            ))
        }
    }
    let post = match (p.get("client_id"), p.get("client_secret")) {
        (Some(id), Some(secret)) => Some((id.to_string(), secret.to_string())),
        (Some(_), None) | (None, Some(_)) => None,
        (None, None) => None,
    };
    let basic = basic_credentials(&form.headers);
    // RFC 6749 §2.3.1 forbids two methods; a `client_id` in the form that names another client
    // than Basic does is a contradiction, not something to ignore. The same id is harmless
    // (some clients always send it, RFC 6749 §4.4 allows it with Basic).
    if let (Some(Ok((basic_id, _))), Some(form_id)) = (&basic, p.get("client_id")) {
        if basic_id != form_id {
            return Err(OAuthError::InvalidRequest(
                "`client_id` in the form names another client than HTTP Basic does".into(),
            ));
        }
    }
    let secret = |client_id, secret, basic| {
        Ok(Some(ClientCredentials::Secret(ClientAuth {
            client_id,
            secret: SecretString::new(secret),
            basic,
        })))
    };
    match (basic, post) {
        (Some(_), Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method: HTTP Basic or client_id/client_secret in the body, not both".into(),
        )),
        (Some(Ok((id, s))), None) => secret(id, s, true),
        (Some(Err(())), None) => Err(OAuthError::InvalidClient { basic: true }),
        (None, Some((id, s))) => secret(id, s, false),
        (None, None) => Ok(None),
    }
}

/// A token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// `Bearer`, or `DPoP` for a token bound to the key of the request's DPoP proof.
    pub token_type: String,
    pub expires_in: i64,
    pub scope: String,
    /// Token exchange (RFC 8693 §2.2.1): `urn:ietf:params:oauth:token-type:access_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<String>,
    /// The authorization-code and refresh-token grants: the next refresh token (each is used
    /// once; presenting a used one revokes the grant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// What the token endpoint takes (RFC 6749 §4.4.2), as `application/x-www-form-urlencoded`.
/// The client authenticates by HTTP Basic, by `client_id` and `client_secret` here, or with a
/// `client_assertion` (RFC 7523) — one method only.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRequest {
    pub grant_type: GrantType,
    /// Space-delimited subset of the client's scopes; all of them when absent.
    pub scope: Option<String>,
    /// With `client_secret`, instead of HTTP Basic (`client_secret_post`).
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, with `client_assertion`
    /// (`private_key_jwt`, RFC 7523 §2.2), instead of a secret.
    pub client_assertion_type: Option<String>,
    /// A JWT the client signed with one of its registered keys.
    pub client_assertion: Option<String>,
    /// RFC 8707: a registered service's resource URI; repeatable. The token's `aud` is the
    /// resource(s), and its scopes are narrowed to their services'. `audience` is taken as a
    /// synonym (RFC 8693; some clients send it with client credentials).
    pub resource: Option<Vec<String>>,
    pub audience: Option<Vec<String>>,
    /// Token exchange (RFC 8693 §2.1): an access token or API key of this server.
    pub subject_token: Option<String>,
    /// `urn:ietf:params:oauth:token-type:access_token` (or `…:jwt` for a JWT access token).
    pub subject_token_type: Option<String>,
    /// Token exchange: a live access token of the authenticated client (optional).
    pub actor_token: Option<String>,
    pub actor_token_type: Option<String>,
    /// Token exchange: `urn:ietf:params:oauth:token-type:access_token` (the default).
    pub requested_token_type: Option<String>,
}

/// The grants keyplane's token endpoint issues for.
#[derive(Debug, Serialize, ToSchema)]
pub enum GrantType {
    #[serde(rename = "client_credentials")]
    ClientCredentials,
    /// RFC 8693 token exchange (delegation: the token acts for the subject token's holder).
    #[serde(rename = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange,
}

/// What introspection takes (RFC 7662 §2.1). The caller authenticates as a client (HTTP Basic
/// or `client_id`/`client_secret` here) or with a bearer credential holding `tokens:introspect`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntrospectionRequest {
    /// An access token or an API key.
    pub token: String,
    /// `access_token` (optional; keyplane recognises the token by itself).
    pub token_type_hint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, with `client_assertion`
    /// (`private_key_jwt`, RFC 7523 §2.2), instead of a secret.
    pub client_assertion_type: Option<String>,
    /// A JWT the client signed with one of its registered keys.
    pub client_assertion: Option<String>,
}

/// What revocation takes (RFC 7009 §2.1). The client authenticates by HTTP Basic or with
/// `client_id`/`client_secret` here.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationRequest {
    /// One of the client's own access tokens.
    pub token: String,
    /// `access_token` (optional; keyplane recognises the token by itself).
    pub token_type_hint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, with `client_assertion`
    /// (`private_key_jwt`, RFC 7523 §2.2), instead of a secret.
    pub client_assertion_type: Option<String>,
    /// A JWT the client signed with one of its registered keys.
    pub client_assertion: Option<String>,
}

/// The client-credentials grant. Client authentication by HTTP Basic, by `client_id` and
/// `client_secret` in the form, or (`private_key_jwt` clients) by a signed `client_assertion`.
#[utoipa::path(post, path = "/v1/oauth/token", tag = "oauth", operation_id = "oauth_token",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenResponse, headers(("Cache-Control" = String, description = "`no-store`"), ("Pragma" = String, description = "`no-cache`")))),
    security(("client_basic" = []), ()))]
pub async fn token(State(s): State<AppState>, req: Request) -> Response {
    // DPoP (RFC 9449 §5): a proof binds the token to its key; `htu` is this endpoint's URL
    // under the issuer (at the path the client used, or the canonical one).
    let proofs: Vec<String> = req
        .headers()
        .get_all(DPOP)
        .iter()
        .map(|v| v.to_str().unwrap_or("").to_string())
        .collect();
    let issuer = &s.app.settings().oauth.issuer;
    let htus = vec![
        format!("{issuer}{}", req.uri().path()),
        format!("{issuer}{TOKEN_PATH}"),
    ];
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(g @ ("authorization_code" | "refresh_token")) = form.params.get("grant_type") {
        let dpop = DpopRequest {
            proofs: proofs.iter().map(String::as_str).collect(),
            htm: "POST",
            htus,
        };
        let dpop = (!proofs.is_empty()).then_some(&dpop);
        return app_grant(&s, &form, g == "authorization_code", dpop).await;
    }
    let auth = match client_auth(&form, Endpoint::Token) {
        Ok(Some(a)) => a,
        Ok(None) => return oauth_error(OAuthError::InvalidClient { basic: false }),
        Err(e) => return oauth_error(e),
    };
    let exchange = match form.params.get("grant_type") {
        None => {
            return oauth_error(OAuthError::InvalidRequest(
                "the parameter `grant_type` is missing".into(),
            ))
        }
        Some("client_credentials") => false,
        Some(TOKEN_EXCHANGE) => true,
        Some(_) => return oauth_error(OAuthError::UnsupportedGrantType),
    };
    let dpop = DpopRequest {
        proofs: proofs.iter().map(String::as_str).collect(),
        htm: "POST",
        htus,
    };
    let dpop = (!proofs.is_empty()).then_some(&dpop);
    let p = |k: &str| form.params.get(k);
    let issued = if exchange {
        let x = ExchangeRequest {
            subject_token: p("subject_token"),
            subject_token_type: p("subject_token_type"),
            actor_token: p("actor_token"),
            actor_token_type: p("actor_token_type"),
            requested_token_type: p("requested_token_type"),
            scope: p("scope"),
            resources: form.targets.clone(),
        };
        s.app.exchange_token(&auth, &x, &form.meta, dpop).await
    } else {
        s.app
            .issue_token(&auth, p("scope"), &form.targets, &form.meta, dpop)
            .await
    };
    match issued {
        Ok(t) => json_no_store(&TokenResponse {
            access_token: t.access_token,
            token_type: t.token_type.into(),
            expires_in: t.expires_in,
            scope: t.scope,
            issued_token_type: t.issued_token_type.map(str::to_string),
            refresh_token: None,
        }),
        Err(e) => oauth_error(e),
    }
}

/// The authorization-code and refresh-token grants, for apps (registered, or by metadata
/// document): a public app sends its `client_id` alone, a confidential one its secret by HTTP
/// Basic or in the form.
async fn app_grant(
    s: &AppState,
    form: &OAuthForm,
    by_code: bool,
    dpop: Option<&DpopRequest<'_>>,
) -> Response {
    let p = |k: &str| form.params.get(k);
    if p("client_assertion").is_some() || p("client_assertion_type").is_some() {
        return oauth_error(OAuthError::InvalidRequest(
            "apps authenticate with their client_id (public) or client secret, not a client assertion".into(),
        ));
    }
    let creds = match (basic_credentials(&form.headers), p("client_id")) {
        (Some(Err(())), _) => return oauth_error(OAuthError::InvalidClient { basic: true }),
        (Some(Ok((id, secret))), form_id) => {
            if form_id.is_some_and(|f| f != id) || p("client_secret").is_some() {
                return oauth_error(OAuthError::InvalidRequest(
                    "use one client authentication method: HTTP Basic or the form, not both".into(),
                ));
            }
            AppCredentials {
                client_id: id,
                secret: Some(SecretString::new(secret)),
                basic: true,
            }
        }
        (None, Some(id)) => AppCredentials {
            client_id: id.to_string(),
            secret: p("client_secret").map(|s| SecretString::new(s.to_string())),
            basic: false,
        },
        (None, None) => {
            return oauth_error(OAuthError::InvalidRequest("`client_id` is required".into()))
        }
    };
    let issued = if by_code {
        s.app
            .token_by_code(
                &creds,
                &CodeRedemption {
                    code: p("code"),
                    redirect_uri: p("redirect_uri"),
                    code_verifier: p("code_verifier"),
                },
                &form.targets,
                dpop,
                &form.meta,
            )
            .await
    } else {
        s.app
            .token_by_refresh(
                &creds,
                p("refresh_token"),
                p("scope"),
                &form.targets,
                dpop,
                &form.meta,
            )
            .await
    };
    match issued {
        Ok(g) => json_no_store(&TokenResponse {
            access_token: g.token.access_token,
            token_type: g.token.token_type.into(),
            expires_in: g.token.expires_in,
            scope: g.token.scope,
            issued_token_type: None,
            refresh_token: Some(g.refresh_token),
        }),
        Err(e) => oauth_error(e),
    }
}

/// An introspection answer (RFC 7662 §2.2); inactive is exactly `{"active": false}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntrospectionResponse {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// One audience as a string, several as an array.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<AudienceValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `access_token` or `api_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_type: Option<&'static str>,
    /// DPoP (RFC 9449 §6.2): the thumbprint of the key a bound token is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Token exchange (RFC 8693 §4.1): who acts for `sub` (`{"sub": …}`, earlier actors
    /// nested in `act`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub act: Option<serde_json::Value>,
    /// Workload identity federation: the external identity (`iss`, `sub`) the client proved
    /// itself with when the token was issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub federated: Option<serde_json::Value>,
}

/// A JWT-style `aud`: a string, or an array of strings.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AudienceValue {
    One(String),
    Many(Vec<String>),
}

impl AudienceValue {
    #[cfg(test)]
    fn of(mut aud: Vec<String>) -> Option<Self> {
        match aud.len() {
            0 => None,
            1 => aud.pop().map(AudienceValue::One),
            _ => Some(AudienceValue::Many(aud)),
        }
    }
}

/// RFC 7800 confirmation: `jkt`, the RFC 7638 thumbprint of the DPoP key.
#[derive(Debug, Serialize, ToSchema)]
pub struct Confirmation {
    pub jkt: String,
}

impl IntrospectionResponse {
    fn inactive() -> Self {
        Self {
            active: false,
            iss: None,
            sub: None,
            aud: None,
            exp: None,
            nbf: None,
            iat: None,
            jti: None,
            client_id: None,
            token_type: None,
            username: None,
            scope: None,
            credential_type: None,
            cnf: None,
            act: None,
            federated: None,
        }
    }

    /// The serde form of an active answer; [`introspection_json`] writes the same bytes
    /// directly (a unit test compares them).
    #[cfg(test)]
    fn active(issuer: &str, i: Introspection) -> Self {
        Self {
            active: true,
            iss: Some(issuer.to_string()),
            sub: Some(i.sub),
            aud: AudienceValue::of(i.aud),
            exp: i.exp,
            nbf: Some(i.nbf),
            iat: Some(i.iat),
            jti: Some(i.jti),
            client_id: i.client_id,
            token_type: Some(if i.jkt.is_some() { "DPoP" } else { "Bearer" }),
            username: Some(i.username),
            scope: Some(i.scope),
            credential_type: Some(i.credential_type),
            cnf: i.jkt.map(|jkt| Confirmation { jkt }),
            act: i.act.and_then(|a| serde_json::to_value(a).ok()),
            federated: i.federated.and_then(|f| serde_json::to_value(f).ok()),
        }
    }
}

/// RFC 7662 introspection of an access token or API key. The caller authenticates as a client
/// (Basic or form) or with a bearer credential allowed to introspect (`tokens:introspect`).
#[utoipa::path(post, path = "/v1/oauth/token/introspect", tag = "oauth", operation_id = "oauth_introspect",
    request_body(content = IntrospectionRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = IntrospectionResponse, headers(("Cache-Control" = String, description = "`no-store`"), ("Pragma" = String, description = "`no-cache`"))),
        (status = 403, body = OAuthErrorBody, description = "`insufficient_scope`: the bearer credential lacks `tokens:introspect`")),
    security(("client_basic" = []), ("bearer" = []), ()))]
pub async fn introspect(State(s): State<AppState>, req: Request) -> Response {
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let scope_org = match client_auth(&form, Endpoint::Introspection) {
        Err(e) => return oauth_error(e),
        Ok(Some(auth)) => match s.app.authenticate_client(&auth, &form.meta).await {
            Ok(c) => Some(c.client.org_id.clone()),
            Err(e) => return oauth_error(e),
        },
        Ok(None) => {
            let principal = match s.app.authenticate(bearer(&form.headers), &form.meta).await {
                Ok(p) => p,
                Err(keyplane_core::Error::TooManyRequests(wait)) => {
                    return oauth_error(OAuthError::TooManyRequests(wait))
                }
                Err(_) => return oauth_error(OAuthError::InvalidClient { basic: false }),
            };
            match s.app.introspection_scope(&principal) {
                Ok(org) => org,
                Err(_) => {
                    return error_response(
                        StatusCode::FORBIDDEN,
                        "insufficient_scope",
                        "this credential may not introspect tokens: it needs the `tokens:introspect` permission",
                    )
                }
            }
        }
    };
    let Some(token) = form.params.get("token") else {
        return oauth_error(OAuthError::InvalidRequest(
            "the parameter `token` is missing".into(),
        ));
    };
    match s.app.introspect(scope_org.as_deref(), token).await {
        (Some(i), _) => {
            let issuer = &s.app.settings().oauth.issuer;
            // Shared: an opened token's answer, written once and sent as it is.
            if Arc::strong_count(&i) > 1 {
                let answer = i
                    .answer
                    .get_or_init(|| introspection_json(issuer, &i).into());
                json_bytes_no_store(Bytes::from_owner(Arc::clone(answer)))
            } else {
                json_bytes_no_store(Bytes::from(introspection_json(issuer, &i)))
            }
        }
        // Over a rate limit: inactive (RFC 7662 §2.2 lets the server say so for any reason),
        // with the limit's `RateLimit` fields so a resource server can answer 429 itself.
        (None, Some(limit)) => {
            let mut resp = json_no_store(&IntrospectionResponse::inactive());
            for (name, value) in crate::routes::authz::ratelimit_headers(&limit) {
                resp.headers_mut().insert(name, value);
            }
            resp
        }
        (None, None) => json_no_store(&IntrospectionResponse::inactive()),
    }
}

/// Appends `s` as a JSON string, exactly as serde_json writes it: most strings here (ids,
/// scopes, thumbprints, URLs) need no escape and are copied as they are.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    // A fold without an early exit, so many bytes are checked at a time.
    let plain = !s.bytes().fold(false, |esc, b| {
        esc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// An active introspection answer (RFC 7662 §2.2), written straight from the verified token:
/// the fields, their order and their formatting of [`IntrospectionResponse`] (serde), without
/// copying the token's fields into it first.
fn introspection_json(issuer: &str, i: &Introspection) -> Vec<u8> {
    let mut b = Vec::with_capacity(512);
    let num = |b: &mut Vec<u8>, n: i64| {
        let _ = serde_json::to_writer(&mut *b, &n);
    };
    b.extend_from_slice(b"{\"active\":true,\"iss\":");
    push_json_str(&mut b, issuer);
    b.extend_from_slice(b",\"sub\":");
    push_json_str(&mut b, &i.sub);
    match i.aud.as_slice() {
        [] => {}
        [one] => {
            b.extend_from_slice(b",\"aud\":");
            push_json_str(&mut b, one);
        }
        many => {
            b.extend_from_slice(b",\"aud\":[");
            for (n, a) in many.iter().enumerate() {
                if n > 0 {
                    b.push(b',');
                }
                push_json_str(&mut b, a);
            }
            b.push(b']');
        }
    }
    if let Some(exp) = i.exp {
        b.extend_from_slice(b",\"exp\":");
        num(&mut b, exp);
    }
    b.extend_from_slice(b",\"nbf\":");
    num(&mut b, i.nbf);
    b.extend_from_slice(b",\"iat\":");
    num(&mut b, i.iat);
    b.extend_from_slice(b",\"jti\":");
    push_json_str(&mut b, &i.jti);
    if let Some(c) = &i.client_id {
        b.extend_from_slice(b",\"client_id\":");
        push_json_str(&mut b, c);
    }
    b.extend_from_slice(if i.jkt.is_some() {
        b",\"token_type\":\"DPoP\""
    } else {
        b",\"token_type\":\"Bearer\""
    });
    b.extend_from_slice(b",\"username\":");
    push_json_str(&mut b, &i.username);
    b.extend_from_slice(b",\"scope\":");
    push_json_str(&mut b, &i.scope);
    b.extend_from_slice(b",\"credential_type\":");
    push_json_str(&mut b, i.credential_type);
    if let Some(jkt) = &i.jkt {
        b.extend_from_slice(b",\"cnf\":{\"jkt\":");
        push_json_str(&mut b, jkt);
        b.push(b'}');
    }
    // Through serde_json's `Value`, as the serde form does (its maps sort their keys).
    if let Some(act) = i.act.as_ref().and_then(|a| serde_json::to_value(a).ok()) {
        b.extend_from_slice(b",\"act\":");
        let _ = serde_json::to_writer(&mut b, &act);
    }
    if let Some(f) = i
        .federated
        .as_ref()
        .and_then(|f| serde_json::to_value(f).ok())
    {
        b.extend_from_slice(b",\"federated\":");
        let _ = serde_json::to_writer(&mut b, &f);
    }
    b.push(b'}');
    b
}

/// RFC 7009 revocation: a client revokes one of its own access tokens. 200 with no body; for a
/// token that does not exist, 200 with `{"error": "invalid_request", ...}` as seed 000 shows.
#[utoipa::path(post, path = "/v1/oauth/token/revoke", tag = "oauth", operation_id = "oauth_revoke",
    request_body(content = RevocationRequest, content_type = "application/x-www-form-urlencoded"),
    // No body schema for the 200: a revocation answers no body at all (RFC 7009 §2.2), which a
    // client generated from a JSON schema would fail to parse.
    responses((status = 200, description = "Revoked: no body. A token that does not exist: the body seed 000 shows, `{\"error\": \"invalid_request\", \"error_description\": \"The token does not exist\"}`.")),
    security(("client_basic" = []), ()))]
pub async fn revoke(State(s): State<AppState>, req: Request) -> Response {
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let auth = match client_auth(&form, Endpoint::Revocation) {
        Ok(Some(a)) => a,
        Ok(None) => return oauth_error(OAuthError::InvalidClient { basic: false }),
        Err(e) => return oauth_error(e),
    };
    let Some(token) = form.params.get("token") else {
        return oauth_error(OAuthError::InvalidRequest(
            "the parameter `token` is missing".into(),
        ));
    };
    match s.app.revoke_token(&auth, token, &form.meta).await {
        Ok(RevokeOutcome::Revoked) => no_store(StatusCode::OK.into_response()),
        Ok(RevokeOutcome::Unknown) => error_response(
            StatusCode::OK,
            "invalid_request",
            "The token does not exist",
        ),
        Err(e) => oauth_error(e),
    }
}

/// RFC 8414 authorization server metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizationServerMetadata {
    pub issuer: String,
    pub token_endpoint: String,
    pub introspection_endpoint: String,
    pub revocation_endpoint: String,
    pub jwks_uri: String,
    /// `["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"]`
    pub grant_types_supported: Vec<String>,
    /// `["token"]`
    pub response_types_supported: Vec<String>,
    /// The union of the registered services' scopes.
    pub scopes_supported: Vec<String>,
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt`
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// The algorithms a `private_key_jwt` assertion may be signed with.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    pub introspection_endpoint_auth_signing_alg_values_supported: Vec<String>,
    pub revocation_endpoint_auth_methods_supported: Vec<String>,
    pub revocation_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// The algorithms a DPoP proof may be signed with (RFC 9449 §5.1).
    pub dpop_signing_alg_values_supported: Vec<String>,
    /// Where a person authorizes an app (the authorization-code grant).
    pub authorization_endpoint: String,
    /// PKCE (RFC 7636): `["S256"]` only.
    pub code_challenge_methods_supported: Vec<String>,
    /// RFC 9207: authorization responses carry `iss`.
    pub authorization_response_iss_parameter_supported: bool,
    /// Apps may be identified by the HTTPS URL of their client ID metadata document.
    pub client_id_metadata_document_supported: bool,
    /// RFC 7591 dynamic registration, when the deployment allows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_endpoint: Option<String>,
}

/// RFC 8414 authorization server metadata.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "oauth", operation_id = "oauth_metadata",
    responses((status = 200, body = AuthorizationServerMetadata)))]
pub async fn metadata(State(s): State<AppState>) -> Response {
    let issuer = s.app.settings().oauth.issuer.clone();
    let scopes: Vec<String> = s
        .app
        .scopes_supported()
        .await
        .map(|x| x.into_iter().collect())
        .unwrap_or_default();
    let registration = !matches!(
        s.app.settings().oauth.registration,
        keyplane_core::domain::settings::Registration::Off
    );
    Json(metadata_document(&issuer, scopes, registration)).into_response()
}

/// The RFC 8414 document for `issuer`: exactly the endpoints, grants, client authentication
/// methods and assertion algorithms keyplane supports.
pub fn metadata_document(
    issuer: &str,
    scopes: Vec<String>,
    registration: bool,
) -> AuthorizationServerMetadata {
    let methods: Vec<String> = AuthMethod::ALL
        .iter()
        .map(|m| m.as_str().to_string())
        .collect();
    // The token endpoint also takes public apps (`none`: PKCE is their proof).
    let mut token_methods = methods.clone();
    token_methods.push("none".into());
    let algs: Vec<String> = JwsAlg::ALL.iter().map(|a| a.as_str().to_string()).collect();
    AuthorizationServerMetadata {
        issuer: issuer.to_string(),
        token_endpoint: format!("{issuer}{TOKEN_PATH}"),
        introspection_endpoint: format!("{issuer}{INTROSPECTION_PATH}"),
        revocation_endpoint: format!("{issuer}{REVOCATION_PATH}"),
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        grant_types_supported: vec![
            "client_credentials".into(),
            "authorization_code".into(),
            "refresh_token".into(),
            TOKEN_EXCHANGE.into(),
        ],
        response_types_supported: vec!["code".into()],
        scopes_supported: scopes,
        token_endpoint_auth_methods_supported: token_methods,
        token_endpoint_auth_signing_alg_values_supported: algs.clone(),
        introspection_endpoint_auth_methods_supported: methods.clone(),
        introspection_endpoint_auth_signing_alg_values_supported: algs.clone(),
        revocation_endpoint_auth_methods_supported: methods,
        revocation_endpoint_auth_signing_alg_values_supported: algs.clone(),
        dpop_signing_alg_values_supported: algs,
        authorization_endpoint: format!("{issuer}{AUTHORIZE_PATH}"),
        code_challenge_methods_supported: vec!["S256".into()],
        authorization_response_iss_parameter_supported: true,
        client_id_metadata_document_supported: true,
        registration_endpoint: registration.then(|| format!("{issuer}{REGISTER_PATH}")),
    }
}

/// A JSON Web Key Set (RFC 7517 §5): the public signing keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// One public signing key (RFC 7517 §4): an ES256 key (`EC`, `P-256`, `x` and `y`) or an EdDSA
/// key (`OKP`, `Ed25519`, `x`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Jwk {
    /// `EC` or `OKP`
    pub kty: String,
    /// `P-256` or `Ed25519`
    pub crv: String,
    /// `sig`
    #[serde(rename = "use")]
    pub use_: String,
    /// `ES256` or `EdDSA`
    pub alg: String,
    pub kid: String,
    pub x: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// The public signing keys: the next one, the current one, and retired ones still in use.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oauth", operation_id = "oauth_jwks",
    responses((status = 200, body = JwkSet, headers(("Cache-Control" = String, description = "`public, max-age=N`, N at most 60")))))]
pub async fn jwks(State(s): State<AppState>) -> Response {
    let mut r = Json(s.app.jwks()).into_response();
    // Never cache longer than a new key is published before it signs.
    let max_age = s.app.settings().oauth.signing_key_lead_seconds.clamp(0, 60);
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(s: &str) -> String {
        form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    fn basic_header(id: &str, secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let raw = format!("{}:{}", encode(id), encode(secret));
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    fn form(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    /// The directly written introspection answer is byte for byte the serde one.
    #[test]
    fn introspection_json_is_the_serde_form() {
        use keyplane_core::domain::token::{Act, FederatedRef};
        let base = Introspection {
            sub: "kpc_abc".into(),
            client_id: Some("kpc_abc".into()),
            exp: Some(1_800_000_000),
            iat: 1_799_996_400,
            nbf: -5,
            jti: "j1".into(),
            username: "bench \"quoted\" \\ name\n\u{1}é".into(),
            scope: "a:read b:write".into(),
            credential_type: "access_token",
            aud: vec!["https://as".into()],
            act: None,
            federated: None,
            subject_credentials: vec![],
            org_id: "org".into(),
            project_id: "prj".into(),
            jkt: None,
            answer: Default::default(),
        };
        let variants = [
            base.clone(),
            Introspection {
                aud: vec![],
                exp: None,
                client_id: None,
                credential_type: "api_key",
                ..base.clone()
            },
            Introspection {
                aud: vec!["https://a".into(), "https://b\"".into()],
                jkt: Some("thumb-print_1".into()),
                act: Some(Act {
                    sub: "agent".into(),
                    act: Some(Box::new(Act {
                        sub: "first".into(),
                        act: None,
                    })),
                }),
                federated: Some(FederatedRef {
                    iss: "https://token.actions.githubusercontent.com".into(),
                    sub: "repo:o/r:ref:refs/heads/main".into(),
                }),
                ..base.clone()
            },
        ];
        for (n, i) in variants.into_iter().enumerate() {
            let direct = introspection_json("http://127.0.0.1:8780", &i);
            let serde =
                serde_json::to_vec(&IntrospectionResponse::active("http://127.0.0.1:8780", i))
                    .unwrap();
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(serde).unwrap(),
                "variant {n}"
            );
        }
    }

    proptest! {
        /// Any string is written as serde_json writes it.
        #[test]
        fn json_strings_are_serde_json(s in "\\PC{0,40}|[\\x00-\\x7f]{0,40}") {
            let mut b = Vec::new();
            push_json_str(&mut b, &s);
            prop_assert_eq!(b, serde_json::to_vec(&s).unwrap());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever is sent, the reader answers (no panic), and what a correct client encodes
        /// comes back exactly.
        #[test]
        fn forms_round_trip(pairs in proptest::collection::btree_map("[a-z_]{1,12}", "\\PC{0,24}", 0..6)) {
            prop_assume!(!pairs.contains_key("resource") && !pairs.contains_key("audience"));
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &pairs {
                ser.append_pair(k, v);
            }
            let text = ser.finish();
            let (parsed, targets) = parse_form(form(&text)).unwrap();
            prop_assert!(targets.is_empty());
            prop_assert_eq!(parsed.len(), pairs.len());
            for (k, v) in &pairs {
                prop_assert_eq!(parsed.get(k), Some(v.as_str()));
            }
        }

        #[test]
        fn any_form_is_answered(text in ".{0,200}") {
            let _ = parse_form(form(&text));
        }

        #[test]
        fn repeated_parameters_are_refused(k in "[a-z]{1,8}", a in "[a-z]{0,8}", b in "[a-z]{0,8}") {
            prop_assume!(k != "resource" && k != "audience");
            let text = format!("{k}={a}&{k}={b}");
            prop_assert!(parse_form(form(&text)).is_err());
        }

        /// `resource` and `audience` repeat (RFC 8707 §2, RFC 8693 §2.1), in order.
        #[test]
        fn targets_repeat(a in "[a-z]{1,8}", b in "[a-z]{1,8}") {
            let text = format!("resource={a}&grant_type=x&audience={b}&resource={a}");
            let (params, targets) = parse_form(form(&text)).unwrap();
            prop_assert_eq!(params.len(), 1);
            prop_assert_eq!(targets, vec![a.clone(), b, a]);
        }

        /// A `%` not followed by two hexadecimal digits is refused, wherever it is.
        #[test]
        fn bad_escapes_are_refused(before in "[a-z]{0,8}", bad in "%([g-z+ -]|[0-9a-f][g-z+ -])", after in "[a-z]{0,8}", cut in "%[0-9a-f]?") {
            let text = format!("k={before}{bad}{after}");
            prop_assert!(parse_form(form(&text)).is_err(), "accepted {}", text);
            // Truncated at the end of the form.
            let text = format!("k={before}{cut}");
            prop_assert!(parse_form(form(&text)).is_err(), "accepted {}", text);
        }

        /// RFC 6749 §2.3.1: id and secret are form-encoded, joined by `:`, then base64.
        #[test]
        fn basic_round_trips(id in "\\PC{1,40}", secret in "\\PC{0,60}") {
            let got = basic_credentials(&basic_header(&id, &secret));
            prop_assert_eq!(got, Some(Ok((id.clone(), secret.clone()))));
        }

        #[test]
        fn any_authorization_is_answered(v in "[ -~]{0,200}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("Basic {v}")) {
                h.insert(header::AUTHORIZATION, v);
                prop_assert!(basic_credentials(&h).is_some());
            }
        }
    }
}
