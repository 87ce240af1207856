//! The routers, one module per area; each exposes `fn router() -> Router<AppState>`.

pub mod activity;
pub mod apps;
pub mod authz;
pub mod clients;
pub mod keys;
pub mod leaks;
pub mod mgmt;
pub mod oauth;
pub mod ops;
pub mod usage;
