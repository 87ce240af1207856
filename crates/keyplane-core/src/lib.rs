//! keyplane's domain: identifiers, secrets, permissions, the records it keeps, the storage
//! interface, the credential cache and the use cases. It knows neither SQL nor HTTP.

pub mod activity;
pub mod app;
pub mod cache;
pub mod clock;
pub mod console;
pub mod error;
pub mod feed;
pub mod ids;
pub mod model;
pub mod oauth;
pub mod perm;
pub mod routes;
pub mod secret;
pub mod store;
pub mod token;

pub use app::Keyplane;
pub use error::{Error, Result};
