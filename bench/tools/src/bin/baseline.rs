//! The bare baseline: an axum handler that answers 200 with one header and reads nothing, on
//! the same runtime keyplane uses. Whatever keyplane does beyond this is its own cost.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::routing::any;
use axum::Router;

const SUBJECT: HeaderName = HeaderName::from_static("x-keyplane-subject");

async fn authz() -> (StatusCode, [(HeaderName, HeaderValue); 1]) {
    (
        StatusCode::OK,
        [(SUBJECT, HeaderValue::from_static("key_baseline"))],
    )
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8781".into());
    let app = Router::new().route("/v1/authz", any(authz));
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind the baseline's address");
    eprintln!("baseline listening on {addr}");
    axum::serve(listener, app).await.expect("serve");
}
