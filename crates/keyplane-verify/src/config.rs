//! The verifier's configuration: one builder, validated once in [`VerifierBuilder::build`].

use crate::error::BuildError;
use crate::verifier::Verifier;
use std::time::Duration;

/// How this resource server authenticates to the introspection endpoint.
#[derive(Clone)]
pub(crate) enum IntrospectionAuth {
    /// An OAuth client of the issuer, by HTTP Basic (RFC 6749 §2.3.1).
    Client { id: String, secret: String },
    /// A bearer API key holding the `tokens:introspect` permission.
    ApiKey(String),
}

impl std::fmt::Debug for IntrospectionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntrospectionAuth::Client { id, .. } => f
                .debug_struct("Client")
                .field("id", id)
                .field("secret", &"<redacted>")
                .finish(),
            IntrospectionAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
        }
    }
}

/// The validated settings a [`Verifier`] runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub issuer: String,
    pub reach_at: Option<String>,
    pub audiences: Vec<String>,
    pub introspected_prefixes: Vec<String>,
    pub api_key_prefix: String,
    pub introspection: Option<IntrospectionAuth>,
    pub introspect_jwts: bool,
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub cache_capacity: usize,
    pub jwks_refetch_interval: Duration,
    pub jwks_max_age: Duration,
    pub leeway: Duration,
    pub realm: Option<String>,
    /// The public base URLs of this resource server (DPoP `htu`), without a trailing `/`.
    pub public_urls: Vec<String>,
    pub dpop_iat_window: Duration,
    pub dpop_replay_capacity: usize,
    /// This server as an RFC 9728 protected resource, when configured.
    pub protected_resource: Option<crate::resource::ProtectedResource>,
}

/// Builds a [`Verifier`]. Start with [`Verifier::builder`].
///
/// Defaults: audience = the issuer; opaque tokens `kpt_` and API keys `kp_` go to
/// introspection (which needs [`introspect_with_client`](Self::introspect_with_client) or
/// [`introspect_with_api_key`](Self::introspect_with_api_key)); positive cache 10 s, negative
/// cache 2 s, 10 000 entries each; JWKS refetched for an unknown `kid` at most every 10 s and
/// refreshed every 5 min; 5 s of clock leeway on `exp`/`nbf`; HTTP timeout 5 s.
#[derive(Debug, Clone)]
#[must_use]
pub struct VerifierBuilder {
    settings: Settings,
    /// `(resource URI, scopes, name)` of [`protected_resource`](Self::protected_resource).
    resource: Option<(String, Vec<String>, Option<String>)>,
    audiences_set: bool,
    opaque_token_prefix: String,
    http: Option<reqwest::Client>,
    timeout: Duration,
}

impl VerifierBuilder {
    pub(crate) fn new(issuer: &str) -> Self {
        let issuer = issuer.trim_end_matches('/').to_string();
        Self {
            settings: Settings {
                audiences: vec![issuer.clone()],
                issuer,
                reach_at: None,
                introspected_prefixes: Vec::new(),
                api_key_prefix: "kp_".into(),
                introspection: None,
                introspect_jwts: false,
                positive_ttl: Duration::from_secs(10),
                negative_ttl: Duration::from_secs(2),
                cache_capacity: 10_000,
                jwks_refetch_interval: Duration::from_secs(10),
                jwks_max_age: Duration::from_secs(300),
                leeway: Duration::from_secs(5),
                realm: None,
                public_urls: Vec::new(),
                dpop_iat_window: Duration::from_secs(60),
                dpop_replay_capacity: 100_000,
                protected_resource: None,
            },
            resource: None,
            audiences_set: false,
            opaque_token_prefix: "kpt_".into(),
            http: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// Reach the issuer at `base_url` instead of its public URL: the metadata is fetched from
    /// `{base_url}/.well-known/oauth-authorization-server`, and the endpoints it names under
    /// the issuer are rebased onto `base_url` (an internal address, a sidecar). Tokens must
    /// still carry the configured issuer.
    pub fn reach_at(mut self, base_url: &str) -> Self {
        self.settings.reach_at = Some(base_url.trim_end_matches('/').to_string());
        self
    }

    /// The audiences a JWT (or an introspected credential that has an `aud`) may name; replaces
    /// the default, which is the issuer.
    pub fn audiences<I, S>(mut self, audiences: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.audiences = audiences.into_iter().map(Into::into).collect();
        self.audiences_set = true;
        self
    }

    /// The prefix of opaque access tokens (default `kpt_`).
    pub fn opaque_token_prefix(mut self, prefix: &str) -> Self {
        self.opaque_token_prefix = prefix.to_string();
        self
    }

    /// The prefix of API keys (default `kp_`).
    pub fn api_key_prefix(mut self, prefix: &str) -> Self {
        self.settings.api_key_prefix = prefix.to_string();
        self
    }

    /// Introspect as an OAuth client of the issuer (HTTP Basic).
    pub fn introspect_with_client(mut self, client_id: &str, client_secret: &str) -> Self {
        self.settings.introspection = Some(IntrospectionAuth::Client {
            id: client_id.to_string(),
            secret: client_secret.to_string(),
        });
        self
    }

    /// Introspect with a bearer API key that holds the `tokens:introspect` permission (e.g. a
    /// key with the built-in role `TOKEN-INTROSPECTOR`).
    pub fn introspect_with_api_key(mut self, api_key: &str) -> Self {
        self.settings.introspection = Some(IntrospectionAuth::ApiKey(api_key.to_string()));
        self
    }

    /// Also introspect JWTs after verifying them locally (default: no).
    ///
    /// A JWT verified locally stays accepted until its `exp` even if it is revoked, because
    /// revocation lives on the issuer. With this option a revoked JWT is refused within the
    /// positive cache TTL, at the price of one introspection per token per TTL and of refusing
    /// JWTs (503) while the issuer is unreachable. Needs introspection credentials.
    pub fn introspect_jwts(mut self, yes: bool) -> Self {
        self.settings.introspect_jwts = yes;
        self
    }

    /// How long an active introspection answer is reused (default 10 s; never past the
    /// credential's `exp`). This bounds how long a revoked opaque token or API key still works.
    pub fn positive_cache_ttl(mut self, ttl: Duration) -> Self {
        self.settings.positive_ttl = ttl;
        self
    }

    /// How long an inactive answer is reused (default 2 s), so a flood of one bad credential
    /// costs one introspection per TTL.
    pub fn negative_cache_ttl(mut self, ttl: Duration) -> Self {
        self.settings.negative_ttl = ttl;
        self
    }

    /// The most entries each introspection cache holds (default 10 000); when full, expired
    /// entries are dropped and new answers are not cached until there is room.
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.settings.cache_capacity = entries;
        self
    }

    /// The least time between two JWKS fetches caused by an unknown `kid` (default 10 s), so
    /// tokens with made-up `kid`s cannot make this server hammer the issuer.
    pub fn jwks_refetch_interval(mut self, interval: Duration) -> Self {
        self.settings.jwks_refetch_interval = interval;
        self
    }

    /// How long a fetched JWKS is used before it is fetched again (default 5 min), so a key the
    /// issuer withdrew stops being trusted. A failed refresh keeps the previous keys.
    pub fn jwks_max_age(mut self, age: Duration) -> Self {
        self.settings.jwks_max_age = age;
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (default 5 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.settings.leeway = leeway;
        self
    }

    /// This resource server as an RFC 9728 protected resource: `resource` is its RFC 8707
    /// resource URI (e.g. `https://mcp.example.com/mcp`, what clients name in `resource` when
    /// they ask the issuer for a token), `scopes` the scopes it understands. Then:
    ///
    /// - every 401 and `insufficient_scope` 403 carries
    ///   `resource_metadata="<metadata URL>"` (RFC 9728 §5.1), and a 401 the scopes the layer
    ///   requires, so a client can find the issuer from a refusal;
    /// - [`Verifier::protected_resource`] gives the document and a service answering it at
    ///   its well-known path (the issuer is the authorization server);
    /// - unless [`audiences`](Self::audiences) is set, the audience a JWT must name is the
    ///   resource URI (the issuer binds a token asked for this resource to it) rather than the
    ///   issuer.
    pub fn protected_resource<I, S>(mut self, resource: &str, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let name = self.resource.take().and_then(|r| r.2);
        self.resource = Some((
            resource.to_string(),
            scopes.into_iter().map(Into::into).collect(),
            name,
        ));
        self
    }

    /// The protected resource's `resource_name` (RFC 9728 §2), shown to people by clients.
    /// Needs [`protected_resource`](Self::protected_resource) first.
    pub fn resource_name(mut self, name: &str) -> Self {
        if let Some(r) = self.resource.as_mut() {
            r.2 = Some(name.to_string());
        }
        self
    }

    /// A `realm` for the `WWW-Authenticate` challenges (default none).
    pub fn realm(mut self, realm: &str) -> Self {
        self.settings.realm = Some(realm.to_string());
        self
    }

    /// The public base URL of this resource server, as clients address it (e.g.
    /// `https://api.example.com`, or `https://example.com/api` behind a proxy that strips
    /// `/api`): a DPoP proof's `htu` must be this URL followed by the request's path. Scheme and
    /// host are compared case-insensitively, default ports dropped, query and fragment ignored.
    /// May be called more than once (several names for one server). Without it, requests with
    /// the `DPoP` scheme are refused (`invalid_dpop_proof`), since the URL cannot be known.
    pub fn public_url(mut self, url: &str) -> Self {
        self.settings
            .public_urls
            .push(url.trim_end_matches('/').to_string());
        self
    }

    /// How far a DPoP proof's `iat` may be from now, either way (default 60 s). Proofs' `jti`s
    /// are remembered that long after their `iat`.
    pub fn dpop_iat_window(mut self, window: Duration) -> Self {
        self.settings.dpop_iat_window = window;
        self
    }

    /// The most DPoP proof `jti`s remembered at once (default 100 000). When that many live
    /// proofs were seen within the `iat` window, new ones are refused (503) until room frees,
    /// rather than forgetting old ones (which would let them be replayed).
    pub fn dpop_replay_capacity(mut self, entries: usize) -> Self {
        self.settings.dpop_replay_capacity = entries;
        self
    }

    /// The HTTP client for discovery, JWKS and introspection (default: one with a 5 s timeout
    /// and no redirects). Bring your own for proxies, custom roots or TLS settings.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Checks the configuration and builds the verifier. Nothing is fetched yet: discovery
    /// happens on the first request, or in [`Verifier::warm_up`].
    pub fn build(self) -> Result<Verifier, BuildError> {
        let mut s = self.settings;
        for url in std::iter::once(&s.issuer).chain(s.reach_at.as_ref()) {
            if !is_http_url(url) {
                return Err(BuildError::NotAUrl(url.clone()));
            }
        }
        for url in &s.public_urls {
            if !is_http_url(url) || url.contains(['?', '#']) {
                return Err(BuildError::PublicUrl(url.clone()));
            }
        }
        if s.introspect_jwts && s.introspection.is_none() {
            return Err(BuildError::JwtIntrospectionWithoutCredentials);
        }
        if self.opaque_token_prefix.is_empty() || s.api_key_prefix.is_empty() {
            return Err(BuildError::EmptyPrefix);
        }
        if s.audiences.is_empty() {
            return Err(BuildError::NoAudience);
        }
        if let Some((resource, scopes, name)) = self.resource {
            let pr = crate::resource::ProtectedResource::new(&resource, &s.issuer, scopes, name)?;
            if !self.audiences_set {
                s.audiences = vec![pr.resource().to_string()];
            }
            s.protected_resource = Some(pr);
        }
        s.introspected_prefixes = vec![self.opaque_token_prefix, s.api_key_prefix.clone()];
        let http = match self.http {
            Some(c) => c,
            None => reqwest::Client::builder()
                .timeout(self.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| BuildError::Http(e.to_string()))?,
        };
        Ok(Verifier::from_settings(s, http))
    }
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_validates_once() {
        assert_eq!(
            Verifier::builder("auth.example").build().err(),
            Some(BuildError::NotAUrl("auth.example".into()))
        );
        assert_eq!(
            Verifier::builder("https://a.example")
                .reach_at("ftp://x")
                .build()
                .err(),
            Some(BuildError::NotAUrl("ftp://x".into()))
        );
        assert_eq!(
            Verifier::builder("https://a.example")
                .introspect_jwts(true)
                .build()
                .err(),
            Some(BuildError::JwtIntrospectionWithoutCredentials)
        );
        assert_eq!(
            Verifier::builder("https://a.example")
                .api_key_prefix("")
                .build()
                .err(),
            Some(BuildError::EmptyPrefix)
        );
        assert_eq!(
            Verifier::builder("https://a.example")
                .audiences(Vec::<String>::new())
                .build()
                .err(),
            Some(BuildError::NoAudience)
        );
        let v = Verifier::builder("https://a.example/")
            .introspect_with_client("kpc_1", "kps_secret")
            .build()
            .unwrap();
        assert_eq!(v.issuer(), "https://a.example");
        assert!(!format!("{v:?}").contains("kps_secret"));
        // A protected resource is the audience JWTs must name, unless audiences are set.
        let pr = |b: VerifierBuilder| {
            b.protected_resource("https://MCP.example/mcp", ["mcp:read"])
                .build()
                .unwrap()
                .settings()
                .audiences
                .clone()
        };
        assert_eq!(
            pr(Verifier::builder("https://a.example")),
            ["https://mcp.example/mcp"]
        );
        assert_eq!(
            pr(Verifier::builder("https://a.example").audiences(["x"])),
            ["x"]
        );
    }
}
