//! Protected resource metadata (RFC 9728) and the `resource_metadata` of challenges (§5.1).
//!
//! A protected resource is a service's resource URI (RFC 8707). Its metadata document is
//! served at the URL RFC 9728 §3.1 derives from it (`/.well-known/oauth-protected-resource`
//! between host and path): by the gateway for the resource it fronts (`gateway_resource`), and
//! by the API listener for whichever resource the request's host and path name (forward-auth
//! deployments route `/.well-known/oauth-protected-resource*` to keyplane). Every 401 and
//! `insufficient_scope` 403 of the gateway and `/v1/authz` names that URL in its challenge, so
//! a client (an MCP client, for one) can go from a refusal to the authorization server.

use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use keyplane_core::domain::jose::JwsAlg;
use keyplane_core::domain::resource::{
    metadata_url, split_resource, well_known_suffix, ProtectedResource, METADATA_WELL_KNOWN,
};
use keyplane_core::Keyplane;
use serde::Serialize;
use utoipa::ToSchema;

/// How long a client or a cache may keep a document: short, since a service's scopes change.
pub const MAX_AGE_SECONDS: u32 = 300;

/// RFC 9728 §2 protected resource metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProtectedResourceMetadata {
    /// The resource URI, exactly as the service declares it (RFC 9728 §3.3: a client checks it
    /// equals the URI it derived the metadata URL from).
    pub resource: String,
    /// keyplane's issuer, the one authorization server for it.
    pub authorization_servers: Vec<String>,
    /// The scopes of the resource's service: what a token for this resource may carry.
    pub scopes_supported: Vec<String>,
    /// `["header"]`: a token goes in `Authorization` only (RFC 6750 §2.1).
    pub bearer_methods_supported: Vec<String>,
    /// The service's name.
    pub resource_name: String,
    /// The DPoP proof algorithms keyplane accepts (RFC 9449 §5.1).
    pub dpop_signing_alg_values_supported: Vec<String>,
}

/// The document of `r`, whose authorization server is `issuer`.
pub fn document(r: &ProtectedResource, issuer: &str) -> ProtectedResourceMetadata {
    ProtectedResourceMetadata {
        resource: r.resource.clone(),
        authorization_servers: vec![issuer.to_string()],
        scopes_supported: r.scopes.clone(),
        bearer_methods_supported: vec!["header".into()],
        resource_name: r.name.clone(),
        dpop_signing_alg_values_supported: JwsAlg::ALL
            .iter()
            .map(|a| a.as_str().to_string())
            .collect(),
    }
}

/// CORS for public metadata: browser-based clients read it from any origin.
fn cors(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// 200 with the document, cacheable and readable from any origin.
pub fn metadata_response(r: &ProtectedResource, issuer: &str) -> Response {
    let mut resp = Json(document(r, issuer)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={MAX_AGE_SECONDS}"))
            .expect("a valid header"),
    );
    cors(h);
    resp
}

/// 404 problem+json for a host or path that names no protected resource (the same whether the
/// host is unknown, the path is, or storage could not be read: nothing is revealed).
pub fn not_found() -> Response {
    let mut resp = crate::error::ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no protected resource has its metadata at this URL",
    )
    .into_response();
    cors(resp.headers_mut());
    resp
}

/// A CORS preflight for the metadata (browser clients send `MCP-Protocol-Version`).
fn preflight() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    cors(h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}

fn method_not_allowed() -> Response {
    let mut resp = crate::error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "protected resource metadata is read with GET",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, OPTIONS"));
    resp
}

/// What follows `/.well-known/oauth-protected-resource` in a request's path and query (`""`
/// for the well-known URL itself), or `None` when the path is not a metadata URL.
pub fn metadata_suffix(req_path: &str, query: Option<&str>) -> Option<String> {
    let rest = req_path.strip_prefix(METADATA_WELL_KNOWN)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some(match query {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    })
}

/// An RFC 9110 §5.6.4 quoted-string holding `value`: `"` and `\` escaped; characters that
/// cannot appear in one (controls, CR, LF, anything outside printable ASCII) dropped, so no
/// value can end the parameter or the header.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
    out
}

/// The `resource_metadata` and `scope` parameters a challenge adds (RFC 9728 §5.1, RFC 6750
/// §3), each preceded by `, `: the metadata URL of the resource (when the request's resource is
/// known) and the scopes the route needs (when it needs any).
pub fn challenge_params<S: AsRef<str>>(
    resource: Option<&ProtectedResource>,
    scope: &[S],
) -> String {
    let mut out = String::new();
    if !scope.is_empty() {
        let joined = scope
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(", scope=");
        out.push_str(&quoted(&joined));
    }
    if let Some(url) = resource.and_then(|r| metadata_url(&r.resource)) {
        out.push_str(", resource_metadata=");
        out.push_str(&quoted(&url));
    }
    out
}

/// The scheme and host a request to the API listener was addressed to: `X-Forwarded-Proto` and
/// `X-Forwarded-Host` only from a trusted proxy, else the listener's own scheme (when it
/// speaks TLS; otherwise unknown, since a TLS terminator may sit in front) and `Host`.
fn addressed_to(req: &Request) -> (Option<String>, Option<String>) {
    let first = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let trusted = crate::edge::Conn::trusted_proxy(req.extensions());
    let tls = crate::edge::Conn::tls(req.extensions());
    let scheme = trusted
        .then(|| first("x-forwarded-proto"))
        .flatten()
        .or_else(|| tls.then(|| "https".to_string()));
    let host = trusted
        .then(|| first("x-forwarded-host"))
        .flatten()
        .or_else(|| first("host"))
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    (scheme, host)
}

/// The API listener's routes: the metadata of whichever resource the request's host and path
/// name.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(METADATA_WELL_KNOWN, get(metadata_root).options(options))
        .route(
            "/.well-known/oauth-protected-resource/{*path}",
            get(metadata).options(options),
        )
}

async fn options() -> Response {
    preflight()
}

/// RFC 9728 protected resource metadata of a resource URI without a path (`https://host` or
/// `https://host/`) at the request's host.
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource", tag = "oauth", operation_id = "protected_resource_metadata_root",
    responses(
        (status = 200, body = ProtectedResourceMetadata, description = "the metadata of the resource `https://{host}` (Host, or X-Forwarded-Host from a trusted proxy); `Cache-Control: public`, CORS `*`"),
        (status = 404, description = "no service declares a resource URI at this host", content_type = "application/problem+json")))]
pub async fn metadata_root(state: State<AppState>, req: Request) -> Response {
    metadata(state, req).await
}

/// RFC 9728 protected resource metadata, for the resource the request's host and path name.
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource/{path}", tag = "oauth", operation_id = "protected_resource_metadata",
    params(("path" = String, Path, description = "the resource URI's path (RFC 9728 §3.1): `mcp` for `https://host/mcp`")),
    responses(
        (status = 200, body = ProtectedResourceMetadata, description = "the metadata of the resource at this host (Host, or X-Forwarded-Host from a trusted proxy) and path; `Cache-Control: public`, CORS `*`"),
        (status = 404, description = "no service declares a resource URI at this host and path", content_type = "application/problem+json")))]
pub async fn metadata(State(s): State<AppState>, req: Request) -> Response {
    let Some(suffix) = metadata_suffix(req.uri().path(), req.uri().query()) else {
        return not_found();
    };
    let (scheme, host) = addressed_to(&req);
    let Some(host) = host else {
        return not_found();
    };
    // No resource URI is longer than this: a longer request names none, without a lookup.
    if suffix.len() + host.len() > keyplane_core::domain::resource::MAX_RESOURCE_LEN {
        return not_found();
    }
    let exact = s
        .app
        .resource_for_metadata(scheme.as_deref(), &host, &suffix)
        .await;
    match exact {
        Some(r) => metadata_response(&r, &s.app.settings().oauth.issuer),
        None => not_found(),
    }
}

/// The gateway's answer to a request for `/.well-known/oauth-protected-resource*`, or `None`
/// when the request is not one (or no gateway resource is configured: then such a request is
/// treated like any other, as before). The gateway answers its own resource's document at the
/// well-known URL and at the path-suffixed one RFC 9728 §3.1 derives from the resource; any
/// other suffix is 404. Never forwarded upstream.
pub async fn gateway_metadata(app: &Keyplane, method: &Method, uri: &Uri) -> Option<Response> {
    let suffix = metadata_suffix(uri.path(), uri.query())?;
    let resource = app.gateway_resource().await?;
    let own = split_resource(&resource.resource).map(|(_, _, tail)| well_known_suffix(tail));
    Some(match *method {
        Method::OPTIONS => preflight(),
        Method::GET | Method::HEAD => {
            if suffix.is_empty() || own == Some(suffix.as_str()) {
                metadata_response(&resource, &app.settings().oauth.issuer)
            } else {
                not_found()
            }
        }
        _ => method_not_allowed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_cannot_break_out() {
        assert_eq!(quoted("a:read b:write"), "\"a:read b:write\"");
        assert_eq!(quoted("x\", error=\"y"), "\"x\\\", error=\\\"y\"");
        assert_eq!(quoted("a\\b"), "\"a\\\\b\"");
        assert_eq!(quoted("a\r\nSet-Cookie: x\u{7f}é"), "\"aSet-Cookie: x\"");
        assert!(HeaderValue::from_str(&quoted("\r\n\0\"\\")).is_ok());
    }

    #[test]
    fn metadata_suffixes() {
        assert_eq!(
            metadata_suffix("/.well-known/oauth-protected-resource", None).as_deref(),
            Some("")
        );
        assert_eq!(
            metadata_suffix("/.well-known/oauth-protected-resource/mcp", Some("a=1")).as_deref(),
            Some("/mcp?a=1")
        );
        assert_eq!(
            metadata_suffix("/.well-known/oauth-protected-resourcex", None),
            None
        );
        assert_eq!(metadata_suffix("/mcp", None), None);
    }

    #[test]
    fn challenge_parameters() {
        let r = ProtectedResource {
            resource: "https://mcp.example.com/mcp".into(),
            name: "mcp".into(),
            scopes: vec!["a".into()],
        };
        assert_eq!(
            challenge_params(Some(&r), &["a", "b"]),
            ", scope=\"a b\", resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        assert_eq!(challenge_params::<&str>(None, &[]), "");
    }
}
