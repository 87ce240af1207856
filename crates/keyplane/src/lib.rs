//! The keyplane binary's library half: configuration, the server assembly, the CLI's network
//! commands (`client`) and its database commands (`database`). `main.rs` is thin glue over
//! these, and the test kit starts servers through `server::start`.

pub mod cimd;
pub mod client;
pub mod config;
pub mod database;
pub mod declare;
pub mod egress;
pub mod healthcheck;
pub mod jwks;
pub mod redis_sync;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod webhooks;
