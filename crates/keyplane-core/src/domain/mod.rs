//! The domain: what keyplane's records, secrets, permissions and rules are. Pure: no I/O, no
//! storage, no runtime state. Nothing here imports anything of the crate outside `domain`.

pub mod activity;
pub mod apps;
pub mod authcode;
pub mod ceiling;
pub mod client_auth;
pub mod clock;
pub mod console;
pub mod declared;
pub mod dpop;
pub mod error;
pub mod federation;
pub mod ids;
pub mod jose;
pub mod leaks;
pub mod managed;
pub mod model;
pub mod oauth;
pub mod path;
pub mod perm;
pub mod request;
pub mod resource;
pub mod roles;
pub mod routes;
pub mod secret;
pub mod settings;
pub mod token;
pub mod usage;
