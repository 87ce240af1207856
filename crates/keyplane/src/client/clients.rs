//! `keyplane clients ...`: OAuth clients (`/v1/oauth-clients`), their secrets and tokens.

use super::{
    list_or_clear, object, push, render, s, seg, value_or_null, Client, ClientArgs, Paging,
};
use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

/// The client metadata `create` and `update` share (RFC 7591 names where there are some).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientFields {
    /// What the client is for.
    #[arg(long)]
    pub description: Option<String>,
    /// A scope the client may ask for (repeat for more).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Lifetime of its access tokens, 60 to 86400 seconds (default 3600).
    #[arg(long, value_name = "SECONDS")]
    pub access_token_ttl_seconds: Option<i64>,
    /// `opaque` (default) or `jwt` (RFC 9068) access tokens.
    #[arg(long, value_name = "FORMAT", value_parser = ["opaque", "jwt"])]
    pub token_format: Option<String>,
    /// `ES256` or `EdDSA`: how its JWT access tokens are signed (default: the deployment's).
    #[arg(long, value_name = "ALG", value_parser = ["ES256", "EdDSA"])]
    pub signing_alg: Option<String>,
    /// The `aud` of its JWT access tokens (default: the issuer).
    #[arg(long, value_name = "AUDIENCE")]
    pub audience: Option<String>,
    /// Each secret's maximum age in days (default: no limit).
    #[arg(long, value_name = "DAYS")]
    pub secret_rotation_days: Option<i64>,
    /// How it authenticates at the token endpoint (RFC 7591): `client_secret_basic`
    /// (default), `client_secret_post`, or `private_key_jwt` (with --jwks or --jwks-uri; no
    /// secret).
    #[arg(long, value_name = "METHOD", value_parser = ["client_secret_basic", "client_secret_post", "private_key_jwt"])]
    pub token_endpoint_auth_method: Option<String>,
    /// For private_key_jwt: its public keys, a JWK set (RFC 7591 `jwks`), from a file, or
    /// inline when the value starts with `{`.
    #[arg(long, value_name = "FILE|JSON")]
    pub jwks: Option<String>,
    /// For private_key_jwt, instead of --jwks: the https URL where its JWK set is published.
    #[arg(long, value_name = "URL")]
    pub jwks_uri: Option<String>,
    /// For private_key_jwt: an external OIDC issuer whose tokens it may trade for its own
    /// (workload identity federation), as JSON:
    /// '{"issuer": "...", "subject": "..." or "subject_pattern": "...", "audience": "..."}'
    /// (repeat for more).
    #[arg(long = "federated-credential", value_name = "JSON")]
    pub federated_credentials: Vec<String>,
    /// RFC 9449: `true` makes the token endpoint refuse its token requests without a DPoP
    /// proof; `false` lets it choose per request (the default).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub dpop_bound_access_tokens: Option<bool>,
    /// An OAuth client of the organization that may exchange this client's access tokens for
    /// tokens acting for it (RFC 8693; repeat for more).
    #[arg(long = "may-act", value_name = "CLIENT_ID")]
    pub may_act: Vec<String>,
    /// A named rate limit, NAME=LIMIT/WINDOW[,cost=N][,shared=owner|project], e.g.
    /// burst=100/1s (repeat for more; on update they replace the client's limits).
    #[arg(long = "rate-limit", value_name = "SPEC")]
    pub rate_limits: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientsCommand {
    /// Register a client-credentials client; its first secret is printed once
    /// (POST /v1/oauth-clients). A private_key_jwt client gets none.
    Create {
        /// A name, unique within its project.
        name: String,
        /// The organization (the admin key's choice; others act in their own).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
        /// The project (default: the organization's `default` project).
        #[arg(long, value_name = "ID")]
        project_id: Option<String>,
        /// The member who owns the client (org-wide managers only).
        #[arg(long, value_name = "ID")]
        owner_member_id: Option<String>,
        #[command(flatten)]
        fields: ClientFields,
    },
    /// List clients, oldest first, never their secrets (GET /v1/oauth-clients).
    List {
        /// The organization (the admin key's choice).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
        /// Only this project's clients.
        #[arg(long, value_name = "ID")]
        project_id: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one client with its secrets' ages, expiry and use (GET /v1/oauth-clients/ID).
    #[command(visible_alias = "show")]
    Get {
        /// The client's client_id.
        client_id: String,
    },
    /// Change a client's metadata (PATCH /v1/oauth-clients/ID). What is not given stays as
    /// it is.
    Update {
        /// The client's client_id.
        client_id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fields: ClientFields,
        /// Take every scope away.
        #[arg(long, conflicts_with = "scopes")]
        no_scopes: bool,
        /// Back to the deployment's signing algorithm.
        #[arg(long, conflicts_with = "signing_alg")]
        no_signing_alg: bool,
        /// Back to the issuer as audience.
        #[arg(long, conflicts_with = "audience")]
        no_audience: bool,
        /// No maximum secret age.
        #[arg(long, conflicts_with = "secret_rotation_days")]
        no_secret_rotation: bool,
        /// Remove the registered JWK set.
        #[arg(long, conflicts_with = "jwks")]
        no_jwks: bool,
        /// Remove the registered jwks_uri.
        #[arg(long, conflicts_with = "jwks_uri")]
        no_jwks_uri: bool,
        /// Remove every federated credential.
        #[arg(long, conflicts_with = "federated_credentials")]
        no_federated_credentials: bool,
        /// No client may exchange this client's tokens.
        #[arg(long, conflicts_with = "may_act")]
        no_may_act: bool,
        /// Remove every rate limit.
        #[arg(long, conflicts_with = "rate_limits")]
        no_rate_limits: bool,
        /// Only if the client is still at this version (its ETag, shown by `get`); else 412.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
    /// Delete a client; its access tokens stop working at once
    /// (DELETE /v1/oauth-clients/ID).
    Delete {
        /// The client's client_id.
        client_id: String,
        /// Only if the client is still at this version; else 412.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
    /// Rotate: add a secret, printed once, and optionally let the others expire after a grace
    /// period (POST /v1/oauth-clients/ID/secrets).
    AddSecret {
        /// The client's client_id.
        client_id: String,
        /// The client's other secrets stop working after this many seconds (default: they
        /// keep working until retired or expired).
        #[arg(long, value_name = "SECONDS")]
        old_secrets_expire_in: Option<i64>,
        /// Only if the client is still at this version; else 412.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
    /// Retire (revoke) one secret at once; access tokens issued before now stop working
    /// (DELETE /v1/oauth-clients/ID/secrets/SECRET_ID).
    RetireSecret {
        /// The client's client_id.
        client_id: String,
        /// The secret's id (see `get`).
        secret_id: String,
        /// Only if the client is still at this version; else 412.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
    /// Issue an access token for the client, as the console's "create access token" does
    /// (POST /v1/oauth-clients/ID/tokens). Not for a DPoP-bound client.
    Token {
        /// The client's client_id.
        client_id: String,
        /// Space-separated scopes, a subset of the client's (default: all of them).
        #[arg(long)]
        scope: Option<String>,
    },
}

const COLUMNS: &[(&str, &str)] = &[
    ("CLIENT ID", "client_id"),
    ("NAME", "name"),
    ("SCOPES", "scopes"),
    ("AUTH METHOD", "token_endpoint_auth_method"),
    ("FORMAT", "token_format"),
    ("TTL", "access_token_ttl_seconds"),
    ("CREATED", "created_at"),
];

const FIELDS: &[&str] = &[
    "client_id",
    "name",
    "description",
    "org_id",
    "project_id",
    "owner_member_id",
    "scopes",
    "access_token_ttl_seconds",
    "token_format",
    "signing_alg",
    "audience",
    "secret_rotation_days",
    "token_endpoint_auth_method",
    "jwks",
    "jwks_uri",
    "federated_credentials",
    "dpop_bound_access_tokens",
    "may_act",
    "rate_limits",
    "created_at",
    "created_by",
];

const SECRET_COLUMNS: &[(&str, &str)] = &[
    ("SECRET ID", "id"),
    ("PREFIX", "prefix"),
    ("STATUS", "status"),
    ("CREATED", "created_at"),
    ("AGE (DAYS)", "age_days"),
    ("EXPIRES", "expires_at"),
    ("LAST USED", "last_used_at"),
    ("USES", "use_count"),
];

/// One client: its fields, then its secrets as a table.
fn details(v: &Value) -> String {
    let mut out = render::details(v, FIELDS);
    let secrets = v["secrets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !secrets.is_empty() {
        out.push_str("\n\n");
        out.push_str(&render::rows(secrets, SECRET_COLUMNS));
    }
    out
}

/// `--jwks`: a JWK set inline (`{...}`) or from a file.
fn read_jwks(arg: &str) -> Result<Value> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg)
            .with_context(|| format!("cannot read the JWK set file {arg}"))?
    };
    let v: Value = serde_json::from_str(&text).context("--jwks is not JSON")?;
    if !v.is_object() {
        bail!("--jwks must be a JWK set: a JSON object with \"keys\"");
    }
    Ok(v)
}

fn read_federated(items: &[String]) -> Result<Vec<Value>> {
    items
        .iter()
        .map(|i| {
            let v: Value = serde_json::from_str(i)
                .with_context(|| format!("--federated-credential is not JSON: {i}"))?;
            if !v.is_object() {
                bail!("--federated-credential must be a JSON object: {i}");
            }
            Ok(v)
        })
        .collect()
}

/// The shared fields as (name, value) pairs of a request body; lists only when given.
fn shared(f: ClientFields) -> Result<Vec<(&'static str, Option<Value>)>> {
    let jwks = f.jwks.as_deref().map(read_jwks).transpose()?;
    let federated = read_federated(&f.federated_credentials)?;
    Ok(vec![
        ("description", s(f.description)),
        ("scopes", (!f.scopes.is_empty()).then(|| json!(f.scopes))),
        (
            "access_token_ttl_seconds",
            f.access_token_ttl_seconds.map(|t| json!(t)),
        ),
        ("token_format", s(f.token_format)),
        ("signing_alg", s(f.signing_alg)),
        ("audience", s(f.audience)),
        (
            "secret_rotation_days",
            f.secret_rotation_days.map(|d| json!(d)),
        ),
        (
            "token_endpoint_auth_method",
            s(f.token_endpoint_auth_method),
        ),
        ("jwks", jwks),
        ("jwks_uri", s(f.jwks_uri)),
        (
            "federated_credentials",
            (!federated.is_empty()).then(|| json!(federated)),
        ),
        (
            "dpop_bound_access_tokens",
            f.dpop_bound_access_tokens.map(|d| json!(d)),
        ),
        ("may_act", (!f.may_act.is_empty()).then(|| json!(f.may_act))),
        ("rate_limits", super::rate_limits(&f.rate_limits, false)?),
    ])
}

pub async fn run(args: &ClientArgs, cmd: ClientsCommand) -> Result<()> {
    let c = Client::new(args)?;
    match cmd {
        ClientsCommand::Create {
            name,
            org_id,
            project_id,
            owner_member_id,
            fields,
        } => {
            let mut body = vec![
                ("name", Some(json!(name))),
                ("org_id", s(org_id)),
                ("project_id", s(project_id)),
                ("owner_member_id", s(owner_member_id)),
            ];
            body.extend(shared(fields)?);
            let a = c.post("/v1/oauth-clients", Some(object(body))).await?;
            c.print(&a, |v| {
                let mut out = details(v);
                out.push_str(&format!("\n\nclient_id: {}", render::cell(v, "client_id")));
                if v.get("client_secret").is_some() {
                    out.push_str(&format!(
                        "\nclient_secret: {}\nsecret_id: {}",
                        render::cell(v, "client_secret"),
                        render::cell(v, "secret_id")
                    ));
                }
                out.push_str(&format!("\n{}", render::cell(v, "message")));
                out
            });
        }
        ClientsCommand::List {
            org_id,
            project_id,
            paging,
        } => {
            let mut q = Vec::new();
            push(&mut q, "org_id", org_id);
            push(&mut q, "project_id", project_id);
            if !paging.one_page() {
                q.push(("limit", "200".to_string()));
            }
            let a = c.list("/v1/oauth-clients", q, &paging).await?;
            c.print_list(&a, COLUMNS);
        }
        ClientsCommand::Get { client_id } => {
            let a = c
                .get(
                    &format!("/v1/oauth-clients/{}", seg(&client_id)),
                    &Vec::new(),
                )
                .await?;
            c.print(&a, |v| {
                let mut out = details(v);
                if let Some(tag) = &a.etag {
                    out.push_str(&format!(
                        "\n\nversion (for --if-match): {}",
                        tag.trim_matches('"')
                    ));
                }
                out
            });
        }
        ClientsCommand::Update {
            client_id,
            name,
            fields,
            no_scopes,
            no_signing_alg,
            no_audience,
            no_secret_rotation,
            no_jwks,
            no_jwks_uri,
            no_federated_credentials,
            no_may_act,
            no_rate_limits,
            if_match,
        } => {
            let scopes = fields.scopes.clone();
            let may_act = fields.may_act.clone();
            let mut body: Vec<(&str, Option<Value>)> = vec![("name", s(name))];
            for (k, v) in shared(fields)? {
                let v = match k {
                    "scopes" => list_or_clear(scopes.clone(), no_scopes),
                    "may_act" => list_or_clear(may_act.clone(), no_may_act),
                    "rate_limits" if no_rate_limits => Some(json!([])),
                    "signing_alg" => value_or_null(v, no_signing_alg),
                    "audience" => value_or_null(v, no_audience),
                    "secret_rotation_days" => value_or_null(v, no_secret_rotation),
                    "jwks" => value_or_null(v, no_jwks),
                    "jwks_uri" => value_or_null(v, no_jwks_uri),
                    "federated_credentials" => value_or_null(v, no_federated_credentials),
                    _ => v,
                };
                body.push((k, v));
            }
            let a = c
                .send(
                    Method::PATCH,
                    &format!("/v1/oauth-clients/{}", seg(&client_id)),
                    &Vec::new(),
                    Some(object(body)),
                    if_match.as_deref(),
                )
                .await?;
            c.print(&a, details);
        }
        ClientsCommand::Delete {
            client_id,
            if_match,
        } => {
            c.send(
                Method::DELETE,
                &format!("/v1/oauth-clients/{}", seg(&client_id)),
                &Vec::new(),
                None,
                if_match.as_deref(),
            )
            .await?;
            c.print_done(&format!("deleted client {client_id}"));
        }
        ClientsCommand::AddSecret {
            client_id,
            old_secrets_expire_in,
            if_match,
        } => {
            let a = c
                .send(
                    Method::POST,
                    &format!("/v1/oauth-clients/{}/secrets", seg(&client_id)),
                    &Vec::new(),
                    Some(object(vec![(
                        "old_secrets_expire_in_seconds",
                        old_secrets_expire_in.map(|g| json!(g)),
                    )])),
                    if_match.as_deref(),
                )
                .await?;
            c.print(&a, |v| {
                format!(
                    "{}\n\nclient_secret: {}\n{}",
                    render::details(v, &["client_id", "secret_id", "created_at"]),
                    render::cell(v, "client_secret"),
                    render::cell(v, "message")
                )
            });
        }
        ClientsCommand::RetireSecret {
            client_id,
            secret_id,
            if_match,
        } => {
            c.send(
                Method::DELETE,
                &format!(
                    "/v1/oauth-clients/{}/secrets/{}",
                    seg(&client_id),
                    seg(&secret_id)
                ),
                &Vec::new(),
                None,
                if_match.as_deref(),
            )
            .await?;
            c.print_done(&format!("retired secret {secret_id} of client {client_id}"));
        }
        ClientsCommand::Token { client_id, scope } => {
            let a = c
                .post(
                    &format!("/v1/oauth-clients/{}/tokens", seg(&client_id)),
                    Some(object(vec![("scope", s(scope))])),
                )
                .await?;
            c.print(&a, |v| {
                format!(
                    "{}\n\naccess_token: {}",
                    render::details(v, &["token_type", "expires_in", "scope"]),
                    render::cell(v, "access_token")
                )
            });
        }
    }
    Ok(())
}
