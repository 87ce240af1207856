//! The CLI's network commands: everything `keyplane` does through a running server's
//! management API (`/v1/...`), with the admin key or an API key.
//!
//! One [`Client`] per command: rustls with the Mozilla roots plus `--ca-cert`, the bearer
//! credential, and the output choice. With `--json` a command prints the API's answer exactly
//! as the server sent it (a list read page by page is printed as one page of the API's shape:
//! `{"items": [...], "next_cursor": null}`, each item as sent); otherwise a table or a
//! `field  value` listing for people.

mod activity;
mod clients;
mod keys;
mod leaks;
mod org;
mod render;
mod usage;

pub use activity::query as activity;
pub use clients::run as clients;
pub use keys::run as keys;
pub use leaks::run as leaks;
pub use org::{members, orgs, projects, roles, services};
pub use usage::run as usage;
pub use usage::UsageArgs;

pub use activity::{verify_report, ActivityCommand, VerifyArgs};
pub use clients::ClientsCommand;
pub use keys::KeysCommand;
pub use leaks::LeaksCommand;
pub use org::{MembersCommand, OrgsCommand, ProjectsCommand, RolesCommand, ServicesCommand};
pub use render::table;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::value::RawValue;
use serde_json::{json, Value};

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's URL (http:// or https://).
    #[arg(
        long,
        env = "KEYPLANE_URL",
        hide_env_values = true,
        default_value = "http://127.0.0.1:8780",
        value_name = "URL",
        global = true,
        help_heading = "Server and output"
    )]
    pub url: String,
    /// The credential to act with: the admin key or an API key (never shown in help or logs).
    #[arg(
        long,
        env = "KEYPLANE_TOKEN",
        hide_env_values = true,
        value_name = "SECRET",
        global = true,
        help_heading = "Server and output"
    )]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// URL, besides the Mozilla roots
    /// (e.g. the CA of a private deployment). Server certificates are always checked.
    #[arg(
        long,
        env = "KEYPLANE_CA_CERT",
        hide_env_values = true,
        value_name = "FILE",
        global = true,
        help_heading = "Server and output"
    )]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Print the API's JSON answer exactly, instead of a table.
    #[arg(long, global = true, help_heading = "Server and output")]
    pub json: bool,
}

/// `--limit` and `--cursor` of the list commands whose API pages by cursor.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Paging {
    /// Read one page of at most N items (1 to 200) instead of every page.
    #[arg(long, value_name = "N")]
    pub limit: Option<i64>,
    /// Read the page after this cursor (the `next_cursor` of the previous page) instead of
    /// every page.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

impl Paging {
    fn one_page(&self) -> bool {
        self.limit.is_some() || self.cursor.is_some()
    }
}

/// The CLI's HTTP client: rustls with the Mozilla roots, plus the CAs of `ca_cert`.
pub(crate) fn http_client(ca_cert: Option<&std::path::Path>) -> Result<reqwest::Client> {
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

/// A server's answer, read whole.
pub(crate) struct Answer {
    /// The body exactly as sent (empty for 204).
    pub text: String,
    /// The body parsed (`null` when empty).
    pub value: Value,
    /// The `ETag`, for `--if-match`.
    pub etag: Option<String>,
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    json: bool,
}

/// `7` or `"7"` → `"7"`: the entity tag as `If-Match` wants it.
fn quoted_tag(tag: &str) -> String {
    let t = tag.trim();
    if t.starts_with('"') || t.starts_with("W/") || t == "*" {
        t.to_string()
    } else {
        format!("\"{t}\"")
    }
}

/// A request's query: (name, value) pairs, the absent ones left out.
pub(crate) type Query = Vec<(&'static str, String)>;

pub(crate) fn push(q: &mut Query, name: &'static str, value: Option<impl ToString>) {
    if let Some(v) = value {
        q.push((name, v.to_string()));
    }
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self> {
        let Some(token) = args.token.clone().filter(|t| !t.is_empty()) else {
            bail!(
                "no credential: pass --token or set KEYPLANE_TOKEN to the admin key or an API key"
            );
        };
        Ok(Self {
            http: http_client(args.ca_cert.as_deref())?,
            base: args.url.trim_end_matches('/').to_string(),
            token,
            json: args.json,
        })
    }

    /// Sends one request; a non-2xx answer is an error that carries the problem's detail.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &Query,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Result<Answer> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(tag) = if_match {
            req = req.header(reqwest::header::IF_MATCH, quoted_tag(tag));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach keyplane at {}", self.base))?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp
            .text()
            .await
            .with_context(|| format!("cannot read the answer of {}", self.base))?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
        };
        if !status.is_success() {
            bail!("{}", problem(status, &value));
        }
        Ok(Answer { text, value, etag })
    }

    /// A form POST (the OAuth endpoints take forms, not JSON).
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Result<Answer> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .form(form)
            .send()
            .await
            .with_context(|| format!("cannot reach keyplane at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{}", problem(status, &value));
        }
        Ok(Answer {
            text,
            value,
            etag: None,
        })
    }

    pub async fn get(&self, path: &str, query: &Query) -> Result<Answer> {
        self.send(Method::GET, path, query, None, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Answer> {
        self.send(Method::POST, path, &Vec::new(), body, None).await
    }

    /// A list: one page when `paging` asks for one, else every page, followed by cursor. The
    /// answer's `text` is the API's page (or the pages joined into one page of the same
    /// shape, each item exactly as sent).
    pub async fn list(&self, path: &str, query: Query, paging: &Paging) -> Result<Answer> {
        if paging.one_page() {
            let mut q = query;
            push(&mut q, "limit", paging.limit);
            push(&mut q, "cursor", paging.cursor.clone());
            return self.get(path, &q).await;
        }
        #[derive(serde::Deserialize)]
        struct Page<'a> {
            #[serde(borrow)]
            items: Vec<&'a RawValue>,
            next_cursor: Option<String>,
        }
        let mut raw: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = query.clone();
            push(&mut q, "cursor", cursor.clone());
            let a = self.get(path, &q).await?;
            let page: Page = serde_json::from_str(&a.text)
                .with_context(|| format!("{path} did not answer a list"))?;
            raw.extend(page.items.iter().map(|i| i.get().to_string()));
            match page.next_cursor {
                // A server that answers the same cursor again would loop forever.
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => break,
            }
        }
        let text = format!("{{\"items\":[{}],\"next_cursor\":null}}", raw.join(","));
        let value = serde_json::from_str(&text).context("the pages do not make a list")?;
        Ok(Answer {
            text,
            value,
            etag: None,
        })
    }

    /// Prints an answer: its JSON exactly with `--json`, else what `human` makes of it.
    pub fn print(&self, answer: &Answer, human: impl FnOnce(&Value) -> String) {
        if self.json {
            if !answer.text.is_empty() {
                println!("{}", answer.text.trim_end());
            }
        } else {
            let out = human(&answer.value);
            if !out.is_empty() {
                println!("{out}");
            }
            if let Some(next) = answer.value.get("next_cursor").and_then(Value::as_str) {
                eprintln!("(more: --cursor {next})");
            }
        }
    }

    /// Prints a list's items as a table.
    pub fn print_list(&self, answer: &Answer, columns: &[(&str, &str)]) {
        self.print(answer, |v| render::rows(items(v), columns));
    }

    /// Prints one object as `field  value` lines, with its `ETag` for `--if-match`.
    pub fn print_one(&self, answer: &Answer, fields: &[&str]) {
        self.print(answer, |v| {
            let mut out = render::details(v, fields);
            if let Some(tag) = &answer.etag {
                out.push_str(&format!(
                    "\nversion (for --if-match): {}",
                    tag.trim_matches('"')
                ));
            }
            out
        });
    }

    /// What a 204 prints: nothing with `--json` (the API answers no body), else `done`.
    pub fn print_done(&self, done: &str) {
        if !self.json {
            println!("{done}");
        }
    }
}

/// A non-2xx answer in one line: status, and the problem's detail (RFC 9457) or OAuth error.
fn problem(status: StatusCode, body: &Value) -> String {
    let detail = body
        .get("detail")
        .or_else(|| body.get("error_description"))
        .or_else(|| body.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| body.as_str().filter(|s| !s.is_empty()).map(str::to_string))
        .unwrap_or_else(|| "no detail".into());
    let field = body
        .get("field")
        .and_then(Value::as_str)
        .map(|f| format!(" (field `{f}`)"))
        .unwrap_or_default();
    format!(
        "{} {}: {detail}{field}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// A list answer's items.
pub(crate) fn items(v: &Value) -> &[Value] {
    v.get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A JSON object from the given fields, leaving out the absent (`None`) ones.
pub(crate) fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

pub(crate) fn s(v: Option<String>) -> Option<Value> {
    v.map(Value::String)
}

/// A list flag: repeated values set the list, `clear` sets it empty, neither leaves it.
/// `--rate-limit NAME=LIMIT/WINDOW[,cost=N][,shared=owner|project]` as the API's JSON, e.g.
/// `burst=100/1s` or `daily=10000/1d,shared=owner`.
pub(crate) fn rate_limit(spec: &str) -> Result<Value> {
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or("");
    let Some((name, rest)) = head.split_once('=') else {
        bail!("--rate-limit {spec:?}: write NAME=LIMIT/WINDOW, e.g. burst=100/1s");
    };
    let Some((limit, window)) = rest.split_once('/') else {
        bail!("--rate-limit {spec:?}: write NAME=LIMIT/WINDOW, e.g. burst=100/1s");
    };
    let limit: u64 = limit
        .trim()
        .parse()
        .with_context(|| format!("--rate-limit {spec:?}: the limit must be a whole number"))?;
    let mut v = json!({ "name": name.trim(), "limit": limit, "window": window.trim() });
    for p in parts {
        match p.split_once('=') {
            Some(("cost", n)) => {
                v["cost"] = json!(n.trim().parse::<u64>().with_context(|| {
                    format!("--rate-limit {spec:?}: cost must be a whole number")
                })?)
            }
            Some(("shared", w)) => v["shared"] = json!(w.trim()),
            _ => bail!("--rate-limit {spec:?}: after the window, only cost=N and shared=owner|project|credential"),
        }
    }
    Ok(v)
}

/// Every `--rate-limit`, or `[]` with `clear`, or nothing.
pub(crate) fn rate_limits(specs: &[String], clear: bool) -> Result<Option<Value>> {
    if clear {
        return Ok(Some(json!([])));
    }
    if specs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Value::Array(
        specs.iter().map(|s| rate_limit(s)).collect::<Result<_>>()?,
    )))
}

pub(crate) fn list_or_clear(values: Vec<String>, clear: bool) -> Option<Value> {
    if clear {
        Some(json!([]))
    } else if values.is_empty() {
        None
    } else {
        Some(json!(values))
    }
}

/// A nullable field: a value sets it, `clear` sends `null`, neither leaves it.
pub(crate) fn value_or_null(value: Option<Value>, clear: bool) -> Option<Value> {
    if clear {
        Some(Value::Null)
    } else {
        value
    }
}

/// A path segment made safe to put in a URL path (ids are plain, but a typo must not change
/// the route).
pub(crate) fn seg(id: &str) -> String {
    let mut out = String::new();
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `keyplane apply --config FILE [--dry-run]`: sends the file to the server, which applies its
/// declarations (`POST /v1/admin/config/apply`), and prints what changed.
pub async fn apply(args: &ClientArgs, file: &std::path::Path, dry_run: bool) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the configuration file {}", file.display()))?;
    let path = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let c = Client::new(args)?;
    let a = c
        .post(
            "/v1/admin/config/apply",
            Some(json!({ "config": text, "file": path.display().to_string(), "dry_run": dry_run })),
        )
        .await?;
    c.print(&a, |v| {
        let mut out = String::new();
        for i in items(v) {
            let change = match i["change"].as_str().unwrap_or("") {
                "update" => format!("update ({})", render::cell(i, "fields").replace(' ', ", ")),
                other => other.to_string(),
            };
            let at = match i["line"].as_u64() {
                Some(0) | None => "(no longer declared)".to_string(),
                Some(n) => format!("(line {n})"),
            };
            out.push_str(&format!(
                "{change:<10} {} {} {at}\n",
                render::cell(i, "kind"),
                render::cell(i, "name"),
            ));
        }
        out.push_str(&format!(
            "{}: {} declared object(s), {} {}",
            render::cell(v, "file"),
            items(v).len(),
            if dry_run { "would change" } else { "changed" },
            render::cell(v, "changes")
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

/// `keyplane routes show|reload`: the route rules in force (admin key only).
#[derive(Debug, clap::Subcommand)]
pub enum RoutesCommand {
    /// Show the route rules in force, in order, with the line of the configuration file
    /// each is written on (GET /v1/admin/routes).
    Show,
    /// Read the route rules from the server's configuration file again, as SIGHUP does
    /// (POST /v1/admin/routes/reload). Invalid rules are refused and the old ones stay.
    Reload,
}

pub async fn routes(args: &ClientArgs, cmd: RoutesCommand) -> Result<()> {
    let c = Client::new(args)?;
    let a = match cmd {
        RoutesCommand::Show => c.get("/v1/admin/routes", &Vec::new()).await?,
        RoutesCommand::Reload => c.post("/v1/admin/routes/reload", None).await?,
    };
    c.print(&a, |v| {
        let rules = v["rules"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        format!(
            "{}\n\nunmatched requests: {}",
            render::rows(
                rules,
                &[
                    ("METHODS", "methods"),
                    ("PATH", "path"),
                    ("SCOPES", "scopes"),
                    ("LINE", "line")
                ]
            ),
            if v["allow_unmatched"] == true {
                "allowed"
            } else {
                "denied"
            }
        )
    });
    Ok(())
}

/// `keyplane whoami`: who the credential is (GET /v1/me).
pub async fn whoami(args: &ClientArgs) -> Result<()> {
    let c = Client::new(args)?;
    let a = c.get("/v1/me", &Vec::new()).await?;
    c.print_one(
        &a,
        &[
            "kind",
            "actor",
            "org_id",
            "project_id",
            "member_id",
            "permissions",
            "scopes",
        ],
    );
    Ok(())
}

/// `keyplane introspect [TOKEN]`: RFC 7662 introspection of an access token or API key, with a
/// credential that holds `tokens:introspect` (the admin key does). The token is read from
/// standard input when not given (or `-`), so it need not appear in the shell's history.
pub async fn introspect(args: &ClientArgs, token: Option<String>) -> Result<bool> {
    let token = match token.filter(|t| t != "-") {
        Some(t) => t,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the token from standard input")?;
            line.trim().to_string()
        }
    };
    if token.is_empty() {
        bail!("no token to introspect: give it as an argument or on standard input");
    }
    let c = Client::new(args)?;
    let a = c
        .post_form("/v1/oauth/token/introspect", &[("token", &token)])
        .await?;
    c.print(&a, |v| {
        render::details(
            v,
            &[
                "active",
                "token_type",
                "client_id",
                "sub",
                "username",
                "scope",
                "aud",
                "iss",
                "iat",
                "nbf",
                "exp",
                "jti",
                "act",
                "cnf",
            ],
        )
    });
    Ok(a.value["active"] == true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_are_quoted_once() {
        assert_eq!(super::quoted_tag("7"), "\"7\"");
        assert_eq!(super::quoted_tag("\"7\""), "\"7\"");
    }

    #[test]
    fn path_segments_cannot_change_the_route() {
        assert_eq!(super::seg("kpc_AbC-1"), "kpc_AbC-1");
        assert_eq!(super::seg("../admin"), "..%2Fadmin");
        assert_eq!(super::seg("a?b#c"), "a%3Fb%23c");
    }
}
