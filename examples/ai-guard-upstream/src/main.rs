//! `ai-guard-upstream [--listen ADDR]`: serves the AI Guard stand-in until SIGINT/SIGTERM.
//! Prints `listening on http://ADDR` once bound, so `--listen 127.0.0.1:0` can be used by
//! tests that read the port from stdout.

use clap::Parser;
use std::io::Write;

#[derive(Parser)]
#[command(
    about = "A stand-in for the AI Guard API that echoes the X-Keyplane-* headers it receives"
)]
struct Args {
    /// Address to listen on (port 0: any free port, printed on start).
    #[arg(long, env = "AI_GUARD_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ai-guard-upstream listening on http://{addr}")?;
    out.flush()?;
    drop(out);
    axum::serve(listener, ai_guard_upstream::router())
        .with_graceful_shutdown(shutdown())
        .await
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
