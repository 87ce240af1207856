//! Declarative configuration: the organizations, projects, services, roles, members and OAuth
//! clients a TOML file declares (`[[orgs]]`, `[[projects]]`, `[[services]]`, `[[roles]]`,
//! `[[members]]`, `[[clients]]`), made to exist at start and by `keyplane apply`.
//!
//! Applying is idempotent: each object is found by its name (a member by email) and created,
//! changed or left alone; a second run changes nothing and records no activity event. It runs
//! in dependency order through the same `Keyplane` use cases the API calls, as the admin key, so
//! every rule, ceiling check, cache invalidation and activity event is the API's. Every object
//! is first resolved without writing (a dry run); only then are changes written, one use case
//! (one transaction, with its event) each, and an error part-way names what was already
//! applied. Route rules (`[[routes]]`) are read by [`crate::config::FileRules`] after this.

use anyhow::{anyhow, bail, Context, Result};
use keyplane_core::domain::declared::{ApplyItem, ApplyReport, ConfigApplier};
use keyplane_core::domain::federation::FederatedCredential;
use keyplane_core::domain::managed::{ConfigWrite, ManagedKind};
use keyplane_core::domain::perm::Principal;
use keyplane_core::domain::request::RequestMeta;
use keyplane_core::domain::secret::SecretString;
use keyplane_core::usecase::clients::{ClientPatch, NewClient};
use keyplane_core::usecase::roles::NewRole;
use keyplane_core::Keyplane;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use toml::Spanned;

fn default_org() -> String {
    "default".into()
}

/// `[[orgs]]`: an organization, by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgDecl {
    pub name: String,
}

/// `[[projects]]`: a project of an organization (`org`, default `default`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectDecl {
    #[serde(default = "default_org")]
    pub org: String,
    pub name: String,
}

/// `[[services]]`: an API of the platform, its scopes and resource URIs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDecl {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
}

/// `[[roles]]`: a custom role of an organization.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDecl {
    #[serde(default = "default_org")]
    pub org: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `[[members]]`: a person of an organization, by email, with a role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDecl {
    #[serde(default = "default_org")]
    pub org: String,
    pub email: String,
    pub name: Option<String>,
    pub role: String,
}

/// `[[clients]]`: an OAuth client of a project, by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientDecl {
    #[serde(default = "default_org")]
    pub org: String,
    #[serde(default = "default_org")]
    pub project: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub scopes: Vec<String>,
    pub access_token_ttl_seconds: Option<i64>,
    pub token_format: Option<String>,
    pub signing_alg: Option<String>,
    pub audience: Option<String>,
    pub secret_rotation_days: Option<i64>,
    pub token_endpoint_auth_method: Option<String>,
    /// A private_key_jwt client's keys, inline (a JWK set: `{ keys = [...] }`).
    pub jwks: Option<toml::Value>,
    /// A private_key_jwt client's keys, published at this URL.
    pub jwks_uri: Option<String>,
    /// The secret is read from this file (relative paths: from the configuration file's folder).
    pub secret_file: Option<PathBuf>,
    /// The secret is read from this environment variable.
    pub secret_env: Option<String>,
    /// When `secret_file` does not exist, generate a secret and write it there (mode 0600), once.
    #[serde(default)]
    pub generate_secret: bool,
    /// RFC 9449 §5.2: the client always uses DPoP (absent: false).
    #[serde(default)]
    pub dpop_bound_access_tokens: bool,
    /// External issuers whose tokens a `private_key_jwt` client may trade for its own
    /// (`[[clients.federated_credentials]]` with `issuer`, `subject` or `subject_pattern`,
    /// `audience`).
    #[serde(default)]
    pub federated_credentials: Vec<toml::Value>,
    /// The clients that may exchange this client's tokens (RFC 8693): names of clients of the
    /// same organization declared in this file, or client ids.
    #[serde(default)]
    pub may_act: Vec<String>,
}

/// The declarations of one configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Declarations {
    #[serde(default)]
    pub orgs: Vec<Spanned<OrgDecl>>,
    #[serde(default)]
    pub projects: Vec<Spanned<ProjectDecl>>,
    #[serde(default)]
    pub services: Vec<Spanned<ServiceDecl>>,
    #[serde(default)]
    pub roles: Vec<Spanned<RoleDecl>>,
    #[serde(default)]
    pub members: Vec<Spanned<MemberDecl>>,
    #[serde(default)]
    pub clients: Vec<Spanned<ClientDecl>>,
}

impl Declarations {
    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
            && self.projects.is_empty()
            && self.services.is_empty()
            && self.roles.is_empty()
            && self.members.is_empty()
            && self.clients.is_empty()
    }
}

/// What applying does to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    /// The fields that change.
    Update(Vec<String>),
    Unchanged,
}

/// One declared object and what applying does (or did) to it.
#[derive(Debug, Clone)]
pub struct Item {
    pub kind: &'static str,
    pub name: String,
    /// 0: not declared in the file (an object the file no longer declares).
    pub line: usize,
    pub change: Change,
    /// The object, once it exists (a dry run of a creation: `None`).
    pub id: Option<(ManagedKind, String)>,
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.change {
            Change::Create => "create".to_string(),
            Change::Update(fields) => format!("update ({})", fields.join(", ")),
            Change::Unchanged => "unchanged".to_string(),
        };
        if self.line == 0 {
            return write!(
                f,
                "{what:<10} {} {} (no longer declared)",
                self.kind, self.name
            );
        }
        write!(
            f,
            "{what:<10} {} {} (line {})",
            self.kind, self.name, self.line
        )
    }
}

/// The outcome of applying (or of a dry run).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub file: PathBuf,
    pub dry_run: bool,
    pub items: Vec<Item>,
    /// Files a generated client secret was written to.
    pub secrets_written: Vec<PathBuf>,
}

impl Report {
    pub fn changes(&self) -> usize {
        self.items
            .iter()
            .filter(|i| i.change != Change::Unchanged)
            .count()
    }

    /// One line per object.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for i in &self.items {
            out.push_str(&i.to_string());
            out.push('\n');
        }
        let verb = if self.dry_run {
            "would change"
        } else {
            "changed"
        };
        out.push_str(&format!(
            "{}: {} declared object(s), {verb} {}\n",
            self.file.display(),
            self.items.len(),
            self.changes()
        ));
        for f in &self.secrets_written {
            out.push_str(&format!(
                "wrote a generated client secret to {} (mode 0600)\n",
                f.display()
            ));
        }
        out
    }

    pub fn log(&self) {
        if self.items.is_empty() {
            return;
        }
        for i in self.items.iter().filter(|i| i.change != Change::Unchanged) {
            tracing::info!(file = %self.file.display(), "declared object: {i}");
        }
        tracing::info!(
            file = %self.file.display(),
            objects = self.items.len(),
            changed = self.changes(),
            "declared objects applied"
        );
    }
}

impl Report {
    /// The core's form of the report (the management API's answer).
    pub fn to_core(&self) -> ApplyReport {
        ApplyReport {
            file: self.file.display().to_string(),
            dry_run: self.dry_run,
            items: self
                .items
                .iter()
                .map(|i| {
                    let (change, fields) = match &i.change {
                        Change::Create => ("create", vec![]),
                        Change::Update(f) => ("update", f.clone()),
                        Change::Unchanged => ("unchanged", vec![]),
                    };
                    ApplyItem {
                        kind: i.kind.to_string(),
                        name: i.name.clone(),
                        line: i.line,
                        change: change.to_string(),
                        fields,
                    }
                })
                .collect(),
            secrets_written: self
                .secrets_written
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        }
    }
}

/// What `POST /v1/admin/config/apply` (and so `keyplane apply`) runs in the server: the
/// declarations of the text sent (named by `file`), or of the server's own configuration file.
/// After applying the server's own file, its route rules are read again too.
pub struct FileApplier {
    pub app: std::sync::Weak<Keyplane>,
    pub config_file: Option<PathBuf>,
}

#[async_trait::async_trait]
impl ConfigApplier for FileApplier {
    async fn apply(
        &self,
        file: Option<String>,
        text: Option<String>,
        dry_run: bool,
    ) -> std::result::Result<ApplyReport, String> {
        let app = self.app.upgrade().ok_or("the server is stopping")?;
        let path = file
            .map(PathBuf::from)
            .or_else(|| self.config_file.clone())
            .ok_or("no configuration file: send its text, or start keyplane with --config")?;
        let report = match text {
            Some(t) => apply_text(&app, &path, &t, dry_run).await,
            None => apply_file(&app, &path, dry_run).await,
        }
        .map_err(|e| format!("{e:#}"))?;
        if !dry_run {
            report.log();
            if self.config_file.as_deref() == Some(path.as_path()) {
                app.reload_rules().await.map_err(|e| {
                    format!(
                        "{}
the declarations were applied, but the route rules are not valid and the previous ones stay in force: {e}",
                        report.render()
                    )
                })?;
            }
        }
        Ok(report.to_core())
    }
}

/// Reads the declarations of a configuration file (its other settings are `config.rs`'s).
pub fn read(path: &Path) -> Result<(Declarations, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let decl = parse(path, &text)?;
    Ok((decl, text))
}

fn parse(path: &Path, text: &str) -> Result<Declarations> {
    // The whole file is checked (unknown fields included) by the configuration's own parser;
    // here only the declarations are taken, with the spans that give their lines.
    toml::from_str(text)
        .with_context(|| format!("the configuration file {} is not valid", path.display()))
}

fn line_of(text: &str, span: std::ops::Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

/// Applies the declarations of `path` (or, with `dry_run`, only says what it would do).
pub async fn apply_file(app: &Keyplane, path: &Path, dry_run: bool) -> Result<Report> {
    let (decl, text) = read(path)?;
    apply(app, path, &text, &decl, dry_run).await
}

/// Applies the declarations given as the text of a configuration file named `path` (the
/// management API's form: the file's text travels in the request).
pub async fn apply_text(app: &Keyplane, path: &Path, text: &str, dry_run: bool) -> Result<Report> {
    let decl = parse(path, text)?;
    apply(app, path, text, &decl, dry_run).await
}

pub async fn apply(
    app: &Keyplane,
    path: &Path,
    text: &str,
    decl: &Declarations,
    dry_run: bool,
) -> Result<Report> {
    if decl.is_empty() {
        return Ok(Report {
            file: path.to_path_buf(),
            dry_run,
            ..Default::default()
        });
    }
    // Resolve everything first; write only when all of it resolves.
    let plan = Run::new(app, path, text, true).run(decl).await?;
    if dry_run {
        return Ok(plan);
    }
    if plan.changes() == 0 {
        return Ok(Report {
            dry_run: false,
            ..plan
        });
    }
    let mut run = Run::new(app, path, text, false);
    match run.run(decl).await {
        Ok(report) => Ok(report),
        Err(e) => {
            let done: Vec<String> = run
                .report
                .items
                .iter()
                .filter(|i| i.change != Change::Unchanged)
                .map(|i| format!("  {i}"))
                .collect();
            let done = if done.is_empty() {
                "nothing was applied".to_string()
            } else {
                format!(
                    "these changes were applied before it (each with its activity event):\n{}",
                    done.join("\n")
                )
            };
            Err(anyhow!("{e:#}\n{done}"))
        }
    }
}

/// One pass over the declarations: a dry run resolves, a real one writes.
struct Run<'a> {
    app: &'a Keyplane,
    admin: Principal,
    meta: RequestMeta,
    file: &'a Path,
    text: &'a str,
    dry_run: bool,
    report: Report,
    /// Organization name → id (`None`: to be created by this run).
    orgs: HashMap<String, Option<String>>,
    /// (org, project) → id (`None`: to be created).
    projects: HashMap<(String, String), Option<String>>,
    /// Every scope of a service, registered or declared.
    scopes: BTreeSet<String>,
}

impl<'a> Run<'a> {
    fn new(app: &'a Keyplane, file: &'a Path, text: &'a str, dry_run: bool) -> Self {
        Run {
            app,
            admin: Principal::admin(),
            meta: RequestMeta {
                client_addr: None,
                user_agent: Some(axum::http::HeaderValue::from_static("keyplane-config")),
                config: ConfigWrite::Declaration,
                // Through `POST /v1/admin/config/apply`: that request's id.
                request_id: keyplane_http::observe::current_request_id(),
            },
            file,
            text,
            dry_run,
            report: Report {
                file: file.to_path_buf(),
                dry_run,
                ..Default::default()
            },
            orgs: HashMap::new(),
            projects: HashMap::new(),
            scopes: BTreeSet::new(),
        }
    }

    /// An error about the object declared at `span`, naming the file, line and table.
    fn at(&self, span: std::ops::Range<usize>, table: &str, name: &str) -> String {
        format!(
            "{}:{}: [[{table}]] {name:?}",
            self.file.display(),
            line_of(self.text, span)
        )
    }

    fn push(
        &mut self,
        kind: ManagedKind,
        id: Option<String>,
        name: String,
        span: std::ops::Range<usize>,
        change: Change,
    ) {
        self.report.items.push(Item {
            kind: kind.as_str(),
            name,
            line: line_of(self.text, span),
            change,
            id: id.map(|id| (kind, id)),
        });
    }

    /// Marks every declared object `managed_by: config`, and unmarks those the file no longer
    /// declares (an object that was deleted meanwhile is only unmarked).
    async fn mark(&mut self) -> Result<()> {
        let marked: BTreeSet<(ManagedKind, String)> = self
            .app
            .config_managed_list(&self.admin)
            .await?
            .into_iter()
            .map(|m| (m.kind, m.id))
            .collect();
        let mut declared = BTreeSet::new();
        for item in &mut self.report.items {
            let Some(id) = item.id.clone() else { continue };
            declared.insert(id.clone());
            if marked.contains(&id) {
                continue;
            }
            if !self.dry_run {
                self.app
                    .config_mark(&self.admin, id.0, &id.1, true, &self.meta)
                    .await?;
            }
            item.change = match std::mem::replace(&mut item.change, Change::Unchanged) {
                Change::Unchanged => Change::Update(vec!["managed_by".into()]),
                Change::Update(mut f) => {
                    f.push("managed_by".into());
                    Change::Update(f)
                }
                Change::Create => Change::Create,
            };
        }
        for (kind, id) in marked.difference(&declared) {
            if !self.dry_run {
                self.app
                    .config_mark(&self.admin, *kind, id, false, &self.meta)
                    .await?;
            }
            self.report.items.push(Item {
                kind: kind.as_str(),
                name: id.clone(),
                line: 0,
                change: Change::Update(vec!["managed_by".into()]),
                id: None,
            });
        }
        Ok(())
    }

    async fn run(&mut self, decl: &Declarations) -> Result<Report> {
        self.orgs(decl).await?;
        self.projects(decl).await?;
        self.services(decl).await?;
        self.roles(decl).await?;
        self.members(decl).await?;
        self.clients(decl).await?;
        self.mark().await?;
        Ok(self.report.clone())
    }

    fn org_id(&self, org: &str, at: &str) -> Result<Option<String>> {
        self.orgs.get(org).cloned().ok_or_else(|| {
            anyhow!("{at}: org: no organization named {org:?} exists or is declared in [[orgs]]")
        })
    }

    async fn orgs(&mut self, decl: &Declarations) -> Result<()> {
        for o in self.app.org_list(&self.admin).await? {
            self.orgs.insert(o.name, Some(o.id));
        }
        let mut seen = BTreeSet::new();
        for d in &decl.orgs {
            let (span, o) = (d.span(), d.get_ref());
            let at = self.at(span.clone(), "orgs", &o.name);
            if !seen.insert(o.name.clone()) {
                bail!("{at}: name: declared twice");
            }
            let change = if self.orgs.contains_key(&o.name) {
                Change::Unchanged
            } else {
                let id = if self.dry_run {
                    None
                } else {
                    let org = self
                        .app
                        .org_create(&self.admin, &o.name, &self.meta)
                        .await
                        .with_context(|| at.clone())?;
                    Some(org.id)
                };
                self.orgs.insert(o.name.clone(), id);
                Change::Create
            };
            let id = self.orgs.get(&o.name).cloned().flatten();
            self.push(ManagedKind::Org, id, o.name.clone(), span, change);
        }
        // Every organization has a `default` project.
        let orgs: Vec<(String, Option<String>)> = self
            .orgs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, id) in orgs {
            match id {
                Some(id) => {
                    for p in self.app.project_list(&self.admin, Some(&id)).await? {
                        self.projects.insert((name.clone(), p.name), Some(p.id));
                    }
                }
                None => {
                    self.projects.insert((name.clone(), "default".into()), None);
                }
            }
        }
        Ok(())
    }

    async fn projects(&mut self, decl: &Declarations) -> Result<()> {
        let mut seen = BTreeSet::new();
        for d in &decl.projects {
            let (span, p) = (d.span(), d.get_ref());
            let label = format!("{}/{}", p.org, p.name);
            let at = self.at(span.clone(), "projects", &label);
            if !seen.insert(label.clone()) {
                bail!("{at}: name: declared twice");
            }
            let org_id = self.org_id(&p.org, &at)?;
            let key = (p.org.clone(), p.name.clone());
            let key2 = key.clone();
            let change = if self.projects.contains_key(&key) {
                Change::Unchanged
            } else {
                let id = match (&org_id, self.dry_run) {
                    (Some(org_id), false) => Some(
                        self.app
                            .project_create(&self.admin, Some(org_id), &p.name, &self.meta)
                            .await
                            .with_context(|| at.clone())?
                            .id,
                    ),
                    _ => None,
                };
                self.projects.insert(key, id);
                Change::Create
            };
            let id = self.projects.get(&key2).cloned().flatten();
            self.push(ManagedKind::Project, id, label, span, change);
        }
        Ok(())
    }

    async fn services(&mut self, decl: &Declarations) -> Result<()> {
        let existing = self.app.service_list(&self.admin).await?;
        for s in &existing {
            self.scopes.extend(s.scopes.iter().cloned());
        }
        let mut seen = BTreeSet::new();
        for d in &decl.services {
            let (span, s) = (d.span(), d.get_ref());
            let at = self.at(span.clone(), "services", &s.name);
            if !seen.insert(s.name.clone()) {
                bail!("{at}: name: declared twice");
            }
            let mut resources = BTreeSet::new();
            for r in &s.resources {
                let uri = keyplane_core::domain::resource::parse_resource(r)
                    .map_err(|e| anyhow!("{at}: resources: {e}"))?;
                resources.insert(uri);
            }
            let mut id = existing
                .iter()
                .find(|x| x.name == s.name)
                .map(|x| x.id.clone());
            let change = match existing.iter().find(|x| x.name == s.name) {
                None => {
                    if !self.dry_run {
                        id = Some(
                            self.app
                                .service_create(
                                    &self.admin,
                                    &s.name,
                                    Some(&s.description),
                                    s.scopes.clone(),
                                    s.resources.clone(),
                                    &self.meta,
                                )
                                .await
                                .with_context(|| at.clone())?
                                .id,
                        );
                    }
                    Change::Create
                }
                Some(x) => {
                    let declared: BTreeSet<&String> = s.scopes.iter().collect();
                    let stored: BTreeSet<&String> = x.scopes.iter().collect();
                    if declared != stored {
                        bail!(
                            "{at}: scopes: the service is registered with {:?}, and a service's scopes cannot be changed once registered (keys and clients hold them); declare the registered scopes, or register a new service",
                            x.scopes
                        );
                    }
                    let mut fields = vec![];
                    if x.description != s.description {
                        fields.push("description".to_string());
                    }
                    let stored_res: BTreeSet<String> = x.resources.iter().cloned().collect();
                    if stored_res != resources {
                        fields.push("resources".to_string());
                    }
                    if fields.is_empty() {
                        Change::Unchanged
                    } else {
                        if !self.dry_run {
                            self.app
                                .service_update(
                                    &self.admin,
                                    &x.id,
                                    Some(&s.description),
                                    Some(s.resources.clone()),
                                    &self.meta,
                                )
                                .await
                                .with_context(|| at.clone())?;
                        }
                        Change::Update(fields)
                    }
                }
            };
            self.scopes.extend(s.scopes.iter().cloned());
            self.push(ManagedKind::Service, id, s.name.clone(), span, change);
        }
        Ok(())
    }

    fn check_scopes(&self, at: &str, scopes: &[String]) -> Result<()> {
        if let Some(s) = scopes.iter().find(|s| !self.scopes.contains(*s)) {
            bail!("{at}: scopes: {s:?} is not a scope of any registered or declared service");
        }
        Ok(())
    }

    async fn roles(&mut self, decl: &Declarations) -> Result<()> {
        let mut seen = BTreeSet::new();
        for d in &decl.roles {
            let (span, r) = (d.span(), d.get_ref());
            let label = format!("{}/{}", r.org, r.name);
            let at = self.at(span.clone(), "roles", &label);
            if !seen.insert(label.to_lowercase()) {
                bail!("{at}: name: declared twice");
            }
            self.check_scopes(&at, &r.scopes)?;
            let org_id = self.org_id(&r.org, &at)?;
            let existing = match &org_id {
                Some(id) => self
                    .app
                    .role_list(&self.admin, Some(id))
                    .await?
                    .into_iter()
                    .find(|x| x.name.eq_ignore_ascii_case(&r.name)),
                None => None,
            };
            let mut id = existing.as_ref().map(|x| x.id.clone());
            let change = match existing {
                Some(x) if x.org_id.is_none() => {
                    bail!("{at}: name: {:?} is a built-in role", x.name)
                }
                Some(x) => {
                    let perms: BTreeSet<&str> = x.permissions.iter().map(|p| p.as_str()).collect();
                    let want: BTreeSet<&str> = r.permissions.iter().map(String::as_str).collect();
                    let scopes: BTreeSet<&String> = x.scopes.iter().collect();
                    let want_scopes: BTreeSet<&String> = r.scopes.iter().collect();
                    let mut fields = vec![];
                    if perms != want {
                        fields.push("permissions");
                    }
                    if scopes != want_scopes {
                        fields.push("scopes");
                    }
                    if x.description != r.description {
                        fields.push("description");
                    }
                    if !fields.is_empty() {
                        bail!(
                            "{at}: {}: the role exists with other values, and roles cannot be changed once created (keys carry them); declare its stored values, or a role with another name",
                            fields.join(", ")
                        );
                    }
                    Change::Unchanged
                }
                None => {
                    if let (Some(org_id), false) = (&org_id, self.dry_run) {
                        id = Some(
                            self.app
                                .role_create(
                                    &self.admin,
                                    NewRole {
                                        org_id: Some(org_id.clone()),
                                        name: r.name.clone(),
                                        description: Some(r.description.clone()),
                                        permissions: r.permissions.clone(),
                                        scopes: r.scopes.clone(),
                                    },
                                    &self.meta,
                                )
                                .await
                                .with_context(|| at.clone())?
                                .id,
                        );
                    }
                    Change::Create
                }
            };
            self.push(ManagedKind::Role, id, label, span, change);
        }
        Ok(())
    }

    async fn members(&mut self, decl: &Declarations) -> Result<()> {
        let mut seen = BTreeSet::new();
        for d in &decl.members {
            let (span, m) = (d.span(), d.get_ref());
            let email = m.email.trim().to_lowercase();
            let label = format!("{}/{}", m.org, email);
            let at = self.at(span.clone(), "members", &label);
            if !seen.insert(label.clone()) {
                bail!("{at}: email: declared twice");
            }
            if keyplane_core::domain::perm::MemberRole::parse(&m.role).is_none() {
                bail!("{at}: role: must be `owner`, `admin` or `member`");
            }
            let org_id = self.org_id(&m.org, &at)?;
            let existing = match &org_id {
                Some(id) => self
                    .app
                    .member_list(&self.admin, Some(id))
                    .await?
                    .into_iter()
                    .find(|x| x.email == email),
                None => None,
            };
            let mut id = existing.as_ref().map(|x| x.id.clone());
            let change = match existing {
                Some(x) if x.role.as_str() == m.role => Change::Unchanged,
                Some(x) => {
                    if !self.dry_run {
                        self.app
                            .member_set_role(&self.admin, &x.id, &m.role, None, &self.meta)
                            .await
                            .with_context(|| at.clone())?;
                    }
                    Change::Update(vec!["role".into()])
                }
                None => {
                    if let (Some(org_id), false) = (&org_id, self.dry_run) {
                        id = Some(
                            self.app
                                .member_create(
                                    &self.admin,
                                    Some(org_id),
                                    &email,
                                    m.name.as_deref(),
                                    &m.role,
                                    &self.meta,
                                )
                                .await
                                .with_context(|| at.clone())?
                                .id,
                        );
                    }
                    Change::Create
                }
            };
            self.push(ManagedKind::Member, id, label, span, change);
        }
        Ok(())
    }

    /// The secret a declared client should have: `None` for a private_key_jwt client, or when
    /// it is to be generated into a file that does not exist yet (`Some(path)` in the second).
    fn client_secret(
        &self,
        at: &str,
        c: &ClientDecl,
        uses_secret: bool,
    ) -> Result<(Option<SecretString>, Option<PathBuf>)> {
        if !uses_secret {
            if c.secret_file.is_some() || c.secret_env.is_some() || c.generate_secret {
                bail!("{at}: secret_file: a private_key_jwt client has no secret");
            }
            return Ok((None, None));
        }
        match (&c.secret_file, &c.secret_env) {
            (Some(_), Some(_)) => bail!("{at}: secret_env: give `secret_file` or `secret_env`, not both"),
            (None, None) => bail!(
                "{at}: secret_file: a client that authenticates with a secret needs `secret_file` (with `generate_secret = true` to have keyplane make one) or `secret_env`"
            ),
            (None, Some(var)) => {
                if c.generate_secret {
                    bail!("{at}: generate_secret: a generated secret is written to `secret_file`, not to an environment variable");
                }
                let v = std::env::var(var).map_err(|_| {
                    anyhow!("{at}: secret_env: the environment variable {var} is not set")
                })?;
                let s = SecretString::new(v.trim().to_string());
                self.app
                    .declared_secret_check(&s)
                    .map_err(|e| anyhow!("{at}: secret_env ({var}): {e}"))?;
                Ok((Some(s), None))
            }
            (Some(file), None) => {
                let path = if file.is_relative() {
                    self.file.parent().unwrap_or(Path::new(".")).join(file)
                } else {
                    file.clone()
                };
                match std::fs::read_to_string(&path) {
                    Ok(t) => {
                        let s = SecretString::new(t.trim().to_string());
                        self.app.declared_secret_check(&s).map_err(|e| {
                            anyhow!("{at}: secret_file ({}): {e}", path.display())
                        })?;
                        Ok((Some(s), None))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && c.generate_secret => {
                        Ok((None, Some(path)))
                    }
                    Err(e) => Err(anyhow!(
                        "{at}: secret_file: cannot read {}: {e}{}",
                        path.display(),
                        if c.generate_secret {
                            ""
                        } else {
                            " (set `generate_secret = true` to have keyplane write a new secret there)"
                        }
                    )),
                }
            }
        }
    }

    async fn clients(&mut self, decl: &Declarations) -> Result<()> {
        let mut seen = BTreeSet::new();
        for d in &decl.clients {
            let (span, c) = (d.span(), d.get_ref());
            let label = format!("{}/{}/{}", c.org, c.project, c.name);
            let at = self.at(span.clone(), "clients", &label);
            if !seen.insert(label.clone()) {
                bail!("{at}: name: declared twice");
            }
            self.check_scopes(&at, &c.scopes)?;
            self.org_id(&c.org, &at)?;
            let project_id = self
                .projects
                .get(&(c.org.clone(), c.project.clone()))
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "{at}: project: no project named {:?} exists in {:?} or is declared in [[projects]]",
                        c.project,
                        c.org
                    )
                })?;
            let org_id = self.orgs.get(&c.org).cloned().flatten();
            let method = c
                .token_endpoint_auth_method
                .clone()
                .unwrap_or_else(|| "client_secret_basic".into());
            let uses_secret = method != "private_key_jwt";
            let (secret, generate_into) = self.client_secret(&at, c, uses_secret)?;
            let jwks = c
                .jwks
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| anyhow!("{at}: jwks: {e}"))?;
            let federated: Vec<FederatedCredential> = c
                .federated_credentials
                .iter()
                .map(|v| v.clone().try_into())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| anyhow!("{at}: federated_credentials: {e}"))?;
            let federated_json =
                serde_json::to_value(&federated).map_err(|e| anyhow!("{at}: {e}"))?;
            let existing = match (&org_id, &project_id) {
                (Some(o), Some(p)) => self.find_client(o, p, &c.name).await?,
                _ => None,
            };
            let mut change = match &existing {
                None => Change::Create,
                Some((x, _)) => {
                    let mut fields = vec![];
                    let mut patch = ClientPatch::default();
                    if x.description != c.description {
                        fields.push("description");
                        patch.description = Some(c.description.clone());
                    }
                    let stored: BTreeSet<&String> = x.scopes.iter().collect();
                    let want: BTreeSet<&String> = c.scopes.iter().collect();
                    if stored != want {
                        fields.push("scopes");
                        patch.scopes = Some(c.scopes.clone());
                    }
                    if let Some(ttl) = c.access_token_ttl_seconds {
                        if ttl != x.access_token_ttl_seconds {
                            fields.push("access_token_ttl_seconds");
                            patch.access_token_ttl_seconds = Some(ttl);
                        }
                    }
                    let format = c.token_format.clone().unwrap_or_else(|| "opaque".into());
                    if format != x.token_format.as_str() {
                        fields.push("token_format");
                        patch.token_format = Some(format);
                    }
                    if c.signing_alg.as_deref() != x.signing_alg.map(|a| a.as_str()) {
                        fields.push("signing_alg");
                        patch.signing_alg = Some(c.signing_alg.clone());
                    }
                    if c.audience != x.audience {
                        fields.push("audience");
                        patch.audience = Some(c.audience.clone());
                    }
                    if c.secret_rotation_days != x.secret_rotation_days {
                        fields.push("secret_rotation_days");
                        patch.secret_rotation_days = Some(c.secret_rotation_days);
                    }
                    if method != x.auth_method.as_str() {
                        fields.push("token_endpoint_auth_method");
                        patch.token_endpoint_auth_method = Some(method.clone());
                    }
                    if c.dpop_bound_access_tokens != x.dpop_bound_access_tokens {
                        fields.push("dpop_bound_access_tokens");
                        patch.dpop_bound_access_tokens = Some(c.dpop_bound_access_tokens);
                    }
                    if federated != x.federated_credentials {
                        fields.push("federated_credentials");
                        patch.federated_credentials = Some(Some(federated_json.clone()));
                    }
                    if !uses_secret {
                        if c.jwks_uri != x.jwks_uri {
                            fields.push("jwks_uri");
                            patch.jwks_uri = Some(c.jwks_uri.clone());
                        }
                        let stored = x.jwks.as_ref().map(|s| s.to_json());
                        if jwks != stored {
                            fields.push("jwks");
                            patch.jwks = Some(jwks.clone());
                        }
                    }
                    if fields.is_empty() {
                        Change::Unchanged
                    } else {
                        if !self.dry_run {
                            self.app
                                .client_update(&self.admin, &x.client_id, patch, None, &self.meta)
                                .await
                                .with_context(|| at.clone())?;
                        }
                        Change::Update(fields.into_iter().map(String::from).collect())
                    }
                }
            };
            // The secret: a generated one is written to its file before it is installed, so a
            // failure after that is repaired by the next run (which reads the file).
            let secret = match (secret, generate_into) {
                (Some(s), _) => Some(s),
                (None, Some(path)) => {
                    if self.dry_run {
                        None
                    } else {
                        let s = self.app.declared_secret_generate();
                        write_secret(&path, &s).with_context(|| at.clone())?;
                        self.report.secrets_written.push(path);
                        Some(s)
                    }
                }
                (None, None) => None,
            };
            let client_id = match existing {
                Some((x, _)) => Some(x.client_id),
                None => {
                    if self.dry_run {
                        None
                    } else {
                        let (created, _) = self
                            .app
                            .client_create(
                                &self.admin,
                                NewClient {
                                    org_id: org_id.clone(),
                                    project_id: project_id.clone(),
                                    owner_member_id: None,
                                    name: c.name.clone(),
                                    description: Some(c.description.clone()),
                                    scopes: c.scopes.clone(),
                                    access_token_ttl_seconds: c.access_token_ttl_seconds,
                                    token_format: c.token_format.clone(),
                                    signing_alg: c.signing_alg.clone(),
                                    audience: c.audience.clone(),
                                    secret_rotation_days: c.secret_rotation_days,
                                    token_endpoint_auth_method: Some(method.clone()),
                                    jwks: jwks.clone(),
                                    jwks_uri: c.jwks_uri.clone(),
                                    federated_credentials: (!federated.is_empty())
                                        .then(|| federated_json.clone()),
                                    may_act: vec![],
                                    rate_limits: vec![],
                                    dpop_bound_access_tokens: Some(c.dpop_bound_access_tokens),
                                },
                                &self.meta,
                            )
                            .await
                            .with_context(|| at.clone())?;
                        Some(created.client_id)
                    }
                }
            };
            if uses_secret {
                let installed = match (&client_id, &secret) {
                    (Some(id), Some(s)) if self.dry_run => {
                        !self
                            .app
                            .declared_secret_is_current(&self.admin, id, s)
                            .await?
                    }
                    (Some(id), Some(s)) => self
                        .app
                        .declared_secret_install(&self.admin, id, s, &self.meta)
                        .await
                        .with_context(|| at.clone())?,
                    // A dry run of a secret to be generated, or of a client to be created.
                    _ => true,
                };
                if installed {
                    change = match change {
                        Change::Unchanged => Change::Update(vec!["secret".into()]),
                        Change::Update(mut f) => {
                            f.push("secret".into());
                            Change::Update(f)
                        }
                        Change::Create => Change::Create,
                    };
                }
            }
            self.push(ManagedKind::Client, client_id, label, span, change);
        }
        self.may_act(decl).await
    }

    /// `may_act`, once every declared client exists: names resolve to the ids of clients of
    /// the same organization declared in this file.
    async fn may_act(&mut self, decl: &Declarations) -> Result<()> {
        let ids: HashMap<(String, String), Option<String>> = decl
            .clients
            .iter()
            .zip(self.report.items.iter().filter(|i| i.kind == "client"))
            .map(|(d, item)| {
                let c = d.get_ref();
                (
                    (c.org.clone(), c.name.clone()),
                    item.id.as_ref().map(|(_, id)| id.clone()),
                )
            })
            .collect();
        let first_client = self
            .report
            .items
            .iter()
            .position(|i| i.kind == "client")
            .unwrap_or(0);
        for (n, d) in decl.clients.iter().enumerate() {
            let (span, c) = (d.span(), d.get_ref());
            let label = format!("{}/{}/{}", c.org, c.project, c.name);
            let at = self.at(span, "clients", &label);
            let mut want = BTreeSet::new();
            for name in &c.may_act {
                match ids.get(&(c.org.clone(), name.clone())) {
                    Some(Some(id)) => {
                        want.insert(id.clone());
                    }
                    // Declared, to be created by this run (a dry run).
                    Some(None) => {
                        want.insert(format!("(new) {name}"));
                    }
                    None if name.contains('_') => {
                        want.insert(name.clone());
                    }
                    None => bail!(
                        "{at}: may_act: {name:?} is neither a client declared in {:?} nor a client id",
                        c.org
                    ),
                }
            }
            let item = first_client + n;
            let Some((_, id)) = self.report.items[item].id.clone() else {
                continue;
            };
            let stored: BTreeSet<String> = self
                .app
                .client_get(&self.admin, &id)
                .await?
                .0
                .may_act
                .into_iter()
                .collect();
            if stored == want {
                continue;
            }
            if !self.dry_run {
                let patch = ClientPatch {
                    may_act: Some(want.into_iter().collect()),
                    ..Default::default()
                };
                self.app
                    .client_update(&self.admin, &id, patch, None, &self.meta)
                    .await
                    .with_context(|| at.clone())?;
            }
            let it = &mut self.report.items[item];
            it.change = match std::mem::replace(&mut it.change, Change::Unchanged) {
                Change::Unchanged => Change::Update(vec!["may_act".into()]),
                Change::Update(mut f) => {
                    f.push("may_act".into());
                    Change::Update(f)
                }
                Change::Create => Change::Create,
            };
        }
        Ok(())
    }

    async fn find_client(
        &self,
        org_id: &str,
        project_id: &str,
        name: &str,
    ) -> Result<Option<(keyplane_core::domain::model::OAuthClient, ())>> {
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .app
                .client_list(
                    &self.admin,
                    Some(org_id),
                    Some(project_id),
                    cursor.as_deref(),
                    Some(100),
                )
                .await?;
            if let Some((c, _)) = page.items.into_iter().find(|(c, _)| c.name == name) {
                return Ok(Some((c, ())));
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
    }
}

/// Writes a generated secret to a new file, owner-only (0600); an existing file is never
/// replaced.
fn write_secret(path: &Path, secret: &SecretString) -> Result<()> {
    use std::io::Write;
    let mut f = keyplane_store::files::create_private_file(path)
        .with_context(|| format!("cannot create the secret file {}", path.display()))?;
    f.write_all(secret.expose().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}
