//! `resource-server --issuer URL [--keyplane-url URL] (--client-id ID --client-secret S |
//! --introspection-key KEY) [--listen ADDR]`: the AI Guard endpoint protected by
//! keyplane-verify. Every flag also reads a `RESOURCE_SERVER_*` variable (not `KEYPLANE_*`,
//! which keyplane itself warns about when it does not know them).

use clap::Parser;
use keyplane_verify::Verifier;
use std::io::Write;
use std::time::Duration;

#[derive(Parser)]
#[command(
    about = "The AI Guard endpoint protected in-process by keyplane-verify (scope ai-guard:read)"
)]
struct Args {
    /// Address to listen on (port 0: any free port, printed on start).
    #[arg(long, env = "RESOURCE_SERVER_LISTEN", default_value = "127.0.0.1:8082")]
    listen: String,
    /// The issuer tokens must carry (keyplane's `issuer`).
    #[arg(long, env = "RESOURCE_SERVER_ISSUER")]
    issuer: String,
    /// Where to reach keyplane, when it is not at the issuer URL (an internal address).
    #[arg(long, env = "RESOURCE_SERVER_KEYPLANE_URL")]
    keyplane_url: Option<String>,
    /// An OAuth client to introspect opaque tokens and API keys with...
    #[arg(long, env = "RESOURCE_SERVER_CLIENT_ID", requires = "client_secret")]
    client_id: Option<String>,
    /// ... and its secret.
    #[arg(long, env = "RESOURCE_SERVER_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// ... or an API key with `tokens:introspect`.
    #[arg(
        long,
        env = "RESOURCE_SERVER_INTROSPECTION_KEY",
        hide_env_values = true,
        conflicts_with = "client_id"
    )]
    introspection_key: Option<String>,
    /// Accepted JWT audiences (default: the issuer).
    #[arg(
        long = "audience",
        env = "RESOURCE_SERVER_AUDIENCES",
        value_delimiter = ','
    )]
    audiences: Vec<String>,
    /// This server's resource URI (RFC 8707/9728), e.g. https://guard.example.com/v1/text/guard:
    /// its metadata is served and named in refusals, and it is the JWT audience unless
    /// --audience is given.
    #[arg(long, env = "RESOURCE_SERVER_RESOURCE")]
    resource: Option<String>,
    /// Also introspect JWTs, so a revoked JWT is refused within the cache TTL.
    #[arg(long, env = "RESOURCE_SERVER_INTROSPECT_JWTS")]
    introspect_jwts: bool,
    /// Seconds an active introspection answer is reused.
    #[arg(long, env = "RESOURCE_SERVER_CACHE_SECONDS", default_value_t = 10)]
    cache_seconds: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut b = Verifier::builder(&args.issuer)
        .introspect_jwts(args.introspect_jwts)
        .positive_cache_ttl(Duration::from_secs(args.cache_seconds));
    if let Some(url) = &args.keyplane_url {
        b = b.reach_at(url);
    }
    if let Some(r) = &args.resource {
        b = b
            .protected_resource(r, ["ai-guard:read"])
            .resource_name("AI Guard");
    }
    if !args.audiences.is_empty() {
        b = b.audiences(args.audiences.clone());
    }
    b = match (
        &args.client_id,
        &args.client_secret,
        &args.introspection_key,
    ) {
        (Some(id), Some(secret), _) => b.introspect_with_client(id, secret),
        (_, _, Some(key)) => b.introspect_with_api_key(key),
        _ => {
            eprintln!("no introspection credentials: only JWT access tokens will be accepted");
            b
        }
    };
    let verifier = b.build()?;
    if let Err(e) = verifier.warm_up().await {
        eprintln!("keyplane is not reachable yet ({e}); will retry on demand");
    }
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "resource-server listening on http://{addr}")?;
    out.flush()?;
    drop(out);
    axum::serve(listener, resource_server::app(verifier))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
