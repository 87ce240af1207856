//! Organizations, projects, services, members, roles, and `whoami`.

use crate::auth::Caller;
use crate::dto::*;
use crate::error::{ApiResult, AppJson, AppPath, AppQuery};
use crate::etag::{IfMatch, Tagged};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, patch};
use axum::{Json, Router};
use keyplane_core::domain::perm::Actor;
use keyplane_core::usecase::roles::NewRole;
use serde::Deserialize;
use utoipa::IntoParams;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orgs", get(org_list).post(org_create))
        .route("/v1/projects", get(project_list).post(project_create))
        .route("/v1/services", get(service_list).post(service_create))
        .route("/v1/services/{id}", patch(service_update))
        .route("/v1/members", get(member_list).post(member_create))
        .route(
            "/v1/members/{id}",
            patch(member_update).get(member_get).delete(member_delete),
        )
        .route("/v1/roles", get(role_list).post(role_create))
        .route("/v1/me", get(whoami))
        .route("/v1/admin/routes", get(routes_list))
        .route(
            "/v1/admin/routes/reload",
            axum::routing::post(routes_reload),
        )
        .route("/v1/admin/config/apply", axum::routing::post(config_apply))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OrgQuery {
    /// The organization (the admin key's choice; others act in their own). Default: `default`.
    pub org_id: Option<String>,
}

/// Create an organization (admin key only). It gets a `default` project.
#[utoipa::path(post, path = "/v1/orgs", operation_id = "orgs_create", tag = "organizations", request_body = CreateOrg,
    responses((status = 201, body = OrgView), (status = 409, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn org_create(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<CreateOrg>,
) -> ApiResult<(StatusCode, Json<OrgView>)> {
    let o = s.app.org_create(&c.principal, &b.name, &c.meta).await?;
    Ok((StatusCode::CREATED, Json(o.into())))
}

/// Organizations: all of them for the admin key, one's own otherwise.
#[utoipa::path(get, path = "/v1/orgs", operation_id = "orgs_list", tag = "organizations", responses((status = 200, body = List<OrgView>)), security(("bearer" = [])))]
pub async fn org_list(State(s): State<AppState>, c: Caller) -> ApiResult<Json<List<OrgView>>> {
    let items = s.app.org_list(&c.principal).await?;
    Ok(Json(List {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// Create a project.
#[utoipa::path(post, path = "/v1/projects", operation_id = "projects_create", tag = "organizations", request_body = CreateProject,
    responses((status = 201, body = ProjectView)), security(("bearer" = [])))]
pub async fn project_create(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<CreateProject>,
) -> ApiResult<(StatusCode, Json<ProjectView>)> {
    let p = s
        .app
        .project_create(&c.principal, b.org_id.as_deref(), &b.name, &c.meta)
        .await?;
    Ok((StatusCode::CREATED, Json(p.into())))
}

/// An organization's projects.
#[utoipa::path(get, path = "/v1/projects", operation_id = "projects_list", tag = "organizations", params(OrgQuery),
    responses((status = 200, body = List<ProjectView>)), security(("bearer" = [])))]
pub async fn project_list(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<OrgQuery>,
) -> ApiResult<Json<List<ProjectView>>> {
    let items = s
        .app
        .project_list(&c.principal, q.org_id.as_deref())
        .await?;
    Ok(Json(List {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// Register a service of the platform and the scopes it understands (admin key only).
#[utoipa::path(post, path = "/v1/services", operation_id = "services_create", tag = "services", request_body = CreateService,
    responses((status = 201, body = ServiceView), (status = 409, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn service_create(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<CreateService>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let svc = s
        .app
        .service_create(
            &c.principal,
            &b.name,
            b.description.as_deref(),
            b.scopes,
            b.resources,
            &c.meta,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(svc.into())))
}

/// Change a service's description or resource URIs (admin key only). Declaring resource URIs
/// (RFC 8707) makes `/v1/authz` and the gateway accept, for the service's scopes, only access
/// tokens issued for one of them.
#[utoipa::path(patch, path = "/v1/services/{id}", operation_id = "services_update", tag = "services", request_body = UpdateService,
    params(("id" = String, Path)),
    responses((status = 200, body = ServiceView), (status = 404, body = crate::error::Problem), (status = 409, body = crate::error::Problem), (status = 422, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn service_update(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    AppJson(b): AppJson<UpdateService>,
) -> ApiResult<Json<ServiceView>> {
    let svc = s
        .app
        .service_update(
            &c.principal,
            &id,
            b.description.as_deref(),
            b.resources,
            &c.meta,
        )
        .await?;
    Ok(Json(svc.into()))
}

/// The platform's services and their scopes.
#[utoipa::path(get, path = "/v1/services", operation_id = "services_list", tag = "services", responses((status = 200, body = List<ServiceView>)), security(("bearer" = [])))]
pub async fn service_list(
    State(s): State<AppState>,
    c: Caller,
) -> ApiResult<Json<List<ServiceView>>> {
    let items = s.app.service_list(&c.principal).await?;
    Ok(Json(List {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// Add a member to an organization.
#[utoipa::path(post, path = "/v1/members", operation_id = "members_create", tag = "members", request_body = CreateMember,
    responses((status = 201, body = MemberView)), security(("bearer" = [])))]
pub async fn member_create(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<CreateMember>,
) -> ApiResult<(StatusCode, Json<MemberView>)> {
    let m = s
        .app
        .member_create(
            &c.principal,
            b.org_id.as_deref(),
            &b.email,
            b.name.as_deref(),
            &b.role,
            &c.meta,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(m.into())))
}

/// An organization's members (a `member` sees only themself).
#[utoipa::path(get, path = "/v1/members", operation_id = "members_list", tag = "members", params(OrgQuery), responses((status = 200, body = List<MemberView>)), security(("bearer" = [])))]
pub async fn member_list(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<OrgQuery>,
) -> ApiResult<Json<List<MemberView>>> {
    let items = s.app.member_list(&c.principal, q.org_id.as_deref()).await?;
    Ok(Json(List {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// Get one member.
#[utoipa::path(get, path = "/v1/members/{id}", operation_id = "members_get", tag = "members", params(("id" = String, Path)), responses((status = 200, body = MemberView, headers(("ETag" = String, description = "The version, for If-Match")))), security(("bearer" = [])))]
pub async fn member_get(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
) -> ApiResult<Tagged<Json<MemberView>>> {
    let m = s.app.member_get(&c.principal, &id).await?;
    Ok(Tagged(m.version, Json(m.into())))
}

/// Change a member's role.
#[utoipa::path(patch, path = "/v1/members/{id}", operation_id = "members_update", tag = "members", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")), request_body = UpdateMember,
    responses((status = 403, body = crate::error::Problem, description = "beyond the caller's ceiling"), (status = 412, body = crate::error::Problem, description = "If-Match names an older version"), (status = 200, body = MemberView)), security(("bearer" = [])))]
pub async fn member_update(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    IfMatch(if_match): IfMatch,
    AppJson(b): AppJson<UpdateMember>,
) -> ApiResult<Tagged<Json<MemberView>>> {
    let m = s
        .app
        .member_set_role(&c.principal, &id, &b.role, if_match, &c.meta)
        .await?;
    Ok(Tagged(m.version, Json(m.into())))
}

/// Remove a member; the keys they own are revoked.
#[utoipa::path(delete, path = "/v1/members/{id}", operation_id = "members_delete", tag = "members", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")), responses((status = 403, body = crate::error::Problem, description = "beyond the caller's ceiling"), (status = 412, body = crate::error::Problem, description = "If-Match names an older version"), (status = 204)), security(("bearer" = [])))]
pub async fn member_delete(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    IfMatch(if_match): IfMatch,
) -> ApiResult<StatusCode> {
    s.app
        .member_delete(&c.principal, &id, if_match, &c.meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Define a role: management permissions and scopes an API key can carry.
#[utoipa::path(post, path = "/v1/roles", operation_id = "roles_create", tag = "roles", request_body = CreateRole, responses((status = 201, body = RoleView)), security(("bearer" = [])))]
pub async fn role_create(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<CreateRole>,
) -> ApiResult<(StatusCode, Json<RoleView>)> {
    let input = NewRole {
        org_id: b.org_id,
        name: b.name,
        description: b.description,
        permissions: b.permissions,
        scopes: b.scopes,
    };
    let r = s.app.role_create(&c.principal, input, &c.meta).await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

/// The built-in roles and the organization's own.
#[utoipa::path(get, path = "/v1/roles", operation_id = "roles_list", tag = "roles", params(OrgQuery), responses((status = 200, body = List<RoleView>)), security(("bearer" = [])))]
pub async fn role_list(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<OrgQuery>,
) -> ApiResult<Json<List<RoleView>>> {
    let items = s.app.role_list(&c.principal, q.org_id.as_deref()).await?;
    Ok(Json(List {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// Who the presented credential is.
#[utoipa::path(get, path = "/v1/me", operation_id = "me_get", tag = "organizations", responses((status = 200, body = WhoAmI)), security(("bearer" = [])))]
pub async fn whoami(c: Caller) -> Json<WhoAmI> {
    let p = c.principal;
    Json(WhoAmI {
        kind: match p.actor {
            Actor::AdminKey => "admin-key".into(),
            Actor::ApiKey { .. } => "api-key".into(),
            Actor::Client { .. } => "access-token".into(),
            Actor::ConsoleAdmin | Actor::ConsoleMember { .. } => "console-session".into(),
        },
        actor: p.actor_label(),
        member_id: p.member_id().map(str::to_string),
        org_id: p.org_id,
        project_id: p.project_id,
        permissions: p
            .permissions
            .iter()
            .map(|x| x.as_str().to_string())
            .collect(),
        scopes: p.scopes,
    })
}

/// The route rules in force, in order.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RulesView {
    pub rules: Vec<RuleView>,
    /// Whether a request no rule matches is allowed (otherwise denied).
    pub allow_unmatched: bool,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RuleView {
    pub methods: Vec<String>,
    pub path: String,
    pub scopes: Vec<String>,
    /// The line of the configuration file where the rule is written.
    pub line: usize,
}

fn rules_view(s: &AppState) -> RulesView {
    let set = s.app.rules();
    RulesView {
        allow_unmatched: set.allows_unmatched(),
        rules: set
            .describe()
            .into_iter()
            .map(|(methods, path, scopes, line)| RuleView {
                methods,
                path,
                scopes,
                line,
            })
            .collect(),
    }
}

fn admin_only(c: &Caller) -> ApiResult<()> {
    if c.principal.is_admin_key() {
        Ok(())
    } else {
        Err(keyplane_core::Error::Forbidden(
            "only the admin key may see or reload route rules".into(),
        )
        .into())
    }
}

/// The route rules in force (admin key only).
#[utoipa::path(get, path = "/v1/admin/routes", operation_id = "admin_routes_list", tag = "forward-auth", responses((status = 200, body = RulesView)), security(("bearer" = [])))]
pub async fn routes_list(State(s): State<AppState>, c: Caller) -> ApiResult<Json<RulesView>> {
    admin_only(&c)?;
    Ok(Json(rules_view(&s)))
}

/// Reads the route rules from the configuration file again (admin key only; SIGHUP does the
/// same). Invalid rules are refused with the rule and line at fault, and the old ones stay.
#[utoipa::path(post, path = "/v1/admin/routes/reload", operation_id = "admin_routes_reload", tag = "forward-auth", responses((status = 200, body = RulesView), (status = 422, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn routes_reload(State(s): State<AppState>, c: Caller) -> ApiResult<Json<RulesView>> {
    admin_only(&c)?;
    s.app
        .reload_rules()
        .await
        .map_err(|e| keyplane_core::Error::invalid("routes", e))?;
    Ok(Json(rules_view(&s)))
}

/// A configuration file to apply (`keyplane apply`).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigApplyRequest {
    /// The file's TOML text; omitted: the server's own configuration file is read.
    pub config: Option<String>,
    /// The file's path, for messages and for relative `secret_file`s (read and written on the
    /// server's machine).
    pub file: Option<String>,
    /// Only say what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// What applying did, or would do, to each declared object.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ConfigApplyView {
    pub file: String,
    pub dry_run: bool,
    /// How many objects are (or would be) created or updated.
    pub changes: usize,
    pub items: Vec<ConfigApplyItemView>,
    /// Files a generated client secret was written to (mode 0600, on the server's machine).
    pub secrets_written: Vec<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ConfigApplyItemView {
    /// `org`, `project`, `service`, `role`, `member` or `client`.
    pub kind: String,
    pub name: String,
    /// The line of the file where it is declared.
    pub line: usize,
    /// `create`, `update` or `unchanged`.
    pub change: String,
    /// The fields an update changes.
    pub fields: Vec<String>,
}

/// Applies the organizations, projects, services, roles, members and OAuth clients a
/// configuration file declares, or with `dry_run` says what would change (admin key only).
/// Idempotent; an invalid file is refused with the file, line, table and field at fault (422),
/// and an error part-way says what was already applied.
#[utoipa::path(post, path = "/v1/admin/config/apply", operation_id = "admin_config_apply", tag = "configuration", request_body = ConfigApplyRequest, responses((status = 200, body = ConfigApplyView), (status = 422, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn config_apply(
    State(s): State<AppState>,
    c: Caller,
    crate::error::AppJson(body): crate::error::AppJson<ConfigApplyRequest>,
) -> ApiResult<Json<ConfigApplyView>> {
    let r = s
        .app
        .config_apply(&c.principal, body.file, body.config, body.dry_run)
        .await?;
    Ok(Json(ConfigApplyView {
        changes: r.items.iter().filter(|i| i.change != "unchanged").count(),
        file: r.file,
        dry_run: r.dry_run,
        items: r
            .items
            .into_iter()
            .map(|i| ConfigApplyItemView {
                kind: i.kind,
                name: i.name,
                line: i.line,
                change: i.change,
                fields: i.fields,
            })
            .collect(),
        secrets_written: r.secrets_written,
    }))
}
