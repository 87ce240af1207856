//! axum extractors (feature `axum`, on `axum-core` only): [`Identity`] itself, and
//! [`RequireScope<S>`] for a scope named by a marker type.

use crate::error::AuthError;
use crate::identity::Identity;
use crate::layer::ChallengeContext;
use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{header, HeaderValue};
use std::convert::Infallible;
use std::marker::PhantomData;
use std::ops::Deref;

/// A scope, named by a marker type, for [`RequireScope`]. Declare one with [`scope!`](crate::scope):
///
/// ```
/// keyplane_verify::scope!(pub AiGuardRead = "ai-guard:read");
/// use keyplane_verify::Scope;
/// assert_eq!(AiGuardRead::NAME, "ai-guard:read");
/// ```
pub trait Scope: Send + Sync + 'static {
    /// The scope value as the issuer grants it.
    const NAME: &'static str;
}

/// Declares a marker type implementing [`Scope`]: `scope!(pub AiGuardRead = "ai-guard:read");`.
#[macro_export]
macro_rules! scope {
    ($(#[$meta:meta])* $vis:vis $name:ident = $value:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis struct $name;
        impl $crate::Scope for $name {
            const NAME: &'static str = $value;
        }
    };
}

/// The verified identity of a request whose credential grants the scope `S`.
///
/// Answers 401 when the request has no verified identity (no [`VerifyLayer`](crate::VerifyLayer)
/// in front, or an anonymous request it let through) and 403 with
/// `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` when the scope is missing.
/// Dereferences to [`Identity`].
pub struct RequireScope<S: Scope> {
    identity: Identity,
    _scope: PhantomData<fn() -> S>,
}

impl<S: Scope> RequireScope<S> {
    /// The identity, owned.
    pub fn into_identity(self) -> Identity {
        self.identity
    }
}

impl<S: Scope> Deref for RequireScope<S> {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        &self.identity
    }
}

impl<S: Scope> std::fmt::Debug for RequireScope<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScope")
            .field("scope", &S::NAME)
            .field("identity", &self.identity)
            .finish()
    }
}

/// Why an extractor refused a request: an [`AuthError`] as a response with the RFC 6750
/// challenge and a JSON body `{"error": …, "error_description": …}`.
#[derive(Debug, Clone)]
pub struct AuthRejection {
    error: AuthError,
    context: Option<ChallengeContext>,
    /// The scope the extractor requires (named in a 401's challenge).
    scope: Option<&'static str>,
}

impl AuthRejection {
    fn new(error: AuthError, parts: &Parts, scope: Option<&'static str>) -> Self {
        Self {
            error,
            context: parts.extensions.get::<ChallengeContext>().cloned(),
            scope,
        }
    }

    /// What was wrong.
    pub fn error(&self) -> &AuthError {
        &self.error
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let e = &self.error;
        let mut body = serde_json::Map::new();
        if let Some(code) = e.error_code() {
            body.insert("error".into(), code.into());
        }
        body.insert("error_description".into(), e.description().into());
        let mut res = Response::new(Body::from(serde_json::Value::Object(body).to_string()));
        *res.status_mut() = e.status();
        let context = self.context.as_ref();
        e.decorate_for(
            res.headers_mut(),
            context.and_then(|c| c.realm.as_deref()),
            context.and_then(|c| c.resource_metadata.as_deref()),
            self.scope,
        );
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        AuthRejection {
            error: self,
            context: None,
            scope: None,
        }
        .into_response()
    }
}

impl<St: Send + Sync> FromRequestParts<St> for Identity {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Identity>()
            .cloned()
            .ok_or_else(|| AuthRejection::new(AuthError::Missing, parts, None))
    }
}

/// `Option<Identity>`: `None` for an anonymous request (see
/// [`VerifyLayer::allow_anonymous`](crate::VerifyLayer::allow_anonymous)).
impl<St: Send + Sync> OptionalFromRequestParts<St> for Identity {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &St,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Identity>().cloned())
    }
}

impl<S: Scope, St: Send + Sync> FromRequestParts<St> for RequireScope<S> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        let Some(identity) = parts.extensions.get::<Identity>() else {
            return Err(AuthRejection::new(AuthError::Missing, parts, Some(S::NAME)));
        };
        if !identity.has_scope(S::NAME) {
            return Err(AuthRejection::new(
                AuthError::InsufficientScope(S::NAME.to_string()),
                parts,
                None,
            ));
        }
        Ok(Self {
            identity: identity.clone(),
            _scope: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CredentialKind;
    use http::{Request, StatusCode};

    crate::scope!(Read = "ai-guard:read");

    fn parts(identity: Option<Identity>) -> Parts {
        let mut req = Request::new(());
        if let Some(i) = identity {
            req.extensions_mut().insert(i);
        }
        req.into_parts().0
    }

    #[tokio::test]
    async fn require_scope_answers_401_then_403_then_passes() {
        let mut p = parts(None);
        let e = <RequireScope<Read>>::from_request_parts(&mut p, &())
            .await
            .unwrap_err();
        assert_eq!(e.error(), &AuthError::Missing);
        assert_eq!(e.into_response().status(), StatusCode::UNAUTHORIZED);

        let mut p = parts(Some(Identity::new(CredentialKind::ApiKey, "k", ["other"])));
        let r = <RequireScope<Read>>::from_request_parts(&mut p, &())
            .await
            .unwrap_err()
            .into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let challenge = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(challenge.contains("scope=\"ai-guard:read\""), "{challenge}");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");

        let mut p = parts(Some(Identity::new(
            CredentialKind::ApiKey,
            "k",
            ["ai-guard:read"],
        )));
        let ok = <RequireScope<Read>>::from_request_parts(&mut p, &())
            .await
            .unwrap();
        assert_eq!(ok.subject, "k");
        assert_eq!(
            <Identity as OptionalFromRequestParts<()>>::from_request_parts(&mut parts(None), &())
                .await
                .unwrap(),
            None
        );
    }
}
