//! Verify keyplane credentials in a Rust resource server (tower / axum).
//!
//! A [`Verifier`] checks the bearer credential of a request for one issuer:
//!
//! - **JWT access tokens** (RFC 9068) are verified **locally** against the issuer's JWKS:
//!   signature (`ES256` or `EdDSA`), header `typ: at+jwt`, `iss`, `aud` (the issuer by
//!   default), `exp` and `nbf` (with a small leeway), and the claims RFC 9068 requires. The
//!   JWKS is found through the issuer's RFC 8414 metadata, cached, refreshed every few minutes,
//!   and refetched when a token names an unknown `kid` — at most once per refetch interval, so
//!   made-up `kid`s cannot turn this server into a flood against the issuer.
//! - **Opaque access tokens** (`kpt_…`) and **API keys** (`kp_…`) mean nothing outside the
//!   issuer: they are checked by RFC 7662 introspection, authenticated as an OAuth client
//!   (HTTP Basic) or with an API key that holds `tokens:introspect`. Answers are cached — active
//!   ones for 10 s (never past the credential's `exp`), inactive ones for 2 s — keyed by the
//!   SHA-256 of the credential.
//! - Anything else is refused without a network call.
//!
//! [`VerifyLayer`] runs it in front of a service and puts the [`Identity`] into the request's
//! extensions; with the `axum` feature (default), handlers take [`Identity`] or
//! [`RequireScope<S>`] as extractors. Refusals follow RFC 6750 §3: 401 with
//! `WWW-Authenticate: Bearer` when there is no credential, 401 `error="invalid_token"` for a
//! bad one, 403 `error="insufficient_scope"` for a missing scope, and 503 when the issuer had
//! to be asked and could not be.
//!
//! ```no_run
//! use axum::{routing::post, Router};
//! use keyplane_verify::{scope, RequireScope, Verifier, VerifyLayer};
//!
//! scope!(AiGuardRead = "ai-guard:read");
//!
//! async fn guard(who: RequireScope<AiGuardRead>) -> String {
//!     format!("hello {}", who.subject)
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = Verifier::builder("https://auth.example.com")
//!     .introspect_with_client("kpc_…", "kps_…")
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/v1/text/guard", post(guard))
//!     .layer(VerifyLayer::new(verifier));
//! # Ok(()) }
//! ```
//!
//! # Revocation and the trade-off of local verification
//!
//! A JWT is accepted on its signature and claims alone, so a **revoked JWT keeps working here
//! until its `exp`** (keyplane's tokens live an hour by default). If that is too long, turn on
//! [`VerifierBuilder::introspect_jwts`]: each JWT is then also introspected (cached for the
//! positive TTL), so revocation takes effect within that TTL — at the cost of an introspection
//! per token per TTL and of depending on the issuer being reachable (503 otherwise), which
//! is what local verification avoids. Opaque tokens and API keys are refused within the
//! positive TTL of being revoked; lower it for faster revocation, raise it for fewer calls.
//!
//! # Features
//!
//! - `axum` (default): the extractors, on `axum-core` only.
//! - `rustls-tls`: TLS for an `https://` issuer through rustls. Without it, either bring a
//!   `reqwest::Client` with TLS ([`VerifierBuilder::http_client`]) or reach the issuer over
//!   plain HTTP inside a trusted network ([`VerifierBuilder::reach_at`]).

mod cache;
mod config;
mod dpop;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod identity;
mod jwt;
mod layer;
mod resource;
mod verifier;

pub use config::VerifierBuilder;
pub use error::{AuthError, BuildError, InvalidReason, ProofReason};
#[cfg(feature = "axum")]
pub use extract::{AuthRejection, RequireScope, Scope};
pub use identity::{CredentialKind, Identity};
pub use layer::{VerifyLayer, VerifyService};
pub use resource::{MetadataService, ProtectedResource};
pub use verifier::Verifier;
