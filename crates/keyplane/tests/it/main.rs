//! keyplane's end-to-end tests: the real server on a random port, real SQLite and PostgreSQL.
//! `on_both!` runs a test body once per backend; the PostgreSQL run is skipped (and says so)
//! when `KEYPLANE_TEST_DATABASE_URL` is not set.

/// Declares `mod $name { fn sqlite(); fn postgres(); }` running `$body(app)` on each backend.
macro_rules! on_both {
    ($name:ident, $body:ident) => {
        on_both!($name, $body, keyplane_testkit::Options::default());
    };
    ($name:ident, $body:ident, $opts:expr) => {
        mod $name {
            use keyplane_testkit::{spawn_app_with, Backend};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(app) = spawn_app_with(Backend::Sqlite, $opts).await {
                    super::$body(app).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) = spawn_app_with(Backend::Postgres, $opts).await {
                    super::$body(app).await;
                }
            }
        }
    };
}

mod activity;
mod authcode;
mod binary;
mod ceiling;
mod cli;
mod console;
mod contract;
mod crash;
mod declare;
mod delegation;
mod deploy;
mod dpop;
mod edge;
mod errors;
mod expiry;
mod federation;
mod files;
mod gateway;
mod interop;
mod keys;
mod leaks;
mod lifecycle;
mod limits;
mod mcp;
mod metrics;
mod nginx;
mod nodes;
mod oauth;
mod pkjwt;
mod pkjwt_interop;
mod prm;
mod races;
mod ratelimit;
mod sdk;
mod seed002;
mod seeds;
mod strict;
mod support;
mod tls;
mod usage;
mod verify;
mod visibility;
