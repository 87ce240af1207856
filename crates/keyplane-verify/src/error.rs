//! Why a request was refused, and how that is said on the wire (RFC 6750 §3): the status and
//! the `WWW-Authenticate: Bearer` challenge are built here and nowhere else.

use http::{header, HeaderValue, Response, StatusCode};

/// Why a credential was not accepted, or could not be checked.
///
/// The variants document their status. Each renders as an RFC 6750 §3 challenge with
/// [`AuthError::www_authenticate`]; the details of an invalid credential stay in the log
/// (`tracing`, target `keyplane_verify`) and never reach the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// 401, and a challenge without an error code (RFC 6750 §3.1: a request that carries no
    /// credential gets none): there is no `Authorization: Bearer` header.
    #[error("the request carries no bearer credential")]
    Missing,
    /// 400 `invalid_request`: the `Authorization` header is repeated or not readable.
    #[error("the Authorization header is malformed: {0}")]
    InvalidRequest(&'static str),
    /// 401 `invalid_token`: malformed, forged, expired, revoked or unknown.
    #[error("the credential is not valid: {0}")]
    InvalidToken(InvalidReason),
    /// 401 `invalid_dpop_proof` with a `DPoP` challenge (RFC 9449 §7.1): the request uses the
    /// `DPoP` scheme with a DPoP-bound token, but its proof is missing, repeated or wrong.
    #[error("the DPoP proof is not valid: {0}")]
    InvalidDpopProof(ProofReason),
    /// 403 `insufficient_scope`, naming the scope the request needs.
    #[error("the credential lacks the scope {0:?}")]
    InsufficientScope(String),
    /// 503: the issuer could not be asked (discovery, JWKS or introspection failed, or refused
    /// this resource server's own credentials). The cause is for the log only.
    #[error("the credential could not be checked: {0}")]
    Unavailable(String),
}

/// Why a credential is invalid. Logged; the client only learns "expired" or "invalid".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidReason {
    /// Not a JWT, not one of the configured prefixes, or not a valid `b64token`.
    #[error("malformed")]
    Malformed,
    /// A JWT header without `typ: at+jwt` (RFC 9068 §2.1).
    #[error("not an access token (typ)")]
    WrongType,
    /// A JWT signed with another algorithm than ES256 or EdDSA, or not matching its key.
    #[error("unsupported or mismatched algorithm")]
    Algorithm,
    /// A `kid` the JWKS does not hold, even after a refetch.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` names none of the expected audiences.
    #[error("wrong audience")]
    Audience,
    /// Past `exp`.
    #[error("expired")]
    Expired,
    /// Before `nbf`.
    #[error("not yet valid")]
    NotYetValid,
    /// Claims missing or of the wrong type.
    #[error("missing or malformed claims")]
    Claims,
    /// The issuer answered `{"active": false}`: revoked, expired, deleted or unknown.
    #[error("inactive according to the issuer")]
    Inactive,
    /// An opaque token or API key, but no introspection credentials are configured.
    #[error("opaque credentials are not accepted (no introspection credentials configured)")]
    NotAccepted,
    /// A DPoP-bound token (`cnf.jkt`) presented as `Bearer` (RFC 9449 §7.1): answered with a
    /// `DPoP` challenge.
    #[error("a DPoP-bound token presented as Bearer")]
    DpopBound,
    /// A token that is not DPoP-bound presented with the `DPoP` scheme.
    #[error("a token that is not DPoP-bound presented with the DPoP scheme")]
    NotDpopBound,
}

/// Why a DPoP proof (RFC 9449 §4.3) was refused. Logged; the client only learns "invalid".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofReason {
    /// No `DPoP` header.
    #[error("no DPoP header")]
    Missing,
    /// More than one `DPoP` header.
    #[error("more than one DPoP header")]
    Multiple,
    /// Not a compact JWS of JSON objects, or too long.
    #[error("malformed")]
    Malformed,
    /// `typ` is not `dpop+jwt`.
    #[error("typ is not dpop+jwt")]
    Type,
    /// `alg` is not ES256, EdDSA, RS256 or PS256.
    #[error("unsupported algorithm")]
    Algorithm,
    /// No `jwk`, a private one, or one that does not fit `alg`.
    #[error("missing, private or unusable jwk")]
    Jwk,
    /// The signature does not verify with the header's `jwk`.
    #[error("bad signature")]
    Signature,
    /// `jti`, `htm`, `htu` or `iat` missing or of the wrong type.
    #[error("missing or malformed claims")]
    Claims,
    /// `htm` is not the request's method.
    #[error("htm is not the request's method")]
    Htm,
    /// `htu` is not the request's URL (or no public URL is configured).
    #[error("htu is not the request's URL")]
    Htu,
    /// `iat` is outside the window.
    #[error("iat outside the window")]
    Iat,
    /// `ath` is missing or not the hash of the access token.
    #[error("ath does not match the access token")]
    Ath,
    /// The `jti` was seen already within the window.
    #[error("replayed jti")]
    Replayed,
    /// The proof's key is not the one the token is bound to (`cnf.jkt`).
    #[error("the proof's key is not the token's")]
    KeyMismatch,
}

impl AuthError {
    /// The HTTP status this refusal answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::InvalidToken(_) | AuthError::InvalidDpopProof(_) => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The RFC 6750 error code, if the refusal has one.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing | AuthError::Unavailable(_) => None,
            AuthError::InvalidRequest(_) => Some("invalid_request"),
            AuthError::InvalidToken(_) => Some("invalid_token"),
            AuthError::InvalidDpopProof(_) => Some("invalid_dpop_proof"),
            AuthError::InsufficientScope(_) => Some("insufficient_scope"),
        }
    }

    /// What the client is told: short, and never which check failed (except expiry).
    pub fn description(&self) -> &'static str {
        match self {
            AuthError::Missing => "a bearer credential is required",
            AuthError::InvalidRequest(_) => "the Authorization header is malformed",
            AuthError::InvalidToken(InvalidReason::Expired) => "the credential expired",
            AuthError::InvalidToken(InvalidReason::DpopBound) => {
                "the token is DPoP-bound: send it with the DPoP scheme and a proof"
            }
            AuthError::InvalidToken(InvalidReason::NotDpopBound) => {
                "the token is not DPoP-bound: send it with the Bearer scheme"
            }
            AuthError::InvalidToken(_) => "the credential is invalid, revoked or unknown",
            AuthError::InvalidDpopProof(_) => "the DPoP proof is missing or invalid",
            AuthError::InsufficientScope(_) => "the credential lacks the scope this request needs",
            AuthError::Unavailable(_) => "the credential could not be checked; try again later",
        }
    }

    /// Whether the challenge uses the `DPoP` scheme (RFC 9449 §7.1) rather than `Bearer`: for
    /// a bad proof, and for a DPoP-bound token presented as `Bearer`.
    pub fn is_dpop_challenge(&self) -> bool {
        matches!(
            self,
            AuthError::InvalidDpopProof(_) | AuthError::InvalidToken(InvalidReason::DpopBound)
        )
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3, RFC 9449 §7.1), or `None` for a 503.
    pub fn www_authenticate(&self, realm: Option<&str>) -> Option<HeaderValue> {
        self.www_authenticate_for(realm, None, None)
    }

    /// [`www_authenticate`](Self::www_authenticate) for a protected resource (RFC 9728 §5.1):
    /// with `resource_metadata` (the resource's metadata URL) and, on a 401, `scope` (the
    /// scopes the route needs, space-separated; a 403 names the scope of
    /// [`InsufficientScope`](AuthError::InsufficientScope)). Values are quoted-string escaped.
    pub fn www_authenticate_for(
        &self,
        realm: Option<&str>,
        resource_metadata: Option<&str>,
        scope: Option<&str>,
    ) -> Option<HeaderValue> {
        if matches!(self, AuthError::Unavailable(_)) {
            return None;
        }
        let mut params = Vec::new();
        if let Some(r) = realm {
            params.push(format!("realm=\"{}\"", quotable(r)));
        }
        if let Some(code) = self.error_code() {
            params.push(format!("error=\"{code}\""));
            params.push(format!("error_description=\"{}\"", self.description()));
        }
        match (self, scope) {
            (AuthError::InsufficientScope(s), _) => {
                params.push(format!("scope={}", crate::resource::quoted(s)))
            }
            (_, Some(s)) if !s.is_empty() && self.status() == StatusCode::UNAUTHORIZED => {
                params.push(format!("scope={}", crate::resource::quoted(s)))
            }
            _ => {}
        }
        if let Some(url) = resource_metadata {
            params.push(format!(
                "resource_metadata={}",
                crate::resource::quoted(url)
            ));
        }
        let scheme = if self.is_dpop_challenge() {
            params.push(format!("algs=\"{}\"", crate::dpop::ALGS));
            "DPoP"
        } else {
            "Bearer"
        };
        let value = if params.is_empty() {
            scheme.to_string()
        } else {
            format!("{scheme} {}", params.join(", "))
        };
        // `quotable` leaves printable ASCII only, so this cannot fail.
        HeaderValue::from_str(&value).ok()
    }

    /// The refusal as a response with an empty body: status, challenge, `Cache-Control:
    /// no-store`, and `Retry-After` on a 503.
    pub fn to_response<B: Default>(&self, realm: Option<&str>) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = self.status();
        self.decorate(res.headers_mut(), realm);
        res
    }

    pub(crate) fn decorate(&self, headers: &mut http::HeaderMap, realm: Option<&str>) {
        self.decorate_for(headers, realm, None, None)
    }

    /// [`to_response`](Self::to_response) for a protected resource (see
    /// [`www_authenticate_for`](Self::www_authenticate_for)).
    pub fn to_response_for<B: Default>(
        &self,
        realm: Option<&str>,
        resource_metadata: Option<&str>,
        scope: Option<&str>,
    ) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = self.status();
        self.decorate_for(res.headers_mut(), realm, resource_metadata, scope);
        res
    }

    pub(crate) fn decorate_for(
        &self,
        headers: &mut http::HeaderMap,
        realm: Option<&str>,
        resource_metadata: Option<&str>,
        scope: Option<&str>,
    ) {
        if let Some(v) = self.www_authenticate_for(realm, resource_metadata, scope) {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self, AuthError::Unavailable(_)) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
    }
}

/// Keeps the characters RFC 6750 allows in a quoted attribute (printable ASCII but `"` and `\`).
fn quotable(s: &str) -> String {
    s.chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .collect()
}

/// A configuration the [`VerifierBuilder`](crate::VerifierBuilder) refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The issuer, or the URL it is reached at, is not an absolute http(s) URL.
    #[error("{0:?} is not an http:// or https:// URL")]
    NotAUrl(String),
    /// `introspect_jwts(true)` needs introspection credentials.
    #[error("introspecting JWTs needs introspection credentials (introspect_with_client or introspect_with_api_key)")]
    JwtIntrospectionWithoutCredentials,
    /// An empty credential prefix would send every bearer credential to introspection.
    #[error("credential prefixes may not be empty")]
    EmptyPrefix,
    /// No audience would accept no JWT at all.
    #[error("at least one audience is needed")]
    NoAudience,
    /// A public URL of the resource server (for DPoP's `htu`) is not an absolute http(s) URL
    /// without query or fragment.
    #[error("{0:?} is not a usable public URL")]
    PublicUrl(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    /// The protected resource's URI is not an absolute http(s) URI without fragment, user
    /// information, spaces or quotes (RFC 8707 §2).
    #[error("{0:?} is not a usable resource URI")]
    Resource(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(e: AuthError, realm: Option<&str>) -> String {
        e.www_authenticate(realm)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(challenge(AuthError::Missing, None), "Bearer");
        assert_eq!(
            challenge(AuthError::Missing, Some("ai \"guard\"")),
            "Bearer realm=\"ai guard\""
        );
        assert_eq!(
            challenge(AuthError::InvalidToken(InvalidReason::Signature), None),
            "Bearer error=\"invalid_token\", error_description=\"the credential is invalid, revoked or unknown\""
        );
        assert_eq!(
            challenge(AuthError::InsufficientScope("ai-guard:read".into()), Some("r")),
            "Bearer realm=\"r\", error=\"insufficient_scope\", error_description=\"the credential lacks the scope this request needs\", scope=\"ai-guard:read\""
        );
        assert_eq!(challenge(AuthError::Unavailable("x".into()), None), "");
        assert_eq!(
            challenge(AuthError::InvalidToken(InvalidReason::DpopBound), None),
            "DPoP error=\"invalid_token\", error_description=\"the token is DPoP-bound: send it with the DPoP scheme and a proof\", algs=\"ES256 EdDSA RS256 PS256\""
        );
        assert!(
            challenge(AuthError::InvalidDpopProof(ProofReason::Htu), Some("r"))
                .starts_with("DPoP realm=\"r\", error=\"invalid_dpop_proof\"")
        );
        assert!(
            challenge(AuthError::InvalidToken(InvalidReason::NotDpopBound), None)
                .starts_with("Bearer error=\"invalid_token\"")
        );
        let r: Response<()> = AuthError::InvalidRequest("twice").to_response(None);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid_request"));
        // A protected resource (RFC 9728 §5.1): the metadata URL on 401s and 403s, the route's
        // scopes on a 401, no error code without a credential, values escaped.
        let url = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
        let for_ = |e: AuthError, scope: Option<&str>| {
            e.www_authenticate_for(None, Some(url), scope)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            for_(AuthError::Missing, Some("mcp:read mcp:write")),
            format!("Bearer scope=\"mcp:read mcp:write\", resource_metadata=\"{url}\"")
        );
        assert_eq!(
            for_(AuthError::InvalidToken(InvalidReason::Expired), Some("mcp:read")),
            format!("Bearer error=\"invalid_token\", error_description=\"the credential expired\", scope=\"mcp:read\", resource_metadata=\"{url}\"")
        );
        assert_eq!(
            for_(AuthError::InsufficientScope("mcp:write".into()), Some("ignored")),
            format!("Bearer error=\"insufficient_scope\", error_description=\"the credential lacks the scope this request needs\", scope=\"mcp:write\", resource_metadata=\"{url}\"")
        );
        assert_eq!(
            for_(AuthError::InsufficientScope("a\", error=\"x\r\n".into()), None),
            format!("Bearer error=\"insufficient_scope\", error_description=\"the credential lacks the scope this request needs\", scope=\"a\\\", error=\\\"x\", resource_metadata=\"{url}\"")
        );
        assert_eq!(for_(AuthError::Unavailable("x".into()), Some("a")), "");
        let r: Response<()> = AuthError::Unavailable("down".into()).to_response(None);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
