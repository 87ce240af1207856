//! The CLI client: `keyplane keys ...` and `keyplane services ...` against a running server.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's URL (http:// or https://).
    #[arg(
        long,
        env = "KEYPLANE_URL",
        default_value = "http://127.0.0.1:8780",
        global = true
    )]
    pub url: String,
    /// The admin key or an API key.
    #[arg(long, env = "KEYPLANE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// URL, besides the Mozilla roots
    /// (e.g. the CA of a private deployment). Server certificates are always checked.
    #[arg(long, env = "KEYPLANE_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create an API key; its secret is printed once.
    Create {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// A scope the key grants (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A role the key carries (repeat for more).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// RFC 3339 expiry time.
        #[arg(long)]
        expires_at: Option<String>,
        #[arg(long)]
        org_id: Option<String>,
        #[arg(long)]
        project_id: Option<String>,
        /// Mark it the default token of this service.
        #[arg(long)]
        default_for_service: Option<String>,
    },
    /// List API keys.
    List {
        #[arg(long)]
        org_id: Option<String>,
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Show one API key.
    Get { id: String },
    /// Revoke an API key.
    Revoke { id: String },
    /// Give an API key a new secret.
    Regenerate {
        id: String,
        /// Keep the old secret working this many seconds.
        #[arg(long)]
        grace_seconds: Option<i64>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ServicesCommand {
    /// Register a service and its scopes.
    Create {
        name: String,
        /// A scope of the service (repeat for more).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// A resource URI of the service (RFC 8707; repeat for more).
        #[arg(long = "resource")]
        resources: Vec<String>,
    },
    /// Set a service's resource URIs (RFC 8707); none clears them.
    SetResources {
        id: String,
        /// A resource URI (repeat for more).
        #[arg(long = "resource")]
        resources: Vec<String>,
    },
    /// List services.
    List,
}

/// The CLI's HTTP client: rustls with the Mozilla roots, plus the CAs of `ca_cert`.
fn http_client(ca_cert: Option<&std::path::Path>) -> Result<reqwest::Client> {
    let mut builder =
        reqwest::Client::builder().user_agent(concat!("keyplane-cli/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the CA file {}", path.display()))?;
        // Parsed here first, so a file without a certificate is named rather than ignored.
        keyplane_http::tls::certificates(&pem, &path.display().to_string())
            .map_err(anyhow::Error::msg)?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate file", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("cannot build the HTTP client")
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Self> {
        let Some(token) = args.token.clone() else {
            bail!(
                "no credential: pass --token or set KEYPLANE_TOKEN to the admin key or an API key"
            );
        };
        Ok(Self {
            http: http_client(args.ca_cert.as_deref())?,
            base: args.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach keyplane at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let detail = value
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or("no detail");
            bail!(
                "{} {}: {detail}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
        }
        Ok(value)
    }
}

fn strs(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// A plain table: a header and rows, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn key_rows(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|k| {
            [
                "id",
                "name",
                "prefix",
                "scopes",
                "roles",
                "status",
                "created_at",
                "last_used_at",
                "expires_at",
            ]
            .iter()
            .map(|f| strs(k, f))
            .collect()
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "PREFIX",
            "SCOPES",
            "ROLES",
            "STATUS",
            "CREATED",
            "LAST USED",
            "EXPIRES",
        ],
        &rows,
    )
}

fn print(args: &ClientArgs, value: &Value, human: impl FnOnce(&Value) -> String) {
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", human(value));
    }
}

fn show_secret(v: &Value) -> String {
    format!(
        "{}\n\nkey: {}\n{}",
        key_rows(std::slice::from_ref(v)),
        strs(v, "key"),
        strs(v, "message")
    )
}

pub async fn keys(args: &ClientArgs, cmd: KeysCommand) -> Result<()> {
    let c = Client::new(args)?;
    use reqwest::Method;
    match cmd {
        KeysCommand::Create {
            name,
            description,
            scopes,
            roles,
            expires_at,
            org_id,
            project_id,
            default_for_service,
        } => {
            let mut body = json!({ "scopes": scopes, "roles": roles });
            for (k, v) in [
                ("name", name),
                ("description", description),
                ("expires_at", expires_at),
                ("org_id", org_id),
                ("project_id", project_id),
                ("default_for_service", default_for_service),
            ] {
                if let Some(v) = v {
                    body[k] = Value::String(v);
                }
            }
            let v = c.call(Method::POST, "/v1/api-keys", Some(body)).await?;
            print(args, &v, show_secret);
        }
        KeysCommand::List { org_id, all } => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = vec![format!("include_inactive={all}"), "limit=200".to_string()];
                if let Some(o) = &org_id {
                    q.push(format!("org_id={o}"));
                }
                if let Some(cur) = &cursor {
                    q.push(format!("cursor={cur}"));
                }
                let v = c
                    .call(Method::GET, &format!("/v1/api-keys?{}", q.join("&")), None)
                    .await?;
                items.extend(v["items"].as_array().cloned().unwrap_or_default());
                match v.get("next_cursor").and_then(Value::as_str) {
                    Some(n) => cursor = Some(n.to_string()),
                    None => break,
                }
            }
            print(args, &Value::Array(items), |v| {
                key_rows(v.as_array().map(Vec::as_slice).unwrap_or(&[]))
            });
        }
        KeysCommand::Get { id } => {
            let v = c
                .call(Method::GET, &format!("/v1/api-keys/{id}"), None)
                .await?;
            print(args, &v, |v| key_rows(std::slice::from_ref(v)));
        }
        KeysCommand::Revoke { id } => {
            let v = c
                .call(Method::POST, &format!("/v1/api-keys/{id}/revoke"), None)
                .await?;
            print(args, &v, |v| key_rows(std::slice::from_ref(v)));
        }
        KeysCommand::Regenerate { id, grace_seconds } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/api-keys/{id}/regenerate"),
                    Some(json!({ "grace_period_seconds": grace_seconds })),
                )
                .await?;
            print(args, &v, show_secret);
        }
    }
    Ok(())
}

pub async fn services(args: &ClientArgs, cmd: ServicesCommand) -> Result<()> {
    let c = Client::new(args)?;
    use reqwest::Method;
    let rows = |items: &[Value]| {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|s| {
                ["id", "name", "scopes", "resources", "description"]
                    .iter()
                    .map(|f| strs(s, f))
                    .collect()
            })
            .collect();
        table(&["ID", "NAME", "SCOPES", "RESOURCES", "DESCRIPTION"], &rows)
    };
    match cmd {
        ServicesCommand::Create {
            name,
            scopes,
            description,
            resources,
        } => {
            let v = c
                .call(
                    Method::POST,
                    "/v1/services",
                    Some(json!({ "name": name, "scopes": scopes, "description": description, "resources": resources })),
                )
                .await?;
            print(args, &v, |v| rows(std::slice::from_ref(v)));
        }
        ServicesCommand::SetResources { id, resources } => {
            let v = c
                .call(
                    Method::PATCH,
                    &format!("/v1/services/{id}"),
                    Some(json!({ "resources": resources })),
                )
                .await?;
            print(args, &v, |v| rows(std::slice::from_ref(v)));
        }
        ServicesCommand::List => {
            let v = c.call(Method::GET, "/v1/services", None).await?;
            let items = v["items"].clone();
            print(args, &items, |v| {
                rows(v.as_array().map(Vec::as_slice).unwrap_or(&[]))
            });
        }
    }
    Ok(())
}

/// `keyplane apply --config FILE [--dry-run]`: sends the file to the server, which applies its
/// declarations (`POST /v1/admin/config/apply`), and prints what changed.
pub async fn apply(args: &ClientArgs, file: &std::path::Path, dry_run: bool) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the configuration file {}", file.display()))?;
    let path = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let c = Client::new(args)?;
    let v = c
        .call(
            reqwest::Method::POST,
            "/v1/admin/config/apply",
            Some(json!({ "config": text, "file": path.display().to_string(), "dry_run": dry_run })),
        )
        .await?;
    print(args, &v, |v| {
        let mut out = String::new();
        for i in v["items"].as_array().into_iter().flatten() {
            let change = match i["change"].as_str().unwrap_or("") {
                "update" => format!("update ({})", strs(i, "fields").replace(' ', ", ")),
                other => other.to_string(),
            };
            let at = match i["line"].as_u64() {
                Some(0) | None => "(no longer declared)".to_string(),
                Some(n) => format!("(line {n})"),
            };
            out.push_str(&format!(
                "{change:<10} {} {} {at}\n",
                strs(i, "kind"),
                strs(i, "name"),
            ));
        }
        out.push_str(&format!(
            "{}: {} declared object(s), {} {}",
            strs(v, "file"),
            v["items"].as_array().map_or(0, Vec::len),
            if dry_run { "would change" } else { "changed" },
            strs(v, "changes")
        ));
        for f in v["secrets_written"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\nwrote a generated client secret to {} (mode 0600)",
                f.as_str().unwrap_or("")
            ));
        }
        out
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_pad_columns() {
        let t = super::table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
