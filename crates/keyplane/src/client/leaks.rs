//! `keyplane leaks report|patterns`: reporting a leaked credential (`POST /v1/leaks`) and the
//! regular expressions scanners need (`GET /v1/leaks/patterns`), through a running server.

use super::{http_client, object, render, s, Client, ClientArgs};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Read;

#[derive(Debug, clap::Subcommand)]
pub enum LeaksCommand {
    /// Report a leaked API key or client secret (POST /v1/leaks): a live one is revoked at
    /// once (or only recorded, under leaks.policy = "notify"), whoever owns it; the answer
    /// names it only if your credential may see it. The leaked secret is read from a file or
    /// standard input, never from an argument (which would stay in shell history).
    Report {
        /// The file holding the leaked secret (its first line); "-" reads standard input.
        #[arg(long, value_name = "FILE", default_value = "-")]
        secret_file: String,
        /// Where it was found (a URL; `--url` is the server's).
        #[arg(long, value_name = "URL")]
        found_at: Option<String>,
        /// What kind of place that is, e.g. commit, paste, log.
        #[arg(long)]
        source: Option<String>,
    },
    /// The regular expressions a secret scanner needs, one per credential format of the
    /// server (GET /v1/leaks/patterns; needs no credential).
    Patterns,
}

fn read_secret(path: &str) -> Result<String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the secret from standard input")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    }
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        bail!("no secret given: put it on the first line of --secret-file or standard input");
    }
    Ok(line)
}

pub async fn run(args: &ClientArgs, cmd: LeaksCommand) -> Result<()> {
    match cmd {
        LeaksCommand::Report {
            secret_file,
            found_at,
            source,
        } => {
            let c = Client::new(args)?;
            let secret = read_secret(&secret_file)?;
            let body = object(vec![
                ("token", Some(json!(secret))),
                ("url", s(found_at)),
                ("source", s(source)),
            ]);
            let a = c.post("/v1/leaks", Some(body)).await?;
            c.print(&a, |v| match v.get("credential") {
                Some(cred) => format!(
                    "received: {} {} — {}",
                    render::cell(cred, "kind"),
                    render::cell(cred, "id"),
                    render::cell(cred, "action")
                ),
                None => {
                    "received (if it is a live credential of this deployment, it is being handled)"
                        .into()
                }
            });
            Ok(())
        }
        LeaksCommand::Patterns => {
            let http = http_client(args.ca_cert.as_deref())?;
            let base = args.url.trim_end_matches('/');
            let resp = http
                .get(format!("{base}/v1/leaks/patterns"))
                .send()
                .await
                .with_context(|| format!("cannot reach keyplane at {base}"))?;
            let status = resp.status();
            let text = resp.text().await?;
            if !status.is_success() {
                bail!("{status}: {text}");
            }
            if args.json {
                println!("{}", text.trim_end());
            } else {
                let v: Value = serde_json::from_str(&text).context("not JSON")?;
                let empty = Vec::new();
                for p in v["patterns"].as_array().unwrap_or(&empty) {
                    println!("{}\t{}", render::cell(p, "kind"), render::cell(p, "regex"));
                }
            }
            Ok(())
        }
    }
}
