//! DPoP at the resource side (RFC 9449 §7): the `Authorization: DPoP` scheme, the request a
//! proof must be for, and the `DPoP` challenge.
//!
//! `htu` is compared with the URL the caller sent its request to: scheme and host from
//! `X-Original-URL` (nginx), else `X-Forwarded-Proto`/`X-Forwarded-Host` (Traefik, Envoy, a
//! TLS terminator), else the `Host` header over `http`; the path is always the normalized path
//! the route rules matched (so a proof names exactly the request that was authorized).

use crate::routes::oauth::{DPOP, DPOP_NONCE};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyplane_core::domain::dpop::{DpopRefusal, DpopRequest};
use keyplane_core::domain::jose::JwsAlg;
use keyplane_core::domain::path::NormalPath;

/// The credential of `Authorization`: `(true, token)` for the `DPoP` scheme, `(false, token)`
/// for `Bearer`.
pub fn authorization(headers: &HeaderMap) -> Option<(bool, &str)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Some((false, token))
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Some((true, token))
    } else {
        None
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').next().unwrap_or("").trim())
        .filter(|v| !v.is_empty())
}

/// The origins (`scheme://host`) the request may have been addressed to. `forwarded`: whether
/// the `X-Original-URL` and `X-Forwarded-*` headers of the caller are to be read (forward auth,
/// where the caller is the proxy; the gateway reads them only from a trusted proxy). `tls`:
/// whether the request reached keyplane's own listener over TLS (the scheme when no forwarded
/// one is read).
pub fn origins(headers: &HeaderMap, forwarded: bool, tls: bool) -> Vec<String> {
    let mut out = Vec::with_capacity(2);
    if forwarded {
        if let Some(url) = text(headers, "x-original-url") {
            if let Some((scheme, rest)) = url.split_once("://") {
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                out.push(format!("{scheme}://{host}"));
            }
        }
    }
    let own = if tls { "https" } else { "http" };
    let proto = if forwarded {
        text(headers, "x-forwarded-proto").unwrap_or(own)
    } else {
        own
    };
    let host = forwarded
        .then(|| text(headers, "x-forwarded-host"))
        .flatten()
        .or_else(|| text(headers, "host"));
    if let Some(host) = host {
        out.push(format!("{proto}://{host}"));
    }
    out
}

/// What a request carries for DPoP, when it uses the `DPoP` scheme.
pub fn dpop_request<'a>(
    headers: &'a HeaderMap,
    method: &'a str,
    path: &NormalPath<'_>,
    forwarded: bool,
    tls: bool,
) -> DpopRequest<'a> {
    DpopRequest {
        proofs: headers
            .get_all(DPOP)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect(),
        htm: method,
        htus: origins(headers, forwarded, tls)
            .into_iter()
            .map(|o| format!("{o}{}", path.as_str()))
            .collect(),
    }
}

/// `DPoP algs="ES256 …"`: the challenge parameter naming the proof algorithms.
pub fn algs() -> String {
    JwsAlg::ALL
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// 401 with `WWW-Authenticate: DPoP error=…` (RFC 9449 §7.1) and, when the server requires
/// nonces, `DPoP-Nonce`.
pub fn challenge(r: &DpopRefusal) -> Response {
    challenge_with(r, "")
}

/// [`challenge`] with more parameters (`, name="value"`…) after the others: a protected
/// resource's `scope` and `resource_metadata` (RFC 9728 §5.1).
pub fn challenge_with(r: &DpopRefusal, more: &str) -> Response {
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "error": r.error, "error_description": r.description })),
    )
        .into_response();
    let value = format!(
        "DPoP realm=\"keyplane\", error=\"{}\", error_description=\"{}\", algs=\"{}\"{more}",
        r.error,
        r.description.replace(['"', '\\'], "'"),
        algs()
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    if let Some(n) = r
        .nonce
        .as_deref()
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        resp.headers_mut().insert(DPOP_NONCE, n);
    }
    resp
}
