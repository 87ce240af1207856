//! `keyplane orgs|projects|members|roles|services ...`: the organization's structure.

use super::{object, push, render, s, seg, Client, ClientArgs, Paging};
use anyhow::Result;
use reqwest::Method;
use serde_json::json;

#[derive(Debug, clap::Subcommand)]
pub enum OrgsCommand {
    /// Create an organization with a `default` project (admin key only; POST /v1/orgs).
    Create {
        /// Its name, unique in the deployment.
        name: String,
    },
    /// List organizations: all of them for the admin key, one's own otherwise
    /// (GET /v1/orgs).
    List,
}

#[derive(Debug, clap::Subcommand)]
pub enum ProjectsCommand {
    /// Create a project (POST /v1/projects).
    Create {
        /// Its name, unique within the organization.
        name: String,
        /// The organization (the admin key's choice; others act in their own).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
    },
    /// List an organization's projects (GET /v1/projects).
    List {
        /// The organization (the admin key's choice).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum MembersCommand {
    /// Add a member to an organization (POST /v1/members).
    Add {
        /// The member's email address.
        email: String,
        /// `owner`, `admin` or `member`.
        #[arg(long, value_parser = ["owner", "admin", "member"])]
        role: String,
        /// The member's display name.
        #[arg(long)]
        name: Option<String>,
        /// The organization (the admin key's choice; others act in their own).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
    },
    /// List an organization's members; a `member` sees only themself (GET /v1/members).
    List {
        /// The organization (the admin key's choice).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
    },
    /// Show one member (GET /v1/members/ID).
    #[command(visible_alias = "show")]
    Get {
        /// The member's id.
        id: String,
    },
    /// Change a member's role (PATCH /v1/members/ID).
    SetRole {
        /// The member's id.
        id: String,
        /// `owner`, `admin` or `member`.
        #[arg(value_parser = ["owner", "admin", "member"])]
        role: String,
        /// Only if the member is still at this version (its ETag, shown by `get`); else 412.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
    /// Remove a member: the keys they own are revoked, their clients disabled
    /// (DELETE /v1/members/ID).
    Remove {
        /// The member's id.
        id: String,
        /// Only if the member is still at this version; else 412.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum RolesCommand {
    /// Define a role: management permissions and scopes an API key can carry
    /// (POST /v1/roles).
    Create {
        /// Its name, e.g. KEY-READER.
        name: String,
        /// What the role is for.
        #[arg(long)]
        description: Option<String>,
        /// A management permission, e.g. keys:manage or activity:read (repeat for more).
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<String>,
        /// A scope the role grants (repeat for more).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// The organization (the admin key's choice; others act in their own).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
    },
    /// List the built-in roles and the organization's own (GET /v1/roles).
    List {
        /// The organization (the admin key's choice).
        #[arg(long, value_name = "ID")]
        org_id: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ServicesCommand {
    /// Register a service and its scopes (admin key only; POST /v1/services).
    Create {
        /// Its name, e.g. ai-guard.
        name: String,
        /// A scope of the service, e.g. ai-guard:read (repeat for more).
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// What the service is.
        #[arg(long)]
        description: Option<String>,
        /// A resource URI of the service (RFC 8707; repeat for more).
        #[arg(long = "resource", value_name = "URI")]
        resources: Vec<String>,
    },
    /// Change a service's description or resource URIs (admin key only;
    /// PATCH /v1/services/ID).
    Update {
        /// The service's id.
        id: String,
        /// A new description.
        #[arg(long)]
        description: Option<String>,
        /// The service's resource URIs become these (RFC 8707; repeat for more).
        #[arg(long = "resource", value_name = "URI")]
        resources: Vec<String>,
        /// Remove every resource URI.
        #[arg(long, conflicts_with = "resources")]
        no_resources: bool,
    },
    /// Set a service's resource URIs (RFC 8707); none clears them (PATCH /v1/services/ID).
    SetResources {
        /// The service's id.
        id: String,
        /// A resource URI (repeat for more).
        #[arg(long = "resource", value_name = "URI")]
        resources: Vec<String>,
    },
    /// List the platform's services and their scopes (GET /v1/services).
    List,
}

const ORG_COLUMNS: &[(&str, &str)] = &[("ID", "id"), ("NAME", "name"), ("CREATED", "created_at")];
const PROJECT_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("ORG", "org_id"),
    ("NAME", "name"),
    ("CREATED", "created_at"),
];
const MEMBER_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("EMAIL", "email"),
    ("NAME", "name"),
    ("ROLE", "role"),
    ("ORG", "org_id"),
    ("CREATED", "created_at"),
];
const MEMBER_FIELDS: &[&str] = &["id", "email", "name", "role", "org_id", "created_at"];
const ROLE_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("BUILT-IN", "built_in"),
    ("PERMISSIONS", "permissions"),
    ("SCOPES", "scopes"),
    ("DESCRIPTION", "description"),
];
const SERVICE_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("SCOPES", "scopes"),
    ("RESOURCES", "resources"),
    ("DESCRIPTION", "description"),
];

fn one(c: &Client, a: &super::Answer, columns: &[(&str, &str)]) {
    c.print(a, |v| render::rows(std::slice::from_ref(v), columns));
}

fn org_query(org_id: Option<String>) -> super::Query {
    let mut q = Vec::new();
    push(&mut q, "org_id", org_id);
    q
}

pub async fn orgs(args: &ClientArgs, cmd: OrgsCommand) -> Result<()> {
    let c = Client::new(args)?;
    match cmd {
        OrgsCommand::Create { name } => {
            let a = c.post("/v1/orgs", Some(json!({ "name": name }))).await?;
            one(&c, &a, ORG_COLUMNS);
        }
        OrgsCommand::List => {
            let a = c.list("/v1/orgs", Vec::new(), &Paging::default()).await?;
            c.print_list(&a, ORG_COLUMNS);
        }
    }
    Ok(())
}

pub async fn projects(args: &ClientArgs, cmd: ProjectsCommand) -> Result<()> {
    let c = Client::new(args)?;
    match cmd {
        ProjectsCommand::Create { name, org_id } => {
            let body = object(vec![("name", Some(json!(name))), ("org_id", s(org_id))]);
            let a = c.post("/v1/projects", Some(body)).await?;
            one(&c, &a, PROJECT_COLUMNS);
        }
        ProjectsCommand::List { org_id } => {
            let a = c
                .list("/v1/projects", org_query(org_id), &Paging::default())
                .await?;
            c.print_list(&a, PROJECT_COLUMNS);
        }
    }
    Ok(())
}

pub async fn members(args: &ClientArgs, cmd: MembersCommand) -> Result<()> {
    let c = Client::new(args)?;
    match cmd {
        MembersCommand::Add {
            email,
            role,
            name,
            org_id,
        } => {
            let body = object(vec![
                ("email", Some(json!(email))),
                ("role", Some(json!(role))),
                ("name", s(name)),
                ("org_id", s(org_id)),
            ]);
            let a = c.post("/v1/members", Some(body)).await?;
            one(&c, &a, MEMBER_COLUMNS);
        }
        MembersCommand::List { org_id } => {
            let a = c
                .list("/v1/members", org_query(org_id), &Paging::default())
                .await?;
            c.print_list(&a, MEMBER_COLUMNS);
        }
        MembersCommand::Get { id } => {
            let a = c
                .get(&format!("/v1/members/{}", seg(&id)), &Vec::new())
                .await?;
            c.print_one(&a, MEMBER_FIELDS);
        }
        MembersCommand::SetRole { id, role, if_match } => {
            let a = c
                .send(
                    Method::PATCH,
                    &format!("/v1/members/{}", seg(&id)),
                    &Vec::new(),
                    Some(json!({ "role": role })),
                    if_match.as_deref(),
                )
                .await?;
            c.print_one(&a, MEMBER_FIELDS);
        }
        MembersCommand::Remove { id, if_match } => {
            c.send(
                Method::DELETE,
                &format!("/v1/members/{}", seg(&id)),
                &Vec::new(),
                None,
                if_match.as_deref(),
            )
            .await?;
            c.print_done(&format!("removed member {id}"));
        }
    }
    Ok(())
}

pub async fn roles(args: &ClientArgs, cmd: RolesCommand) -> Result<()> {
    let c = Client::new(args)?;
    match cmd {
        RolesCommand::Create {
            name,
            description,
            permissions,
            scopes,
            org_id,
        } => {
            let body = object(vec![
                ("name", Some(json!(name))),
                ("description", s(description)),
                ("permissions", Some(json!(permissions))),
                ("scopes", Some(json!(scopes))),
                ("org_id", s(org_id)),
            ]);
            let a = c.post("/v1/roles", Some(body)).await?;
            one(&c, &a, ROLE_COLUMNS);
        }
        RolesCommand::List { org_id } => {
            let a = c
                .list("/v1/roles", org_query(org_id), &Paging::default())
                .await?;
            c.print_list(&a, ROLE_COLUMNS);
        }
    }
    Ok(())
}

pub async fn services(args: &ClientArgs, cmd: ServicesCommand) -> Result<()> {
    let c = Client::new(args)?;
    match cmd {
        ServicesCommand::Create {
            name,
            scopes,
            description,
            resources,
        } => {
            let body = object(vec![
                ("name", Some(json!(name))),
                ("scopes", Some(json!(scopes))),
                ("description", s(description)),
                ("resources", Some(json!(resources))),
            ]);
            let a = c.post("/v1/services", Some(body)).await?;
            one(&c, &a, SERVICE_COLUMNS);
        }
        ServicesCommand::Update {
            id,
            description,
            resources,
            no_resources,
        } => {
            let body = object(vec![
                ("description", s(description)),
                ("resources", super::list_or_clear(resources, no_resources)),
            ]);
            let a = c
                .send(
                    Method::PATCH,
                    &format!("/v1/services/{}", seg(&id)),
                    &Vec::new(),
                    Some(body),
                    None,
                )
                .await?;
            one(&c, &a, SERVICE_COLUMNS);
        }
        ServicesCommand::SetResources { id, resources } => {
            let a = c
                .send(
                    Method::PATCH,
                    &format!("/v1/services/{}", seg(&id)),
                    &Vec::new(),
                    Some(json!({ "resources": resources })),
                    None,
                )
                .await?;
            one(&c, &a, SERVICE_COLUMNS);
        }
        ServicesCommand::List => {
            let a = c
                .list("/v1/services", Vec::new(), &Paging::default())
                .await?;
            c.print_list(&a, SERVICE_COLUMNS);
        }
    }
    Ok(())
}
