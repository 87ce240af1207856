//! Protected resource metadata (RFC 9728) for the resource server itself: the document, its
//! URL, and a service that answers it.

use crate::error::BuildError;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

/// The well-known path of protected resource metadata (RFC 9728 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// How long clients and caches may keep the document.
const MAX_AGE: &str = "public, max-age=300";

/// This resource server as an RFC 9728 protected resource: its resource URI (the RFC 8707
/// `resource` clients ask tokens for), its authorization server (the verifier's issuer) and
/// the scopes it understands. Set with
/// [`VerifierBuilder::protected_resource`](crate::VerifierBuilder::protected_resource); then
/// every 401 and `insufficient_scope` 403 names [`metadata_url`](Self::metadata_url) in its
/// challenge (`resource_metadata`, RFC 9728 §5.1), and [`service`](Self::service) serves the
/// document at [`well_known_path`](Self::well_known_path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    resource: String,
    authorization_server: String,
    scopes: Vec<String>,
    name: Option<String>,
    metadata_url: String,
    well_known_path: String,
}

impl ProtectedResource {
    /// `resource`: an absolute `https://` (or `http://`) URI without fragment or user
    /// information; its scheme and host are lowercased and the scheme's default port dropped,
    /// the rest kept as written.
    pub(crate) fn new(
        resource: &str,
        authorization_server: &str,
        scopes: Vec<String>,
        name: Option<String>,
    ) -> Result<Self, BuildError> {
        let bad = || BuildError::Resource(resource.to_string());
        let (scheme, rest) = resource.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        if !(scheme == "https" || scheme == "http")
            || resource.contains('#')
            || resource
                .chars()
                .any(|c| !matches!(c, '!'..='~') || c == '"' || c == '\\')
        {
            return Err(bad());
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let mut authority = authority.to_ascii_lowercase();
        // The scheme's default port (or an empty port) is no part of the name (RFC 3986
        // §6.2.3), as keyplane writes resources in tokens' `aud`.
        let default = if scheme == "https" { ":443" } else { ":80" };
        if let Some(a) = authority.strip_suffix(default) {
            authority = a.to_string();
        }
        if let Some(a) = authority.strip_suffix(':').filter(|a| !a.ends_with('[')) {
            authority = a.to_string();
        }
        if authority.is_empty() || authority.starts_with(':') {
            return Err(bad());
        }
        // RFC 9728 §3.1: the well-known segment goes between host and path; a lone `/` after
        // the host is dropped first.
        let suffix = if tail == "/" { "" } else { tail };
        Ok(Self {
            resource: format!("{scheme}://{authority}{tail}"),
            authorization_server: authorization_server.to_string(),
            scopes,
            name,
            metadata_url: format!("{scheme}://{authority}{WELL_KNOWN}{suffix}"),
            well_known_path: format!("{WELL_KNOWN}{suffix}"),
        })
    }

    /// The resource URI, as the document's `resource` names it.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Where clients find the document (RFC 9728 §3.1): for `https://api.example.com/mcp`,
    /// `https://api.example.com/.well-known/oauth-protected-resource/mcp`.
    pub fn metadata_url(&self) -> &str {
        &self.metadata_url
    }

    /// The path (and query) of [`metadata_url`](Self::metadata_url) on this server, to route
    /// [`service`](Self::service) at.
    pub fn well_known_path(&self) -> &str {
        &self.well_known_path
    }

    /// The RFC 9728 §2 document: `resource`, `authorization_servers`, `scopes_supported`,
    /// `bearer_methods_supported` (`header`), `resource_name` when set, and the DPoP proof
    /// algorithms this crate checks.
    pub fn document(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "resource": self.resource,
            "authorization_servers": [self.authorization_server],
            "scopes_supported": self.scopes,
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": crate::dpop::ALGS.split(' ').collect::<Vec<_>>(),
        });
        if let Some(name) = &self.name {
            doc["resource_name"] = name.as_str().into();
        }
        doc
    }

    /// The document as a response: 200, JSON, `Cache-Control: public, max-age=300`, and
    /// `Access-Control-Allow-Origin: *` (browser-based clients read it too).
    pub fn response<B: From<String>>(&self) -> Response<B> {
        let mut res = Response::new(B::from(self.document().to_string()));
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(MAX_AGE));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        res
    }

    /// A tower service answering the document (GET, HEAD), a CORS preflight (OPTIONS) and 405
    /// otherwise. Route it at [`well_known_path`](Self::well_known_path), outside the
    /// [`VerifyLayer`](crate::VerifyLayer): the document is public.
    ///
    /// ```no_run
    /// # fn f(verifier: keyplane_verify::Verifier) {
    /// let pr = verifier.protected_resource().unwrap().clone();
    /// let app: axum::Router = axum::Router::new()
    ///     .route_service(pr.well_known_path(), pr.service());
    /// # }
    /// ```
    pub fn service(&self) -> MetadataService {
        MetadataService(self.clone())
    }
}

/// The service of [`ProtectedResource::service`].
#[derive(Debug, Clone)]
pub struct MetadataService(ProtectedResource);

impl<B> tower_service::Service<Request<B>> for MetadataService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let res = match *req.method() {
            Method::GET | Method::HEAD => self.0.response(),
            Method::OPTIONS => {
                let mut res = Response::new(String::new());
                *res.status_mut() = StatusCode::NO_CONTENT;
                let h = res.headers_mut();
                for (name, value) in [
                    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                    (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, OPTIONS"),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, "*"),
                    (header::ACCESS_CONTROL_MAX_AGE, "86400"),
                ] {
                    h.insert(name, HeaderValue::from_static(value));
                }
                res
            }
            _ => {
                let mut res = Response::new(String::new());
                *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, OPTIONS"));
                res
            }
        };
        ready(Ok(res))
    }
}

/// An RFC 9110 §5.6.4 quoted-string holding `value`: `"` and `\` escaped, anything that cannot
/// appear in one (controls, CR, LF, non-ASCII) dropped.
pub(crate) fn quoted(value: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    fn pr(uri: &str) -> Result<ProtectedResource, BuildError> {
        ProtectedResource::new(
            uri,
            "https://auth.example.com",
            vec!["mcp:read".into(), "mcp:write".into()],
            Some("MCP".into()),
        )
    }

    /// The default port is dropped as keyplane drops it, so the audience a token for
    /// `https://MCP.example.com:443/mcp` carries is the one this resource expects.
    #[test]
    fn default_ports_are_dropped_like_keyplane_does() {
        for (given, want) in [
            (
                "https://MCP.example.com:443/mcp",
                "https://mcp.example.com/mcp",
            ),
            ("http://api.example:80", "http://api.example"),
            ("https://api.example:/x", "https://api.example/x"),
            ("https://api.example:8443/x", "https://api.example:8443/x"),
            ("http://api.example:443/x", "http://api.example:443/x"),
        ] {
            assert_eq!(pr(given).unwrap().resource(), want, "{given}");
        }
        assert_eq!(
            pr("https://mcp.example.com:443/mcp")
                .unwrap()
                .metadata_url(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert!(pr("https://:443/mcp").is_err());
    }

    #[test]
    fn metadata_urls_follow_rfc_9728_section_3_1() {
        for (resource, url, path) in [
            (
                "https://MCP.example.com/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-protected-resource/mcp",
            ),
            (
                "https://api.example.com",
                "https://api.example.com/.well-known/oauth-protected-resource",
                "/.well-known/oauth-protected-resource",
            ),
            (
                "https://api.example.com/",
                "https://api.example.com/.well-known/oauth-protected-resource",
                "/.well-known/oauth-protected-resource",
            ),
            (
                "http://127.0.0.1:9000/a/b?x=1",
                "http://127.0.0.1:9000/.well-known/oauth-protected-resource/a/b?x=1",
                "/.well-known/oauth-protected-resource/a/b?x=1",
            ),
        ] {
            let p = pr(resource).unwrap();
            assert_eq!(p.metadata_url(), url);
            assert_eq!(p.well_known_path(), path);
        }
        for bad in [
            "mcp.example.com",
            "ftp://x/y",
            "https://",
            "https://x/#f",
            "https://u@x/",
            "https://x/a b",
            "https://x/\"a",
            "https://x/\r\n",
        ] {
            assert!(pr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_document_has_the_rfc_9728_fields() {
        let doc = pr("https://mcp.example.com/mcp").unwrap().document();
        assert_eq!(
            doc,
            serde_json::json!({
                "resource": "https://mcp.example.com/mcp",
                "authorization_servers": ["https://auth.example.com"],
                "scopes_supported": ["mcp:read", "mcp:write"],
                "bearer_methods_supported": ["header"],
                "resource_name": "MCP",
                "dpop_signing_alg_values_supported": ["ES256", "EdDSA", "RS256", "PS256"],
            })
        );
    }

    #[test]
    fn the_service_answers_get_and_preflight() {
        let mut svc = pr("https://mcp.example.com/mcp").unwrap().service();
        let get = |m: Method| Request::builder().method(m).body(()).unwrap();
        let res = svc.call(get(Method::GET)).into_inner().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CACHE_CONTROL], MAX_AGE);
        assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let doc: serde_json::Value = serde_json::from_str(res.body()).unwrap();
        assert_eq!(doc["resource"], "https://mcp.example.com/mcp");
        let pre = svc.call(get(Method::OPTIONS)).into_inner().unwrap();
        assert_eq!(pre.status(), StatusCode::NO_CONTENT);
        let post = svc.call(get(Method::POST)).into_inner().unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn quoted_strings_cannot_break_out() {
        assert_eq!(quoted("a\", error=\"x"), "\"a\\\", error=\\\"x\"");
        assert_eq!(quoted("a\r\nb\\"), "\"ab\\\\\"");
    }
}
