//! The AI Guard endpoint protected in-process by `keyplane-verify`: the same
//! `POST /v1/text/guard` as `ai-guard-upstream`, behind a [`VerifyLayer`] and a
//! [`RequireScope<AiGuardRead>`] extractor.
//!
//! - `POST /v1/text/guard`: needs `ai-guard:read` (401 without a valid credential, 403 without
//!   the scope); answers like seed 000.
//! - `GET /v1/whoami`: any valid credential; the verified [`Identity`] as JSON.
//! - `GET /healthz`: open.
//! - With a protected resource configured (`--resource`), its RFC 9728 metadata at
//!   `/.well-known/oauth-protected-resource/…` (open), named in every 401 and 403.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use keyplane_verify::{Identity, RequireScope, Verifier, VerifyLayer};
use std::time::UNIX_EPOCH;

keyplane_verify::scope!(
    /// The scope the guard endpoint needs.
    pub AiGuardRead = "ai-guard:read"
);

/// The resource server's routes, authenticated by `verifier`.
pub fn app(verifier: Verifier) -> Router {
    let metadata = verifier.protected_resource().cloned();
    let router = Router::new()
        .route("/v1/text/guard", post(guard))
        .route("/v1/whoami", get(whoami))
        // `route_layer`: only the routes above are authenticated; unknown paths stay 404.
        .route_layer(VerifyLayer::new(verifier))
        .route("/healthz", get(|| async { "ok" }));
    match metadata {
        // The metadata is public: routed after the layer, so it is not authenticated.
        Some(pr) => router.route_service(pr.well_known_path(), pr.service()),
        None => router,
    }
}

async fn guard(_: RequireScope<AiGuardRead>, headers: HeaderMap, body: Bytes) -> Response {
    ai_guard_upstream::guard(headers, body).await
}

async fn whoami(who: Identity) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "subject": who.subject,
        "client_id": who.client_id,
        "scopes": who.scopes,
        "credential_type": who.kind.as_str(),
        "credential_id": who.credential_id,
        "name": who.name,
        "expires_at": who.expires_at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn only_the_guard_routes_are_authenticated() {
        // No issuer runs there: these requests must be answered without asking it.
        let v = Verifier::builder("http://127.0.0.1:9").build().unwrap();
        let call = |method: &str, path: &str| {
            app(v.clone()).oneshot(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
        };
        let r = call("POST", "/v1/text/guard").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(
            call("GET", "/v1/whoami").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call("GET", "/healthz").await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            call("GET", "/nope").await.unwrap().status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn a_protected_resource_names_its_metadata_in_refusals() {
        let v = Verifier::builder("http://127.0.0.1:9")
            .protected_resource("https://guard.example.com/v1/text/guard", ["ai-guard:read"])
            .build()
            .unwrap();
        let call = |method: &str, path: &str| {
            app(v.clone()).oneshot(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
        };
        let r = call("POST", "/v1/text/guard").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer resource_metadata=\"https://guard.example.com/.well-known/oauth-protected-resource/v1/text/guard\""
        );
        let doc = call("GET", "/.well-known/oauth-protected-resource/v1/text/guard")
            .await
            .unwrap();
        assert_eq!(doc.status(), StatusCode::OK);
        let body = axum::body::to_bytes(doc.into_body(), 1 << 16)
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["resource"], "https://guard.example.com/v1/text/guard");
        assert_eq!(doc["authorization_servers"][0], "http://127.0.0.1:9");
    }
}
