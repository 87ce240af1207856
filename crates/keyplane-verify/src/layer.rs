//! The tower middleware: verify the bearer credential, put the [`Identity`] into the request's
//! extensions, or answer the RFC 6750 refusal without calling the inner service.

use crate::error::AuthError;
use crate::identity::Identity;
use crate::verifier::Verifier;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// What the extractors' challenges carry besides the error: the realm and the protected
/// resource's metadata URL, passed through the request's extensions.
#[cfg(feature = "axum")]
#[derive(Debug, Clone)]
pub(crate) struct ChallengeContext {
    pub realm: Option<Arc<str>>,
    pub resource_metadata: Option<Arc<str>>,
}

/// A [`Layer`] that authenticates every request with a [`Verifier`].
///
/// - No bearer credential: 401 with `WWW-Authenticate: Bearer` (unless
///   [`allow_anonymous`](Self::allow_anonymous)).
/// - An invalid, expired or revoked one: 401 with `error="invalid_token"`.
/// - A repeated `Authorization` header: 400 with `error="invalid_request"`.
/// - A valid one lacking a [required scope](Self::require_scope): 403 with
///   `error="insufficient_scope"`.
/// - The issuer unreachable when it had to be asked: 503 with `Retry-After`.
/// - Otherwise the request goes on with the [`Identity`] in its extensions.
///
/// Refusals have an empty body (the response body type only needs `Default`); the
/// extractors of the `axum` feature answer the same statuses with a small JSON body.
#[derive(Debug, Clone)]
pub struct VerifyLayer {
    verifier: Verifier,
    required_scopes: Arc<[String]>,
    allow_anonymous: bool,
}

impl VerifyLayer {
    /// Authenticates with `verifier`; no scope required.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            required_scopes: Arc::from([]),
            allow_anonymous: false,
        }
    }

    /// Also requires `scope` on every request (403 otherwise). May be called more than once:
    /// every scope is then required.
    #[must_use]
    pub fn require_scope(mut self, scope: &str) -> Self {
        let mut scopes = self.required_scopes.to_vec();
        scopes.push(scope.to_string());
        self.required_scopes = scopes.into();
        self
    }

    /// Lets requests without any bearer credential through, with no [`Identity`]: handlers
    /// decide (the `Identity` and `RequireScope` extractors answer 401). A credential that is
    /// present but invalid is still refused here, and so is a request without one when the
    /// layer [requires a scope](Self::require_scope).
    #[must_use]
    pub fn allow_anonymous(mut self) -> Self {
        self.allow_anonymous = true;
        self
    }
}

impl<S> Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The [`Service`] [`VerifyLayer`] makes.
#[derive(Debug, Clone)]
pub struct VerifyService<S> {
    inner: S,
    layer: VerifyLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for VerifyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let settings = layer.verifier.settings();
            let realm = settings.realm.as_deref();
            let metadata = settings
                .protected_resource
                .as_ref()
                .map(|r| r.metadata_url());
            #[cfg(feature = "axum")]
            if realm.is_some() || metadata.is_some() {
                req.extensions_mut().insert(ChallengeContext {
                    realm: realm.map(Arc::from),
                    resource_metadata: metadata.map(Arc::from),
                });
            }
            // A 401 names the scopes this layer requires, a 403 all of them too (what a client
            // asks for when it steps up).
            let required =
                (!layer.required_scopes.is_empty()).then(|| layer.required_scopes.join(" "));
            let verdict = layer
                .verifier
                .authenticate_request(req.method(), req.uri(), req.headers())
                .await;
            match verdict {
                Ok(identity) => {
                    if identity.missing_scope(&layer.required_scopes).is_some() {
                        return Ok(AuthError::InsufficientScope(required.unwrap_or_default())
                            .to_response_for(realm, metadata, None));
                    }
                    req.extensions_mut().insert::<Identity>(identity);
                    inner.call(req).await
                }
                Err(AuthError::Missing)
                    if layer.allow_anonymous && layer.required_scopes.is_empty() =>
                {
                    inner.call(req).await
                }
                Err(e) => Ok(e.to_response_for(realm, metadata, required.as_deref())),
            }
        })
    }
}
