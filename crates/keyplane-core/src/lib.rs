//! keyplane's core: the domain, the storage interface, the node's runtime state and the use
//! cases. It knows neither SQL nor HTTP.
//!
//! The modules depend one way only (a test, `tests/layers.rs`, fails when an import breaks it):
//!
//! ```text
//! usecase/*  ──►  app  ──►  runtime/  ──►  store  ──►  domain/
//!   (one file per aggregate; never imports a sibling)
//! ```

pub mod app;
pub mod domain;
pub mod runtime;
pub mod store;
pub mod usecase;

pub use app::Keyplane;
pub use domain::error::{Error, Result};
pub use domain::settings::{OAuthSettings, Settings};
